// Migratable threads on one process, without MPI: scheduling, blocking primitives, the
// transparent heap, stack overflow, scale, and every error path.
#include <gtest/gtest.h>
#include <malloc.h>
#include <zlib.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "interpose.hpp"
#include "isothreads/isothreads.hpp"
#include "prim.hpp"
#include "region.hpp"
#include "scheduler.hpp"
#include "stack.hpp"

namespace iso {
namespace {

using detail::scheduler;

class Threads : public ::testing::Test {
 protected:
  scheduler sched{0};
};

bool in_region(const void* p) { return iso_in_range(p) == 1; }

// Main's containers that threads append to are reserved in main first: grown inside a thread,
// a vector would move into that thread's heap, which is gone once the thread ends.
TEST_F(Threads, RunInFifoOrderAndInterleaveOnYield) {
  std::vector<int> log;  // 10 * thread + step
  log.reserve(9);
  const int* const storage = log.data();
  for (int i = 0; i < 3; ++i) {
    spawn([i, &log] {
      for (int k = 0; k < 3; ++k) {
        log.push_back(10 * i + k);
        this_thread::yield();
      }
    });
  }
  sched.run();
  EXPECT_EQ(log.data(), storage);  // still main's
  EXPECT_EQ(log, (std::vector<int>{0, 10, 20, 1, 11, 21, 2, 12, 22}));
  EXPECT_EQ(sched.live_threads(), 0u);
}

TEST_F(Threads, IdsAreUniqueStableAndNamed) {
  thread_id seen_a, seen_b;
  spawn_options opts;
  opts.name = "alpha";
  const thread_id a = spawn([&] {
    seen_a = this_thread::id();
    EXPECT_STREQ(this_thread::name(), "alpha");
    this_thread::yield();
    EXPECT_EQ(this_thread::id(), seen_a);
  }, opts);
  const thread_id b = spawn([&] { seen_b = this_thread::id(); });
  sched.run();
  EXPECT_EQ(a, seen_a);
  EXPECT_EQ(b, seen_b);
  EXPECT_NE(a, b);
  EXPECT_EQ(a.home(), 0);
  EXPECT_FALSE(this_thread::id());  // outside any thread
  EXPECT_TRUE(a);
  EXPECT_FALSE(thread_id{});
  EXPECT_EQ(thread_id::from_bits(a.bits()), a);
  EXPECT_NE(std::hash<thread_id>{}(a), std::hash<thread_id>{}(b));
}

TEST_F(Threads, SleepOrdersWakeUpsByDeadline) {
  std::vector<int> order;
  order.reserve(3);
  const int* const storage = order.data();
  for (int ms : {30, 10, 20}) {
    spawn([ms, &order] {
      const auto start = std::chrono::steady_clock::now();
      this_thread::sleep_for(std::chrono::milliseconds(ms));
      EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(ms));
      order.push_back(ms);
    });
  }
  sched.run();
  EXPECT_EQ(order.data(), storage);
  EXPECT_EQ(order, (std::vector<int>{10, 20, 30}));
}

TEST_F(Threads, MutexExcludesAcrossYields) {
  mutex m;
  int inside = 0, max_inside = 0, total = 0;
  for (int i = 0; i < 8; ++i) {
    spawn([&] {
      for (int k = 0; k < 50; ++k) {
        m.lock();
        max_inside = std::max(max_inside, ++inside);
        this_thread::yield();  // others run and try to enter meanwhile
        ++total;
        --inside;
        m.unlock();
      }
    });
  }
  sched.run();
  EXPECT_EQ(max_inside, 1);
  EXPECT_EQ(total, 400);
}

TEST_F(Threads, ConditionVariableHandsOffWork) {
  mutex m;
  condition_variable cv;
  std::vector<int> queue;
  queue.reserve(100);
  const int* const storage = queue.data();
  int consumed = 0;
  bool done = false;
  spawn([&] {
    for (;;) {
      m.lock();
      cv.wait(m, [&] { return !queue.empty() || done; });
      if (queue.empty()) {
        m.unlock();
        return;
      }
      consumed += queue.back();
      queue.pop_back();
      m.unlock();
    }
  });
  spawn([&] {
    for (int i = 1; i <= 100; ++i) {
      m.lock();
      queue.push_back(i);
      cv.notify_one();
      m.unlock();
      if (i % 7 == 0) this_thread::yield();
    }
    m.lock();
    done = true;
    cv.notify_all();
    m.unlock();
  });
  sched.run();
  EXPECT_EQ(queue.data(), storage);
  EXPECT_EQ(consumed, 5050);
}

TEST_F(Threads, JoinWaitsForTheTarget) {
  std::vector<int> order;
  order.reserve(4);
  const int* const storage = order.data();
  spawn([&] {
    const thread_id child = spawn([&] {
      this_thread::sleep_for(std::chrono::milliseconds(5));
      order.push_back(1);
    });
    join(child);
    order.push_back(2);
    const thread_id quick = spawn([&] { order.push_back(3); });
    this_thread::yield();  // quick finishes first: joining it afterwards returns at once
    join(quick);
    order.push_back(4);
  });
  sched.run();
  EXPECT_EQ(order.data(), storage);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
}

// Children spawned before any runs: each that ends switches straight to the next, which never
// ran (its context has no switch to return from), and gives its stack back on the way
// (context.cpp); then the same with every child suspended once, so that each ends into one that
// did run.
TEST_F(Threads, AThreadThatEndsHandsOverToOneThatNeverRanOrDid) {
  constexpr int children = 64;
  for (const bool yield_first : {false, true}) {
    int ran = 0;
    spawn([&] {
      std::vector<thread_id> ids(children);
      for (thread_id& id : ids) {
        id = spawn([&ran, yield_first] {
          if (yield_first) this_thread::yield();
          ++ran;
        });
      }
      for (const thread_id id : ids) join(id);
    });
    sched.run();
    EXPECT_EQ(ran, children);
    EXPECT_EQ(sched.live_threads(), 0u);
  }
  // Every stack came back: a batch as large again takes them all from the pool.
  const std::size_t pooled = detail::stack_pool::get().pooled_bytes();
  spawn([] {
    std::vector<thread_id> ids(children);
    for (thread_id& id : ids) id = spawn([] {});
    for (const thread_id id : ids) join(id);
  });
  sched.run();
  EXPECT_EQ(detail::stack_pool::get().pooled_bytes(), pooled);
}

TEST_F(Threads, HeapCapturesEveryAllocationInsideAThread) {
  bool checked = false;
  spawn([&] {
    std::vector<int> v(1000, 7);
    std::string s(200, 'x');
    std::map<int, std::string> m{{1, "one"}, {2, std::string(100, 'y')}};
    auto u = std::make_unique<double[]>(5000);
    void* c = std::malloc(24);
    void* al = std::aligned_alloc(4096, 8192);
    void* z = std::calloc(100, 8);
    EXPECT_TRUE(in_region(v.data()));
    EXPECT_TRUE(in_region(s.data()));
    EXPECT_TRUE(in_region(&*m.begin()));
    EXPECT_TRUE(in_region(m.at(2).data()));
    EXPECT_TRUE(in_region(u.get()));
    EXPECT_TRUE(in_region(c));
    EXPECT_TRUE(in_region(al));
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(al) % 4096, 0u);
    EXPECT_TRUE(in_region(z));
    EXPECT_EQ(static_cast<char*>(z)[799], 0);
    EXPECT_GE(malloc_usable_size(c), 24u);
    c = std::realloc(c, 100000);
    EXPECT_TRUE(in_region(c));
    std::free(c);
    std::free(al);
    std::free(z);
    checked = true;
  });
  sched.run();
  EXPECT_TRUE(checked);
}

TEST_F(Threads, ZlibStateLivesInTheThreadHeap) {
  std::string input;
  for (int i = 0; i < 2000; ++i) input += "isothreads " + std::to_string(i) + "\n";
  uLong expected_crc = crc32(0, reinterpret_cast<const Bytef*>(input.data()), static_cast<uInt>(input.size()));
  uLong roundtrip_crc = 0;
  spawn([&] {
    z_stream zs{};
    ASSERT_EQ(deflateInit(&zs, 6), Z_OK);
    EXPECT_TRUE(in_region(zs.state));  // zlib's internal state came from this thread's heap
    std::vector<unsigned char> out(deflateBound(&zs, input.size()));
    zs.next_in = reinterpret_cast<Bytef*>(input.data());
    zs.avail_in = static_cast<uInt>(input.size());
    zs.next_out = out.data();
    zs.avail_out = static_cast<uInt>(out.size());
    ASSERT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
    out.resize(zs.total_out);
    deflateEnd(&zs);
    std::vector<unsigned char> back(input.size());
    uLongf back_len = back.size();
    ASSERT_EQ(uncompress(back.data(), &back_len, out.data(), out.size()), Z_OK);
    roundtrip_crc = crc32(0, back.data(), static_cast<uInt>(back_len));
  });
  sched.run();
  EXPECT_EQ(roundtrip_crc, expected_crc);
}

TEST_F(Threads, CapturesAreCopiedIntoTheThreadsHeap) {
  std::vector<int> outside(100, 3);
  EXPECT_FALSE(in_region(outside.data()));
  const int* inside_data = nullptr;
  int sum = 0;
  spawn([v = outside, &inside_data, &sum] {
    inside_data = v.data();
    for (int x : v) sum += x;
  });
  sched.run();
  EXPECT_TRUE(in_region(inside_data));
  EXPECT_EQ(sum, 300);
}

TEST_F(Threads, AllocationsOutsideThreadsStayInTheSystemHeap) {
  auto p = std::make_unique<int[]>(1000);
  void* q = std::malloc(32);
  EXPECT_FALSE(in_region(p.get()));
  EXPECT_FALSE(in_region(q));
  std::free(q);
  void* from_thread = nullptr;
  spawn([&] {
    from_thread = std::malloc(64);
    {
      system_heap_scope system;  // process-wide state allocated from a thread
      void* sys = std::malloc(64);
      EXPECT_FALSE(in_region(sys));
      std::free(sys);
    }
    void* again = std::malloc(64);  // the thread's heap again once the scope ends
    EXPECT_TRUE(in_region(again));
    std::free(again);
  });
  sched.run();
  EXPECT_TRUE(in_region(from_thread));  // leaked on purpose; its heap is gone with the thread
}

TEST_F(Threads, FreeFromAnotherThreadGoesToTheOwningHeap) {
  int* shared = nullptr;
  detail::heap* first_heap = nullptr;
  spawn([&] {
    first_heap = detail::current_heap;
    shared = new int[64]{};
    this_thread::yield();
    this_thread::yield();
  });
  spawn([&] {
    this_thread::yield();
    ASSERT_NE(shared, nullptr);
    ASSERT_NE(first_heap, nullptr);
    EXPECT_EQ(detail::heap::owner_of(shared), first_heap);
    EXPECT_NE(detail::heap::owner_of(shared), detail::current_heap);
    delete[] shared;  // routed to the first thread's heap, which is still alive
  });
  sched.run();
}

TEST_F(Threads, ThreadResourcesAreReturned) {
  spawn([] {});  // warm the stack pool
  sched.run();
  // Chunks held beyond what the thread memory pool keeps for the next spawns.
  const auto held = [] {
    return detail::region::get().stats().allocated_chunks - detail::stack_pool::get().pooled_bytes() / detail::chunk_bytes;
  };
  const std::size_t before = held();
  for (int i = 0; i < 200; ++i) {
    spawn([] {
      std::vector<char> big(1 << 20, 'a');  // a large run of its own
      this_thread::yield();
    });
  }
  sched.run();
  EXPECT_EQ(held(), before);
  EXPECT_LE(detail::stack_pool::get().pooled_bytes(), 200 * (4 + 1) * detail::chunk_bytes);  // a stack and a heap chunk each
  EXPECT_TRUE(detail::region::get().is_valid());
}

TEST_F(Threads, ErrorPathsThrowIsoError) {
  auto code_of = [](auto&& f) {
    try {
      f();
    } catch (const iso::error& e) {
      EXPECT_NE(std::string(e.what()), "");
      return e.code_value();
    }
    return errc::ok;
  };
  EXPECT_EQ(code_of([] { this_thread::yield(); }), errc::not_in_thread);
  EXPECT_EQ(code_of([] { this_thread::sleep_for(std::chrono::milliseconds(1)); }), errc::not_in_thread);
  EXPECT_EQ(code_of([] { join(thread_id(0, 12345)); }), errc::not_in_thread);
  spawn_options tiny;
  tiny.stack_bytes = 4096;
  EXPECT_EQ(code_of([&] { spawn([] {}, tiny); }), errc::stack_size);
  spawn_options huge;
  huge.stack_bytes = std::size_t{4} << 30;
  EXPECT_EQ(code_of([&] { spawn([] {}, huge); }), errc::stack_size);
  errc self_join = errc::ok, unknown = errc::ok, twice = errc::ok, relock = errc::ok, foreign_unlock = errc::ok;
  mutex m;
  spawn([&] {
    self_join = code_of([] { join(this_thread::id()); });
    unknown = code_of([] { join(thread_id(0, 999999)); });
    const thread_id t = spawn([] { this_thread::sleep_for(std::chrono::milliseconds(2)); });
    spawn([&, t] { twice = code_of([t] { join(t); }); });
    join(t);
    m.lock();
    relock = code_of([&] { m.lock(); });
    m.unlock();
    foreign_unlock = code_of([&] { m.unlock(); });
  });
  sched.run();
  EXPECT_EQ(self_join, errc::already_joined);
  EXPECT_EQ(unknown, errc::unknown_thread);
  EXPECT_EQ(twice, errc::already_joined);
  EXPECT_EQ(relock, errc::invalid_argument);
  EXPECT_EQ(foreign_unlock, errc::invalid_argument);
}

TEST_F(Threads, DeadlockIsReported) {
  mutex m;
  condition_variable cv;
  spawn([&] {
    m.lock();
    cv.wait(m);  // nobody will notify
    m.unlock();
  });
  try {
    sched.run();
    FAIL() << "run() must report the deadlock";
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code_value(), errc::deadlock);
    EXPECT_NE(std::string(e.what()).find("1 threads are blocked"), std::string::npos) << e.what();
  }
  cv.notify_all();  // let it finish so that the fixture tears down cleanly
  sched.run();
}

TEST(ThreadsNoRuntime, SpawnWithoutRuntimeThrows) {
  try {
    spawn([] {});
    FAIL();
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code_value(), errc::no_runtime);
    EXPECT_NE(std::string(e.what()).find("no isothreads runtime"), std::string::npos);
  }
}

// Deep enough to overflow any stack a test gives it (about 1 KiB per frame).
int recurse(int depth) {
  volatile char pad[1024];
  pad[0] = static_cast<char>(depth);
  if (depth > (1 << 24)) return pad[0];
  return depth + recurse(depth + 1) + pad[0];
}

TEST(ThreadsDeathTest, StackOverflowIsReportedWithTheThreadAndStack) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        scheduler s(0);
        spawn_options opts;
        opts.name = "deep";
        opts.stack_bytes = 128 << 10;
        spawn([] { recurse(0); }, opts);
        s.run();
      },
      ::testing::ExitedWithCode(1), "thread 0:[0-9]+ 'deep' overflowed its 128 KiB stack on rank 0");
}

TEST(ThreadsDeathTest, AThreadThatEndsHoldingAMutexIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        scheduler s(0);
        iso::mutex m;
        spawn_options opts;
        opts.name = "holder";
        spawn([&m] { m.lock(); }, opts);
        s.run();
      },
      ::testing::ExitedWithCode(1), "thread 0:[0-9]+ 'holder' ended holding 1 iso::mutex lock\\(s\\) on rank 0");
}

TEST(ThreadsScale, HundredThousandThreadsEachRunAndYield) {
  constexpr int count = 100'000;
  scheduler s(0);
  const std::size_t maps_before = detail::prim::mapping_count();
  int started = 0, finished = 0;
  bool released = false;
  for (int i = 0; i < count; ++i) {
    spawn([&] {
      ++started;
      while (!released) this_thread::yield();
      ++finished;
    });
  }
  spawn([&] {
    while (started < count) this_thread::yield();
    // Every thread has run and yielded at least once and is alive now.
    EXPECT_EQ(s.live_threads(), static_cast<std::size_t>(count) + 1);
    if (detail::prim::guard_supported()) {
      EXPECT_LT(detail::prim::mapping_count(), maps_before + 100);  // guards add no mappings
    }
    released = true;
  });
  s.run();
  EXPECT_EQ(finished, count);
}

// A thread that a timer wakes ends the idle stretch the rank was in while it slept: its run is
// not idle time (idle accounting, scheduler.hpp idle_open_). Counted so, the 30 ms of work would
// make almost the whole run idle, and its CPU time idle CPU time.
TEST_F(Threads, AThreadATimerWakesEndsTheIdleStretch) {
  sched.set_measure_load(true);
  spawn([] {
    this_thread::sleep_for(std::chrono::milliseconds(5));
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(30)) {
    }
    this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  const std::uint64_t idle0 = sched.idle_cycles();
  const std::int64_t idle_cpu0 = sched.idle_cpu_ns();
  const std::uint64_t c0 = detail::prim::cycles();
  sched.run();
  const double idle_share =
      static_cast<double>(sched.idle_cycles() - idle0) / static_cast<double>(detail::prim::cycles() - c0);
  const double idle_cpu_ms = static_cast<double>(sched.idle_cpu_ns() - idle_cpu0) * 1e-6;
  EXPECT_LT(idle_share, 0.5) << "about 10 ms of 40 sleep";
  EXPECT_LT(idle_cpu_ms, 10.0) << "idle CPU time (ms): the work's 30 ms is not idle";
  sched.set_measure_load(false);
}

}  // namespace
}  // namespace iso
