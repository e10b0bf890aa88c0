// Routing of malloc and friends (interpose.cpp defines malloc, free, calloc, realloc,
// posix_memalign, aligned_alloc, memalign, valloc, pvalloc and malloc_usable_size for the whole
// process; libstdc++'s operator new/delete and every library reach them).
//
//   inside a migratable thread (current_heap != null)  ->  that thread's heap
//   anywhere else (main, the scheduler, runtime code, MPI's and the OS's threads) -> glibc
//   free(p) goes by p's address: region -> the heap whose chunk holds p, if it is in use on this
//   rank (heap::free_any, from any OS thread); else glibc.
#pragma once

#include "heap.hpp"

namespace iso::detail {

// The heap of the migratable thread running on this OS thread; null outside threads. Only the
// scheduler's OS thread ever sets it, so MPI's helper threads always see null. constinit: no
// dynamic initialisation, so every access is a plain %fs-relative load or store, without a call to
// a TLS init wrapper.
extern constinit thread_local heap* current_heap __attribute__((tls_model("initial-exec")));

// Makes `h` the allocation target for a scope (null: the system allocator), then restores.
// Runtime code called from a thread opens a heap_scope(nullptr) so that its own state never lands
// in the thread's heap.
class heap_scope {
 public:
  explicit heap_scope(heap* h) noexcept : saved_(current_heap) { current_heap = h; }
  ~heap_scope() { current_heap = saved_; }
  heap_scope(const heap_scope&) = delete;
  heap_scope& operator=(const heap_scope&) = delete;

 private:
  heap* saved_;
};

struct interpose_stats {
  std::size_t foreign_frees;  // frees of region pointers whose heap is not in use on this rank (refused)
};
interpose_stats interposition_stats() noexcept;

}  // namespace iso::detail
