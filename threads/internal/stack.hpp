// Thread stacks in isomalloc runs, and the pool that keeps recently freed ones warm.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "isothreads/error.hpp"
#include "region.hpp"
#include "sysalloc.hpp"
#include "tcb.hpp"

namespace iso::detail {

// Recently freed thread memory of this rank, kept warm for the next spawn so that spawning and
// ending a thread do no system call and touch no new page: stack runs with their guard installed
// and their top pages committed, and the first chunks of retired heaps (heap::retire), their
// header page committed. Reuse is LIFO (the most recently freed, warmest, first).
// Bounds: per kind (each stack length, heap chunks) at most max_pooled_runs runs, and in all at
// most a sixteenth of the share's addresses (a pool must not starve a small share: acquire()
// flushes the pool and retries before it reports exhaustion); beyond them a run goes back at once
// (guard removed, to the region). Resident memory is bounded off the hot path: trim(), which the
// scheduler calls when its rank has nothing to run, gives back to the kernel the pages of every
// pooled run but the hot_runs most recently freed of its kind, except the part the next thread
// touches anyway (a stack's top warm_stack_bytes, a heap chunk's first page); guards stay.
// Only runs this rank owns are pooled (others go home). Rank-local; not thread-safe (the
// scheduler's OS thread).
class stack_pool {
 public:
  static constexpr std::size_t max_pooled_chunks = 16;  // stack runs up to 1 MiB are pooled
  static constexpr std::size_t max_pooled_runs = std::size_t{1} << 15;
  static constexpr std::size_t hot_runs = 1024;
  static constexpr std::size_t warm_stack_bytes = std::size_t{16} << 10;

  static stack_pool& get() noexcept { return instance_; }  // inline: a spawn and a teardown call it often

  // The four calls of every spawn and teardown are inline down to the pooled case (what a steady
  // state takes), with the rest out of line: their slow paths made each of them a call that saved
  // six registers (12% of a spawn + join, measured).
  // A run of `bytes` (a multiple of chunk_bytes) with its guard installed. Throws iso::error.
  stack_run acquire(std::size_t bytes) {
    const std::size_t n = bytes / chunk_bytes;
    if (n <= max_pooled_chunks && !stacks_[n].runs.empty()) [[likely]] return {pop(stacks_[n], bytes), bytes};
    return acquire_new(bytes);
  }
  // Gives a run back: pooled, or guard removed and returned to the region (its owner).
  void release(stack_run run) noexcept {
    const std::size_t n = run.bytes / chunk_bytes;
    if (n <= max_pooled_chunks && push_in_place(stacks_[n], run.base, run.bytes)) [[likely]] return;
    release_slow(run);
  }
  // A chunk for heap::create(warm), or null if none is pooled.
  void* acquire_heap_chunk() noexcept { return heaps_.runs.empty() ? nullptr : pop(heaps_, chunk_bytes); }
  // The chunk heap::retire() returned: pooled, or returned to the region (its owner).
  void release_heap_chunk(void* chunk) noexcept {
    if (!push_in_place(heaps_, chunk, chunk_bytes)) [[unlikely]] release_heap_chunk_slow(chunk);
  }
  // Gives every pooled run back to the region (before a retry of an allocation that found the
  // share exhausted).
  void flush() noexcept;
  // alloc() (an allocation from the region, which throws iso::error); if it finds the share
  // exhausted while the pool holds runs, flush() and alloc() once more: what the pool holds may be
  // what the share lacks.
  template <class Alloc>
  auto or_flush_and_retry(Alloc alloc) -> decltype(alloc()) {
    try {
      return alloc();
    } catch (const iso::error& e) {
      if (e.code() != errc::region_exhausted || pooled_bytes_ == 0) throw;
    }
    flush();
    return alloc();
  }
  // Releases the pages of the runs pooled beyond hot_runs per kind (see above). One madvise per
  // run not trimmed before; nothing when there is none.
  void trim() noexcept;
  // Installs / removes the guard of a run that arrives on / leaves this rank by migration.
  static void arm(const stack_run& run);
  static void disarm(const stack_run& run) noexcept;
  // Bytes of the runs pooled now, stacks and heap chunks (allocated in the region, free for the
  // next spawn).
  std::size_t pooled_bytes() const noexcept { return pooled_bytes_; }

 private:
  // Pooled runs of one kind, the oldest first; runs[0, trimmed) have been trimmed already.
  struct shelf {
    sys_vector<void*> runs;
    std::size_t trimmed = 0;
  };
  // Whether the bounds let run (of `bytes`) onto s: room on s and in the pool, and run owned by
  // this rank (in its share: a range test, where owner_of divides).
  bool fits(const shelf& s, const void* run, std::size_t bytes) const noexcept {
    const region& r = region::get();
    const interval mine = r.share(r.rank());
    const auto a = reinterpret_cast<std::uintptr_t>(run);
    return s.runs.size() < max_pooled_runs && pooled_bytes_ + bytes <= r.share_bytes() / 16 && a >= mine.lo &&
           a < mine.hi;
  }
  // Pushes run onto s if the bounds allow and s has room without growing; false if not.
  bool push_in_place(shelf& s, void* run, std::size_t bytes) noexcept {
    if (s.runs.size() == s.runs.capacity() || !fits(s, run, bytes)) return false;
    s.runs.push_back(run);  // no allocation: within capacity
    pooled_bytes_ += bytes;
    return true;
  }
  // Pushes run onto s if the bounds allow, growing s if needed; false if not (or out of memory).
  bool push(shelf& s, void* run, std::size_t bytes) noexcept;
  // pre: s is not empty.
  void* pop(shelf& s, std::size_t bytes) noexcept {
    void* run = s.runs.back();
    s.runs.pop_back();
    s.trimmed = std::min(s.trimmed, s.runs.size());
    pooled_bytes_ -= bytes;
    return run;
  }
  stack_run acquire_new(std::size_t bytes);        // a fresh run from the region, guard installed
  void release_slow(stack_run run) noexcept;       // release() when push_in_place refused
  void release_heap_chunk_slow(void* chunk) noexcept;

  shelf stacks_[max_pooled_chunks + 1];  // stacks_[n]: pooled stack runs of n chunks
  shelf heaps_;                          // first chunks of retired heaps
  std::size_t pooled_bytes_ = 0;         // sum over the shelves of their runs' bytes

  static stack_pool instance_;  // constant-initialised (stack.cpp): no guard to test at each get()
};

}  // namespace iso::detail
