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
//            aligned run start, the block at run start + one page (or + its alignment, below
//            64 KiB). A block aligned to 64 KiB or more starts on a chunk boundary with its header
//            one chunk below, the run sized to hold both wherever the boundary falls.
// Lookup: the header describing a block at p is at (p - 1) rounded down to 64 KiB (only those
// 64 KiB-aligned large blocks start on a chunk boundary), so free() needs no table and works the
// same on every rank.
//
// A heap belongs to one thread at a time and is not locked: the scheduler runs every migratable
// thread of a rank on one OS thread, the heap thread (ownership.hpp). Other OS threads only push
// the blocks they free onto thread_free_, which the heap thread collects. The gate says where the
// heap is in use: on one rank at most, and nowhere while its thread is in transit or after it left
// (ownership.hpp states the invariant).
//
// Size classes: 16-byte steps up to 128, then four per doubling (~25% apart) up to 1 KiB, then
// 1360 and 2032 (three and two per page); blocks of a power-of-two class are aligned to their
// size. Medium blocks: 1..8 whole pages (up to 32 KiB). Larger: a dedicated run.
// A fresh heap touches one page: page 0 of its first segment holds the segment header (832
// bytes), the heap object (320 bytes, from offset 896), the bytes reserved at create() (if any; a migratable
// thread's TCB, 304 bytes) and the blocks of the first size class used; each further class takes
// a page of its own.
// Recycling: a small page whose last block is freed goes back to its segment's free pages, unless
// it is its class's only page with room (kept, so that alloc + free of one block in a loop stays
// on the fast path) and it does not alone keep a segment other than the first from going back to
// the region. A segment with no live block left goes back to the region at once.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "ownership.hpp"
#include "region.hpp"

namespace iso::detail {

class heap {
 public:
  // A new empty heap, in use here, in `warm` (a chunk retire() returned on this rank) or else in
  // a fresh chunk of this rank's share; the calling OS thread becomes the heap thread
  // (claim_heap_thread). Throws iso::error(region_exhausted). The region must be ready. Touches
  // one page (in a warm chunk, the page the retired heap's header had faulted in already). The
  // new heap has a new id(), so nothing recorded for the heap that lived there before (a delayed
  // free, a pointer with its heap's identity) is ever taken for one of the new heap's.
  //
  // reserve: bytes (at most max_reserve_bytes) set aside right after the heap object in the first
  // segment's header, 16-byte aligned, for its user's own record (the threads module keeps a
  // thread's control block there): no block, never freed, in the page a fresh heap touches anyway
  // (so a heap whose first small class fits beside it stays on one page), travelling in the heap's
  // image with the header; reserved() gives its address.
  static constexpr std::size_t max_reserve_bytes = 512;
  static heap* create(void* warm = nullptr, std::size_t reserve = 0);
  void* reserved() const noexcept {
    return const_cast<char*>(reinterpret_cast<const char*>(this)) + reserve_offset();
  }
  // Closes the gate and returns every chunk of the heap to its owner (region::free_chunks). The
  // heap and every block in it are gone afterwards. pre: on the heap thread of the rank where the
  // heap is in use.
  void destroy() noexcept;
  // destroy() except for the first segment: its chunk, header magic cleared (no heap owns it, so
  // frees into it are refused as foreign), stays allocated to the caller, committed, and is
  // returned for a later create(warm) on this rank or region::free_chunks(chunk, 1).
  // destroy() == free_chunks(retire(), 1). Same precondition as destroy().
  void* retire() noexcept;

  // free() and realloc() of the interposer for a pointer in the region, from any OS thread: the
  // block goes back to the heap that holds it when that heap is in use here (from another OS
  // thread: through thread_free_; realloc from another OS thread moves the block to the system
  // heap, that thread's allocator); anything else is refused as foreign (refuse_foreign_free) and
  // changes nothing, realloc then returning nullptr. pre: in_region(p).
  static void free_any(void* p) noexcept;  // inline: below
  static void* realloc_any(void* p, std::size_t bytes) noexcept;

  // True if the heap is in use on this rank (its gate is open here).
  bool in_use_here() const noexcept {
    return gate_.load(std::memory_order_relaxed) == static_cast<std::uint32_t>(region_rank) + 1;
  }
  // For another OS thread that frees a block of this heap: the heap's identity, read before the
  // gate (in_use_here_as); 0 once the heap is gone.
  std::uint64_t id_before_gate() const noexcept { return __atomic_load_n(&id_, __ATOMIC_ACQUIRE); }
  // The gate is open here and the heap is still the one with identity id, read before
  // (id_before_gate): a warm create in the same chunk meanwhile (a new identity, the gate opened
  // after it, reopen) is not taken for the heap the block belonged to, as it would be by the gate
  // alone, whose value is the same for both.
  bool in_use_here_as(std::uint64_t id) const noexcept {
    return gate_.load(std::memory_order_acquire) == static_cast<std::uint32_t>(region_rank) + 1 &&
           __atomic_load_n(&id_, __ATOMIC_RELAXED) == id;
  }
  // A free from an OS thread other than the heap thread (free_any, realloc_any) of p, a block of
  // this heap whose identity that thread read as `id` before it read the gate (id_before_gate):
  // into the calling thread's ring, else (the ring full) onto thread_free_; refused as foreign
  // (refuse_foreign_free) when the heap is not in use here as that heap (in_use_here_as).
  void free_from_other_thread(void* p, std::uint64_t id) noexcept;
  // Its thread leaves this rank for `dest`: closes the gate (waiting for other OS threads that are
  // pushing a free right now), collects the delayed frees, and records `label` and dest for
  // messages. From now on frees of its blocks are refused here. pre: on the heap thread.
  void leave(int dest, const char* label) noexcept;
  // The heap has landed on this rank (an arrival, a restart): opens the gate here; the calling OS
  // thread becomes the heap thread.
  void arrive() noexcept;
  // Returns the blocks other OS threads freed (the rings, and thread_free_) to their pages.
  // pre: heap thread.
  void collect() noexcept;
  // This heap's identity: unique among every heap of the run (and of a run restarted from it), and
  // 0 once destroyed. Chunk headers carry it, so that a pointer recorded with it can later be told
  // apart from one into the same address after the chunk went to another heap.
  std::uint64_t id() const noexcept { return id_; }
  // The heap that holds p if it is still the heap with identity `id`; else null.
  static heap* owner_with_id(const void* p, std::uint64_t id) noexcept;
  // The thread that used the heap when it last left a rank ("" if it never left), and where to.
  const char* label() const noexcept { return left_for_ >= 0 ? label_ : ""; }
  int left_for() const noexcept { return left_for_; }

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
  static heap* owner_of(const void* p) noexcept;  // inline: below

  // Visits the page runs that hold live data or heap metadata, in ascending address order,
  // adjacent pages merged: f(void* addr, std::size_t bytes). Free pages are not visited: a
  // thread's image carries exactly these runs.
  template <class F>
  void for_each_extent(F&& f) const;
  // The same, to the byte: of page 0 of a segment only its header and the blocks carved so far,
  // of another small page only its carved blocks, of a large block's header page only the header
  // (the rest of those pages holds nothing that is ever read before it is written), adjacent
  // ranges merged. A migration carries exactly these (migrate/internal/image.hpp): a small
  // thread's image is then its live bytes rather than its pages.
  template <class F>
  void for_each_live_range(F&& f) const;
  // Visits every chunk run the heap holds (its segments and large runs), whatever is live in
  // them: f(void* run, std::size_t chunks). A restart claims exactly these.
  template <class F>
  void for_each_run(F&& f) const;
  // Sum of the bytes for_each_extent visits.
  std::size_t extent_bytes() const noexcept;

  // The heap as one self-describing image (header with magic, version, checksums; extent table;
  // data) and back. read_image copies the extents to their original addresses on this rank and
  // returns the heap, which then serves alloc/free as before; throws iso::error(corrupt_image)
  // naming what failed before writing anything. It does not claim the heap's chunks in the
  // region: the caller holds them (a migration keeps them allocated on their owner).
  std::size_t image_bytes() const noexcept;
  void write_image(void* buffer) const noexcept;  // pre: buffer holds image_bytes()
  static heap* read_image(const void* image, std::size_t bytes);

  // Gives the physical memory of free pages back to the kernel (madvise), keeping the addresses.
  void trim() noexcept;
  // Before the heap's extents are shipped: small pages with no live block forget their free
  // lists (such pages are not in the image, so their contents do not travel). No system call.
  void drop_empty_pages() noexcept;

  // Full consistency check: headers, descriptors, free lists, live counts, extents.
  bool is_valid() const noexcept;

  struct stats_t {
    std::size_t live_blocks = 0;   // blocks allocated and not freed
    std::size_t live_bytes = 0;    // their usable bytes
    std::size_t segments = 0;      // 64 KiB segments owned
    std::size_t large_runs = 0;    // dedicated runs for large blocks
  };
  stats_t stats() const noexcept;

  heap(const heap&) = delete;
  heap& operator=(const heap&) = delete;

 private:
  static constexpr std::size_t page_bytes = 4096;
  static constexpr std::size_t pages_per_segment = chunk_bytes / page_bytes;  // 16
  static constexpr unsigned small_classes = 22;
  static constexpr std::size_t small_max = 2032;         // largest small class, bytes
  static constexpr std::size_t medium_max_pages = 8;     // largest medium block, pages

  enum class page_kind : std::uint8_t {
    free,         // in the segment's free mask; holds nothing (page 0: only the header)
    small,        // serves one size class
    medium,       // first page of a medium block of `span` pages
    medium_tail,  // a later page of a medium block
  };

  // A free block of a small page; the rest of its bytes are garbage.
  struct block {
    block* next;
  };

  // A page descriptor. Small page: used + |free| + untouched == capacity, where untouched ==
  // (start + capacity * block_bytes - bump) / block_bytes; blocks sit at start + k * block_bytes;
  // free holds only carved blocks (below bump). in_avail == 1 exactly when the page is on
  // its class's list (cur_[cls]). Medium head: used == 1, span pages of kind medium_tail follow it.
  struct page {
    block* free;                // intrusive list of free carved blocks
    page* next;                 // on the class's list of pages with room
    page* prev;
    std::uint64_t divisor;      // UINT64_MAX / block_bytes + 1: k % block_bytes == 0 iff k * divisor < divisor
    std::uint32_t block_bytes;  // size class, bytes
    std::uint16_t used;         // live blocks
    std::uint16_t capacity;     // blocks that fit between start and the page end
    std::uint16_t start;        // offset of the first block in the page, bytes (nonzero in page 0 only)
    std::uint16_t bump;         // offset of the first never-carved byte, bytes
    page_kind kind;
    std::uint8_t cls;           // size class index (small)
    std::uint8_t in_avail;      // 1 if on the class's list (cur_[cls])
    std::uint8_t span;          // pages in the medium block (medium head)
  };
  static_assert(sizeof(page) == 48);

  // What sits at the start of every chunk run of a heap: the first chunk of a segment, or the
  // chunk holding a large block's header. magic identifies the kind; the heap links all of its
  // runs through next/prev (order arbitrary until for_each_extent sorts them by address).
  struct chunk_header {
    std::uint64_t magic;  // segment_magic or large_magic; 0 once given back
    heap* owner;
    chunk_header* next;
    chunk_header* prev;
    std::uint64_t heap_id;  // owner->id_ when the chunk joined it
  };

  // A segment. free_mask bit i == 1 iff pages[i].kind == free; the segment is on the heap's
  // space list iff (free_mask & ~1) != 0 (page 0 is too small for a medium block, so a segment
  // whose only free page is page 0 is not worth finding). Page 0's blocks start after
  // header_bytes.
  struct segment : chunk_header {
    segment* space_next;        // on heap::space_
    segment* space_prev;
    std::uint32_t free_mask;    // bit per page
    std::uint32_t header_bytes; // this header, plus the heap object in the first segment, bytes
    page pages[pages_per_segment];
  };

  // A large block's header, at (block - 1) rounded down to a chunk. The run is
  // [run, run + run_chunks * chunk_bytes) and holds the header's chunk; the block is at
  // this + block_offset and usable + block_offset <= run end - this.
  struct large : chunk_header {
    std::uintptr_t run;         // first chunk of the run
    std::size_t run_chunks;     // chunks in the run
    std::size_t block_offset;   // bytes from the header to the block (4096, an alignment, or 64 KiB)
    std::size_t usable;         // bytes of the block, a multiple of page_bytes
  };

  using extent_fn = void (*)(void* ctx, void* addr, std::size_t bytes);

  // Where the heap object sits in its first segment, where the reserved bytes start (from the
  // heap object), and that segment's header bytes without reserved bytes and with `reserve`.
  // The hot line (magic_ onwards) is 128-byte aligned in the chunk: see the members.
  static constexpr std::size_t heap_cold_bytes = 256;  // offset of magic_ in the object
  static constexpr std::size_t heap_offset() noexcept {
    return (sizeof(segment) + heap_cold_bytes + 127) / 128 * 128 - heap_cold_bytes;
  }
  static constexpr std::size_t reserve_offset() noexcept { return (sizeof(heap) + 15) / 16 * 16; }
  static constexpr std::uint32_t first_header_bytes() noexcept {
    return static_cast<std::uint32_t>(heap_offset() + sizeof(heap));
  }
  static constexpr std::uint32_t first_header_bytes(std::size_t reserve) noexcept {
    return reserve == 0 ? first_header_bytes()
                        : static_cast<std::uint32_t>(heap_offset() + reserve_offset() + (reserve + 15) / 16 * 16);
  }

  static constexpr std::uint64_t segment_magic = 0x47455368746f7369ull;  // "isothSEG"
  static constexpr std::uint64_t large_magic = 0x47524c68746f7369ull;    // "isothLRG"
  static const chunk_header* header_of(std::uintptr_t a) noexcept;  // the header describing a, or null
  // header_of's rare case, out of line: a % chunk_bytes == 0.
  static const chunk_header* aligned_large_header(std::uintptr_t a) noexcept;

  heap() noexcept;
  // create(warm)'s set-up of the object retire() left in the chunk: the hot line only.
  void reopen() noexcept;
  segment* first_segment() const noexcept;
  static segment* segment_of(const page* pg) noexcept;
  static unsigned page_index(const page* pg) noexcept;
  static char* page_address(const page* pg) noexcept;
  static std::size_t good_size(std::size_t bytes) noexcept;  // usable bytes alloc(bytes) gives

  inline void* alloc_class(unsigned cls) noexcept;
  void* alloc_small_slow(unsigned cls) noexcept;
  void* alloc_medium(std::size_t pages) noexcept;
  void* alloc_large(std::size_t bytes, std::size_t align) noexcept;
  static void carve(page* pg) noexcept;  // pre: pg->free empty, untouched blocks left
  page* take_small_page(unsigned cls) noexcept;
  segment* new_segment() noexcept;
  // clear_pages false: mem's descriptors are all free already (a chunk retire() returned).
  segment* setup_segment(void* mem, std::uint32_t header_bytes, bool clear_pages = true) noexcept;

  void free_slow(void* p) noexcept;
  static void free_unusual(void* p, heap* h) noexcept;  // free_any's cases off the fast path
  void close_gate() noexcept;
  [[noreturn]] void bad_free(const void* p) const noexcept;
  void small_page_slow(page* pg) noexcept;
  // Whether pg holds live data: a page of a medium block, or a small page with a live block. The
  // other pages (page_kind has four kinds) are exactly the free ones and the empty small ones.
  static bool holds_data(const page& pg) noexcept {
    return pg.kind == page_kind::medium || pg.kind == page_kind::medium_tail ||
           (pg.kind == page_kind::small && pg.used != 0);
  }
  static bool segment_idle(const segment* s) noexcept;  // no live block: only free or empty small pages
  // What a free page's descriptor holds (kind free, on no list; the rest is garbage that taking
  // the page rewrites): release_pages, and retire for the first segment kept warm.
  static void mark_free(page& pg) noexcept {
    pg.kind = page_kind::free;
    pg.in_avail = 0;
  }
  void release_pages(segment* s, unsigned first, unsigned n) noexcept;
  void release_segment(segment* s) noexcept;

  void avail_push_front(page* pg) noexcept;
  void avail_insert_second(page* pg) noexcept;
  void avail_unlink(page* pg) noexcept;
  void chunks_push(chunk_header* c) noexcept;
  void chunks_unlink(chunk_header* c) noexcept;
  void space_push(segment* s) noexcept;
  void space_unlink(segment* s) noexcept;
  void sort_chunks() const noexcept;

  void reset_empty_pages(bool decommit) noexcept;
  void visit_extents(extent_fn fn, void* ctx, bool live_bytes = false) const;
  void visit_runs(extent_fn fn, void* ctx) const;  // fn(ctx, run, chunks)
  static bool small_page_valid(const segment* s, unsigned idx) noexcept;
  bool segment_valid(const segment* s) const noexcept;

  // The gate: gate_ is rank + 1 where the heap is in use (0: nowhere), written by the heap thread
  // only; pushers_ counts the other OS threads inside free_from_other_thread's push now. A pusher
  // counts itself, then (heavy_barrier) reads the gate; the heap thread closes the gate with a
  // plain store, then (light_barrier) reads the count: so either the pusher sees the gate closed
  // or the heap thread sees it counted and waits, and closing takes no locked instruction (it cost
  // half of a warm heap's create + retire).
  // Two parts, so that creating and retiring a heap that allocates nothing touches one line of it
  // (a batch of 10,000 spawns fetches every line it touches cold): the cold part first (written
  // only when a size class is first used, by leave(), and once when the chunk is new), then the
  // hot line, at a 128-byte boundary of the chunk (heap_offset) and followed by the reserved bytes,
  // so that it and their first line (a thread's control block) make one adjacent-line pair.
  // Cold part.
  page* cur_[small_classes];          // head of the class's list of pages with room (only the head
                                      // may be full), or &empty_; every entry whose bit is clear in
                                      // classes_used_ is &empty_ (retire() keeps that for create(warm))
  page empty_;                        // never has a free block: cur_[c] == &empty_ sends alloc to the slow
                                      // path; all zero, never written after the chunk's first heap
  char label_[20];                    // the thread's name when it last left ("home:serial"),
                                      // NUL-terminated; meaningful only if left_for_ >= 0
  // Hot line: what create, retire and every free read or write. Other OS threads read id_ and
  // gate_ on every free (magic_ only the rank's own thread reads, in is_valid); cur_ (the lines
  // the heap thread writes on every allocation) is apart.
  alignas(64) std::uint64_t magic_;   // heap_magic
  std::uint64_t id_;                  // see id()
  std::atomic<std::uint32_t> gate_;   // see above
  std::atomic<std::uint32_t> pushers_;
  std::atomic<block*> thread_free_;   // blocks freed by other OS threads, linked through their first
                                      // word (any kind of block); still live to their pages
  mutable chunk_header* chunks_;      // every segment and large run of the heap
  segment* space_;                    // segments with a free page other than page 0
  std::int32_t left_for_;             // the rank its thread last left for; -1: never left
  std::uint32_t classes_used_;        // bit c set once cur_[c] may be other than &empty_
};

template <class F>
void heap::for_each_extent(F&& f) const {
  visit_extents(
      [](void* ctx, void* addr, std::size_t bytes) {
        (*static_cast<std::remove_reference_t<F>*>(ctx))(addr, bytes);
      },
      const_cast<void*>(static_cast<const void*>(std::addressof(f))));
}

template <class F>
void heap::for_each_live_range(F&& f) const {
  visit_extents(
      [](void* ctx, void* addr, std::size_t bytes) {
        (*static_cast<std::remove_reference_t<F>*>(ctx))(addr, bytes);
      },
      const_cast<void*>(static_cast<const void*>(std::addressof(f))), true);
}

template <class F>
void heap::for_each_run(F&& f) const {
  visit_runs(
      [](void* ctx, void* run, std::size_t chunks) {
        (*static_cast<std::remove_reference_t<F>*>(ctx))(run, chunks);
      },
      const_cast<void*>(static_cast<const void*>(std::addressof(f))));
}

inline void heap::free_any(void* p) noexcept {
  heap* h = owner_of(p);  // free_unusual reads the identity of h before its gate
  // On the heap thread, and its heap is in use here (t_heap_tag).
  if (h != nullptr && h->gate_.load(std::memory_order_relaxed) == t_heap_tag) [[likely]] {
    h->free(p);
    return;
  }
  free_unusual(p, h);
}

// Inline for free()'s and drain_rings' sake: the common case is one masked load and a compare.
inline const heap::chunk_header* heap::header_of(std::uintptr_t a) noexcept {
  if (!in_region(reinterpret_cast<const void*>(a))) return nullptr;
  if (a % chunk_bytes == 0) return aligned_large_header(a);
  const auto* c = reinterpret_cast<const chunk_header*>(a & ~(chunk_bytes - 1));
  return c->magic == segment_magic || c->magic == large_magic ? c : nullptr;
}

inline heap* heap::owner_of(const void* p) noexcept {
  const chunk_header* c = header_of(reinterpret_cast<std::uintptr_t>(p));
  return c != nullptr ? c->owner : nullptr;
}

inline heap* heap::owner_with_id(const void* p, std::uint64_t id) noexcept {
  const chunk_header* c = header_of(reinterpret_cast<std::uintptr_t>(p));
  if (c == nullptr || c->heap_id != id || !in_region(c->owner)) return nullptr;
  return c->owner->id_ == id ? c->owner : nullptr;
}

}  // namespace iso::detail
