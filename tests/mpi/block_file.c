/* A block saved to a file by one run and restored at the same address by a later one.
 *   block_file save FILE   allocate a block on every rank, fill it, save its image to FILE.<rank>
 *   block_file load FILE   in a later run: iso_unpack each image, check address and contents
 * Prints "BLOCK_FILE_OK" on rank 0 when every rank succeeded. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isothreads/isomalloc.h"

enum { block_bytes = 3 * 4096 + 100 };

static void fill(unsigned char* p, size_t n, int rank) {
  for (size_t i = 0; i < n; ++i) p[i] = (unsigned char)(i * 31 + (size_t)rank * 7);
}

static int run(const char* mode, const char* path, int rank) {
  char file[4096];
  snprintf(file, sizeof file, "%s.%d", path, rank);
  if (strcmp(mode, "save") == 0) {
    unsigned char* b = iso_malloc(block_bytes);
    if (b == NULL) return fprintf(stderr, "rank %d: iso_malloc: %s\n", rank, iso_last_error()), 1;
    fill(b, block_bytes, rank);
    *(void**)b = b + 4096; /* a pointer into the block itself */
    size_t n = iso_pack_size(b);
    unsigned char* image = malloc(n);
    FILE* f = fopen(file, "wb");
    if (image == NULL || f == NULL || iso_pack(b, image, n) != n || fwrite(image, 1, n, f) != n || fclose(f) != 0) {
      return fprintf(stderr, "rank %d: cannot save %s\n", rank, file), 1;
    }
    printf("rank %d saved block %p to %s\n", rank, (void*)b, file);
    free(image);
    return 0;
  }
  FILE* f = fopen(file, "rb");
  if (f == NULL) return fprintf(stderr, "rank %d: cannot open %s\n", rank, file), 1;
  unsigned char image[2 * block_bytes + 4096];
  size_t n = fread(image, 1, sizeof image, f);
  fclose(f);
  unsigned char* b = iso_unpack(image, n);
  if (b == NULL) return fprintf(stderr, "rank %d: iso_unpack: %s\n", rank, iso_last_error()), 1;
  if (*(void**)b != b + 4096) return fprintf(stderr, "rank %d: the inner pointer moved\n", rank), 1;
  unsigned char expect[block_bytes];
  fill(expect, block_bytes, rank);
  if (memcmp(b + sizeof(void*), expect + sizeof(void*), block_bytes - sizeof(void*)) != 0) {
    return fprintf(stderr, "rank %d: contents differ\n", rank), 1;
  }
  if (iso_unpack(image, n) != NULL) return fprintf(stderr, "rank %d: a second unpack was accepted\n", rank), 1;
  printf("rank %d restored block %p from %s\n", rank, (void*)b, file);
  iso_free(b);
  return 0;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int failed = argc != 3 || iso_init(MPI_COMM_WORLD) != 0 ? 1 : run(argv[1], argv[2], rank);
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && !any) printf("BLOCK_FILE_OK\n");
  MPI_Finalize();
  return any;
}
