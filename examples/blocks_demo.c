/* blocks_demo: the isomalloc block interface (isothreads/isomalloc.h) from plain C, on N ranks.
 *
 *   mpirun -n 4 --oversubscribe build/examples/blocks_demo
 *
 * 1. Each rank iso_mallocs a block and builds a linked list inside it: the nodes are scattered
 *    over the block and point at each other, so the block holds absolute addresses.
 * 2. Each rank packs its block (iso_pack), drops its own copy (iso_detach) and sends the image to
 *    the next rank in a ring. The next rank iso_unpacks the image: the block reappears at the
 *    SAME address, so the list can be walked as is, without fixing a single pointer.
 * 3. The receiver iso_frees the block. The range belongs to the rank that allocated it, so it is
 *    sent back; the owner picks it up in iso_progress() and its next iso_malloc hands the same
 *    address out again.
 *
 * Output is gathered to rank 0 after each phase and printed in rank order, each line prefixed
 * with the rank it comes from. Every call is checked; the exit code is nonzero if any check
 * failed on any rank.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */

#include <isothreads/isomalloc.h>
#include <mpi.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
  block_request = 10000, /* bytes asked of iso_malloc: rounded up to whole pages */
  node_count = 6,        /* nodes in each list */
  node_stride = 1024,    /* nodes sit in slots this far apart inside the block */
  text_bytes = 2048,     /* one rank's output for one phase */
  max_polls = 2000       /* phase 3: iso_progress() calls, 1 ms apart, before giving up */
};

struct node {
  struct node* next; /* the following node, inside the same block; NULL ends the list */
  long value;
};

/* Lives at the start of the block. */
struct list_head {
  struct node* first;
  int count;
};

static int g_rank, g_size;
static int g_ok = 1;                  /* 0 once any check failed on this rank */
static char g_text[text_bytes];       /* this rank's output for the current phase */
static size_t g_used;

/* Appends a line to this rank's output for the phase. */
static void say(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(g_text + g_used, sizeof g_text - g_used, fmt, ap);
  va_end(ap);
  if (n > 0) g_used += (size_t)n < sizeof g_text - g_used ? (size_t)n : sizeof g_text - g_used - 1;
  if (g_used + 1 < sizeof g_text) g_text[g_used++] = '\n';
  g_text[g_used] = '\0';
}

/* Records a failed check: printed at once on stderr and in the phase output. */
static void fail(const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "[rank %d] FAILED: %s\n", g_rank, msg);
  say("FAILED: %s", msg);
  g_ok = 0;
}

/* Collective: rank 0 prints every rank's output for the phase, in rank order. */
static void end_phase(const char* title) {
  char* all = NULL;
  if (g_rank == 0) {
    all = malloc((size_t)g_size * text_bytes);
    if (all == NULL) MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Gather(g_text, text_bytes, MPI_CHAR, all, text_bytes, MPI_CHAR, 0, MPI_COMM_WORLD);
  if (g_rank == 0) {
    printf("== %s\n", title);
    for (int r = 0; r < g_size; ++r) {
      char* line = all + (size_t)r * text_bytes;
      line[text_bytes - 1] = '\0';
      for (char* end; *line != '\0'; line = end + 1) {
        end = strchr(line, '\n');
        if (end == NULL) end = line + strlen(line);
        printf("[rank %d] %.*s\n", r, (int)(end - line), line);
        if (*end == '\0') break;
      }
    }
    fflush(stdout);
    free(all);
  }
  g_used = 0;
  g_text[0] = '\0';
}

/* Builds the list in the block: node i sits in slot (i * 5 + rank) mod slots, so the nodes are
 * scattered and the list order differs from the memory order. */
static void build_list(void* block, size_t length) {
  struct list_head* head = block;
  const size_t slots = (length - node_stride) / node_stride; /* slot 0 holds the list_head */
  struct node* prev = NULL;
  head->first = NULL;
  head->count = node_count;
  for (int i = 0; i < node_count; ++i) {
    const size_t slot = 1 + ((size_t)i * 5 + (size_t)g_rank) % slots;
    struct node* n = (struct node*)((char*)block + slot * node_stride);
    n->value = 100L * (g_rank + 1) + i;
    n->next = NULL;
    if (prev == NULL) {
      head->first = n;
    } else {
      prev->next = n;
    }
    prev = n;
  }
}

/* Walks the list: an order-sensitive checksum, and "value@+offset-in-block" of each node written
 * into `text`. Returns -1 if a pointer leaves the block or the list does not have `count` nodes. */
static long walk_list(const void* block, size_t length, char* text, size_t cap) {
  const struct list_head* head = block;
  const char* lo = block;
  const char* hi = lo + length;
  long sum = 0;
  int k = 0;
  size_t used = 0;
  text[0] = '\0';
  for (const struct node* n = head->first; n != NULL; n = n->next, ++k) {
    if ((const char*)n < lo || (const char*)n + sizeof *n > hi || k >= head->count) return -1;
    sum += n->value * (k + 1);
    int w = snprintf(text + used, cap - used, "%s%ld@+%#zx", k == 0 ? "" : " -> ", n->value,
                     (size_t)((const char*)n - lo));
    if (w > 0 && (size_t)w < cap - used) used += (size_t)w;
  }
  return k == head->count ? sum : -1;
}

static void sleep_1ms(void) {
  struct timespec ts = {0, 1000000};
  nanosleep(&ts, NULL);
}

/* What travels with an image: where the block was and what its list added up to. */
struct envelope {
  uint64_t address;
  uint64_t image_bytes; /* 0 if the sender has nothing to send (a check failed there) */
  int64_t checksum;
};

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (iso_init(MPI_COMM_WORLD) != 0) {
    fprintf(stderr, "[rank %d] FAILED: iso_init: %s\n", g_rank, iso_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  const int next = (g_rank + 1) % g_size;
  const int prev = (g_rank + g_size - 1) % g_size;

  /* Phase 1: a block with a list inside. */
  void* mine = iso_malloc(block_request);
  size_t length = 0;
  long checksum = -1;
  char values[512];
  if (mine == NULL) {
    fail("iso_malloc(%d): %s", block_request, iso_last_error());
  } else {
    length = iso_length(mine);
    if (length < block_request) fail("iso_length(%p) = %zu, less than the %d asked", mine, length, block_request);
    if (iso_in_range(mine) != 1) fail("iso_in_range(%p) = %d for a block", mine, iso_in_range(mine));
  }
  if (g_ok) {
    build_list(mine, length);
    checksum = walk_list(mine, length, values, sizeof values);
    if (checksum < 0) fail("the list just built in %p does not walk", mine);
    say("iso_malloc(%d) = %p, %zu bytes; list %s; checksum %ld", block_request, mine, length, values, checksum);
  }
  void* sys = malloc(block_request);
  if (sys == NULL) {
    fail("malloc(%d) failed", block_request);
  } else if (iso_in_range(sys) != 0) {
    fail("iso_in_range(malloc(%d) = %p) = %d, expected 0", block_request, sys, iso_in_range(sys));
  } else {
    say("iso_in_range(malloc(%d) = %p) = 0: system memory is outside the region", block_request, sys);
  }
  free(sys);
  end_phase("phase 1: each rank allocates a block and builds a linked list inside it");

  /* Phase 2: the image goes to the next rank, which unpacks it at the same address. */
  struct envelope out = {(uint64_t)(uintptr_t)mine, 0, checksum};
  void* image = NULL;
  if (g_ok) {
    out.image_bytes = iso_pack_size(mine);
    image = out.image_bytes != 0 ? malloc(out.image_bytes) : NULL;
    if (image == NULL) {
      fail("iso_pack_size(%p) = %zu: %s", mine, (size_t)out.image_bytes, iso_last_error());
      out.image_bytes = 0;
    } else if (iso_pack(mine, image, out.image_bytes) != out.image_bytes) {
      fail("iso_pack(%p): %s", mine, iso_last_error());
      out.image_bytes = 0;
    }
  }
  if (out.image_bytes != 0) {
    /* The image now carries the block: drop the local copy (its range stays reserved) BEFORE the
     * image leaves, since the receiver may free the block, and its range come home, at once. */
    iso_detach(mine);
    if (iso_last_error()[0] != '\0') {
      fail("iso_detach(%p): %s", mine, iso_last_error());
    } else if (iso_length(mine) != 0) {
      fail("iso_length(%p) = %zu after iso_detach, expected 0", mine, iso_length(mine));
    } else if (iso_in_range(mine) != 1) {
      fail("iso_in_range(%p) = %d after iso_detach, expected 1", mine, iso_in_range(mine));
    } else {
      say("iso_pack(%p): a %zu-byte image; iso_detach(%p): iso_length = 0, iso_in_range = 1; "
          "image sent to rank %d", mine, (size_t)out.image_bytes, mine, next);
    }
  }
  struct envelope in;
  MPI_Sendrecv(&out, (int)sizeof out, MPI_BYTE, next, 0, &in, (int)sizeof in, MPI_BYTE, prev, 0,
               MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  void* received_image = malloc(in.image_bytes != 0 ? in.image_bytes : 1);
  if (received_image == NULL) MPI_Abort(MPI_COMM_WORLD, 1);
  MPI_Sendrecv(image, (int)out.image_bytes, MPI_BYTE, next, 1, received_image, (int)in.image_bytes,
               MPI_BYTE, prev, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  void* moved = NULL;
  if (in.image_bytes == 0) {
    fail("rank %d sent no image", prev);
  } else {
    moved = iso_unpack(received_image, in.image_bytes);
    if (moved == NULL) {
      fail("iso_unpack of rank %d's image: %s", prev, iso_last_error());
    } else if ((uint64_t)(uintptr_t)moved != in.address) {
      fail("iso_unpack put rank %d's block at %p, it was at %#llx", prev, moved, (unsigned long long)in.address);
      moved = NULL;
    } else {
      const long sum = walk_list(moved, iso_length(moved), values, sizeof values);
      if (sum != in.checksum) {
        fail("the list in %p walks to checksum %ld, rank %d had %lld", moved, sum, prev, (long long)in.checksum);
      } else {
        say("iso_unpack: rank %d's block is at %p here too (same address); list %s; checksum %ld "
            "(matches)", prev, moved, values, sum);
      }
    }
  }
  free(image);
  free(received_image);
  end_phase("phase 2: each block moves to the next rank by its image and keeps its address");

  /* Phase 3: the receiver frees the block; its range goes home to the rank that allocated it. */
  if (moved != NULL) {
    iso_free(moved);
    if (iso_last_error()[0] != '\0') {
      fail("iso_free(%p): %s", moved, iso_last_error());
    } else if (iso_length(moved) != 0) {
      fail("iso_length(%p) = %zu after iso_free, expected 0", moved, iso_length(moved));
    } else {
      say(prev == g_rank ? "iso_free(%p): released; this rank owns its range"
                         : "iso_free(%p): released here, its range goes back to its owner, rank %d",
          moved, prev);
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (mine != NULL && g_ok && g_size > 1) {
    /* The returned run is the lowest free range of this rank's share, where `mine` was: once
     * iso_progress() has taken it back, iso_malloc hands that address out again. The blocks
     * taken meanwhile are kept, so that each try gets a fresh range. */
    void* tried[max_polls];
    int tries = 0;
    void* again = NULL;
    for (; tries < max_polls; ++tries) {
      iso_progress();
      tried[tries] = iso_malloc(length);
      if (tried[tries] == NULL) {
        fail("iso_malloc(%zu): %s", length, iso_last_error());
        break;
      }
      if (tried[tries] == mine) {
        again = mine;
        break;
      }
      sleep_1ms();
    }
    if (again != NULL) {
      say("iso_progress() x%d: the range of %p came home; iso_malloc(%zu) = %p again", tries + 1,
          mine, length, again);
    } else if (g_ok) {
      fail("the range of %p did not come home within %d polls", mine, max_polls);
    }
    for (int i = 0; i <= tries && i < max_polls; ++i) {
      if (tried[i] != NULL) iso_free(tried[i]);
    }
  } else if (mine != NULL && g_ok) {
    say("one rank: the block moved to this same rank; nothing to send home");
  }
  end_phase("phase 3: the receiver frees the block and the owner gets its range back");

  int all_ok = 0;
  MPI_Allreduce(&g_ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  if (g_rank == 0) {
    if (all_ok) {
      printf("== summary: %d rank%s, %d block%s moved around the ring; every block kept its address "
             "and its list, every range went back to its owner\n",
             g_size, g_size == 1 ? "" : "s", g_size, g_size == 1 ? "" : "s");
    } else {
      printf("== summary: FAILED (see the lines marked FAILED)\n");
    }
    fflush(stdout);
  }
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
