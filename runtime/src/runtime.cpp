// iso::runtime: start-up (layout, MPI, region, scheduler) and shutdown.
#include "isothreads/runtime.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <clocale>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <string>
#include <ctime>
#include <locale>

#include "balancer.hpp"
#include "checkpoint.hpp"
#include "diag.hpp"
#include "interpose.hpp"
#include "layout.hpp"
#include "mpi_peers.hpp"
#include "prim.hpp"
#include "progress.hpp"
#include "region.hpp"
#include "scheduler.hpp"
#include "trace.hpp"

namespace iso::detail {


class runtime_state {
 public:
  runtime_state(int rank, int size, bool owns_mpi, std::uint64_t layout, const runtime_options& o)
      : rank(rank),
        size(size),
        owns_mpi(owns_mpi),
        progress(MPI_COMM_WORLD, o.idle_spin.count(), o.min_backoff.count(), o.max_backoff.count(), o.steal_seed),
        sched(rank, nullptr, &progress),
        migration(MPI_COMM_WORLD, sched, layout),
        balance(MPI_COMM_WORLD, sched, migration, o.strategy, o.verbosity),
        checkpoints(MPI_COMM_WORLD, sched, migration, layout, o.verbosity),
        tracing(MPI_COMM_WORLD, sched, migration, o.trace_path) {
    progress.set_engine(&migration);
    progress.set_balancer(&balance);
    progress.set_checkpointer(&checkpoints);
    migration.set_stealing(o.steal);
  }
  int rank;
  int size;
  bool owns_mpi;  // MPI_Init was ours: so is MPI_Finalize
  mpi_progress progress;
  scheduler sched;
  engine migration;
  balancer balance;
  checkpointer checkpoints;
  tracer tracing;
  bool restarted = false;  // threads came from a checkpoint
};

namespace {

runtime_state* g_runtime = nullptr;

// The checkpoint to restart from: `--iso-restart DIR` (taken out of argv), else `configured`.
std::string take_restart_dir(int& argc, char** argv, const std::string& configured) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--iso-restart") != 0) continue;
    std::string dir = argv[i + 1];
    for (int k = i; k + 2 <= argc; ++k) argv[k] = argv[k + 2];
    argc -= 2;
    return dir;
  }
  return configured;
}

// The value of environment variable `name`, or null when it is unset or empty.
const char* env_value(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

void check_options(const runtime_options& o) {
  if (o.idle_spin.count() < 0 || o.min_backoff.count() <= 0 || o.max_backoff < o.min_backoff) {
    raise(errc::invalid_argument,
          "iso::runtime: back-off times must be idle_spin >= 0 and 0 < min_backoff <= max_backoff "
          "(got %lld, %lld, %lld ns)",
          static_cast<long long>(o.idle_spin.count()), static_cast<long long>(o.min_backoff.count()),
          static_cast<long long>(o.max_backoff.count()));
  }
}

// Process-wide state that C and C++ libraries allocate on first use and keep in globals. Done here,
// before any thread runs, so that none of it lands in (and dangles with) a thread's heap.
void warm_up_process_state() {
  for (FILE* f : {stdout, stderr}) {
    // A buffer from the system heap now, instead of one malloc'ed by the first write, which
    // might come from inside a thread.
    const bool tty = ::isatty(::fileno(f)) != 0;
    const int mode = f == stderr ? _IONBF : (tty ? _IOLBF : _IOFBF);
    if (mode != _IONBF) {
      char* buf = static_cast<char*>(__libc_malloc(BUFSIZ));
      if (buf != nullptr) std::setvbuf(f, buf, mode, BUFSIZ);
    }
  }
  std::setlocale(LC_ALL, nullptr);
  (void)std::locale();
  ::tzset();
  (void)std::strerror(EINVAL);
  (void)::dlerror();
}

}  // namespace
}  // namespace iso::detail

namespace iso {

runtime_options runtime_options::from_environment() {
  using detail::env_value;
  runtime_options o;
  if (const char* v = env_value("ISO_REGION_BYTES")) {
    o.region_bytes = detail::parse_bytes(v);
    if (o.region_bytes == 0) {
      detail::raise(errc::invalid_argument, "ISO_REGION_BYTES=%s: not a byte count (64G, 2T, ...)", v);
    }
  }
  if (const char* v = env_value("ISO_LB")) o.strategy = v;
  if (const char* v = env_value("ISO_TRACE")) o.trace_path = v;
  if (const char* v = env_value("ISO_RESTART")) o.restart_dir = v;
  if (std::getenv("ISO_NO_REEXEC") != nullptr) o.reexec = false;
  if (const char* v = env_value("ISO_STEAL")) {
    if (std::strcmp(v, "0") != 0 && std::strcmp(v, "1") != 0) {
      detail::raise(errc::invalid_argument, "ISO_STEAL=%s: 0 (no work stealing) or 1 (idle ranks steal threads)", v);
    }
    o.steal = v[0] == '1';
  }
  if (const char* v = env_value("ISO_STEAL_SEED")) {
    char* end = nullptr;
    errno = 0;
    o.steal_seed = std::strtoull(v, &end, 10);
    // strtoull would skip leading white space and wrap a sign: only digits are a seed.
    if (errno != 0 || *end != '\0' || !std::isdigit(static_cast<unsigned char>(*v))) {
      detail::raise(errc::invalid_argument, "ISO_STEAL_SEED=%s: not an unsigned decimal number", v);
    }
  }
  if (const char* v = env_value("ISO_VERBOSE")) {
    if (std::strcmp(v, "0") == 0) {
      o.verbosity = verbosity::quiet;
    } else if (std::strcmp(v, "1") == 0) {
      o.verbosity = verbosity::steps;
    } else {
      detail::raise(errc::invalid_argument, "ISO_VERBOSE=%s: 0 (quiet) or 1 (a line per step)", v);
    }
  }
  return o;
}

runtime::runtime(int& argc, char**& argv) : runtime(argc, argv, runtime_options::from_environment()) {}

runtime::runtime(int& argc, char**& argv, const runtime_options& options) : state_(nullptr) {
  using namespace detail;
  if (g_runtime != nullptr) raise(errc::invalid_argument, "iso::runtime: this process already has a runtime");
  check_options(options);
  ensure_fixed_layout(argv, options.reexec);
  // Registering for membarrier(2) (the heap gate's asymmetric barriers, prim.hpp) waits for an
  // RCU grace period once the process has a second OS thread, as it has after MPI_Init (Open
  // MPI's): about 12 ms here, against about 2 us before. Left to the rank's first heap, it fell
  // inside run() on a rank whose first thread arrives (a thief's first steal took 7.8 ms, and
  // fib_steal's fib(24) on 2 ranks 9-12 ms instead of 1), and in every program's first spawn.
  // Here the process usually has one OS thread (not if the program initialised MPI or started
  // threads itself: then the wait falls here, still outside run()). After ensure_fixed_layout:
  // an exec drops the registration.
  prim::enable_asymmetric_barriers();
  int initialized = 0;
  check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
  if (!initialized) {
    int provided = 0;
    check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  }
  int rank = 0, size = 1;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
  set_diag_rank(rank);
  try {
    const std::uint64_t layout = verify_layout(MPI_COMM_WORLD);
    init_region_over(MPI_COMM_WORLD, options.region_bytes);
    warm_up_process_state();
    heap_scope system(nullptr);
    state_ = new (sys_allocator<runtime_state>().allocate(1)) runtime_state(rank, size, !initialized, layout, options);
    // One canary and pointer guard for every migratable thread of the job (guards.hpp), drawn
    // by rank 0; a pair of zeros says it could not draw one, and every rank fails alike.
    tls_guards job;
    std::string problem;
    if (rank == 0) {
      try {
        job = fresh_guards();
      } catch (const iso::error& e) {
        problem = e.what();
      }
    }
    check_mpi(MPI_Bcast(&job, sizeof job, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast (thread guards)");
    if (job.canary == 0) {
      raise(errc::system_failure, "iso::runtime: rank 0 could not draw the thread guards%s%s",
            problem.empty() ? "" : ": ", problem.c_str());
    }
    state_->sched.set_thread_guards(job);
    if (const std::string dir = take_restart_dir(argc, argv, options.restart_dir); !dir.empty()) {
      state_->checkpoints.restore(dir);
      state_->restarted = true;
    }
  } catch (...) {
    if (state_ != nullptr) {
      state_->~runtime_state();
      sys_allocator<runtime_state>().deallocate(state_, 1);
    }
    if (!initialized) MPI_Finalize();
    throw;
  }
  g_runtime = state_;
}

runtime::~runtime() {
  using namespace detail;
  std::fflush(nullptr);
  // Nothing may be in flight when MPI is finalised: the engine's last sends, and the runs that
  // threads' heaps and stacks returned to their owners as they ended.
  state_->migration.complete_sends();
  if (mpi_region_peers* peers = installed_peers_or_null(); peers != nullptr) {
    try {
      peers->drain();
    } catch (const iso::error& e) {
      std::fprintf(stderr, "isothreads: rank %d: %s\n", state_->rank, e.what());
    }
  }
  const bool owns_mpi = state_->owns_mpi;
  g_runtime = nullptr;
  state_->~runtime_state();
  sys_allocator<runtime_state>().deallocate(state_, 1);
  if (owns_mpi && MPI_Finalize() != MPI_SUCCESS) std::fprintf(stderr, "isothreads: MPI_Finalize failed\n");
}

int runtime::rank() const noexcept { return state_->rank; }
bool runtime::restarting() const noexcept { return state_->restarted; }
int runtime::size() const noexcept { return state_->size; }

void runtime::run() {
  // The blocks kept for the next collectives (combiner.hpp's block_cache, up to its kept_limit,
  // and the rank combiner's spare entry) are freed as a run ends, whether it ends or throws:
  // between runs and after the last, the rank keeps none.
  const auto trim = [this] {
    state_->migration.combiner().trim();
    detail::block_cache::get().trim();
  };
  try {
    state_->sched.run();
  } catch (...) {
    trim();
    throw;
  }
  trim();
  state_->tracing.write();
  if (const std::size_t held = state_->migration.held_messages(); held != 0) {
    std::fprintf(stderr, "isothreads: rank %d: %zu messages are held for threads that never arrived\n", state_->rank, held);
  }
}

int rank() {
  if (detail::g_runtime == nullptr) detail::raise(errc::no_runtime, "iso::rank: no isothreads runtime in this process");
  return detail::g_runtime->rank;
}

int size() {
  if (detail::g_runtime == nullptr) detail::raise(errc::no_runtime, "iso::size: no isothreads runtime in this process");
  return detail::g_runtime->size;
}

}  // namespace iso
