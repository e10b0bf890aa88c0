// jacobi2d's sweep (examples/jacobi_sweep.hpp) against a serial reference kernel, in the same run:
//   bench/bench_jacobi
// Each figure is one sweep of a 256 x 256 tile (jacobi2d's default 2048^2 grid in 8 x 8 blocks),
// both arrays in cache as in jacobi2d, where a block sweeps its tile once per iteration (six times
// in the hot band).
//   jacobi_sweep/256           jacobi::sweep<false>: row pointers, blocks of 8 points.
//     raw:                     the reference: one loop nest indexing the tile as a vector through
//                              an accessor (jacobi2d's sweep before it was rewritten).
//   jacobi_sweep_residual/256  jacobi::sweep<true>: the sweep and the sum of squared changes.
//     raw:                     the reference, summing into one accumulator.
// Before timing, each benchmark checks that its kernel gives the reference's grid bit for bit.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "jacobi_sweep.hpp"

namespace {

// A tile with a fixed, irregular content (no constant rows the compiler or the caches could
// favour) and its halo.
std::vector<double> make_tile(int bs) {
  const std::size_t w = static_cast<std::size_t>(bs) + 2;
  std::vector<double> u(w * w);
  for (std::size_t k = 0; k < u.size(); ++k) u[k] = std::sin(static_cast<double>(k) * 0.001);
  return u;
}

// The reference kernel: the textbook loop nest.
double reference_sweep(std::vector<double>& u, std::vector<double>& next, int bs, bool residual) {
  const int w = bs + 2;
  auto at = [w](std::vector<double>& a, int i, int j) -> double& { return a[static_cast<std::size_t>(i * w + j)]; };
  double r = 0;
  for (int i = 1; i <= bs; ++i) {
    for (int j = 1; j <= bs; ++j) {
      at(next, i, j) = 0.25 * (at(u, i - 1, j) + at(u, i + 1, j) + at(u, i, j - 1) + at(u, i, j + 1));
      if (residual) r += (at(next, i, j) - at(u, i, j)) * (at(next, i, j) - at(u, i, j));
    }
  }
  return r;
}

template <bool Residual>
void bm_sweep(benchmark::State& state) {
  const int bs = static_cast<int>(state.range(0));
  std::vector<double> u = make_tile(bs), next(u.size(), 0.0), expect(u.size(), 0.0);
  const double expect_r = reference_sweep(u, expect, bs, Residual);
  const double r = jacobi::sweep<Residual>(u.data(), next.data(), bs);
  // The residual's partial sums add in another order than the reference's single sum: equal to
  // rounding, not bit for bit.
  if (std::memcmp(next.data(), expect.data(), next.size() * sizeof(double)) != 0 ||
      std::abs(r - expect_r) > 1e-12 * std::abs(expect_r)) {
    state.SkipWithError("the sweep differs from the reference kernel");
    return;
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(jacobi::sweep<Residual>(u.data(), next.data(), bs));
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * bs * bs);
}

template <bool Residual>
void bm_reference(benchmark::State& state) {
  const int bs = static_cast<int>(state.range(0));
  std::vector<double> u = make_tile(bs), next(u.size(), 0.0);
  for (auto _ : state) {
    benchmark::DoNotOptimize(reference_sweep(u, next, bs, Residual));
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * bs * bs);
}

BENCHMARK(bm_sweep<false>)->Name("jacobi_sweep")->Arg(256);
BENCHMARK(bm_reference<false>)->Name("raw:jacobi_sweep")->Arg(256);
BENCHMARK(bm_sweep<true>)->Name("jacobi_sweep_residual")->Arg(256);
BENCHMARK(bm_reference<true>)->Name("raw:jacobi_sweep_residual")->Arg(256);

}  // namespace
