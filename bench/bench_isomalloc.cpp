// isomalloc micro-benchmarks, each beside its baseline ("raw:" + the same name; bench_main.cpp
// prints the ratios):
//   heap_malloc_free/N     the per-thread heap's alloc + free of N bytes   vs glibc malloc + free
//   heap_batch_1000x64     1000 allocations of 64 B, then 1000 frees        vs glibc
//   cross_thread_free_1000x64  free() of 1000 heap blocks of 64 B by another OS thread (each one
//                          an entry in that thread's ring), plus the heap thread's collect of
//                          them; the CPU time of just those, both threads' (counters free_ns and
//                          collect_ns: each side's ns a block)  vs free() of the same 1000 blocks
//                          on the heap thread (raw:). Allocation is outside the timed part.
//   cross_thread_free_1000x64_caller  the same run, timing only what the freeing OS thread pays
//                          (the free() calls it makes)  vs the same local free()
//   heap_life              a thread's heap, once its chunk is pooled: heap::create(warm chunk, 304
//                          reserved bytes) + a 64-byte write to the reserved bytes (a control block's
//                          first line) + retire(), one at a time  vs glibc malloc(304) + the same
//                          write + free
//   heap_life_batch/10000  10,000 such heaps created (each in its own warm chunk), then all retired,
//                          as a batch of spawns does; thread CPU time per heap, after one untimed
//                          batch  vs the same 64-byte write and a read of it back in each of the same
//                          10,000 chunks: the cold line that a control block in its own chunk costs
//                          anyway, the floor of the heap's part
//   iso_malloc_free/N      the C block interface, N = 64 KiB and 1 MiB     vs mmap + munmap
//   iso_pack_unpack/N      iso_pack, iso_detach, iso_unpack of an N-byte block (the image moves
//                          out and back on one rank)                        vs two memcpys of N bytes
// Everything runs outside a migratable thread, so malloc here is glibc's.
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <atomic>
#include <ctime>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "heap.hpp"
#include "baselines.hpp"
#include "isothreads/isomalloc.h"
#include "region.hpp"

namespace {

using iso::detail::heap;
using iso::detail::region;

heap* bench_heap() {
  static heap* const h = [] {
    region::get().init_single_rank();
    return heap::create();
  }();
  return h;
}

void heap_malloc_free(benchmark::State& state) {
  heap* h = bench_heap();
  const auto n = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = h->alloc(n);
    benchmark::DoNotOptimize(p);
    h->free(p);
  }
}

constexpr int batch = 1000;

void heap_batch(benchmark::State& state) {
  heap* h = bench_heap();
  void* blocks[batch];
  for (auto _ : state) {
    for (void*& p : blocks) p = h->alloc(64);
    benchmark::DoNotOptimize(blocks);
    for (void* p : blocks) h->free(p);
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

void glibc_batch(benchmark::State& state) {
  void* blocks[batch];
  for (auto _ : state) {
    for (void*& p : blocks) p = std::malloc(64);
    benchmark::DoNotOptimize(blocks);
    for (void* p : blocks) std::free(p);
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

// The calling OS thread's CPU time, in seconds: the parts timed here are short and the machine is
// shared, so time a thread spends descheduled must not count as the cost of a free.
double thread_seconds() {
  timespec ts{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) std::abort();
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// The raw side: the heap thread frees its own blocks through the interposer's free().
void local_free(benchmark::State& state) {
  heap* h = bench_heap();
  void* blocks[batch];
  for (auto _ : state) {
    for (void*& p : blocks) p = h->alloc(64);
    const double t0 = thread_seconds();
    for (void* p : blocks) std::free(p);
    state.SetIterationTime(thread_seconds() - t0);
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

// Another OS thread frees them (spinning on `turn` between batches; both sides run on their own
// core), then the heap thread collects them into their pages. Timed: both sides, or (caller_only)
// the freeing thread's frees alone.
template <bool caller_only>
void cross_thread_free(benchmark::State& state) {
  heap* h = bench_heap();
  void* blocks[batch];
  std::atomic<int> turn{0};  // 0: heap thread's, 1: the freeing thread's, 2: stop
  double freeing_seconds = 0, freeing_total = 0, collecting_total = 0;
  std::thread other([&] {
    for (;;) {
      int t;
      while ((t = turn.load(std::memory_order_acquire)) == 0) {
      }
      if (t == 2) return;
      const double t0 = thread_seconds();
      for (void* p : blocks) std::free(p);
      freeing_seconds = thread_seconds() - t0;
      turn.store(0, std::memory_order_release);
    }
  });
  for (auto _ : state) {
    for (void*& p : blocks) p = h->alloc(64);
    turn.store(1, std::memory_order_release);
    while (turn.load(std::memory_order_acquire) != 0) {
    }
    const double t0 = thread_seconds();
    h->collect();
    const double collecting = thread_seconds() - t0;
    state.SetIterationTime(caller_only ? freeing_seconds : freeing_seconds + collecting);
    freeing_total += freeing_seconds;
    collecting_total += collecting;
  }
  turn.store(2, std::memory_order_release);
  other.join();
  state.SetItemsProcessed(state.iterations() * batch);
  // The two sides apart, in ns a block: what the freeing OS thread pays, and the heap thread.
  const double blocks_freed = static_cast<double>(state.iterations()) * batch;
  state.counters["free_ns"] = freeing_total * 1e9 / blocks_freed;
  state.counters["collect_ns"] = collecting_total * 1e9 / blocks_freed;
}

// ---- a thread's heap: create + retire -----------------------------------------------------------

constexpr std::size_t tcb_bytes = 304;  // sizeof(iso::detail::tcb), what a spawn reserves

// What a spawn writes first in its control block: one line.
void write_line(void* p) { std::memset(p, 0x5a, 64); }

void heap_life(benchmark::State& state) {
  bench_heap();  // the region
  void* warm = heap::create()->retire();
  for (auto _ : state) {
    heap* h = heap::create(warm, tcb_bytes);
    write_line(h->reserved());
    benchmark::ClobberMemory();
    warm = h->retire();
  }
  region::get().free_chunks(warm, 1);
}

void glibc_life(benchmark::State& state) {
  for (auto _ : state) {
    void* p = std::malloc(tcb_bytes);
    write_line(p);
    benchmark::ClobberMemory();
    std::free(p);
  }
}

constexpr std::size_t life_batch = 10'000;

void heap_life_batch(benchmark::State& state) {
  bench_heap();
  std::vector<void*> warm(life_batch);
  std::vector<heap*> heaps(life_batch);
  for (void*& c : warm) c = heap::create()->retire();
  const auto batch = [&] {
    for (std::size_t i = 0; i < life_batch; ++i) {
      heaps[i] = heap::create(warm[i], tcb_bytes);
      write_line(heaps[i]->reserved());
    }
    benchmark::ClobberMemory();
    for (std::size_t i = 0; i < life_batch; ++i) warm[i] = heaps[i]->retire();
  };
  batch();
  for (auto _ : state) {
    const double t0 = thread_seconds();
    batch();
    state.SetIterationTime((thread_seconds() - t0) / life_batch);
  }
  for (void* c : warm) region::get().free_chunks(c, 1);
}

void line_batch(benchmark::State& state) {
  bench_heap();
  std::vector<char*> lines(life_batch);
  for (char*& l : lines) l = static_cast<char*>(region::get().alloc_chunks(1)) + 1216;
  std::uint64_t sum = 0;
  const auto batch = [&] {
    for (char* l : lines) write_line(l);
    benchmark::ClobberMemory();
    for (char* l : lines) sum += *reinterpret_cast<const std::uint64_t*>(l);
  };
  batch();
  for (auto _ : state) {
    const double t0 = thread_seconds();
    batch();
    state.SetIterationTime((thread_seconds() - t0) / life_batch);
  }
  benchmark::DoNotOptimize(sum);
  for (char* l : lines) region::get().free_chunks(l - 1216, 1);
}

void iso_malloc_free(benchmark::State& state) {
  bench_heap();  // the region
  const auto n = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = iso_malloc(n);
    benchmark::DoNotOptimize(p);
    iso_free(p);
  }
}

void mmap_munmap(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    benchmark::DoNotOptimize(p);
    ::munmap(p, n);
  }
}

void iso_pack_unpack(benchmark::State& state) {
  bench_heap();
  const auto n = static_cast<std::size_t>(state.range(0));
  void* block = iso_malloc(n);
  std::memset(block, 0x3C, n);
  std::vector<unsigned char> image(iso_pack_size(block));
  for (auto _ : state) {
    const std::size_t bytes = iso_pack(block, image.data(), image.size());
    iso_detach(block);
    void* back = iso_unpack(image.data(), bytes);
    if (back != block) state.SkipWithError(iso_last_error());
  }
  iso_free(block);
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}

void two_memcpys(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<unsigned char> src(n, 0x3C), mid(n), dst(n);
  for (auto _ : state) {
    std::memcpy(mid.data(), src.data(), n);
    benchmark::DoNotOptimize(mid.data());
    std::memcpy(dst.data(), mid.data(), n);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}

BENCHMARK(heap_malloc_free)->Name("heap_malloc_free")->Arg(16)->Arg(64)->Arg(256)->Arg(1024)->Arg(8192);
BENCHMARK(iso_bench::glibc_malloc_free)->Name("raw:heap_malloc_free")->Arg(16)->Arg(64)->Arg(256)->Arg(1024)->Arg(8192);
BENCHMARK(heap_batch)->Name("heap_batch_1000x64");
BENCHMARK(glibc_batch)->Name("raw:heap_batch_1000x64");
BENCHMARK(cross_thread_free<false>)->Name("cross_thread_free_1000x64")->UseManualTime();
BENCHMARK(local_free)->Name("raw:cross_thread_free_1000x64")->UseManualTime();
BENCHMARK(cross_thread_free<true>)->Name("cross_thread_free_1000x64_caller")->UseManualTime();
BENCHMARK(local_free)->Name("raw:cross_thread_free_1000x64_caller")->UseManualTime();
BENCHMARK(heap_life)->Name("heap_life");
BENCHMARK(glibc_life)->Name("raw:heap_life");
BENCHMARK(heap_life_batch)->Name("heap_life_batch/10000")->Iterations(40)->UseManualTime()->Unit(benchmark::kNanosecond);
BENCHMARK(line_batch)->Name("raw:heap_life_batch/10000")->Iterations(40)->UseManualTime()->Unit(benchmark::kNanosecond);
BENCHMARK(iso_malloc_free)->Name("iso_malloc_free")->Arg(64 << 10)->Arg(1 << 20);
BENCHMARK(mmap_munmap)->Name("raw:iso_malloc_free")->Arg(64 << 10)->Arg(1 << 20);
BENCHMARK(iso_pack_unpack)->Name("iso_pack_unpack")->Arg(1 << 20)->Arg(16 << 20);
BENCHMARK(two_memcpys)->Name("raw:iso_pack_unpack")->Arg(1 << 20)->Arg(16 << 20);

}  // namespace
