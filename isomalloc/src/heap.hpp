// The per-thread heap: malloc/free served entirely from isomalloc chunks, metadata included, so
// that a thread's whole heap is a set of page runs at globally unique addresses that can be
// shipped to another rank and used there unchanged.
//
// Map (sizes in bytes):
//   segment  one 64 KiB chunk (chunk-aligned) holding small and medium blocks. Its first bytes
//            are a segment header (magic, owning heap, per-page descriptors); the rest of page 0
//            and pages 1..15 hold blocks. The heap object itself lives in its first segment.
//   page     4 KiB inside a segment. A small page serves one size class; a medium block is a run
//            of whole pages inside one segment.
//   large    a block too big for a segment gets its own run of chunks: a header at the chunk-
//            aligned run start, the block at run start + one page (or higher, for alignment),
//            always inside the run's first chunk.
// Lookup: the header describing a block at p is at (p - 1) rounded down to 64 KiB (blocks never
// start at a chunk boundary), so free() needs no table and works the same on every rank.
//
// A heap belongs to one thread at a time and is not thread-safe (no locks: the scheduler runs
// every migratable thread of a rank on one OS thread).
#pragma once

#include <cstddef>
#include <cstdint>

namespace iso::detail {

class heap {
 public:
  // A new empty heap in a fresh chunk of this rank's share. Throws iso::error(region_exhausted).
  // The region must be ready. Touches one page.
  static heap* create();
  // Returns every chunk of the heap to its owner (region::free_chunks). The heap and every block
  // in it are gone afterwards. pre: called on the rank where the heap is now.
  void destroy() noexcept;

  // malloc semantics: nullptr when the region is exhausted; alloc(0) returns a unique pointer.
  // Alignment: 16 bytes for every block.
  void* alloc(std::size_t bytes) noexcept;
  // pre: align is a power of two. nullptr on exhaustion or an invalid alignment.
  void* alloc_aligned(std::size_t align, std::size_t bytes) noexcept;
  // realloc semantics (nullptr p allocates; bytes 0 frees and returns nullptr).
  void* realloc(void* p, std::size_t bytes) noexcept;
  // pre: owner_of(p) == this. A pointer that is not the start of a live block of this heap goes
  // to fatal() ("free(0x...): not a live block of thread heap 0x...").
  void free(void* p) noexcept;
  // Usable bytes of the live block at p (>= the size asked for).
  std::size_t usable_size(const void* p) const noexcept;

  // The heap whose chunk holds p, checked by the header's magic; nullptr if p is in no heap chunk
  // (outside the region, a stack, a block of the C block interface, or memory decommitted after
  // its thread left this rank).
  static heap* owner_of(const void* p) noexcept;

  // Visits the page runs that hold live data or heap metadata, in ascending address order,
  // adjacent pages merged: f(void* addr, std::size_t bytes). Free pages are not visited: a
  // thread's image carries exactly these runs.
  template <class F>
  void for_each_extent(F&& f) const;
  // Sum of the bytes for_each_extent visits.
  std::size_t extent_bytes() const noexcept;

  // The heap as one self-describing image (header with magic, version, checksums; extent table;
  // data) and back. read_image copies the extents to their original addresses on this rank and
  // returns the heap, which then serves alloc/free as before; throws iso::error(corrupt_image)
  // naming what failed before writing anything.
  std::size_t image_bytes() const noexcept;
  void write_image(void* buffer) const noexcept;  // pre: buffer holds image_bytes()
  static heap* read_image(const void* image, std::size_t bytes);

  // Gives the physical memory of free pages back to the kernel (madvise), keeping the addresses.
  void trim() noexcept;

  // Full consistency check: headers, descriptors, free lists, live counts, extents.
  bool is_valid() const noexcept;

  struct stats_t {
    std::size_t live_blocks = 0;   // blocks allocated and not freed
    std::size_t live_bytes = 0;    // their usable bytes
    std::size_t segments = 0;      // 64 KiB segments owned
    std::size_t large_runs = 0;    // dedicated runs for large blocks
  };
  stats_t stats() const noexcept;
};

}  // namespace iso::detail
