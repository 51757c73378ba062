#include "calq/util/npy.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "calq/util/atomic_file.h"

namespace calq {
namespace util {
namespace {

struct DtypeName {
  at::ScalarType type;
  const char* descr;
};
constexpr DtypeName kDtypes[] = {{at::kFloat, "<f4"}, {at::kDouble, "<f8"}, {at::kLong, "<i8"},
                                 {at::kInt, "<i4"},   {at::kChar, "|i1"},   {at::kByte, "|u1"}};

}  // namespace

namespace {
// The bytes of a version 1.0 .npy file holding `tensor`; `path` names the file in errors.
std::string npy_bytes(const at::Tensor& tensor, const std::string& path) {
  const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  const char* descr = nullptr;
  for (const auto& d : kDtypes) {
    if (d.type == t.scalar_type()) descr = d.descr;
  }
  TORCH_CHECK(descr != nullptr, "write_npy('", path, "'): dtype ", t.scalar_type(),
              " is not supported; use float32, float64, int64, int32, int8 or uint8");
  std::ostringstream shape;
  for (int64_t i = 0; i < t.dim(); ++i)
    shape << t.size(i) << (t.dim() == 1 || i + 1 < t.dim() ? ", " : "");
  std::string header = std::string("{'descr': '") + descr +
                       "', 'fortran_order': False, 'shape': (" + shape.str() + "), }";
  const size_t unpadded = 10 + header.size() + 1;
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::string bytes = "\x93NUMPY";
  bytes += static_cast<char>(1);
  bytes += static_cast<char>(0);
  bytes += static_cast<char>(header.size() & 0xff);
  bytes += static_cast<char>((header.size() >> 8) & 0xff);
  bytes += header;
  bytes.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return bytes;
}
}  // namespace

void write_npy(const std::string& path, const at::Tensor& tensor) {
  write_file_atomic(path, npy_bytes(tensor, path));
}

namespace {

uint32_t crc32(const std::string& bytes) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : bytes) c = table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

void put16(std::string& out, uint32_t v) {
  out += static_cast<char>(v & 0xff);
  out += static_cast<char>((v >> 8) & 0xff);
}
void put32(std::string& out, uint32_t v) {
  put16(out, v & 0xffff);
  put16(out, v >> 16);
}

}  // namespace

void write_npz(const std::string& path,
               const std::vector<std::pair<std::string, at::Tensor>>& arrays) {
  TORCH_CHECK(!arrays.empty(), "write_npz('", path, "'): no arrays to write");
  // A zip archive of stored (uncompressed) NAME.npy members, as numpy.savez writes; the
  // classic zip format caps members and the archive at 4 GiB, which outputs of one batch fit.
  std::string archive, directory;
  for (const auto& [name, tensor] : arrays) {
    TORCH_CHECK(!name.empty() && name.find('/') == std::string::npos, "write_npz('", path,
                "'): array name '", name, "' must be non-empty without '/'");
    const std::string member = name + ".npy";
    const std::string data = npy_bytes(tensor, path);
    TORCH_CHECK(data.size() < 0xFFFFFFFFull && archive.size() < 0xFFFFFFFFull - data.size(),
                "write_npz('", path, "'): more than 4 GiB; write .npy files instead");
    const uint32_t crc = crc32(data);
    const uint32_t offset = static_cast<uint32_t>(archive.size());
    auto common = [&](std::string& out) {
      put16(out, 20);    // version needed: 2.0
      put16(out, 0);     // flags
      put16(out, 0);     // method: stored
      put16(out, 0);     // time
      put16(out, 0x21);  // date: 1980-01-01
      put32(out, crc);
      put32(out, static_cast<uint32_t>(data.size()));
      put32(out, static_cast<uint32_t>(data.size()));
      put16(out, static_cast<uint32_t>(member.size()));
      put16(out, 0);  // extra length
    };
    put32(archive, 0x04034b50u);
    common(archive);
    archive += member + data;
    put32(directory, 0x02014b50u);
    put16(directory, 20);  // made by
    common(directory);
    put16(directory, 0);  // comment length
    put16(directory, 0);  // disk
    put16(directory, 0);  // internal attributes
    put32(directory, 0);  // external attributes
    put32(directory, offset);
    directory += member;
  }
  const uint32_t directory_offset = static_cast<uint32_t>(archive.size());
  archive += directory;
  put32(archive, 0x06054b50u);
  put16(archive, 0);
  put16(archive, 0);
  put16(archive, static_cast<uint32_t>(arrays.size()));
  put16(archive, static_cast<uint32_t>(arrays.size()));
  put32(archive, static_cast<uint32_t>(directory.size()));
  put32(archive, directory_offset);
  put16(archive, 0);
  write_file_atomic(path, archive);
}

at::Tensor read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "read_npy: cannot open '", path, "'");
  char magic[8] = {};
  in.read(magic, 8);
  TORCH_CHECK(in.gcount() == 8 && std::memcmp(magic, "\x93NUMPY", 6) == 0, "read_npy: '", path,
              "' is not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(magic[6]);
  TORCH_CHECK(major >= 1 && major <= 3, "read_npy: '", path, "' has unsupported version ", major);
  uint32_t header_size = 0;
  unsigned char size_bytes[4] = {};
  in.read(reinterpret_cast<char*>(size_bytes), major == 1 ? 2 : 4);
  TORCH_CHECK(in.good(), "read_npy: '", path, "' is truncated in its header");
  header_size = size_bytes[0] | (size_bytes[1] << 8) |
                (major == 1 ? 0 : (size_bytes[2] << 16) | (uint32_t(size_bytes[3]) << 24));
  TORCH_CHECK(header_size < (1u << 20), "read_npy: '", path, "' has a header of ", header_size,
              " bytes; at most 1 MiB is accepted");
  std::string header(header_size, '\0');
  in.read(&header[0], header_size);
  TORCH_CHECK(static_cast<uint32_t>(in.gcount()) == header_size, "read_npy: '", path,
              "' is truncated in its header");
  std::smatch m;
  TORCH_CHECK(std::regex_search(header, m, std::regex("'descr':\\s*'([^']+)'")), "read_npy: '",
              path, "' has no dtype in its header: ", header);
  const std::string descr = m[1];
  TORCH_CHECK(!std::regex_search(header, std::regex("'fortran_order':\\s*True")), "read_npy: '",
              path, "' is in Fortran order; save it in C order");
  TORCH_CHECK(std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)")), "read_npy: '",
              path, "' has no shape in its header: ", header);
  std::vector<int64_t> shape;
  std::stringstream dims(m[1].str());
  std::string item;
  int64_t count = 1;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(" \t") == std::string::npos) continue;
    const int64_t d = std::stoll(item);
    TORCH_CHECK(d >= 0 && (d == 0 || count <= (int64_t{1} << 40) / std::max<int64_t>(d, 1)),
                "read_npy: '", path, "' has an invalid dimension ", item);
    shape.push_back(d);
    count *= d;
  }
  c10::optional<at::ScalarType> type;
  for (const auto& d : kDtypes) {
    if (descr == d.descr) type = d.type;
  }
  TORCH_CHECK(type.has_value(), "read_npy: '", path, "' has dtype '", descr,
              "'; supported: <f4, <f8, <i8, <i4, |i1, |u1");
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(*type));
  in.read(static_cast<char*>(t.data_ptr()), t.numel() * t.element_size());
  TORCH_CHECK(static_cast<int64_t>(in.gcount()) == t.numel() * t.element_size(), "read_npy: '",
              path, "' is truncated: expected ", t.numel() * t.element_size(),
              " data bytes for shape ", t.sizes());
  return t;
}

}  // namespace util
}  // namespace calq
