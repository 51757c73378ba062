#pragma once
// Atomic file writes: the bytes go to a temporary file in the target's folder, are flushed to
// disk (fsync), and the temporary is renamed over the target. A crash or an error never leaves
// a half-written target; on error the old target (if any) is untouched and the temporary is
// removed.

#include <torch/serialize.h>

#include <functional>
#include <ostream>
#include <string>

namespace torch {
namespace nn {
class Module;
}  // namespace nn
}  // namespace torch

namespace calq {
namespace util {

/// Writes `bytes` to `path` atomically, creating missing parent folders. The new file gets the
/// usual permissions (0666 minus the umask). Throws c10::Error naming the path, the failed step
/// and the errno text.
void write_file_atomic(const std::string& path, const std::string& bytes);

/// Streams the output of `writer` to `path` atomically (nothing is buffered in memory). If
/// `writer` throws, or the stream fails, the temporary is removed, the target is untouched and
/// the exception propagates (stream failures as c10::Error naming the path).
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& writer);

/// Saves an archive (as torch::serialize::OutputArchive::save_to) atomically.
void save_archive_atomic(torch::serialize::OutputArchive& archive, const std::string& path);

/// Saves a module's parameters and buffers (as Module::save / torch::save) atomically; load it
/// with torch::load(module_holder, path).
void save_module_atomic(const torch::nn::Module& module, const std::string& path);

/// torch::save(value, path) made atomic, for anything torch::save accepts (module holders,
/// tensors, vectors of tensors).
template <typename Value>
void save_atomic(const Value& value, const std::string& path) {
  write_file_atomic(path, [&value](std::ostream& out) { torch::save(value, out); });
}

}  // namespace util
}  // namespace calq
