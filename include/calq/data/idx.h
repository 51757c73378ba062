#pragma once
// Readers for the idx format of (Fashion-)MNIST, gzip-compressed or raw: a big-endian header
// (magic, count[, rows, cols]) followed by one unsigned byte per pixel or label.

#include <c10/util/Optional.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace calq {
namespace data {

/// Magic numbers of the idx files: unsigned bytes, 3 dimensions (images) or 1 (labels).
constexpr int64_t kIdxImagesMagic = 2051;
constexpr int64_t kIdxLabelsMagic = 2049;

/// Reads an idx3 image file (gzip or raw): uint8 [N, rows, cols], N = min(count, limit).
/// `limit`, if given, must be >= 1. Throws c10::Error naming the file on a missing file, a magic
/// number other than 2051, a geometry other than expected_rows x expected_cols, a gzip error or
/// fewer bytes than the header announces. When the whole file is read (no limit, or limit >=
/// count) its end is checked too: gzip checksum, no bytes beyond the announced count.
torch::Tensor read_idx_images(const std::string& path, c10::optional<int64_t> limit = c10::nullopt,
                              int64_t expected_rows = 28, int64_t expected_cols = 28);

/// Reads an idx1 label file (gzip or raw): int64 [N], N = min(count, limit). Same checks as
/// read_idx_images with magic number 2049, plus every label must lie in [0, num_classes) (the
/// error names the first offending index and value).
torch::Tensor read_idx_labels(const std::string& path, c10::optional<int64_t> limit = c10::nullopt,
                              int64_t num_classes = 10);

/// Number of examples an idx file announces in its header, after checking its magic number
/// (2049 if `labels`, else 2051). Reads only the header.
int64_t read_idx_count(const std::string& path, bool labels);

}  // namespace data
}  // namespace calq
