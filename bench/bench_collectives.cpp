// Collectives and futures, each beside a baseline measured in the same run. A plain MPI main
// (as bench_migration.cpp):
//
//   mpirun -n 2 bench/bench_collectives
//
// Rank 0 prints ratio lines (ratio.hpp). Every figure is the median of K runs, each after warm-up.
//   allreduce_8B/64threads     32 threads per rank (group indices 0..31 on rank 0, 32..63 on rank 1)
//                              each call iso::allreduce(g, uint64, iso::sum) `reps` times; figure =
//                              time per allreduce at member 0.
//     raw:                     MPI_Allreduce of one uint64 between the mains of the same ranks.
//   allreduce_8B/32threads_on_rank_0
//                              as above, with the 32 threads of rank 0 alone as the group: what
//                              combining on a rank costs, without the messages between ranks
//                              (the raw figure is the same MPI_Allreduce between the 2 ranks).
//   allreduce_8B/2threads_one_a_rank
//                              as allreduce_8B/64threads with one thread per rank: what the
//                              exchange between the ranks costs (a batch to member 0, the result
//                              back), without combining on a rank.
//   allreduce_8B/64threads_floor
//                              the least allreduce_8B/64threads can cost with this runtime's
//                              thread switch: every one of a rank's 32 members must suspend
//                              and resume once per call, and the ranks must exchange once.
//                              Figure = a round of 32 thread switches (32 threads per rank,
//                              each yielding once a round, timed at one of them over `reps`
//                              rounds: the same threads' state cycled through as the call's
//                              wake-ups do) plus the raw figure, the MPI_Allreduce of 8 bytes
//                              between the mains measured beside it. No combining, no
//                              messages of ours: its ratio bounds allreduce_8B/64threads' from
//                              below for any protocol on this scheduler (a faster switch would
//                              lower it).
//   allreduce_1MiB/16threads   8 threads per rank, element-wise iso::allreduce over a span of
//                              131072 doubles (1 MiB), iso::sum; time per allreduce at member 0.
//     raw:                     MPI_Allreduce of 131072 doubles, MPI_SUM, between the mains.
//   allreduce_1MiB/16threads_floor
//                              no threads and no messages: on every rank at once, main sums 8
//                              warm 1 MiB inputs and copies the sum into 8 warm 1 MiB outputs,
//                              the memory traffic the call cannot avoid (each member's span is
//                              read, each member gets its own vector), with the least of it: one
//                              pass over 4 KiB chunks, each input read once and each output
//                              written once with ordinary stores, as the call's copies are
//                              (non-temporal stores, which skip the read for ownership, were
//                              slower here: 2.5-2.7x against 2.3-2.4x). Its ratio to the raw
//                              figure bounds what allreduce_1MiB/16threads can reach from below
//                              (the exchange between the ranks only adds to it).
//   async_get                  a thread on rank 0: iso::async(body returning an int) then get(),
//                              `reps` times; time per pair.
//     raw:                     the same thread: iso::spawn(body) then iso::join, `reps` times.
// `--only WORD` runs only the lines whose name contains WORD (to profile one: `--only 1MiB`,
// `--only on_rank_0`, `--only async`); a WORD no line's name contains is an error (exit 2).
// `--scale K` (1 <= K <= 10000; either option first) makes every run K times as many calls, so
// that a profile of one line has samples enough (perf record at 4 kHz sees about 100 of a
// default run). Any other argument, an option without its value, or a K that is not a number in
// that range is an error (exit 2).
#include <mpi.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "isothreads/isothreads.hpp"
#include "ratio.hpp"

namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Written by member 0 (which stays on rank 0) or the timing thread, read by rank 0's main.
double g_result_ns = 0;
bool g_failed = false;

// One run: `per_rank` threads on every rank (on rank 0 only if `one_rank`) form one group
// (rank-major indices) and each makes `warm` + `reps` element-wise allreduces of `count` doubles
// (count == 0: one uint64 instead). Returns ns per allreduce at member 0 (on rank 0; 0 elsewhere).
double iso_allreduce_run(iso::runtime& rt, int per_rank, std::size_t count, int warm, int reps, bool one_rank) {
  g_result_ns = 0;
  std::vector<iso::thread_id> mine;
  for (int k = 0; k < (one_rank && rt.rank() != 0 ? 0 : per_rank); ++k) {
    mine.push_back(iso::spawn([count, warm, reps] {
      const iso::message m = iso::recv(iso::thread_id(iso::rank(), 0), 0);
      std::vector<iso::thread_id> ids(m.data.size() / sizeof(iso::thread_id));
      std::memcpy(ids.data(), m.data.data(), m.data.size());
      const iso::group g(ids);
      const int me = g.index_of(iso::this_thread::id());
      std::vector<double> v(count, 1.0);
      const auto once = [&] {
        if (count == 0) {
          if (iso::allreduce(g, std::uint64_t{1}, iso::sum) != g.size()) g_failed = true;
        } else {
          const std::vector<double> r = iso::allreduce(g, std::span<const double>(v), iso::sum);
          if (r.size() != count || r[count - 1] != static_cast<double>(g.size())) g_failed = true;
        }
      };
      for (int i = 0; i < warm; ++i) once();
      const std::int64_t t0 = now_ns();
      for (int i = 0; i < reps; ++i) once();
      if (me == 0) g_result_ns = static_cast<double>(now_ns() - t0) / reps;
    }));
  }
  std::vector<std::uint64_t> bits, all(mine.size() * static_cast<std::size_t>(one_rank ? 1 : rt.size()));
  for (iso::thread_id t : mine) bits.push_back(t.bits());
  if (one_rank) {
    all = bits;
  } else {
    MPI_Allgather(bits.data(), static_cast<int>(bits.size()), MPI_UINT64_T, all.data(), static_cast<int>(bits.size()),
                  MPI_UINT64_T, MPI_COMM_WORLD);
  }
  for (iso::thread_id t : mine) iso::send(t, all.data(), all.size() * sizeof all[0], 0);
  rt.run();
  return g_result_ns;
}

// One run of the 8-byte floor line: `per_rank` threads on every rank each yield `warm` + `reps`
// times; returns ns per round of `per_rank` switches (the first thread's time per yield, every
// other thread running once between two of its yields), on rank 0 (0 elsewhere).
double switch_round_run(iso::runtime& rt, int per_rank, int warm, int reps) {
  g_result_ns = 0;
  for (int k = 0; k < per_rank; ++k) {
    iso::spawn([k, warm, reps] {
      for (int i = 0; i < warm; ++i) iso::this_thread::yield();
      const std::int64_t t0 = now_ns();
      for (int i = 0; i < reps; ++i) iso::this_thread::yield();
      if (k == 0 && iso::rank() == 0) g_result_ns = static_cast<double>(now_ns() - t0) / reps;
    });
  }
  rt.run();
  return g_result_ns;
}

double mpi_allreduce_run(std::size_t count, int warm, int reps) {
  std::vector<double> v(std::max<std::size_t>(count, 1), 1.0), r(v.size());
  std::uint64_t x = 1, y = 0;
  const auto once = [&] {
    if (count == 0) {
      MPI_Allreduce(&x, &y, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    } else {
      MPI_Allreduce(v.data(), r.data(), static_cast<int>(count), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    }
  };
  MPI_Barrier(MPI_COMM_WORLD);
  for (int i = 0; i < warm; ++i) once();
  const std::int64_t t0 = now_ns();
  for (int i = 0; i < reps; ++i) once();
  const double ns = static_cast<double>(now_ns() - t0) / reps;
  MPI_Barrier(MPI_COMM_WORLD);
  return ns;
}

void bench_allreduce(iso::runtime& rt, const char* name, int per_rank, std::size_t count, int warm, int reps,
                     bool one_rank = false) {
  std::vector<double> mine, raw;
  for (int k = 0; k < 5; ++k) {  // interleaved, so that drifts hit both sides alike
    raw.push_back(mpi_allreduce_run(count, warm, reps));
    mine.push_back(iso_allreduce_run(rt, per_rank, count, warm, reps, one_rank));
  }
  if (rt.rank() == 0) iso_bench::print_ratio(name, median(mine), median(raw), "ns");
}

// The 8-byte floor line: a round of `per_rank` switches plus MPI_Allreduce of 8 bytes (each the
// median of its runs, interleaved), against that MPI_Allreduce.
void bench_switch_floor(iso::runtime& rt, const char* name, int per_rank, int warm, int reps) {
  std::vector<double> rounds, raw;
  for (int k = 0; k < 5; ++k) {
    raw.push_back(mpi_allreduce_run(0, warm, reps));
    rounds.push_back(switch_round_run(rt, per_rank, warm, reps));
  }
  if (rt.rank() == 0) iso_bench::print_ratio(name, median(rounds) + median(raw), median(raw), "ns");
}

// Element i of block (K, W) of the fixed tree over N members (combiner.hpp): members
// [K, K + W) combined pairwise, W a power of 2, the value of member k at in[k][i].
template <int K, int W, int N>
double tree_block(const double* const* in, std::size_t i) {
  if constexpr (W == 1) {
    return in[K][i];
  } else if constexpr (K + W / 2 >= N) {
    return tree_block<K, W / 2, N>(in, i);
  } else {
    return tree_block<K, W / 2, N>(in, i) + tree_block<K + W / 2, W / 2, N>(in, i);
  }
}

constexpr int pow2_at_least(int n) { return n <= 1 ? 1 : 2 * pow2_at_least((n + 1) / 2); }

// One run of the floor line: what one rank's memory traffic costs for N members' element-wise
// allreduce of `count` doubles, ns per allreduce. Chunk by chunk, each element is the fixed
// tree's sum of the N inputs (in registers), the chunk of sums stays in L1 and is copied into
// every output: memory sees each input read once and each output written once. (On 2026-12-02
// this took 2.2-2.5x MPI_Allreduce of 1 MiB, where summing into the first output in N-1 passes
// and copying it into the others took 3.0-3.3x.) The buffers are written once before the timing
// (warm pages).
template <int N>
double floor_run(std::size_t count, int warm, int reps) {
  static_assert(N >= 1, "a group has a member");
  std::vector<std::vector<double>> in(N, std::vector<double>(count, 1.0)), out(N, std::vector<double>(count));
  const double* inputs[N];
  for (int k = 0; k < N; ++k) inputs[k] = in[k].data();
  constexpr std::size_t chunk = 512;  // doubles: 4 KiB of sums, in L1 until copied out
  std::vector<double> sums(chunk);
  const auto once = [&] {
    for (std::size_t c = 0; c < count; c += chunk) {
      const std::size_t n = std::min(chunk, count - c);
      for (std::size_t i = 0; i < n; ++i) sums[i] = tree_block<0, pow2_at_least(N), N>(inputs, c + i);
      for (int k = 0; k < N; ++k) std::memcpy(out[k].data() + c, sums.data(), n * sizeof(double));
    }
  };
  MPI_Barrier(MPI_COMM_WORLD);
  for (int i = 0; i < warm; ++i) once();
  const std::int64_t t0 = now_ns();
  for (int i = 0; i < reps; ++i) once();
  const double ns = static_cast<double>(now_ns() - t0) / reps;
  if (out[N - 1][count - 1] != static_cast<double>(N)) g_failed = true;
  MPI_Barrier(MPI_COMM_WORLD);
  return ns;
}

template <int PerRank>
void bench_floor(iso::runtime& rt, const char* name, std::size_t count, int warm, int reps) {
  std::vector<double> mine, raw;
  for (int k = 0; k < 5; ++k) {
    raw.push_back(mpi_allreduce_run(count, warm, reps));
    mine.push_back(floor_run<PerRank>(count, warm, reps));
  }
  if (rt.rank() == 0) iso_bench::print_ratio(name, median(mine), median(raw), "ns");
}

// One run on rank 0: `reps` async+get pairs (futures) or spawn+join pairs.
double pairs_run(iso::runtime& rt, bool futures, int warm, int reps) {
  g_result_ns = 0;
  if (rt.rank() == 0) {
    iso::spawn([futures, warm, reps] {
      int sink = 0;
      const auto once = [&] {
        if (futures) {
          sink += iso::async([] { return 1; }).get();
        } else {
          iso::join(iso::spawn([&sink] { ++sink; }));
        }
      };
      for (int i = 0; i < warm; ++i) once();
      const std::int64_t t0 = now_ns();
      for (int i = 0; i < reps; ++i) once();
      g_result_ns = static_cast<double>(now_ns() - t0) / reps;
      if (sink != warm + reps) g_failed = true;
    });
  }
  rt.run();
  return g_result_ns;
}

void bench_futures(iso::runtime& rt, int scale) {
  std::vector<double> mine, raw;
  for (int k = 0; k < 7; ++k) {
    raw.push_back(pairs_run(rt, false, 200, 2000 * scale));
    mine.push_back(pairs_run(rt, true, 200, 2000 * scale));
  }
  if (rt.rank() == 0) iso_bench::print_ratio("async_get (raw: spawn_join)", median(mine), median(raw), "ns");
}

}  // namespace

int main(int argc, char** argv) {
  iso::runtime rt(argc, argv);
  if (rt.size() != 2) {
    if (rt.rank() == 0) std::fprintf(stderr, "bench_collectives: run it on 2 ranks (mpirun -n 2)\n");
    return 1;
  }
  // The largest K: the most calls a line makes, 2000 * K, stays far within an int.
  constexpr long max_scale = 10000;
  const char* only = nullptr;
  int scale = 1;
  const auto usage = [&rt](const char* what, const char* arg) {
    if (rt.rank() == 0) {
      std::fprintf(stderr, "bench_collectives: %s %s (usage: [--only WORD] [--scale K], 1 <= K <= %ld)\n", what, arg,
                   max_scale);
    }
    return 2;
  };
  for (int arg = 1; arg < argc; arg += 2) {
    const bool is_only = std::strcmp(argv[arg], "--only") == 0;
    const bool is_scale = std::strcmp(argv[arg], "--scale") == 0;
    if (!is_only && !is_scale) return usage("unknown argument", argv[arg]);
    if (arg + 1 >= argc) return usage("no value after", argv[arg]);
    if (is_only) {
      only = argv[arg + 1];
      continue;
    }
    char* end = nullptr;
    errno = 0;
    const long k = std::strtol(argv[arg + 1], &end, 10);
    if (end == argv[arg + 1] || *end != '\0' || errno != 0 || k < 1 || k > max_scale) {
      return usage("--scale: not a count in range:", argv[arg + 1]);
    }
    scale = static_cast<int>(k);
  }
  const auto selected = [only](const char* name) { return only == nullptr || std::strstr(name, only) != nullptr; };
  // The lines, in the order they run.
  const char* const lines[] = {"allreduce_8B/64threads",         "allreduce_8B/32threads_on_rank_0",
                               "allreduce_1MiB/16threads",       "allreduce_1MiB/16threads_floor",
                               "async_get",                      "allreduce_8B/2threads_one_a_rank",
                               "allreduce_8B/64threads_floor"};
  if (std::none_of(std::begin(lines), std::end(lines), selected)) {
    if (rt.rank() == 0) {
      std::fprintf(stderr, "bench_collectives: --only %s matches no line; the lines:", only);
      for (const char* l : lines) std::fprintf(stderr, " %s", l);
      std::fprintf(stderr, "\n");
    }
    return 2;
  }
  if (selected(lines[0])) bench_allreduce(rt, lines[0], 32, 0, 50, 500 * scale);
  if (selected(lines[1])) bench_allreduce(rt, lines[1], 32, 0, 50, 500 * scale, true);
  if (selected(lines[2])) bench_allreduce(rt, lines[2], 8, std::size_t{1} << 17, 3, 20 * scale);
  if (selected(lines[3])) bench_floor<8>(rt, lines[3], std::size_t{1} << 17, 3, 20 * scale);
  if (selected(lines[4])) bench_futures(rt, scale);
  if (selected(lines[5])) bench_allreduce(rt, lines[5], 1, 0, 50, 500 * scale);
  if (selected(lines[6])) bench_switch_floor(rt, lines[6], 32, 50, 500 * scale);
  int failed = g_failed ? 1 : 0, any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any != 0 && rt.rank() == 0) std::fprintf(stderr, "bench_collectives: a result was wrong\n");
  return any != 0 ? 1 : 0;
}
