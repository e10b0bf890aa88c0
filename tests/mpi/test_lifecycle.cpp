// A thread's life under iso::runtime once the rank is warm: spawn, first run, finish and join
// reuse a recently freed thread's memory (stack with its guard, heap header chunk) and touch no
// new page, one at a time and in batches; a recycled heap is a new heap, never taken for the one
// that lived in its chunk before (bench/spawn_syscalls.sh shows the same loop makes no system
// call). Fork-join work runs depth-first: the live threads stay within the bound the user guide
// states.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "engine.hpp"
#include "heap.hpp"
#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"
#include "prim.hpp"
#include "scheduler.hpp"
#include "thread_checks.hpp"

namespace {

using iso_test::check;
using iso_test::check_eq;
using iso_test::rt;

// Minor page faults of the calling OS thread so far (the scheduler's, inside a thread).
long minor_faults() {
  rusage ru{};
  EXPECT_EQ(getrusage(RUSAGE_THREAD, &ru), 0);
  return ru.ru_minflt;
}

// `rounds` rounds of `batch` spawns of an empty thread, then their joins.
void spawn_and_join(long rounds, std::size_t batch) {
  std::vector<iso::thread_id> ids(batch);
  for (long r = 0; r < rounds; ++r) {
    for (iso::thread_id& t : ids) t = iso::spawn([] {});
    for (iso::thread_id t : ids) iso::join(t);
  }
}

TEST(Lifecycle, WarmSpawnAndJoinTouchNoNewPage) {
  // 2000 at once: more default stacks than the pool kept before it was bounded by count (1024),
  // and more heaps than fit the region's cache of committed chunks beside them.
  constexpr std::size_t batch = 2000;
  long one_at_a_time = -1, batched = -1;
  iso::spawn([&] {
    spawn_and_join(2, batch);  // warm-up: the pools and the thread table reach their size
    spawn_and_join(2000, 1);
    // The kernel may fault in a page of ours at any time for its own reasons (compaction moving
    // a page, a first message taking a new path in MPI's progress): a stray fault does not
    // repeat, a thread's memory touching a new page faults every time, so the best of three
    // 20000-pair runs must see none.
    for (int attempt = 0; attempt < 3 && one_at_a_time != 0; ++attempt) {
      const long before = minor_faults();
      spawn_and_join(20000, 1);
      const long faults = minor_faults() - before;
      if (one_at_a_time < 0 || faults < one_at_a_time) one_at_a_time = faults;
    }
    for (int attempt = 0; attempt < 3 && batched != 0; ++attempt) {
      const long before = minor_faults();
      spawn_and_join(5, batch);
      const long faults = minor_faults() - before;
      if (batched < 0 || faults < batched) batched = faults;
    }
  });
  rt->run();
  EXPECT_EQ(one_at_a_time, 0) << "page faults over 20000 spawn/join pairs on rank " << rt->rank()
                               << " (fewest of three runs)";
  // Nor in batches, whose children end before their joins: their records at the home take no
  // node of the system allocator (before the threads' own memory was recycled: 2.5 faults a thread).
  EXPECT_EQ(batched, 0) << "page faults over 5 rounds of " << batch << " spawns then joins on rank " << rt->rank()
                        << " (fewest of three runs)";
}

// Many threads that end before anyone joins them, at their home and on another rank (whose end
// reaches the home as a control message): the home keeps a record of each (a table that grows,
// shifts keys back at erasures and shrinks), so that each is joined once, from its home or from
// another rank (a join request answered by the home), a second join is refused, and no record
// stays behind.
TEST(Lifecycle, ThreadsThatEndUnjoinedAreJoinedOnceEachFromAnyRank) {
  constexpr int children = 1000;  // half end at home, half on the next rank
  const iso::detail::directory& d = iso::detail::engine::current()->locations();
  const std::size_t before = d.unjoined_finished();
  iso::spawn([&d, before] {
    const int next = (iso::rank() + 1) % iso::size();
    std::vector<iso::thread_id> ids;
    for (int i = 0; i < children; ++i) {
      ids.push_back(i % 2 == 0 ? iso::spawn([] {}) : iso::spawn([next] { iso::this_thread::migrate_to(next); }));
    }
    while (d.unjoined_finished() < before + children) iso::this_thread::sleep_for(std::chrono::milliseconds(1));
    const auto join_once = [](iso::thread_id t) {
      iso::join(t);
      try {
        iso::join(t);
        check(false, "a second join of a finished thread must throw");
      } catch (const iso::error& e) {
        check_eq(e.code_value(), iso::errc::already_joined, e.what());
      }
    };
    // Every other one from a thread on the next rank, the rest from here.
    const iso::thread_id away = iso::spawn([&ids, next, join_once] {
      std::vector<iso::thread_id> mine;  // in its own heap, which travels with it
      for (std::size_t i = 0; i < ids.size(); i += 2) mine.push_back(ids[i]);
      iso::this_thread::migrate_to(next);
      for (const iso::thread_id t : mine) join_once(t);
    });
    for (std::size_t i = 1; i < ids.size(); i += 2) join_once(ids[i]);
    iso::join(away);
    check_eq(d.unjoined_finished(), before, "records left after every join");
  });
  rt->run();
}

TEST(Lifecycle, PooledStacksBeyondTheHotOnesGiveTheirPagesBackWhenIdle) {
  // 4096 threads at once, each touching 64 KiB of its stack: 256 MiB resident while they live.
  // Their stacks stay pooled, but once the rank idles (run()'s termination rounds) all but the
  // 1024 most recent keep only their top 16 KiB: about 64 + 48 MiB, instead of 256.
  constexpr std::size_t threads = 4096, touched = std::size_t{64} << 10;
  const std::size_t before = iso::detail::prim::resident_bytes();
  iso::spawn([] {
    std::vector<iso::thread_id> ids(threads);
    for (iso::thread_id& t : ids) {
      t = iso::spawn(
          [] {
            volatile char frame[touched];
            for (std::size_t i = 0; i < touched; i += 4096) frame[i] = 1;
            iso::this_thread::yield();  // all alive at once
            EXPECT_EQ(frame[0], 1);
          },
          {.stack_bytes = 128 << 10});
    }
    for (iso::thread_id t : ids) iso::join(t);
  });
  rt->run();
  const std::size_t after = iso::detail::prim::resident_bytes();
  EXPECT_LT(after, before + (std::size_t{160} << 20))
      << "resident grew by " << ((after - before) >> 20) << " MiB on rank " << rt->rank();
}

TEST(Lifecycle, RecycledHeapIsANewHeap) {
  using iso::detail::heap;
  void* block = nullptr;
  heap* first_heap = nullptr;
  std::uint64_t first_id = 0;
  iso::thread_id first_thread, second_thread;
  heap* second_heap = nullptr;
  std::uint64_t second_id = 0;
  bool stale_owner_found = true;
  iso::spawn([&] {
    first_thread = iso::spawn([&] {
      block = ::operator new(64);  // left allocated: the heap ends with it
      first_heap = heap::owner_of(block);
      first_id = first_heap->id();
    });
    iso::join(first_thread);
    second_thread = iso::spawn([&] {
      second_heap = heap::owner_of(block);  // the chunk's header now names the new heap
      second_id = second_heap != nullptr ? second_heap->id() : 0;
      stale_owner_found = heap::owner_with_id(block, first_id) != nullptr;
    });
    iso::join(second_thread);
  });
  rt->run();
  ASSERT_NE(first_heap, nullptr);
  // The most recently freed heap chunk is reused first: the second thread's heap is where the
  // first's was (else this test would check nothing).
  ASSERT_EQ(second_heap, first_heap);
  EXPECT_NE(second_id, first_id);
  EXPECT_NE(second_id, 0u);
  EXPECT_FALSE(stale_owner_found) << "a pointer recorded with the old heap's identity must not find the new heap";
  EXPECT_NE(second_thread, first_thread);
}

// fib(n) with a thread per call (spawn fib(n-1), compute fib(n-2) here, join, or the same with
// iso::async / get), noting the most threads alive on this rank at any leaf.
std::size_t g_peak_live = 0;

void note_live() {
  g_peak_live = std::max(g_peak_live, iso::detail::scheduler::current()->live_threads());
}

long fib_join(int n) {
  if (n < 2) {
    note_live();
    return n;
  }
  long a = 0;
  const iso::thread_id t = iso::spawn([&a, n] { a = fib_join(n - 1); }, {.stack_bytes = iso::min_stack_bytes});
  const long b = fib_join(n - 2);
  iso::join(t);
  return a + b;
}

long fib_future(int n) {
  if (n < 2) {
    note_live();
    return n;
  }
  iso::future<long> a = iso::async([n] { return fib_future(n - 1); }, {.stack_bytes = iso::min_stack_bytes});
  const long b = fib_future(n - 2);
  return a.get() + b;
}

TEST(Lifecycle, ForkJoinRunsDepthFirst) {
  // fib(20) spawns 10,945 threads. Breadth-first (FIFO) about 6,700 of them are alive at once; the
  // user guide's bound for depth D = 20 with at most S = 10 children pending per thread (the
  // fib(n-2) chain a thread computes itself) is D * (S + 1) = 220, and the root's thread.
  constexpr int n = 20;
  constexpr std::size_t bound = 20 * (10 + 1) + 1;
  for (const bool futures : {false, true}) {
    g_peak_live = 0;
    long value = 0;
    iso::spawn([&] { value = futures ? fib_future(n) : fib_join(n); });
    rt->run();
    EXPECT_EQ(value, 6765);
    EXPECT_LE(g_peak_live, bound) << (futures ? "async/get" : "spawn/join") << " on rank " << rt->rank();
    EXPECT_GT(g_peak_live, static_cast<std::size_t>(n / 2)) << "the leaves saw too few threads to check anything";
  }
}

}  // namespace
