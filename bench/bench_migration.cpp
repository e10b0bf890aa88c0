// Migration and cross-rank messaging, each beside a raw MPI baseline measured in the same run.
// An MPI program with a plain main (Google Benchmark does not fit under mpirun):
//
//   mpirun -n 2 bench/bench_migration [latency|many|messages|latency/4KiB,latency/64KiB...]
//
// Rank 0 prints one line per figure in bench_main.cpp's format, so that one grep collects all:
//   ratio  <name>  <ns>  raw <ns>  = <figure / baseline>
// Every figure is the median of K runs, each after warm-up; the cost of reading the clock is
// measured once and subtracted from each timed interval.
//
//   migrate_latency/<size>  a thread on rank 0 allocates <size> bytes in its heap and writes every
//                           page, then migrates 0->1->0 repeatedly; figure = wall time per one-way
//                           migration (round-trip time / 2, timed on rank 0 inside the thread).
//                           The image is the buffer plus the thread's live stack, heap metadata and
//                           control block, to the byte (image.hpp: one batched record when every
//                           extent is small, else small extents with the header and each large one
//                           straight between its addresses); its size is printed as an info line.
//     raw:                  MPI_Send / MPI_Recv ping-pong of <size> bytes between main on rank 0
//                           and rank 1 (already-touched buffers), time per one-way transfer.
//   migrate_10k_threads     rank 0 spawns 10,000 threads (before run()) that each call
//                           migrate_to(1) and finish there; figure = (time from the first thread
//                           starting to run() returning on rank 0) / 10,000, i.e. ns per migration
//                           including the tail of termination detection. Also printed: the rate,
//                           and the time from the first start to the last thread's end on rank 1.
//     raw:                  10,000 MPI messages of the average image size (data bytes the engine
//                           shipped per thread + the header message's size), rank 0 -> rank 1,
//                           MPI_Isend / MPI_Irecv in windows of 64, then a 1-byte ack; ns per
//                           message.
//   messages_8B             a thread on rank 0 iso::send's N 8-byte messages to a thread on rank 1,
//                           which iso::recv's them all and replies once; figure = time on rank 0
//                           from the first send until the reply arrives, / N.
//     raw:                  the same pattern with MPI_Send / MPI_Recv between the mains:
//                           N 8-byte sends, then one reply.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine.hpp"
#include "image.hpp"
#include "isothreads/isothreads.hpp"
#include "ratio.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Cost of one now_ns() call, subtracted once from every timed interval (which reads it twice).
std::int64_t g_clock_ns = 0;

std::int64_t measure_clock_overhead() {
  std::vector<double> samples;
  for (int k = 0; k < 9; ++k) {
    constexpr int n = 10000;
    const std::int64_t t0 = now_ns();
    for (int i = 0; i < n; ++i) {
      volatile std::int64_t t = now_ns();
      (void)t;
    }
    samples.push_back(static_cast<double>(now_ns() - t0) / n);
  }
  return static_cast<std::int64_t>(median(samples));
}

std::string size_name(std::size_t bytes) {
  if (bytes >= (std::size_t{1} << 20)) return std::to_string(bytes >> 20) + "MiB";
  return std::to_string(bytes >> 10) + "KiB";
}

// Results written by threads while they run on rank 0 (globals: the same address on every rank,
// so a thread that is back on rank 0 writes rank 0's copy).
double g_result_ns = 0;
bool g_failed = false;
std::int64_t g_first_start_ns = 0;
std::int64_t g_last_end_ns = 0;

// ---------------------------------------------------------------- 1. migration latency

// One run: a thread with a `bytes` live buffer does `warm` then `reps` round trips 0->1->0.
// Returns ns per one-way migration (on rank 0; 0 elsewhere).
// *image_bytes: the data bytes rank 0 shipped per departure in this run.
double migrate_latency_run(iso::runtime& rt, std::size_t bytes, int warm, int reps, double* image_bytes = nullptr) {
  g_result_ns = 0;
  iso::detail::engine* e = iso::detail::engine::current();
  const auto before = e->stats();
  if (rt.rank() == 0) {
    iso::spawn([bytes, warm, reps] {
      auto* buf = static_cast<unsigned char*>(std::malloc(bytes));
      if (buf == nullptr) {
        g_failed = true;
        return;
      }
      std::memset(buf, 0x5A, bytes);  // every page resident: the whole buffer is live
      for (int i = 0; i < warm; ++i) {
        iso::this_thread::migrate_to(1);
        iso::this_thread::migrate_to(0);
      }
      const std::int64_t t0 = now_ns();
      for (int i = 0; i < reps; ++i) {
        iso::this_thread::migrate_to(1);
        iso::this_thread::migrate_to(0);
      }
      const std::int64_t t1 = now_ns();
      for (std::size_t off = 0; off < bytes; off += 4096) {
        if (buf[off] != 0x5A) g_failed = true;
      }
      if (buf[bytes - 1] != 0x5A || iso::rank() != 0) g_failed = true;
      std::free(buf);
      g_result_ns = static_cast<double>(t1 - t0 - g_clock_ns) / (2.0 * reps);
    });
  }
  rt.run();
  const auto after = e->stats();
  if (image_bytes != nullptr && after.departures != before.departures) {
    *image_bytes = static_cast<double>(after.bytes_out - before.bytes_out) / static_cast<double>(after.departures - before.departures);
  }
  return g_result_ns;
}

// One run of the MPI ping-pong of `bytes` between main on ranks 0 and 1.
double mpi_pingpong_run(int rank, std::vector<unsigned char>& buf, int warm, int reps) {
  const int n = static_cast<int>(buf.size());
  auto round_trip = [&] {
    if (rank == 0) {
      MPI_Send(buf.data(), n, MPI_BYTE, 1, 7, MPI_COMM_WORLD);
      MPI_Recv(buf.data(), n, MPI_BYTE, 1, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else if (rank == 1) {
      MPI_Recv(buf.data(), n, MPI_BYTE, 0, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      MPI_Send(buf.data(), n, MPI_BYTE, 0, 7, MPI_COMM_WORLD);
    }
  };
  MPI_Barrier(MPI_COMM_WORLD);
  for (int i = 0; i < warm; ++i) round_trip();
  const std::int64_t t0 = now_ns();
  for (int i = 0; i < reps; ++i) round_trip();
  const std::int64_t t1 = now_ns();
  MPI_Barrier(MPI_COMM_WORLD);
  return static_cast<double>(t1 - t0 - g_clock_ns) / (2.0 * reps);
}

// filter: null, or a name such as "latency/4KiB" (main's argument): only the sizes it names.
void bench_latency(iso::runtime& rt, const char* filter) {
  struct config {
    std::size_t bytes;
    int warm, reps, runs;
  };
  const config configs[] = {
      {std::size_t{4} << 10, 20, 200, 5},  {std::size_t{64} << 10, 20, 200, 5},
      {std::size_t{1} << 20, 5, 40, 5},    {std::size_t{16} << 20, 1, 6, 3},
      {std::size_t{256} << 20, 1, 2, 3},
  };
  for (const config& c : configs) {
    const std::string name = "migrate_latency/" + size_name(c.bytes);
    if (filter != nullptr && std::strstr(filter, "latency/") != nullptr &&
        std::strstr(filter, ("latency/" + size_name(c.bytes)).c_str()) == nullptr) {
      continue;
    }
    std::vector<unsigned char> buf(c.bytes, 0x3C);  // main's (glibc) memory, touched
    std::vector<double> mig, raw;
    double image = 0;
    for (int k = 0; k < c.runs; ++k) {  // interleaved, so that drifts hit both sides alike
      raw.push_back(mpi_pingpong_run(rt.rank(), buf, c.warm, c.reps));
      mig.push_back(migrate_latency_run(rt, c.bytes, c.warm, c.reps, &image));
    }
    if (rt.rank() == 0) {
      iso_bench::print_ratio(name, median(mig), median(raw), "ns");
      if (c.bytes <= (std::size_t{64} << 10)) {
        std::printf("info   %s: image %.0f data bytes a migration\n", name.c_str(), image);
        std::fflush(stdout);
      }
    }
  }
}

// ---------------------------------------------------------------- 2. many small migrations

#ifndef ISO_BENCH_THREADS
#define ISO_BENCH_THREADS 10000
#endif
constexpr int many_threads = ISO_BENCH_THREADS;

struct many_result {
  double ns_per_migration = 0;    // first start -> run() returns on rank 0
  double ns_to_last_end = 0;      // first start -> last thread ended on rank 1, per migration
  double image_bytes = 0;         // average data bytes shipped per migration (rank 0)
};

many_result many_migrations_run(iso::runtime& rt) {
  g_first_start_ns = 0;
  g_last_end_ns = 0;
  iso::detail::engine* e = iso::detail::engine::current();
  const auto before = e->stats();
  if (rt.rank() == 0) {
    for (int i = 0; i < many_threads; ++i) {
      iso::spawn([] {
        if (g_first_start_ns == 0) g_first_start_ns = now_ns();  // rank 0's copy
        iso::this_thread::migrate_to(1);
        g_last_end_ns = now_ns();  // rank 1's copy
      });
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  rt.run();
  const std::int64_t done = now_ns();
  const auto after = e->stats();
  // CLOCK_MONOTONIC is system-wide: rank 1's end time is comparable with rank 0's start time.
  std::int64_t last_end = g_last_end_ns;
  if (rt.rank() == 1) MPI_Send(&last_end, 1, MPI_INT64_T, 0, 9, MPI_COMM_WORLD);
  if (rt.rank() == 0) MPI_Recv(&last_end, 1, MPI_INT64_T, 1, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  many_result r;
  if (rt.rank() == 0) {
    r.ns_per_migration = static_cast<double>(done - g_first_start_ns - g_clock_ns) / many_threads;
    r.ns_to_last_end = static_cast<double>(last_end - g_first_start_ns) / many_threads;
    const auto departures = after.departures - before.departures;
    if (departures != static_cast<std::uint64_t>(many_threads)) g_failed = true;
    r.image_bytes = departures == 0 ? 0 : static_cast<double>(after.bytes_out - before.bytes_out) / static_cast<double>(departures);
  }
  return r;
}

// 10,000 messages of `bytes` from rank 0 to rank 1, 64 in flight, then a 1-byte ack.
double mpi_stream_run(int rank, std::size_t bytes, int count) {
  constexpr int window = 64;
  const int n = static_cast<int>(bytes);
  std::vector<unsigned char> buf(bytes * (rank == 1 ? window : 1), 0x3C);
  std::vector<MPI_Request> req(window);
  char ack = 0;
  MPI_Barrier(MPI_COMM_WORLD);
  const std::int64_t t0 = now_ns();
  for (int sent = 0; sent < count; sent += window) {
    const int w = std::min(window, count - sent);
    for (int i = 0; i < w; ++i) {
      if (rank == 0) MPI_Isend(buf.data(), n, MPI_BYTE, 1, 8, MPI_COMM_WORLD, &req[i]);
      if (rank == 1) MPI_Irecv(buf.data() + i * bytes, n, MPI_BYTE, 0, 8, MPI_COMM_WORLD, &req[i]);
    }
    if (rank <= 1) MPI_Waitall(w, req.data(), MPI_STATUSES_IGNORE);
  }
  if (rank == 1) MPI_Send(&ack, 1, MPI_CHAR, 0, 10, MPI_COMM_WORLD);
  if (rank == 0) MPI_Recv(&ack, 1, MPI_CHAR, 1, 10, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  const std::int64_t t1 = now_ns();
  MPI_Barrier(MPI_COMM_WORLD);
  return static_cast<double>(t1 - t0 - g_clock_ns) / count;
}

void bench_many(iso::runtime& rt) {
  constexpr int runs = 3;
  std::vector<double> mig, to_end, raw;
  // The engine's image size is known after the first run; the raw stream then uses it.
  many_result first = many_migrations_run(rt);  // warm-up (not counted)
  double image = first.image_bytes;
  MPI_Bcast(&image, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  // Header message: image_header + one extent entry per extent (stack + heap runs: about 2-3).
  const auto wire_bytes = static_cast<std::size_t>(image) + sizeof(iso::detail::image_header) + 3 * sizeof(iso::detail::image_extent);
  mpi_stream_run(rt.rank(), wire_bytes, 1000);  // warm-up
  for (int k = 0; k < runs; ++k) {
    raw.push_back(mpi_stream_run(rt.rank(), wire_bytes, many_threads));
    const many_result r = many_migrations_run(rt);
    mig.push_back(r.ns_per_migration);
    to_end.push_back(r.ns_to_last_end);
  }
  if (rt.rank() == 0) {
    iso_bench::print_ratio("migrate_10k_threads", median(mig), median(raw), "ns");
    std::printf("info   migrate_10k_threads: %.0f migrations/s (first start -> run() returns), %.0f migrations/s "
                "(first start -> last thread ends on rank 1); image %.0f data bytes + header; "
                "raw MPI stream of %zu-byte messages: %.0f messages/s\n",
                1e9 / median(mig), 1e9 / median(to_end), image, wire_bytes, 1e9 / median(raw));
    std::fflush(stdout);
  }
}

// ---------------------------------------------------------------- 3. message rate

#ifndef ISO_BENCH_MESSAGES
#define ISO_BENCH_MESSAGES 10000
#endif
constexpr int message_count = ISO_BENCH_MESSAGES;

double messages_run(iso::runtime& rt) {
  g_result_ns = 0;
  std::uint64_t receiver = 0;
  if (rt.rank() == 1) {
    receiver = iso::spawn([] {
      std::uint64_t sum = 0;
      iso::thread_id from;
      for (int i = 0; i < message_count; ++i) {
        iso::message m = iso::recv();
        std::uint64_t v = 0;
        if (m.data.size() == sizeof v) std::memcpy(&v, m.data.data(), sizeof v);
        sum += v;
        from = m.from;
      }
      iso::send(from, &sum, sizeof sum);
    }).bits();
  }
  MPI_Bcast(&receiver, 1, MPI_UINT64_T, 1, MPI_COMM_WORLD);
  if (rt.rank() == 0) {
    const iso::thread_id to = iso::thread_id::from_bits(receiver);
    iso::spawn([to] {
      const std::int64_t t0 = now_ns();
      for (std::uint64_t i = 0; i < message_count; ++i) iso::send(to, &i, sizeof i);
      const iso::message reply = iso::recv();
      const std::int64_t t1 = now_ns();
      std::uint64_t sum = 0;
      if (reply.data.size() == sizeof sum) std::memcpy(&sum, reply.data.data(), sizeof sum);
      const std::uint64_t n = message_count;
      if (sum != n * (n - 1) / 2) g_failed = true;
      g_result_ns = static_cast<double>(t1 - t0 - g_clock_ns) / message_count;
    });
  }
  rt.run();
  return g_result_ns;
}

double mpi_messages_run(int rank) {
  MPI_Barrier(MPI_COMM_WORLD);
  const std::int64_t t0 = now_ns();
  std::uint64_t sum = 0;
  if (rank == 0) {
    for (std::uint64_t i = 0; i < message_count; ++i) MPI_Send(&i, 1, MPI_UINT64_T, 1, 11, MPI_COMM_WORLD);
    MPI_Recv(&sum, 1, MPI_UINT64_T, 1, 12, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  } else if (rank == 1) {
    for (int i = 0; i < message_count; ++i) {
      std::uint64_t v = 0;
      MPI_Recv(&v, 1, MPI_UINT64_T, 0, 11, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      sum += v;
    }
    MPI_Send(&sum, 1, MPI_UINT64_T, 0, 12, MPI_COMM_WORLD);
  }
  const std::int64_t t1 = now_ns();
  MPI_Barrier(MPI_COMM_WORLD);
  return static_cast<double>(t1 - t0 - g_clock_ns) / message_count;
}

void bench_messages(iso::runtime& rt) {
  constexpr int runs = 5;
  messages_run(rt);  // warm-up
  mpi_messages_run(rt.rank());
  std::vector<double> ours, raw;
  for (int k = 0; k < runs; ++k) {
    raw.push_back(mpi_messages_run(rt.rank()));
    ours.push_back(messages_run(rt));
  }
  if (rt.rank() == 0) {
    iso_bench::print_ratio("messages_8B", median(ours), median(raw), "ns");
    std::printf("info   messages_8B: iso::send/recv %.0f messages/s, raw MPI_Send/MPI_Recv %.0f messages/s\n",
                1e9 / median(ours), 1e9 / median(raw));
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    iso::runtime rt(argc, argv);
    if (rt.size() < 2) {
      std::fprintf(stderr, "bench_migration needs at least 2 ranks (mpirun -n 2)\n");
      return 1;
    }
    g_clock_ns = measure_clock_overhead();
    const std::int64_t t_start = now_ns();
    // Warm-up: connections between the ranks, the engine's and the scheduler's pools.
    for (int k = 0; k < 3; ++k) migrate_latency_run(rt, 4096, 5, 5);
    const bool only = argc > 1;
    auto selected = [&](const char* what) { return !only || std::strstr(argv[1], what) != nullptr; };
    if (selected("latency")) bench_latency(rt, only ? argv[1] : nullptr);
    if (selected("many")) bench_many(rt);
    if (selected("messages")) bench_messages(rt);
    int failed = g_failed ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rt.rank() == 0) {
      std::printf("info   clock overhead %lld ns subtracted per interval; total %.1f s%s\n",
                  static_cast<long long>(g_clock_ns), static_cast<double>(now_ns() - t_start) / 1e9,
                  failed ? "; A CHECK FAILED (data or counts wrong)" : "");
      std::fflush(stdout);
    }
    return failed;
  } catch (const iso::error& e) {
    std::fprintf(stderr, "bench_migration: %s\n", e.what());
    return 1;
  }
}
