#pragma once
// Process-wide allocator tuning for long training and calibration jobs.

namespace calq {
namespace util {

/// Keeps freed memory in the process instead of returning it to the kernel (glibc mallopt:
/// no mmap for large blocks, no trimming). QAT allocates and frees tens of megabytes of
/// activations per step; returned memory comes back as fresh pages, and their page faults
/// measured here cost more than the fake quantization itself. For programs (the calq CLI,
/// benchmarks), not for a library to call behind its host's back. Returns false where the
/// C library has no mallopt.
bool keep_freed_memory_mapped();

}  // namespace util
}  // namespace calq
