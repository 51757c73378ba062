#include "onnx/model/tensor_data.h"

#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <limits>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "calq's ONNX reader stores tensor data little-endian as in the file; port the "
              "byte order conversion before building on a big-endian host");

namespace calq {
namespace onnx {
namespace detail {
namespace {

// Largest element count a tensor may declare (2^40): products of hostile dims stay far from
// int64 overflow, and no real model comes near it.
constexpr int64_t kMaxElements = int64_t(1) << 40;

// Decimal non-negative integer, or an error naming `what`.
int64_t parse_offset(const std::string& text, const std::string& key, const std::string& what) {
  TORCH_CHECK(!text.empty() && text.size() <= 18, what, ": external data '", key,
              "' must be a non-negative decimal integer, got '", text, "'");
  int64_t value = 0;
  for (char c : text) {
    TORCH_CHECK(c >= '0' && c <= '9', what, ": external data '", key,
                "' must be a non-negative decimal integer, got '", text, "'");
    value = value * 10 + (c - '0');
  }
  return value;
}

template <typename Field>
void copy_typed(const Field& field, int64_t numel, std::string& bytes, const std::string& what,
                const char* field_name) {
  TORCH_CHECK(static_cast<int64_t>(field.size()) == numel, what, ": ", field_name, " holds ",
              field.size(), " values but the dims give ", numel);
  using T = typename Field::value_type;
  bytes.resize(static_cast<size_t>(numel) * sizeof(T));
  if (numel > 0) std::memcpy(&bytes[0], field.data(), bytes.size());
}

// Narrow int32_data values (int8/16, uint8/16, bool, float16/bfloat16 bit patterns).
template <typename T>
void copy_narrow(const google::protobuf::RepeatedField<int32_t>& field, int64_t numel,
                 std::string& bytes, const std::string& what) {
  TORCH_CHECK(static_cast<int64_t>(field.size()) == numel, what, ": int32_data holds ",
              field.size(), " values but the dims give ", numel);
  bytes.resize(static_cast<size_t>(numel) * sizeof(T));
  for (int64_t i = 0; i < numel; ++i) {
    const T v = static_cast<T>(static_cast<uint32_t>(field.Get(static_cast<int>(i))));
    std::memcpy(&bytes[static_cast<size_t>(i) * sizeof(T)], &v, sizeof(T));
  }
}

template <typename T>
void copy_narrow64(const google::protobuf::RepeatedField<uint64_t>& field, int64_t numel,
                   std::string& bytes, const std::string& what) {
  TORCH_CHECK(static_cast<int64_t>(field.size()) == numel, what, ": uint64_data holds ",
              field.size(), " values but the dims give ", numel);
  bytes.resize(static_cast<size_t>(numel) * sizeof(T));
  for (int64_t i = 0; i < numel; ++i) {
    const T v = static_cast<T>(field.Get(static_cast<int>(i)));
    std::memcpy(&bytes[static_cast<size_t>(i) * sizeof(T)], &v, sizeof(T));
  }
}

bool is_inside(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
         (dir.back() == '/' || path[dir.size()] == '/');
}

std::string real_path(const std::string& path) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (resolved == nullptr) return "";
  std::string out(resolved);
  std::free(resolved);
  return out;
}

// A bool byte other than 0 or 1 is undefined behaviour once it is a C++ bool: store 0 / 1.
void normalize_booleans(TensorData& t) {
  if (t.type != ElementType::boolean) return;
  for (char& c : t.bytes) c = c != 0 ? 1 : 0;
}

}  // namespace

std::string read_external_data(const std::string& base_dir, const std::string& location,
                               int64_t offset, int64_t length, const std::string& what) {
  TORCH_CHECK(!base_dir.empty(), what, ": external data '", location,
              "' cannot be read from a model given as bytes; import the model from its file so ",
              "that the data beside it is found");
  TORCH_CHECK(!location.empty() && location.find('\0') == std::string::npos, what,
              ": external data location is empty or contains a NUL byte");
  TORCH_CHECK(location[0] != '/', what, ": external data location '", location,
              "' is an absolute path; it must be relative to the model's folder");
  // Reject ".." components outright (even when they would come back inside the folder).
  size_t start = 0;
  while (start <= location.size()) {
    size_t end = location.find('/', start);
    if (end == std::string::npos) end = location.size();
    TORCH_CHECK(location.compare(start, end - start, "..") != 0, what, ": external data location '",
                location, "' leaves the model's folder ('..' is not allowed)");
    start = end + 1;
  }
  const std::string dir = real_path(base_dir);
  TORCH_CHECK(!dir.empty(), what, ": the model's folder '", base_dir, "' cannot be resolved");
  const std::string joined = base_dir + "/" + location;
  const std::string file = real_path(joined);
  TORCH_CHECK(!file.empty(), what, ": external data file '", location, "' does not exist (", joined,
              "); keep the data files beside the model");
  TORCH_CHECK(is_inside(file, dir), what, ": external data location '", location, "' resolves to '",
              file, "', outside the model's folder '", dir, "' (symbolic links may not leave it)");
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  TORCH_CHECK(fd >= 0, what, ": cannot open external data file '", file,
              "': ", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  TORCH_CHECK(::fstat(fd, &st) == 0 && S_ISREG(st.st_mode), what, ": external data '", file,
              "' is not a regular file");
  const int64_t size = static_cast<int64_t>(st.st_size);
  TORCH_CHECK(offset >= 0 && offset <= size, what, ": external data offset ", offset,
              " lies beyond the end of '", location, "' (", size, " bytes)");
  if (length < 0) length = size - offset;
  TORCH_CHECK(length <= size - offset, what, ": external data length ", length, " at offset ",
              offset, " runs past the end of '", location, "' (", size, " bytes)");
  std::string bytes(static_cast<size_t>(length), '\0');
  int64_t done = 0;
  while (done < length) {
    const ssize_t n = ::pread(fd, &bytes[static_cast<size_t>(done)],
                              static_cast<size_t>(std::min<int64_t>(length - done, 1 << 30)),
                              static_cast<off_t>(offset + done));
    TORCH_CHECK(n > 0, what, ": reading external data '", location, "' failed at byte ",
                offset + done, n < 0 ? std::string(": ") + std::strerror(errno) : "");
    done += n;
  }
  return bytes;
}

TensorData read_tensor(const ::onnx::TensorProto& proto, const std::string& what,
                       const std::string& base_dir) {
  TensorData out;
  out.name = proto.name();
  TORCH_CHECK(is_supported_element_type(proto.data_type()), what, ": element type ",
              proto.data_type(),
              " is not supported (float32/64/16, bfloat16, int8/16/32/64, uint8/16/32/64, bool)");
  out.type = static_cast<ElementType>(proto.data_type());
  TORCH_CHECK(!proto.has_segment(), what, ": segmented tensors are not supported");
  int64_t numel = 1;
  for (int64_t d : proto.dims()) {
    TORCH_CHECK(d >= 0, what, ": dimension ", d, " is negative");
    TORCH_CHECK(d == 0 || numel <= kMaxElements / d, what, ": the dims give more than 2^40 ",
                "elements");
    numel *= d;
    out.dims.push_back(d);
  }
  const size_t expected = static_cast<size_t>(numel) * element_size(out.type);
  if (proto.data_location() == ::onnx::TensorProto::EXTERNAL) {
    std::string location;
    int64_t offset = 0, length = -1;
    for (const auto& entry : proto.external_data()) {
      if (entry.key() == "location") {
        location = entry.value();
      } else if (entry.key() == "offset") {
        offset = parse_offset(entry.value(), "offset", what);
      } else if (entry.key() == "length") {
        length = parse_offset(entry.value(), "length", what);
      }
    }
    TORCH_CHECK(!location.empty(), what, ": external data has no 'location'");
    TORCH_CHECK(length < 0 || static_cast<size_t>(length) == expected, what,
                ": external data length ", length, " does not match the ", expected,
                " bytes its type and dims need");
    if (length < 0) length = static_cast<int64_t>(expected);
    out.bytes = read_external_data(base_dir, location, offset, length, what);
    normalize_booleans(out);
    return out;
  }
  TORCH_CHECK(proto.external_data_size() == 0, what,
              ": external_data entries given but data_location is not EXTERNAL");
  if (proto.has_raw_data()) {
    TORCH_CHECK(proto.raw_data().size() == expected, what, ": raw_data holds ",
                proto.raw_data().size(), " bytes but type ", to_string(out.type), " and dims ",
                "need ", expected);
    out.bytes = proto.raw_data();
    normalize_booleans(out);
    return out;
  }
  switch (out.type) {
    case ElementType::float32:
      copy_typed(proto.float_data(), numel, out.bytes, what, "float_data");
      break;
    case ElementType::float64:
      copy_typed(proto.double_data(), numel, out.bytes, what, "double_data");
      break;
    case ElementType::int64:
      copy_typed(proto.int64_data(), numel, out.bytes, what, "int64_data");
      break;
    case ElementType::int32:
      copy_typed(proto.int32_data(), numel, out.bytes, what, "int32_data");
      break;
    case ElementType::int16:
    case ElementType::uint16:
    case ElementType::float16:
    case ElementType::bfloat16:
      copy_narrow<uint16_t>(proto.int32_data(), numel, out.bytes, what);
      break;
    case ElementType::int8:
    case ElementType::uint8:
    case ElementType::boolean:
      copy_narrow<uint8_t>(proto.int32_data(), numel, out.bytes, what);
      break;
    case ElementType::uint32:
      copy_narrow64<uint32_t>(proto.uint64_data(), numel, out.bytes, what);
      break;
    case ElementType::uint64:
      copy_typed(proto.uint64_data(), numel, out.bytes, what, "uint64_data");
      break;
  }
  TORCH_INTERNAL_ASSERT(out.bytes.size() == expected);
  normalize_booleans(out);
  return out;
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
