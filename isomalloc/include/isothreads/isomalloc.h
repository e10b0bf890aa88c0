/* isothreads block interface: pages at globally unique virtual addresses.
 *
 * A block returned by iso_malloc on one rank has an address that no other rank will ever hand out
 * while the block exists. Its image (iso_pack) can be moved to another rank, saved to a file, or
 * checkpointed, and iso_unpack puts it back at the SAME address, so pointers into it, and pointers
 * it holds into other blocks, stay valid.
 *
 * Calls return codes, never abort: on failure a call returns 0 / NULL (or does nothing, for the
 * void ones) and iso_last_error() names the problem. iso_init must be called on the OS thread that
 * owns MPI (the one that called MPI_Init). Every other call may be made from any OS thread; they are
 * serialised internally, and only that MPI thread ever makes MPI calls: a block freed on another
 * OS thread goes home to its owner at the MPI thread's next block call or iso_progress (or, under
 * iso::runtime, the scheduler's next poll), and returns from other ranks are handled there too.
 */
#ifndef ISOTHREADS_ISOMALLOC_H
#define ISOTHREADS_ISOMALLOC_H

#include <mpi.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Collective over comm: agrees the isomalloc region (one range of addresses mapped at the same
 * address on every rank of comm) and verifies it. Call after MPI_Init; iso::runtime calls it
 * itself. Returns 0 on success, else a nonzero iso::errc value with iso_last_error() set. Calling
 * it again with the same communicator does nothing.
 *
 * Where it lives: the isomalloc library never calls MPI; what it needs from the other ranks goes
 * through a small interface (region_peers) that its MPI side, the comm library, implements over
 * MPI, and iso_init is defined there. A program using only this header links both: the CMake
 * target isothreads::blocks, or pkg-config's isothreads-blocks (isothreads::isothreads and
 * isothreads.pc include them too). */
int iso_init(MPI_Comm comm);

/* A block of at least `bytes` bytes (rounded up to whole pages; 0 counts as 1), page-aligned, at an
 * address unique across all ranks. Contents are undefined. NULL if iso_init has not run or this
 * rank's share of the region is exhausted. */
void* iso_malloc(size_t bytes);

/* Releases a block held on this rank (allocated here, or unpacked here) and its address range.
 * A pointer that is not such a block, or one freed already, is reported through
 * iso_last_error() and a line on stderr, and nothing is changed. */
void iso_free(void* block);

/* Usable bytes of a block held on this rank (a multiple of the page size); 0 if p is not one. */
size_t iso_length(const void* block);

/* 1 if p lies in the isomalloc region (it may be a block of some rank), 0 otherwise; in particular
 * iso_in_range(malloc(n)) == 0. */
int iso_in_range(const void* p);

/* Bytes of the image of a block held on this rank; 0 if it is not one. */
size_t iso_pack_size(const void* block);

/* Writes the block's image (a header with magic, version, address, length and checksums, then the
 * data) into buffer. Returns the bytes written, or 0 if the block is unknown or capacity is less
 * than iso_pack_size(block). The block is unchanged. */
size_t iso_pack(const void* block, void* buffer, size_t capacity);

/* Restores a block from its image, on any rank, at the address it had, and returns that address.
 * NULL, with nothing mapped or written, if the image is truncated, corrupt, from another format
 * version, outside this run's region, or if the block is already present on this rank. */
void* iso_unpack(const void* image, size_t bytes);

/* After moving a block's image elsewhere: drops this rank's copy (its memory returns to the
 * kernel). The address range stays reserved for the copy; iso_free on the rank holding the copy
 * releases it, wherever that is. If the kernel refuses the pages (madvise fails, as on locked
 * memory), nothing changes: the block is still held here and iso_last_error() says so. */
void iso_detach(void* block);

/* The message of the last failed call on this OS thread, or "" if none failed. */
const char* iso_last_error(void);

/* On the MPI thread: sends home the blocks other OS threads freed, and handles runs returned by
 * other ranks' iso_free calls. Every block call on that thread does this too; a rank that makes no
 * block calls for a long time may call it to recycle memory sooner. From another OS thread it does
 * nothing. An MPI call of this return path that fails (here, or in an earlier block call) loses
 * nothing: what it was to send or receive waits for the next call, and iso_progress reports it
 * through iso_last_error() ("" when all went well); a return path that fails 1000 polls in a row
 * ends the program through the fatal path. */
void iso_progress(void);

#ifdef __cplusplus
}
#endif

#endif /* ISOTHREADS_ISOMALLOC_H */
