/* A C program outside the isothreads source tree, built against an installed isothreads by the
 * consumers in tests/install: it uses the block interface. Every rank allocates a block, and the
 * ranks check that no two blocks share an address. Exits nonzero on any failure. */
#include <isothreads/isomalloc.h>
#include <mpi.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1, ok = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (iso_init(MPI_COMM_WORLD) != 0) {
    fprintf(stderr, "blocks: rank %d: iso_init failed: %s\n", rank, iso_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  char* block = iso_malloc(100);
  if (block == NULL || iso_length(block) < 100 || iso_in_range(block) != 1) {
    fprintf(stderr, "blocks: rank %d: iso_malloc(100) = %p: %s\n", rank, (void*)block, iso_last_error());
    ok = 0;
  } else {
    block[99] = 'x';
  }
  uint64_t mine = (uint64_t)(uintptr_t)block;
  uint64_t* all = malloc(sizeof *all * (size_t)size);
  if (all == NULL) MPI_Abort(MPI_COMM_WORLD, 1);
  MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (int r = 0; r < size; ++r) {
    if (r != rank && all[r] == mine) {
      fprintf(stderr, "blocks: ranks %d and %d got the same block %p\n", rank, r, (void*)block);
      ok = 0;
    }
  }
  printf("blocks: rank %d of %d: iso_malloc(100) = %p\n", rank, size, (void*)block);
  if (block != NULL) iso_free(block);
  free(all);
  int all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  if (rank == 0) printf("blocks: %s\n", all_ok ? "OK" : "FAILED");
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
