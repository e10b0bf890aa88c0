// Thread stacks in isomalloc runs, and the Boost.Context StackAllocator over them.
#pragma once

#include <boost/context/stack_context.hpp>

#include <cstddef>

#include "sysalloc.hpp"
#include "tcb.hpp"

namespace iso::detail {

// Recently freed stack runs of this rank, kept with their guard installed and their top pages
// committed, so that spawning does no system call. Bounded by max_pooled_bytes; only runs this
// rank owns are pooled (others go home). Rank-local; not thread-safe (the scheduler's OS thread).
class stack_pool {
 public:
  static constexpr std::size_t max_pooled_bytes = std::size_t{256} << 20;
  static constexpr std::size_t max_pooled_chunks = 16;  // runs up to 1 MiB are pooled

  static stack_pool& get() noexcept;

  // A run of `bytes` (a multiple of chunk_bytes) with its guard installed. Throws iso::error.
  stack_run acquire(std::size_t bytes);
  // Gives a run back: pooled, or guard removed and returned to the region (its owner).
  void release(stack_run run) noexcept;
  // Installs / removes the guard of a run that arrives on / leaves this rank by migration.
  static void arm(const stack_run& run);
  static void disarm(const stack_run& run) noexcept;
  // Bytes of the runs pooled now (allocated in the region, free for the next spawn).
  std::size_t pooled_bytes() const noexcept { return pooled_bytes_; }

 private:
  sys_vector<void*> free_[max_pooled_chunks + 1];  // free_[n]: pooled runs of n chunks
  std::size_t pooled_bytes_ = 0;                    // sum over free_ of n * chunk_bytes
};

// The Boost.Context StackAllocator handing a thread its pre-acquired run. Boost.Context stores a
// copy inside the fiber record at the top of the stack, so it migrates with the stack: it holds
// only the run's address and size.
struct slot_stack {
  stack_run run;
  boost::context::stack_context allocate() noexcept;
  void deallocate(boost::context::stack_context&) noexcept;
};

}  // namespace iso::detail
