// Migratable-thread micro-benchmarks, each beside its baseline ("raw:" + the same name;
// bench_main.cpp prints the ratios). The threads run under this process's iso::runtime, MPI
// progress on, as in any program: run it as `mpirun -n 1 bench/bench_threads`.
//
//   yield_round_trip       thread A yields, thread B runs and yields, A runs again: one round trip
//                          = A->B->A, 2 direct context switches plus the scheduler's bookkeeping
//                          (ready queue, heap switch, load/trace/poll checks); every 32nd to
//                          256th yield (polls that find nothing space them out) goes through the
//                          scheduler instead (2 switches and a progress poll).
//     raw:                 the baseline, "two bare boost::context::fiber resumes": two
//                          fiber::resume() calls from main, each into a fiber that at once resumes
//                          main back (main->B->main->B->main, 4 switches). What a yield round trip
//                          costs through a scheduler (A->S->B->S->A) that does nothing.
//   yield_round_trip_per_switch   the same round trip, against the bare switches it makes, with
//                          load measurement on (a cycle-counter read, 9-25 ns in this VM, at
//                          about one switch in twelve when runs are this short: the rest share
//                          the time between reads by run length):
//     raw:                 one bare resume and back (main->B->main, 2 switches). The ratio is
//                          a yield's cost over a bare switch's.
//   yield_round_trip_per_switch/lb_none   the same with the load-balancing strategy "none", which
//                          turns the load measurement off, MPI progress still on.
//     raw:                 the same bare resume and back.
//   boost_fiber_yield_round_trip   (no ratio; for scale) the same ping-pong with two Boost.Fiber
//                          fibers (main and one other) calling boost::this_fiber::yield().
//   spawn_join             from a migratable thread: iso::spawn of an empty body, then iso::join
//                          (heap + control block + pooled stack, 4 switches, teardown).
//     raw:                 Boost.Fiber from main: `boost::fibers::fiber f([]{}); f.join();`
//                          (default stack allocator, round-robin scheduler).
//   create_join            the same spawn + join, against
//     raw:                 Boost.Context: a fiber created on a pooled 16 KiB stack, resumed once
//                          (it returns at once) and so destroyed, from main.
//   spawn_batch/10000      from a migratable thread: 10,000 spawns of an empty body, then the 10,000
//                          joins; time per thread, after one untimed batch (steady state).
//     raw:                 Boost.Context: 10,000 fibers created on pooled 16 KiB stacks, then each
//                          resumed once (run and destroyed); time per thread, after one untimed
//                          batch.
//   fib_threads/27         fib(27) with a thread per call (spawn fib(n-1), compute fib(n-2) here,
//                          join), 64 KiB stacks; time per thread spawned (317,810 of them).
//     raw:                 the same with Boost.Fiber fibers on pooled 16 KiB stacks (round-robin
//                          scheduler, fiber::join).
//   fib_async/27           the same with iso::async / future::get instead of spawn / join.
//     raw:                 the same Boost.Fiber baseline.
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
#include <vector>

#include "baselines.hpp"
#include "isothreads/isothreads.hpp"
#include "prim.hpp"
#include "ratio.hpp"

extern "C" {
void* __libc_malloc(std::size_t);
void __libc_free(void*);
}

namespace iso_bench {
extern iso::runtime* rt;  // bench_main.cpp
}

namespace {

namespace ctx = boost::context;

// Runs the threads spawned so far to their end (every benchmark below spawns, then calls it).
void run_threads() { iso_bench::rt->run(); }

// 16 KiB stacks for the raw baselines, reused: what Boost.Context and Boost.Fiber cost on a
// pooled stack, with no allocation or system call in the loop. Not thread-safe.
class fiber_stacks {
 public:
  static constexpr std::size_t stack_bytes = std::size_t{16} << 10;
  ~fiber_stacks() {
    for (void* p : free_) std::free(p);
  }
  ctx::stack_context allocate() {
    void* p;
    if (free_.empty()) {
      p = std::aligned_alloc(64, stack_bytes);
      if (p == nullptr) throw std::bad_alloc();
      if (free_.capacity() < ++allocated_) free_.reserve(2 * allocated_);  // deallocate() must not allocate
    } else {
      p = free_.back();
      free_.pop_back();
    }
    ctx::stack_context sc;
    sc.size = stack_bytes;
    sc.sp = static_cast<char*>(p) + stack_bytes;
    return sc;
  }
  void deallocate(ctx::stack_context& sc) noexcept { free_.push_back(static_cast<char*>(sc.sp) - stack_bytes); }

 private:
  std::vector<void*> free_;
  std::size_t allocated_ = 0;  // stacks allocated so far (free_ can hold them all)
};

// The StackAllocator handed to each fiber (they copy it): a handle on a fiber_stacks.
struct pooled_stack {
  fiber_stacks* pool;
  ctx::stack_context allocate() { return pool->allocate(); }
  void deallocate(ctx::stack_context& sc) noexcept { pool->deallocate(sc); }
};

// ---------------------------------------------------------------- yield round trip

void yield_round_trip(benchmark::State& state) {
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
  run_threads();
  state.SetItemsProcessed(state.iterations());
}

// yield_round_trip without load measurement (strategy "none"), then the strategy of the runtime's
// options back.
void yield_round_trip_unmeasured(benchmark::State& state) {
  iso::lb::set_strategy(iso::lb::by_name("none"));
  yield_round_trip(state);
  iso::lb::set_strategy(iso::lb::by_name(iso::runtime_options::from_environment().strategy));
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
  iso::spawn([&state] {
    for (auto _ : state) {
      const iso::thread_id t = iso::spawn([] {});
      iso::join(t);
    }
  });
  run_threads();
  state.SetItemsProcessed(state.iterations());
}

void raw_spawn_join(benchmark::State& state) {
  for (auto _ : state) {
    boost::fibers::fiber f([] {});
    f.join();
  }
  state.SetItemsProcessed(state.iterations());
}

// A fiber that returns at once, on a pooled stack.
ctx::fiber empty_fiber(fiber_stacks& pool) {
  return ctx::fiber(std::allocator_arg, pooled_stack{&pool}, [](ctx::fiber&& main) { return std::move(main); });
}

void raw_create_join(benchmark::State& state) {
  fiber_stacks pool;
  for (auto _ : state) {
    ctx::fiber f = empty_fiber(pool);
    f = std::move(f).resume();  // runs to its end: f is empty, the stack back in the pool
    benchmark::DoNotOptimize(f);
  }
  state.SetItemsProcessed(state.iterations());
}

// ---------------------------------------------------------------- spawn a batch, then join all

constexpr std::size_t batch_threads = 10'000;

// Manual time: each iteration reports its time per thread. Both batches first run one untimed
// batch, so that the figure is the steady state (stacks, heaps and fiber stacks pooled): with a
// fixed count of 20 iterations, the first one's stack allocations, guard installs and page faults
// would otherwise be a fifth of the mean, and depend on what ran before.
void spawn_batch(benchmark::State& state) {
  iso::spawn([&state] {
    std::vector<iso::thread_id> ids(batch_threads);
    const auto batch = [&ids] {
      for (iso::thread_id& t : ids) t = iso::spawn([] {});
      for (iso::thread_id t : ids) iso::join(t);
    };
    batch();
    for (auto _ : state) {
      const auto t0 = std::chrono::steady_clock::now();
      batch();
      state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                             batch_threads);
    }
  });
  run_threads();
}

void raw_spawn_batch(benchmark::State& state) {
  fiber_stacks pool;
  std::vector<ctx::fiber> fibers(batch_threads);
  const auto batch = [&fibers, &pool] {
    for (ctx::fiber& f : fibers) f = empty_fiber(pool);
    for (ctx::fiber& f : fibers) f = std::move(f).resume();
  };
  batch();
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    batch();
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                           batch_threads);
  }
}

// ---------------------------------------------------------------- fork-join: fib with a thread per call

constexpr int fib_n = 27;
// Threads a run spawns: one per call with n >= 2, fib(n + 1) - 1 of them.
constexpr double fib_spawns(int n) {
  long a = 0, b = 1;
  for (int i = 0; i < n + 1; ++i) {
    const long c = a + b;
    a = b;
    b = c;
  }
  return static_cast<double>(a - 1);
}
static_assert(fib_spawns(27) == 317'810);

const iso::spawn_options fib_options{.stack_bytes = iso::min_stack_bytes};

long fib_threads(int n) {
  if (n < 2) return n;
  long a = 0;
  const iso::thread_id t = iso::spawn([&a, n] { a = fib_threads(n - 1); }, fib_options);
  const long b = fib_threads(n - 2);
  iso::join(t);
  return a + b;
}

long fib_async(int n) {
  if (n < 2) return n;
  iso::future<long> a = iso::async([n] { return fib_async(n - 1); }, fib_options);
  const long b = fib_async(n - 2);
  return a.get() + b;
}

long fib_fibers(int n, fiber_stacks& pool) {
  if (n < 2) return n;
  long a = 0;
  boost::fibers::fiber f(std::allocator_arg, pooled_stack{&pool}, [&a, n, &pool] { a = fib_fibers(n - 1, pool); });
  const long b = fib_fibers(n - 2, pool);
  f.join();
  return a + b;
}

constexpr long fib_value = 196'418;  // fib(27)

// Manual time: per thread spawned.
template <long (*fib)(int)>
void fib_per_thread(benchmark::State& state) {
  iso::spawn([&state] {
    for (auto _ : state) {
      const auto t0 = std::chrono::steady_clock::now();
      const long v = fib(fib_n);
      state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                             fib_spawns(fib_n));
      if (v != fib_value) state.SkipWithError("wrong fib(27)");
    }
  });
  run_threads();
}

void raw_fib(benchmark::State& state) {
  fiber_stacks pool;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    const long v = fib_fibers(fib_n, pool);
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                           fib_spawns(fib_n));
    if (v != fib_value) state.SkipWithError("wrong fib(27)");
  }
}

// ---------------------------------------------------------------- malloc + free

void thread_malloc_free(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  iso::spawn([&state, n] {
    for (auto _ : state) {
      void* p = std::malloc(n);
      benchmark::DoNotOptimize(p);
      std::free(p);
    }
  });
  run_threads();
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
    iso::spawn([] {});  // warm the pools and the thread table
    run_threads();
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
    run_threads();
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
BENCHMARK(yield_round_trip_unmeasured)->Name("yield_round_trip_per_switch/lb_none");
BENCHMARK(raw_fiber_resumes<1>)->Name("raw:yield_round_trip_per_switch/lb_none");
BENCHMARK(boost_fiber_yield_round_trip)->Name("boost_fiber_yield_round_trip");
BENCHMARK(spawn_join)->Name("spawn_join");
BENCHMARK(raw_spawn_join)->Name("raw:spawn_join");
BENCHMARK(spawn_join)->Name("create_join");
BENCHMARK(raw_create_join)->Name("raw:create_join");
// Fixed iteration counts: an iteration reports its time per thread, and Google Benchmark would
// otherwise size the runs as if an iteration took that long.
BENCHMARK(spawn_batch)->Name("spawn_batch/10000")->Iterations(20)->UseManualTime()->Unit(benchmark::kNanosecond);
BENCHMARK(raw_spawn_batch)->Name("raw:spawn_batch/10000")->Iterations(20)->UseManualTime()->Unit(benchmark::kNanosecond);
BENCHMARK(fib_per_thread<fib_threads>)->Name("fib_threads/27")->Iterations(3)->UseManualTime()->Unit(benchmark::kNanosecond);
BENCHMARK(raw_fib)->Name("raw:fib_threads/27")->Iterations(3)->UseManualTime()->Unit(benchmark::kNanosecond);
BENCHMARK(fib_per_thread<fib_async>)->Name("fib_async/27")->Iterations(3)->UseManualTime()->Unit(benchmark::kNanosecond);
BENCHMARK(raw_fib)->Name("raw:fib_async/27")->Iterations(3)->UseManualTime()->Unit(benchmark::kNanosecond);
BENCHMARK(thread_malloc_free)->Name("thread_malloc_free")->Arg(16)->Arg(64)->Arg(256)->Arg(4096);
BENCHMARK(iso_bench::glibc_malloc_free)->Name("raw:thread_malloc_free")->Arg(16)->Arg(64)->Arg(256)->Arg(4096);
BENCHMARK(glibc_direct_malloc_free)->Name("glibc_direct_malloc_free")->Arg(16)->Arg(64)->Arg(256)->Arg(4096);

}  // namespace
