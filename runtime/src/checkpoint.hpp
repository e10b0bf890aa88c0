// Checkpoint and restart (iso::checkpoint, --iso-restart).
//
// Files in the checkpoint directory:
//   manifest              the current generation: magic, version, layout fingerprint, region,
//                         rank count, and per rank its file's size and table checksum; replaced
//                         by one rename when a new generation is complete.
//   ckpt.<g>.rank<r>      rank r's threads: a header, a table (per thread: id, control block,
//                         the chunk runs it owns, its live extents, their checksum), the rank's
//                         runtime state (sequence numbers of main's messages, finished threads
//                         homed there), then the extents' bytes.
// A restart on M ranks gives thread k (in file order) to rank k % M, claims every restored run in
// the share of the rank that now owns its address (so no new allocation can land on it), reads
// each thread's extents straight into their addresses, and verifies every checksum; any failure
// on any rank stops the restart on all ranks before a thread runs.
#pragma once

#include <mpi.h>

#include <string>

#include "comm.hpp"
#include "engine.hpp"
#include "isothreads/runtime_options.hpp"
#include "scheduler.hpp"

namespace iso::detail {

class checkpointer {
 public:
  // Collective. With verbosity::steps, rank 0 prints a line per checkpoint written and restart.
  checkpointer(MPI_Comm comm, scheduler& s, engine& e, std::uint64_t layout, verbosity v);
  ~checkpointer();
  checkpointer(const checkpointer&) = delete;
  checkpointer& operator=(const checkpointer&) = delete;

  static checkpointer* current() noexcept;

  // From a thread about to wait in iso::checkpoint: records (and checks) the directory.
  void request(const std::string& dir);
  // Collective. pre: every live thread of every rank waits in iso::checkpoint and no message is
  // in flight. Writes the generation, then wakes every waiting thread.
  void step() noexcept;
  // Why the last step failed ("" if it did not); read by the woken threads.
  const std::string& failure() const noexcept { return failure_; }

  // Collective, at start-up, before any thread runs: restores the threads of the checkpoint in
  // `dir`. Throws iso::error (corrupt_image, layout_mismatch, io_failure) on every rank.
  void restore(const std::string& dir);

 private:
  std::string write_rank_file(std::uint64_t generation);  // "" or what failed
  // Rank 0, once every rank has written its file: writes the manifest of `generation` (files: per
  // rank its file's size and table checksum, as gathered) and makes it current by one rename.
  // "" or what failed.
  std::string write_manifest(std::uint64_t generation, std::uint64_t max_serial, const sys_vector<std::uint64_t>& files);

  scheduler& sched_;
  engine& engine_;
  private_comm comm_;
  int rank_;
  int size_;
  std::uint64_t layout_;
  verbosity verbosity_;
  std::string dir_;          // requested by this rank's threads for the pending step
  std::string failure_;
  // This rank's file of the step, set by write_rank_file when it succeeds; rank 0 gathers them
  // for the manifest.
  std::uint64_t file_bytes_ = 0;  // its size
  std::uint64_t table_sum_ = 0;   // its table's checksum64
};

}  // namespace iso::detail
