// Shared main for the micro-benchmarks: runs them with the console reporter, then prints one line
// per (figure, baseline) pair measured in this same run:
//   ratio  <name>  <ns per iteration>  raw <ns per iteration>  = <figure / baseline>
// A baseline is the benchmark registered under the same name with the prefix "raw:".
#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <string>

#include "ratio.hpp"

#ifdef ISO_BENCH_RUNTIME
#include "isothreads/isothreads.hpp"

// With ISO_BENCH_RUNTIME (bench_threads): the benchmarks run their threads under this process's
// iso::runtime, made before anything else (it may re-execute the program with its arguments).
namespace iso_bench {
iso::runtime* rt = nullptr;
}
#endif

namespace {

class ratio_reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      const double ns = r.GetAdjustedRealTime() *
                        (1e9 / benchmark::GetTimeUnitMultiplier(r.time_unit));
      times_[r.benchmark_name()] = ns;
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\n");
    for (const auto& [name, ns] : times_) {
      if (name.rfind("raw:", 0) == 0) continue;
      auto base = times_.find("raw:" + name);
      if (base == times_.end() || base->second <= 0) continue;
      iso_bench::print_ratio(name, ns, base->second, "ns");
    }
    std::fflush(stdout);
  }

 private:
  std::map<std::string, double> times_;
};

}  // namespace

int main(int argc, char** argv) {
#ifdef ISO_BENCH_RUNTIME
  iso::runtime runtime(argc, argv);
  iso_bench::rt = &runtime;
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ratio_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
