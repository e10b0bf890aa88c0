// iso::runtime — one per process: MPI, the isomalloc region, the scheduler.
#pragma once

#include "isothreads/error.hpp"
#include "isothreads/runtime_options.hpp"

namespace iso {

namespace detail {
class runtime_state;
}

class runtime {
 public:
  // Initialises MPI if the program has not (MPI_THREAD_FUNNELED); makes every rank's code and
  // library layout identical, re-executing the program once with address-space randomisation off
  // if it is on (before MPI starts; runtime_options::reexec); verifies the layout across
  // ranks (build-id and load address of every loaded object) and agrees the isomalloc region.
  // With `--iso-restart DIR` among the arguments (removed from argc/argv) or
  // runtime_options::restart_dir, restores the threads of that checkpoint (iso::checkpoint) on these ranks.
  // Collective over MPI_COMM_WORLD. Throws iso::error: (layout_mismatch) naming the differing
  // ranks and objects, (region_agreement), (mpi_failure), (invalid_argument) for a second
  // runtime in one process, (corrupt_image) or (io_failure) for a checkpoint that cannot be
  // restored (then no thread of it runs).
  // runtime(argc, argv) is runtime(argc, argv, runtime_options::from_environment()).
  runtime(int& argc, char**& argv);
  // With the knobs given (start from runtime_options::from_environment() to keep the environment's
  // say). Also throws iso::error(invalid_argument) for an unknown strategy or back-off times that
  // are negative or out of order.
  runtime(int& argc, char**& argv, const runtime_options& options);
  ~runtime();  // finalises MPI if the constructor initialised it
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  int rank() const noexcept;
  int size() const noexcept;
  // True when this run resumed threads from a checkpoint (--iso-restart DIR or ISO_RESTART=DIR):
  // main() should then not spawn them again, only run().
  bool restarting() const noexcept;

  // Runs the scheduler until every migratable thread on every rank has finished and no message
  // or migration is in flight; then returns on every rank. Collective. Throws iso::error(deadlock)
  // on every rank when threads remain but all are blocked and nothing is in flight.
  void run();

 private:
  detail::runtime_state* state_;
};

// Rank of the process running the caller now (changes after a migration), and the number of
// ranks. Error: (no_runtime) without a runtime.
int rank();
int size();

}  // namespace iso
