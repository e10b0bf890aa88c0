#include "stack.hpp"

#include <cstring>

#include "diag.hpp"
#include "prim.hpp"
#include "region.hpp"

namespace iso::detail {

constinit stack_pool stack_pool::instance_;

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

bool stack_pool::push(shelf& s, void* run, std::size_t bytes) noexcept {
  if (!fits(s, run, bytes)) return false;
  try {
    s.runs.push_back(run);
  } catch (const std::bad_alloc&) {
    return false;
  }
  pooled_bytes_ += bytes;
  return true;
}

stack_run stack_pool::acquire_new(std::size_t bytes) {
  const std::size_t n = bytes / chunk_bytes;
  const stack_run run{or_flush_and_retry([n] { return region::get().alloc_chunks(n); }), bytes};
  try {
    arm(run);
  } catch (...) {
    region::get().free_chunks(run.base, n);
    throw;
  }
  return run;
}

void stack_pool::release_slow(stack_run run) noexcept {
  const std::size_t n = run.bytes / chunk_bytes;
  if (n <= max_pooled_chunks && push(stacks_[n], run.base, run.bytes)) return;
  disarm(run);
  region::get().free_chunks(run.base, n);
}

void stack_pool::release_heap_chunk_slow(void* chunk) noexcept {
  if (!push(heaps_, chunk, chunk_bytes)) region::get().free_chunks(chunk, 1);
}

void stack_pool::flush() noexcept {
  for (std::size_t n = 1; n <= max_pooled_chunks; ++n) {
    while (!stacks_[n].runs.empty()) {
      void* base = pop(stacks_[n], n * chunk_bytes);
      disarm({base, n * chunk_bytes});
      region::get().free_chunks(base, n);
    }
  }
  while (!heaps_.runs.empty()) region::get().free_chunks(pop(heaps_, chunk_bytes), 1);
}

void stack_pool::trim() noexcept {
  // Releases [run + from, run + to) of each run beyond the hot ones. A failure (counted and
  // reported as every refused release is) stops the shelf's trim there: the pages stay resident,
  // which costs memory, not correctness, and the next trim tries again.
  const auto trim_shelf = [](shelf& s, std::size_t from, std::size_t to) {
    while (s.runs.size() > hot_runs + s.trimmed) {
      char* run = static_cast<char*>(s.runs[s.trimmed]);
      if (release_pages(run + from, to - from) != 0) return;
      ++s.trimmed;
    }
  };
  // A stack keeps its guard (the range starts above it) and its warm top.
  for (std::size_t n = 1; n <= max_pooled_chunks; ++n) {
    const std::size_t bytes = n * chunk_bytes;
    if (bytes > stack_guard_bytes + warm_stack_bytes) trim_shelf(stacks_[n], stack_guard_bytes, bytes - warm_stack_bytes);
  }
  trim_shelf(heaps_, prim::page_size(), chunk_bytes);  // a heap chunk keeps its header page
}

}  // namespace iso::detail
