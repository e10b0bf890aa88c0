#include "interpose.hpp"

#include <dlfcn.h>

#include <cerrno>
#include <cstring>

#include "diag.hpp"
#include "region.hpp"
#include "sysalloc.hpp"

namespace iso::detail {

constinit thread_local heap* current_heap __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

using usable_fn = std::size_t (*)(void*);
usable_fn glibc_usable_size() noexcept {
  static const usable_fn fn = reinterpret_cast<usable_fn>(dlsym(RTLD_NEXT, "malloc_usable_size"));
  return fn;
}

void* aligned_in_heap(heap* h, std::size_t align, std::size_t bytes) noexcept {
  void* p = h->alloc_aligned(align, bytes);
  if (p == nullptr) errno = ENOMEM;
  return p;
}

bool valid_alignment(std::size_t align) noexcept {
  return align != 0 && (align & (align - 1)) == 0;
}

}  // namespace

interpose_stats interposition_stats() noexcept { return {ownership_stats().refused_frees}; }

}  // namespace iso::detail

using iso::detail::current_heap;
using iso::detail::heap;

extern "C" {

void* malloc(std::size_t bytes) {
  if (heap* h = current_heap) {
    void* p = h->alloc(bytes);
    if (p == nullptr) errno = ENOMEM;
    return p;
  }
  return __libc_malloc(bytes);
}

void free(void* p) {
  if (p == nullptr) return;
  if (iso::detail::in_region(p)) {
    heap::free_any(p);  // from any OS thread; refused if its heap is not in use on this rank
    return;
  }
  __libc_free(p);
}

void* calloc(std::size_t n, std::size_t size) {
  if (heap* h = current_heap) {
    std::size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes)) {
      errno = ENOMEM;
      return nullptr;
    }
    void* p = h->alloc(bytes);
    if (p == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
    return std::memset(p, 0, bytes);
  }
  return __libc_calloc(n, size);
}

void* realloc(void* p, std::size_t bytes) {
  if (p == nullptr) return malloc(bytes);
  if (iso::detail::in_region(p)) {
    void* q = heap::realloc_any(p, bytes);  // stays in the heap that holds the block, if any
    if (q == nullptr && bytes != 0) errno = ENOMEM;
    return q;
  }
  return __libc_realloc(p, bytes);
}

int posix_memalign(void** out, std::size_t align, std::size_t bytes) {
  if (!iso::detail::valid_alignment(align) || align % sizeof(void*) != 0) return EINVAL;
  void* p = current_heap ? current_heap->alloc_aligned(align, bytes) : __libc_memalign(align, bytes);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}

void* aligned_alloc(std::size_t align, std::size_t bytes) {
  if (!iso::detail::valid_alignment(align)) {
    errno = EINVAL;
    return nullptr;
  }
  if (heap* h = current_heap) return iso::detail::aligned_in_heap(h, align, bytes);
  return __libc_memalign(align, bytes);
}

void* memalign(std::size_t align, std::size_t bytes) { return aligned_alloc(align, bytes); }

void* valloc(std::size_t bytes) {
  if (heap* h = current_heap) return iso::detail::aligned_in_heap(h, iso::detail::prim::page_size(), bytes);
  return __libc_valloc(bytes);
}

void* pvalloc(std::size_t bytes) {
  const std::size_t page = iso::detail::prim::page_size();
  if (heap* h = current_heap) return iso::detail::aligned_in_heap(h, page, (bytes + page - 1) / page * page);
  return __libc_pvalloc(bytes);
}

std::size_t malloc_usable_size(void* p) {
  if (p == nullptr) return 0;
  if (iso::detail::in_region(p)) {
    heap* h = heap::owner_of(p);
    return h ? h->usable_size(p) : 0;
  }
  auto fn = iso::detail::glibc_usable_size();
  return fn ? fn(p) : 0;
}

}  // extern "C"
