// iso_init: the block interface's collective set-up over MPI.
#include <memory>
#include <new>

#include "c_api.hpp"
#include "diag.hpp"
#include "isothreads/isomalloc.h"
#include "mpi_peers.hpp"

namespace iso::detail {

// The process's one set of region peers. Created by the first iso_init and deliberately never
// destroyed: the region keeps using it for remote frees until the process exits.
mpi_region_peers*& installed_peers() noexcept {
  static mpi_region_peers* peers = nullptr;
  return peers;
}

mpi_region_peers* installed_peers_or_null() noexcept { return installed_peers(); }

void init_region_over(MPI_Comm comm, std::size_t requested) {
  int initialized = 0;
  check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
  if (!initialized) raise(errc::no_runtime, "iso_init: MPI is not initialised (call MPI_Init first)");
  // The region makes every MPI call of the block interface on the thread that agreed it.
  int level = MPI_THREAD_SINGLE, main_thread = 0;
  check_mpi(MPI_Query_thread(&level), "MPI_Query_thread");
  check_mpi(MPI_Is_thread_main(&main_thread), "MPI_Is_thread_main");
  if (!main_thread && level < MPI_THREAD_MULTIPLE) {
    raise(errc::invalid_argument,
          "iso_init: called from an OS thread that is not MPI's main thread, at a thread level below "
          "MPI_THREAD_MULTIPLE: call it on the thread that called MPI_Init");
  }
  mpi_region_peers*& peers = installed_peers();
  if (peers != nullptr) {
    int same = MPI_UNEQUAL;
    check_mpi(MPI_Comm_compare(peers->user_comm(), comm, &same), "MPI_Comm_compare");
    if (same == MPI_IDENT) return;
    raise(errc::invalid_argument,
          "iso_init: already initialised over another communicator; the region is agreed once per process");
  }
  // sys_allocator storage: iso_init may run inside a migratable thread's call chain. Installed
  // only once the region is agreed, so that a failed iso_init can be retried; until then owned
  // here, so that a failure frees it and its communicator.
  struct destroy {
    void operator()(mpi_region_peers* p) const noexcept {
      p->~mpi_region_peers();
      sys_allocator<mpi_region_peers>().deallocate(p, 1);
    }
  };
  mpi_region_peers* storage = sys_allocator<mpi_region_peers>().allocate(1);
  std::unique_ptr<mpi_region_peers, destroy> fresh;
  try {
    fresh.reset(new (storage) mpi_region_peers(comm));
  } catch (...) {
    sys_allocator<mpi_region_peers>().deallocate(storage, 1);
    throw;
  }
  region::get().agree(*fresh, requested);
  peers = fresh.release();
}

}  // namespace iso::detail

extern "C" int iso_init(MPI_Comm comm) {
  return iso::detail::c_call([&] { iso::detail::init_region_over(comm); });
}
