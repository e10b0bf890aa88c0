// The one printer of the benchmarks' ratio lines (bench_main.cpp, bench_migration.cpp,
// bench_checkpoint.cpp, bench_threads.cpp):
//   ratio  <name>  <figure> <unit>  raw <baseline> <unit>  = <figure / baseline>
// with the columns at fixed widths. bench/checkpoint.sh, bench/trace_overhead.sh and
// bench/jacobi_lb.sh print the same layout with awk, and scripts read it: keep them in step.
#pragma once

#include <cstdio>
#include <string>

namespace iso_bench {

// Prints one ratio line and flushes stdout. `unit` is "ns" or "B" (padded to two columns).
inline void print_ratio(const std::string& name, double value, double raw, const char* unit) {
  std::printf("ratio  %-40s %12.1f %-2s  raw %12.1f %-2s  = %.2f\n", name.c_str(), value, unit, raw, unit,
              value / raw);
  std::fflush(stdout);
}

}  // namespace iso_bench
