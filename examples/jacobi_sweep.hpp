// The Jacobi sweep of examples/jacobi2d.cpp, shared with its benchmark (bench/bench_jacobi.cpp).
//
// A tile is bs x bs interior points with a one-point halo on each side, stored row-major in
// (bs + 2)^2 doubles. One sweep sets every interior point of `next` to the mean of its four
// neighbours in `u`, adding them in the order up, down, left, right (so every kernel that keeps
// that order gives the same bits).
//
// Written so that the compiler vectorises it at -O2 too: each row is a loop over row pointers
// declared __restrict (no aliasing, no run-time overlap checks), split into blocks of `lanes`
// points whose inner loop has a constant trip count (GCC's default cost model at -O2 vectorises
// only loops whose vector code replaces the scalar loop entirely), and the residual, a sum the
// compiler may not reorder, is kept as `lanes` separate partial sums, one per position in a block.
#pragma once

#include <cstddef>

namespace jacobi {

inline constexpr int lanes = 8;  // points per block of a row: a multiple of every SIMD width for doubles

// out[j] = (up[j] + dn[j] + mid[j - 1] + mid[j + 1]) / 4 for j in [first, last); with Residual, adds
// (out[j] - mid[j])^2 to partial[(j - first) % lanes] (to partial[0] past the last whole block).
template <bool Residual>
inline void sweep_row(const double* __restrict up, const double* __restrict mid, const double* __restrict dn,
                      double* __restrict out, int first, int last, double* __restrict partial) {
  double acc[lanes];  // partial, kept local: the compiler need not assume the stores to out change it
  for (int k = 0; k < lanes; ++k) acc[k] = partial[k];
  int j = first;
  for (; j + lanes <= last; j += lanes) {
    for (int k = 0; k < lanes; ++k) {
      const double v = 0.25 * (up[j + k] + dn[j + k] + mid[j + k - 1] + mid[j + k + 1]);
      out[j + k] = v;
      if constexpr (Residual) acc[k] += (v - mid[j + k]) * (v - mid[j + k]);
    }
  }
  for (; j < last; ++j) {  // the last (last - first) % lanes points, into the first partial sum
    const double v = 0.25 * (up[j] + dn[j] + mid[j - 1] + mid[j + 1]);
    out[j] = v;
    if constexpr (Residual) acc[0] += (v - mid[j]) * (v - mid[j]);
  }
  for (int k = 0; k < lanes; ++k) partial[k] = acc[k];
}

// One sweep of the tile u into next (both (bs + 2)^2 doubles; they do not overlap). With Residual,
// returns the sum over the interior of (next - u)^2, added in a fixed order (the same bits
// wherever the tile is); 0 otherwise.
template <bool Residual>
inline double sweep(const double* u, double* next, int bs) {
  const std::size_t w = static_cast<std::size_t>(bs) + 2;
  double partial[lanes] = {};
  for (std::size_t i = 1; i <= static_cast<std::size_t>(bs); ++i) {
    sweep_row<Residual>(u + (i - 1) * w, u + i * w, u + (i + 1) * w, next + i * w, 1, bs + 1, partial);
  }
  double r = 0;
  for (double p : partial) r += p;
  return r;
}

}  // namespace jacobi
