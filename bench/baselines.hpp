// Raw baselines that more than one benchmark binary measures against.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdlib>

namespace iso_bench {

// malloc(n) + free, n = state.range(0), from outside any migratable thread: glibc, through the
// interposer's one-branch dispatch.
inline void glibc_malloc_free(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(n);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}

}  // namespace iso_bench
