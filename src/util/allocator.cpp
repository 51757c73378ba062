#include "calq/util/allocator.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace calq {
namespace util {

bool keep_freed_memory_mapped() {
#if defined(__GLIBC__)
  // 1 GiB: above any single activation of the supported models; below it every block comes
  // from the heap and is reused.
  constexpr int kThreshold = 1 << 30;
  return mallopt(M_MMAP_THRESHOLD, kThreshold) == 1 && mallopt(M_TRIM_THRESHOLD, kThreshold) == 1;
#else
  return false;
#endif
}

}  // namespace util
}  // namespace calq
