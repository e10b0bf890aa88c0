// Checkpoint write and restart read throughput, each against a raw write / read of the same bytes
// to the same disk. Two invocations (bench/checkpoint.sh runs both and prints the read ratio):
//   mpirun -n 2 bench_checkpoint write DIR [MIB_PER_RANK]   threads checkpoint into DIR; prints
//                                                            the write ratio line
//   mpirun -n 2 bench_checkpoint read DIR [MIB_PER_RANK] --iso-restart DIR
//                                                            the runtime restores them (and prints
//                                                            its time); prints the raw read time
// Ratio lines have bench/ratio.hpp's format: "ratio <name> <ns> raw <ns> = <x>".
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "isothreads/isothreads.hpp"
#include "ratio.hpp"

namespace {

constexpr int threads_per_rank = 8;
// Per process: the longest time a thread of this rank waited in iso::checkpoint.
double checkpoint_seconds = 0;
// Per process: the threads of this run were restored (their clock readings are another process's).
bool restored = false;

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The baseline: write (and fsync) or read `bytes` to/from a scratch file in dir, as one stream.
double raw_io(const std::string& dir, std::size_t bytes, bool write) {
  const std::string path = dir + "/raw." + std::to_string(iso::rank());
  std::vector<char> buffer(bytes, 'x');
  const auto start = std::chrono::steady_clock::now();
  const int fd = ::open(path.c_str(), write ? (O_WRONLY | O_CREAT | O_TRUNC) : O_RDONLY, 0644);
  if (fd < 0) {
    std::perror(path.c_str());
    std::exit(1);
  }
  for (std::size_t done = 0; done < bytes;) {
    const ssize_t n = write ? ::write(fd, buffer.data() + done, bytes - done) : ::read(fd, buffer.data() + done, bytes - done);
    if (n <= 0) {
      std::perror(path.c_str());
      std::exit(1);
    }
    done += static_cast<std::size_t>(n);
  }
  if (write) ::fsync(fd);
  ::close(fd);
  return seconds_since(start);
}

}  // namespace

int main(int argc, char** argv) {
  iso::runtime rt(argc, argv);
  if (argc < 3) {
    if (rt.rank() == 0) std::fprintf(stderr, "usage: bench_checkpoint write|read DIR [MIB_PER_RANK]\n");
    return 2;
  }
  const std::string mode = argv[1], dir = argv[2];
  const std::size_t mib = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 64;
  const std::size_t per_thread = (mib << 20) / threads_per_rank;

  restored = rt.restarting();
  if (mode == "write" && !restored) {
    for (int i = 0; i < threads_per_rank; ++i) {
      iso::spawn([per_thread, dir] {
        std::vector<char> state(per_thread, static_cast<char>(iso::rank()));
        const auto start = std::chrono::steady_clock::now();
        iso::checkpoint(dir);
        if (!restored) checkpoint_seconds = std::max(checkpoint_seconds, seconds_since(start));
      });
    }
    rt.run();
    MPI_Allreduce(MPI_IN_PLACE, &checkpoint_seconds, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    double raw = raw_io(dir, mib << 20, true);
    MPI_Allreduce(MPI_IN_PLACE, &raw, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rt.rank() == 0) {
      std::printf("checkpoint of %zu MiB per rank (%d threads), %d ranks\n", mib, threads_per_rank, rt.size());
      iso_bench::print_ratio("checkpoint_write/" + std::to_string(mib) + "MiB_per_rank", checkpoint_seconds * 1e9,
                             raw * 1e9, "ns");
    }
  } else if (mode == "read" && restored) {
    rt.run();  // the restored threads finish
    double raw = raw_io(dir, mib << 20, false);
    MPI_Allreduce(MPI_IN_PLACE, &raw, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rt.rank() == 0) std::printf("raw_read_seconds %.6f\n", raw);
  } else {
    if (rt.rank() == 0) std::fprintf(stderr, "bench_checkpoint: 'write' starts fresh, 'read' needs --iso-restart DIR\n");
    return 2;
  }
  return 0;
}
