// Migratable-thread micro-benchmarks, each beside its baseline ("raw:" + the same name;
// bench_main.cpp prints the ratios). All run on one process with a bare scheduler (no MPI).
//
//   yield_round_trip       thread A yields, thread B runs and yields, A runs again: one round trip
//                          = A->B->A, 2 direct context switches plus the scheduler's bookkeeping
//                          (ready queue, heap switch, load/trace/poll checks); every 32nd yield
//                          goes through the scheduler instead (2 switches and a progress poll).
//     raw:                 the baseline, "two bare boost::context::fiber resumes": two
//                          fiber::resume() calls from main, each into a fiber that at once resumes
//                          main back (main->B->main->B->main, 4 switches). What a yield round trip
//                          costs through a scheduler (A->S->B->S->A) that does nothing.
//   yield_round_trip_per_switch   the same round trip, against the bare switches it makes:
//     raw:                 one bare resume and back (main->B->main, 2 switches). The ratio is
//                          a yield's cost over a bare switch's.
//   boost_fiber_yield_round_trip   (no ratio; for scale) the same ping-pong with two Boost.Fiber
//                          fibers (main and one other) calling boost::this_fiber::yield().
//   spawn_join             from a migratable thread: iso::spawn of an empty body, then iso::join
//                          (heap + control block + pooled stack, 4 switches, teardown).
//     raw:                 Boost.Fiber from main: `boost::fibers::fiber f([]{}); f.join();`
//                          (default stack allocator, round-robin scheduler).
//   thread_malloc_free/N   malloc(N) + free inside a migratable thread (its own heap)
//     raw:                 the same calls outside any thread (glibc, through the interposer's
//                          one-branch dispatch). `glibc_direct_malloc_free/N` (no ratio) calls
//                          __libc_malloc/__libc_free directly, to show what the dispatch costs.
//   resident/100000        100,000 threads each run, yield once, then wait on an
//                          iso::condition_variable. Counter resident_bytes_per_thread = (VmHWM
//                          during the run - VmRSS before) / count, with VmHWM reset just before
//                          (/proc/self/clear_refs) and glibc's free memory trimmed. Time = wall
//                          time from the first spawn until every thread is parked, per thread.
//     raw:                 the same with Boost.Fiber fibers (default 128 KiB malloc'ed stacks,
//                          boost::fibers::mutex / condition_variable).
//   The resident bytes are also printed at exit as
//     ratio  resident_bytes_per_thread/100000   <B> B  raw <B> B  = <x>
//   (same columns as the time ratios, unit B instead of ns).
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <boost/context/fiber.hpp>
#include <boost/fiber/all.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "baselines.hpp"
#include "isothreads/isothreads.hpp"
#include "prim.hpp"
#include "ratio.hpp"
#include "scheduler.hpp"

extern "C" {
void* __libc_malloc(std::size_t);
void __libc_free(void*);
}

namespace {

using iso::detail::scheduler;
namespace ctx = boost::context;

// ---------------------------------------------------------------- yield round trip

void yield_round_trip(benchmark::State& state) {
  scheduler s(0);
  bool done = false;
  // A: the benchmark loop; one iteration = A yields, B runs and yields, A runs again.
  iso::spawn([&state, &done] {
    for (auto _ : state) iso::this_thread::yield();
    done = true;
  });
  // B: yields straight back until A is done.
  iso::spawn([&done] {
    while (!done) iso::this_thread::yield();
  });
  s.run();
  state.SetItemsProcessed(state.iterations());
}

// `resumes` bare resumes of a fiber that at once resumes main back (2 switches each) per iteration.
template <int resumes>
void raw_fiber_resumes(benchmark::State& state) {
  bool done = false;
  ctx::fiber b([&done](ctx::fiber&& main) {
    while (!done) main = std::move(main).resume();
    return std::move(main);
  });
  b = std::move(b).resume();  // B starts and comes back (not timed)
  for (auto _ : state) {
    for (int i = 0; i < resumes; ++i) b = std::move(b).resume();  // main -> B -> main
  }
  done = true;
  b = std::move(b).resume();  // B returns; b is empty
  state.SetItemsProcessed(state.iterations());
}

// Context for the figures above (no baseline): Boost.Fiber's own yield, round trip main -> F -> main.
void boost_fiber_yield_round_trip(benchmark::State& state) {
  bool done = false;
  boost::fibers::fiber f([&done] {
    while (!done) boost::this_fiber::yield();
  });
  boost::this_fiber::yield();  // f starts (not timed)
  for (auto _ : state) boost::this_fiber::yield();
  done = true;
  f.join();
  state.SetItemsProcessed(state.iterations());
}

// ---------------------------------------------------------------- spawn + join

void spawn_join(benchmark::State& state) {
  scheduler s(0);
  iso::spawn([&state] {
    for (auto _ : state) {
      const iso::thread_id t = iso::spawn([] {});
      iso::join(t);
    }
  });
  s.run();
  state.SetItemsProcessed(state.iterations());
}

void raw_spawn_join(benchmark::State& state) {
  for (auto _ : state) {
    boost::fibers::fiber f([] {});
    f.join();
  }
  state.SetItemsProcessed(state.iterations());
}

// ---------------------------------------------------------------- malloc + free

void thread_malloc_free(benchmark::State& state) {
  scheduler s(0);
  const auto n = static_cast<std::size_t>(state.range(0));
  iso::spawn([&state, n] {
    for (auto _ : state) {
      void* p = std::malloc(n);
      benchmark::DoNotOptimize(p);
      std::free(p);
    }
  });
  s.run();
}

void glibc_direct_malloc_free(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = __libc_malloc(n);
    benchmark::DoNotOptimize(p);
    __libc_free(p);
  }
}

// ---------------------------------------------------------------- resident bytes per thread

struct resident_figures {
  double ours = 0;
  double raw = 0;
  long count = 0;
  ~resident_figures() {
    if (ours <= 0 || raw <= 0) return;
    char name[64];
    std::snprintf(name, sizeof name, "resident_bytes_per_thread/%ld", count);
    iso_bench::print_ratio(name, ours, raw, "B");
  }
} g_resident;

// Returns freed glibc memory to the kernel and resets VmHWM to the current RSS; returns it.
std::size_t reset_peak() {
  ::malloc_trim(0);
  std::ofstream("/proc/self/clear_refs") << "5";
  return iso::detail::prim::resident_bytes();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void resident(benchmark::State& state) {
  const long count = state.range(0);
  for (auto _ : state) {
    scheduler s(0);
    iso::spawn([] {});  // warm the pools and the thread table
    s.run();
    iso::mutex m;
    iso::condition_variable cv;
    long started = 0;
    bool release = false;
    double parked_s = 0;
    const std::size_t before = reset_peak();
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < count; ++i) {
      iso::spawn([&] {
        iso::this_thread::yield();
        m.lock();
        ++started;
        cv.wait(m, [&] { return release; });
        m.unlock();
      });
    }
    iso::spawn([&] {  // spawned last: runs once every other thread has had its first turn
      while (started < count) iso::this_thread::yield();
      parked_s = seconds_since(t0);
      m.lock();
      release = true;
      cv.notify_all();
      m.unlock();
    });
    s.run();
    const std::size_t peak = iso::detail::prim::peak_resident_bytes();
    const double per_thread = static_cast<double>(peak - before) / static_cast<double>(count);
    state.SetIterationTime(parked_s / static_cast<double>(count));
    state.counters["resident_bytes_per_thread"] = per_thread;
    g_resident.ours = per_thread;
    g_resident.count = count;
  }
}

void raw_resident(benchmark::State& state) {
  const long count = state.range(0);
  for (auto _ : state) {
    {  // warm Boost.Fiber's per-OS-thread scheduler
      boost::fibers::fiber f([] {});
      f.join();
    }
    boost::fibers::mutex m;
    boost::fibers::condition_variable cv;
    long started = 0, finished = 0;
    bool release = false;
    const std::size_t before = reset_peak();
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < count; ++i) {
      boost::fibers::fiber([&] {
        boost::this_fiber::yield();
        std::unique_lock<boost::fibers::mutex> lock(m);
        ++started;
        cv.wait(lock, [&] { return release; });
        ++finished;
      }).detach();
    }
    while (started < count) boost::this_fiber::yield();
    const double parked_s = seconds_since(t0);
    {
      std::unique_lock<boost::fibers::mutex> lock(m);
      release = true;
    }
    cv.notify_all();
    while (finished < count) boost::this_fiber::yield();
    boost::this_fiber::yield();  // let the last ones terminate
    const std::size_t peak = iso::detail::prim::peak_resident_bytes();
    const double per_thread = static_cast<double>(peak - before) / static_cast<double>(count);
    state.SetIterationTime(parked_s / static_cast<double>(count));
    state.counters["resident_bytes_per_thread"] = per_thread;
    g_resident.raw = per_thread;
  }
}

constexpr long resident_count = 100'000;

// The resident pair first, while the process's memory is still small.
BENCHMARK(raw_resident)->Name("raw:resident")->Arg(resident_count)->Iterations(1)->UseManualTime()->Unit(benchmark::kNanosecond);
BENCHMARK(resident)->Name("resident")->Arg(resident_count)->Iterations(1)->UseManualTime()->Unit(benchmark::kNanosecond);
BENCHMARK(yield_round_trip)->Name("yield_round_trip");
BENCHMARK(raw_fiber_resumes<2>)->Name("raw:yield_round_trip");
BENCHMARK(yield_round_trip)->Name("yield_round_trip_per_switch");
BENCHMARK(raw_fiber_resumes<1>)->Name("raw:yield_round_trip_per_switch");
BENCHMARK(boost_fiber_yield_round_trip)->Name("boost_fiber_yield_round_trip");
BENCHMARK(spawn_join)->Name("spawn_join");
BENCHMARK(raw_spawn_join)->Name("raw:spawn_join");
BENCHMARK(thread_malloc_free)->Name("thread_malloc_free")->Arg(16)->Arg(64)->Arg(256)->Arg(4096);
BENCHMARK(iso_bench::glibc_malloc_free)->Name("raw:thread_malloc_free")->Arg(16)->Arg(64)->Arg(256)->Arg(4096);
BENCHMARK(glibc_direct_malloc_free)->Name("glibc_direct_malloc_free")->Arg(16)->Arg(64)->Arg(256)->Arg(4096);

}  // namespace
