#include "stack.hpp"

#include <cstring>

#include "diag.hpp"
#include "prim.hpp"
#include "region.hpp"

namespace iso::detail {

stack_pool& stack_pool::get() noexcept {
  static stack_pool pool;
  return pool;
}

void stack_pool::arm(const stack_run& run) {
  if (const int e = prim::guard_install(run.base, stack_guard_bytes); e != 0) {
    raise(errc::system_failure, "could not install the guard of stack %p: %s", run.base, std::strerror(e));
  }
}

void stack_pool::disarm(const stack_run& run) noexcept {
  if (const int e = prim::guard_remove(run.base, stack_guard_bytes); e != 0) {
    fatal("could not remove the guard of stack %p: %s", run.base, std::strerror(e));
  }
}

stack_run stack_pool::acquire(std::size_t bytes) {
  const std::size_t n = bytes / chunk_bytes;
  if (n <= max_pooled_chunks && !free_[n].empty()) {
    void* base = free_[n].back();
    free_[n].pop_back();
    pooled_bytes_ -= bytes;
    return {base, bytes};
  }
  stack_run run{region::get().alloc_chunks(n), bytes};
  try {
    arm(run);
  } catch (...) {
    region::get().free_chunks(run.base, n);
    throw;
  }
  return run;
}

void stack_pool::release(stack_run run) noexcept {
  const std::size_t n = run.bytes / chunk_bytes;
  region& r = region::get();
  if (n <= max_pooled_chunks && pooled_bytes_ + run.bytes <= max_pooled_bytes &&
      r.owner_of(run.base) == r.rank()) {
    try {
      free_[n].push_back(run.base);
      pooled_bytes_ += run.bytes;
      return;
    } catch (const std::bad_alloc&) {
      // not pooled: return it below
    }
  }
  disarm(run);
  r.free_chunks(run.base, n);
}

boost::context::stack_context slot_stack::allocate() noexcept {
  boost::context::stack_context sctx;
  sctx.size = run.bytes - stack_guard_bytes;
  sctx.sp = run.top();
  return sctx;
}

void slot_stack::deallocate(boost::context::stack_context&) noexcept { stack_pool::get().release(run); }

}  // namespace iso::detail
