#include "heap.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <new>
#include <thread>

#include "checksum.hpp"
#include "diag.hpp"

namespace iso::detail {
namespace {

constexpr std::uint64_t heap_magic = 0x50414868746f7369ull;     // "isothHAP"
constexpr std::uint64_t image_magic = 0x50454869736f0a01ull;    // "\x01\nosiHEP"
constexpr std::uint32_t image_version = 1;

// Block sizes of the small classes, bytes. Every power of two from 32 to 1024 is a class, so an
// aligned request up to 1 KiB is a small block of that class (see page0_start).
constexpr std::uint32_t class_bytes[] = {16,  32,  48,  64,  80,  96,  112, 128,  160,  192,  224,
                                         256, 320, 384, 448, 512, 640, 768, 896, 1024, 1360, 2032};

// class_of[(bytes + 15) / 16] is the smallest class holding `bytes` (bytes <= 2032).
constexpr auto class_of = [] {
  std::array<std::uint8_t, 128> t{};
  std::uint8_t c = 0;
  for (std::size_t i = 0; i < t.size(); ++i) {
    while (class_bytes[c] < i * 16) ++c;
    t[i] = c;
  }
  return t;
}();
static_assert(class_bytes[class_of[127]] == 2032 && class_of[0] == 0 && class_of[1] == 0);

// In page 0 blocks start after the header; a power-of-two class starts at a multiple of its size,
// so that every block of that class is aligned to its size (other pages start at 0).
constexpr std::uint32_t page0_start(std::uint32_t header_bytes, std::uint32_t block_bytes) {
  // A power of two (tested without std::has_single_bit, a library call to popcount on x86-64
  // without -mpopcnt, on the path of every spawn).
  const std::uint32_t a = (block_bytes & (block_bytes - 1)) == 0 ? block_bytes : 16;
  return (header_bytes + a - 1) & ~(a - 1);
}

constexpr std::uint64_t divisor_of(std::uint32_t block_bytes) {
  return UINT64_MAX / block_bytes + 1;
}

// divisor_of of each class, so that taking a page for a class divides nothing (a spawn takes two).
constexpr auto class_divisor = [] {
  std::array<std::uint64_t, std::size(class_bytes)> t{};
  for (std::size_t c = 0; c < t.size(); ++c) t[c] = divisor_of(class_bytes[c]);
  return t;
}();

// x / b for the block size b whose divisor_of is `divisor`: exact for x, b < 2^32, since
// divisor - 2^64 / b lies in (0, 1].
__extension__ using uint128 = unsigned __int128;  // GCC and Clang: the high half of a 64x64 product
constexpr std::uint32_t divide(std::uint32_t x, std::uint64_t divisor) {
  return static_cast<std::uint32_t>((static_cast<uint128>(x) * divisor) >> 64);
}
static_assert(divide(4096 - 48, divisor_of(48)) == (4096 - 48) / 48 && divide(4096, divisor_of(2032)) == 2 &&
              divide(4095, divisor_of(1024)) == 3 && divide(4096, divisor_of(16)) == 256);

std::uintptr_t addr_of(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }
std::uintptr_t chunk_floor(std::uintptr_t a) { return a & ~(chunk_bytes - 1); }
std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

// Image layout: image_header, `extents` image_extent entries, then the extents' bytes in order.
struct image_header {
  std::uint64_t magic;            // image_magic
  std::uint32_t version;          // image_version
  std::uint32_t header_bytes;     // sizeof(image_header)
  std::uint64_t heap;             // address of the heap object
  std::uint64_t extents;          // entries in the table
  std::uint64_t data_bytes;       // sum of the extents' bytes
  std::uint64_t data_checksum;    // checksum64 of the data
  std::uint64_t header_checksum;  // checksum64 of the fields above and the table
};
struct image_extent {
  std::uint64_t addr;   // page-aligned
  std::uint64_t bytes;  // a multiple of the page size
};

std::uint64_t header_sum(const image_header& h, const void* table) {
  const std::uint64_t s = checksum64(&h, offsetof(image_header, header_checksum), image_magic);
  return checksum64(table, h.extents * sizeof(image_extent), s);
}

// A null-terminated doubly linked list with a head pointer, threaded through T's members Next
// and Prev: push at the front, unlink from anywhere, both O(1). pre: x is in no such list (push),
// x is in the list at head (unlink).
template <auto Next, auto Prev, class T>
void list_push(T*& head, T* x) noexcept {
  x->*Prev = nullptr;
  x->*Next = head;
  if (head != nullptr) head->*Prev = x;
  head = x;
}
template <auto Next, auto Prev, class T>
void list_unlink(T*& head, T* x) noexcept {
  if (x->*Prev != nullptr) {
    (x->*Prev)->*Next = x->*Next;
  } else {
    head = x->*Next;
  }
  if (x->*Next != nullptr) (x->*Next)->*Prev = x->*Prev;
}

}  // namespace

namespace {
// Heap identities: a per-process random start (so that heaps restored from a checkpoint, made by
// an earlier process, are not confused with new ones), then a counter, mixed (splitmix64).
// Only the heap thread creates heaps (create() claims it), so the counter has one writer and
// needs no locked increment (a fetch_add cost a tenth of a warm spawn's heap work).
// The counter is 0 until the first heap draws its start (not a function-local static, whose guard
// every spawn would test besides).
constinit std::atomic<std::uint64_t> g_heap_counter{0};
std::uint64_t next_heap_id() noexcept {
  std::uint64_t last = g_heap_counter.load(std::memory_order_relaxed);
  if (last == 0) [[unlikely]] last = prim::cycles() ^ (static_cast<std::uint64_t>(region_rank) << 48);
  const std::uint64_t next = last + splitmix64_step;
  g_heap_counter.store(next, std::memory_order_relaxed);
  const std::uint64_t z = splitmix64_mix(next);
  return z != 0 ? z : 1;
}
}  // namespace

heap::heap() noexcept
    : empty_{},
      magic_(heap_magic),
      id_(next_heap_id()),
      gate_(static_cast<std::uint32_t>(region_rank) + 1),
      pushers_(0),
      thread_free_(nullptr),
      chunks_(nullptr),
      space_(nullptr),
      left_for_(-1),
      classes_used_(0) {
  static_assert(offsetof(heap, magic_) == heap_cold_bytes && sizeof(heap) == heap_cold_bytes + 64 &&
                (sizeof(segment) + heap_cold_bytes - 1) / 128 * 128 < heap_offset() + heap_cold_bytes);
  std::fill(std::begin(cur_), std::end(cur_), &empty_);
}

inline void heap::reopen() noexcept {
  // The cold part is as retire() left it: every cur_ entry &empty_ (so empty_'s address, the same
  // in the same chunk, is what they hold), empty_ untouched since the chunk's first heap.
  ISO_ASSERT_EXPENSIVE(empty_.free == nullptr &&
                       std::all_of(std::begin(cur_), std::end(cur_), [this](const page* pg) { return pg == &empty_; }));
  magic_ = heap_magic;
  __atomic_store_n(&id_, next_heap_id(), __ATOMIC_RELAXED);  // read by other OS threads (id_before_gate)
  thread_free_.store(nullptr, std::memory_order_relaxed);
  chunks_ = nullptr;
  space_ = nullptr;
  left_for_ = -1;
  classes_used_ = 0;
  // Last, with release: a pusher that sees it open sees the new identity (in_use_here_as), and
  // what it pushes is never cleared above.
  gate_.store(static_cast<std::uint32_t>(region_rank) + 1, std::memory_order_release);
}

heap* heap::create(void* warm, std::size_t reserve) {
  static_assert(std::size(class_bytes) == small_classes && class_bytes[small_classes - 1] == small_max);
  static_assert(page0_start(first_header_bytes(max_reserve_bytes), 1024) + 1024 <= page_bytes &&
                page0_start(first_header_bytes(max_reserve_bytes), small_max) + small_max <= page_bytes,
                "page 0 of the first segment must hold blocks of the 1 KiB and largest classes");
  ISO_ASSERT(reserve <= max_reserve_bytes);
  claim_heap_thread();
  if (warm != nullptr) {
    // The object retire() left there is reused, not constructed again: its cold part (four lines)
    // is not rewritten, and neither are the chunk's page descriptors (retire() left them free:
    // 768 bytes, twelve lines), lines that a batch of spawns would otherwise fetch cold.
    auto* h = std::launder(reinterpret_cast<heap*>(static_cast<char*>(warm) + heap_offset()));
    h->reopen();
    h->setup_segment(warm, first_header_bytes(reserve), false);
    return h;
  }
  ISO_ASSERT(prim::page_size() == page_bytes);  // a warm chunk's first heap checked it
  void* mem = region::get().alloc_chunks(1);
  heap* h = new (static_cast<char*>(mem) + heap_offset()) heap();
  h->setup_segment(mem, first_header_bytes(reserve));
  return h;
}

heap::segment* heap::setup_segment(void* mem, std::uint32_t header_bytes, bool clear_pages) noexcept {
  auto* s = new (mem) segment;
  s->magic = segment_magic;
  s->owner = this;
  s->heap_id = id_;
  s->free_mask = (1u << pages_per_segment) - 1;
  s->header_bytes = header_bytes;
  if (clear_pages) {
    for (page& pg : s->pages) pg = page{};
  } else {
    ISO_ASSERT_EXPENSIVE(std::all_of(std::begin(s->pages), std::end(s->pages), [](const page& pg) {
      return pg.kind == page_kind::free && pg.in_avail == 0;
    }));
  }
  chunks_push(s);
  space_push(s);
  return s;
}

heap::segment* heap::new_segment() noexcept {
  void* mem;
  try {
    mem = region::get().alloc_chunks(1);
  } catch (...) {
    return nullptr;
  }
  return setup_segment(mem, sizeof(segment));
}

void heap::destroy() noexcept { region::get().free_chunks(retire(), 1); }

void* heap::retire() noexcept {
  segment* first = first_segment();
  // Its header line is written below: fetched while the gate closes (the rings drained, the
  // pushers awaited).
  __builtin_prefetch(first, 1);
  close_gate();  // frees from other OS threads are refused from now on
  for (chunk_header* c = chunks_; c != nullptr;) {
    chunk_header* next = c->next;
    if (c != first) {
      const bool is_large = c->magic == large_magic;
      c->magic = 0;
      if (is_large) {
        auto* l = static_cast<large*>(c);
        region::get().free_chunks(reinterpret_cast<void*>(l->run), l->run_chunks);
      } else {
        region::get().free_chunks(c, 1);
      }
    }
    c = next;
  }
  // The first segment's descriptors are left free (page_kind::free, off every list), what a free
  // page's descriptor holds besides being garbage that a page taken rewrites, and every class
  // list empty: create(warm) then skips both. Usually one page (page 0) is not free here, and a
  // class or two were used.
  for (std::uint32_t m = ~first->free_mask & ((1u << pages_per_segment) - 1); m != 0; m &= m - 1) {
    mark_free(first->pages[std::countr_zero(m)]);
  }
  for (std::uint32_t m = classes_used_; m != 0; m &= m - 1) cur_[std::countr_zero(m)] = &empty_;
  classes_used_ = 0;
  magic_ = 0;
  // Other OS threads read id_ atomically (id_before_gate, in_use_here_as): a plain store would
  // race with them.
  __atomic_store_n(&id_, 0, __ATOMIC_RELAXED);
  first->magic = 0;
  return first;
}

// These small helpers are inline: the library is position-independent code, and GCC does not
// inline a function of default visibility into its own translation unit's callers otherwise (it
// could be interposed), so each was a call on every spawn's path.
inline heap::segment* heap::first_segment() const noexcept {
  return reinterpret_cast<segment*>(chunk_floor(addr_of(this)));
}
inline heap::segment* heap::segment_of(const page* pg) noexcept {
  return reinterpret_cast<segment*>(chunk_floor(addr_of(pg)));
}
inline unsigned heap::page_index(const page* pg) noexcept {
  return static_cast<unsigned>(pg - segment_of(pg)->pages);
}
inline char* heap::page_address(const page* pg) noexcept {
  return reinterpret_cast<char*>(segment_of(pg)) + page_index(pg) * page_bytes;
}

// ---- allocation --------------------------------------------------------------------------------

inline void* heap::alloc_class(unsigned cls) noexcept {
  page* pg = cur_[cls];
  block* b = pg->free;
  if (b == nullptr) [[unlikely]] return alloc_small_slow(cls);
  pg->free = b->next;
  ++pg->used;
  return b;
}

void* heap::alloc(std::size_t bytes) noexcept {
  if (bytes <= small_max) [[likely]] {
    return alloc_class(class_of[(bytes + 15) >> 4]);
  }
  if (bytes <= medium_max_pages * page_bytes) return alloc_medium((bytes + page_bytes - 1) / page_bytes);
  return alloc_large(bytes, page_bytes);
}

void* heap::alloc_aligned(std::size_t align, std::size_t bytes) noexcept {
  if (!std::has_single_bit(align)) return nullptr;
  if (align <= 16) return alloc(bytes);
  if (const std::size_t need = std::max(bytes, align); need <= 1024) {
    return alloc_class(class_of[std::bit_ceil(need) >> 4]);
  }
  if (align <= page_bytes && bytes <= medium_max_pages * page_bytes) {
    return alloc_medium(std::max<std::size_t>(1, (bytes + page_bytes - 1) / page_bytes));
  }
  return alloc_large(bytes, std::max(align, page_bytes));
}

// Carves the next never-used blocks of the page into its free list: about carve_bytes' worth at
// a time (at least one block), so that a new thread's first allocations do not pay for linking a
// whole page per size class (mimalloc extends its free lists in steps for the same reason). A
// page's first carve takes only first_carve_bytes: most threads allocate a few blocks of a class
// (a spawn's body: one), and linking 32 blocks of 16 bytes was a tenth of a spawn's heap work.
void heap::carve(page* pg) noexcept {
  constexpr std::uint32_t carve_bytes = 512;
  constexpr std::uint32_t first_carve_bytes = 128;
  char* base = page_address(pg);
  const std::uint32_t bs = pg->block_bytes;
  const std::uint32_t end = pg->start + pg->capacity * bs;  // the page's blocks end here
  const std::uint32_t step = pg->bump == pg->start ? first_carve_bytes : carve_bytes;
  const std::uint32_t stop = std::min<std::uint32_t>(end, pg->bump + std::max(bs, step / bs * bs));
  char* p = base + pg->bump;
  char* last = base + stop - bs;
  for (; p < last; p += bs) reinterpret_cast<block*>(p)->next = reinterpret_cast<block*>(p + bs);
  reinterpret_cast<block*>(last)->next = pg->free;
  pg->free = reinterpret_cast<block*>(base + pg->bump);
  pg->bump = static_cast<std::uint16_t>(stop);
}

void* heap::alloc_small_slow(unsigned cls) noexcept {
  if (thread_free_.load(std::memory_order_relaxed) != nullptr || rings_exist()) [[unlikely]] collect();
  page* pg = cur_[cls];
  while (pg != &empty_ && pg->free == nullptr) {
    if (pg->bump < pg->start + pg->capacity * pg->block_bytes) {
      carve(pg);
      break;
    }
    avail_unlink(pg);  // full: a free() puts it back
    pg = cur_[cls];
  }
  if (pg == &empty_) {
    pg = take_small_page(cls);
    if (pg == nullptr) return nullptr;
    avail_push_front(pg);
    carve(pg);
  }
  block* b = pg->free;
  pg->free = b->next;
  ++pg->used;
  return b;
}

heap::page* heap::take_small_page(unsigned cls) noexcept {
  segment* s = space_ != nullptr ? space_ : new_segment();
  if (s == nullptr) return nullptr;
  const std::uint32_t bs = class_bytes[cls];
  const std::uint32_t start0 = page0_start(s->header_bytes, bs);
  // Page 0 first: it is resident already (the header), so a small heap stays on one page.
  const unsigned idx = (s->free_mask & 1u) != 0 && start0 + bs <= page_bytes
                           ? 0
                           : static_cast<unsigned>(std::countr_zero(s->free_mask & ~1u));
  s->free_mask &= ~(1u << idx);
  if ((s->free_mask & ~1u) == 0) space_unlink(s);
  page* pg = &s->pages[idx];
  *pg = page{};
  static_assert(small_classes <= 32, "classes_used_ has a bit per class");
  classes_used_ |= 1u << cls;
  pg->kind = page_kind::small;
  pg->cls = static_cast<std::uint8_t>(cls);
  pg->block_bytes = bs;
  pg->divisor = class_divisor[cls];
  pg->start = static_cast<std::uint16_t>(idx == 0 ? start0 : 0);
  pg->bump = pg->start;
  pg->capacity = static_cast<std::uint16_t>(divide(static_cast<std::uint32_t>(page_bytes) - pg->start, pg->divisor));
  return pg;
}

void* heap::alloc_medium(std::size_t pages) noexcept {
  if (thread_free_.load(std::memory_order_relaxed) != nullptr || rings_exist()) [[unlikely]] collect();
  const auto k = static_cast<unsigned>(pages);
  segment* s = space_;
  unsigned idx = 0;
  for (; s != nullptr; s = s->space_next) {
    const std::uint32_t m = s->free_mask & ~1u;
    std::uint32_t runs = m;  // bit i: pages i .. i+k-1 are all free
    for (unsigned i = 1; i < k; ++i) runs &= m >> i;
    if (runs != 0) {
      idx = static_cast<unsigned>(std::countr_zero(runs));
      break;
    }
  }
  if (s == nullptr) {
    s = new_segment();
    if (s == nullptr) return nullptr;
    idx = 1;
  }
  s->free_mask &= ~(((1u << k) - 1) << idx);
  if ((s->free_mask & ~1u) == 0) space_unlink(s);
  page& head = s->pages[idx];
  head = page{};
  head.kind = page_kind::medium;
  head.used = 1;
  head.span = static_cast<std::uint8_t>(k);
  for (unsigned i = 1; i < k; ++i) {
    s->pages[idx + i] = page{};
    s->pages[idx + i].kind = page_kind::medium_tail;
  }
  return reinterpret_cast<char*>(s) + idx * page_bytes;
}

void* heap::alloc_large(std::size_t bytes, std::size_t align) noexcept {
  constexpr std::size_t max_bytes = std::size_t{1} << 46;  // beyond any region share
  if (bytes > max_bytes || align > max_bytes) return nullptr;
  if (thread_free_.load(std::memory_order_relaxed) != nullptr || rings_exist()) [[unlikely]] collect();
  const std::size_t usable = round_up(std::max<std::size_t>(bytes, 1), page_bytes);
  // Below 64 KiB the alignment is met inside the run's first chunk; above, the header moves up to
  // the chunk just below the first aligned address past one chunk into the run.
  const std::size_t offset = align < chunk_bytes ? std::max(align, page_bytes) : chunk_bytes;
  const std::size_t span = (align < chunk_bytes ? offset : align) + usable;
  const std::size_t n = (span + chunk_bytes - 1) / chunk_bytes;
  void* run;
  try {
    run = region::get().alloc_chunks(n);
  } catch (...) {
    return nullptr;
  }
  const std::uintptr_t at =
      align < chunk_bytes ? addr_of(run) : round_up(addr_of(run) + chunk_bytes, align) - chunk_bytes;
  auto* l = new (reinterpret_cast<void*>(at)) large;
  l->magic = large_magic;
  l->owner = this;
  l->heap_id = id_;
  l->run = addr_of(run);
  l->run_chunks = n;
  l->block_offset = offset;
  l->usable = usable;
  chunks_push(l);
  return reinterpret_cast<char*>(l) + offset;
}

std::size_t heap::good_size(std::size_t bytes) noexcept {
  if (bytes <= small_max) return class_bytes[class_of[(bytes + 15) >> 4]];
  return round_up(bytes, page_bytes);
}

void* heap::realloc(void* p, std::size_t bytes) noexcept {
  if (p == nullptr) return alloc(bytes);
  if (bytes == 0) {
    free(p);
    return nullptr;
  }
  const std::size_t have = usable_size(p);
  if (have == 0) bad_free(p);
  const std::size_t want = good_size(bytes);
  auto* c = reinterpret_cast<chunk_header*>(chunk_floor(addr_of(p) - 1));
  if (c->magic == large_magic) {
    // In place while it stays large and fits the run (the run's spare pages are never visited).
    auto* l = static_cast<large*>(c);
    if (want > medium_max_pages * page_bytes &&
        addr_of(l) + l->block_offset + want <= l->run + l->run_chunks * chunk_bytes) {
      l->usable = want;
      return p;
    }
  } else if (bytes <= have && want > have / 2) {
    return p;
  }
  void* q = alloc(bytes);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, std::min(have, bytes));
  free(p);
  return q;
}

// ---- free --------------------------------------------------------------------------------------

void heap::free(void* p) noexcept {
  const std::uintptr_t a = addr_of(p);
  auto* s = reinterpret_cast<segment*>(chunk_floor(a - 1));
  if (p != nullptr && s->magic == segment_magic) [[likely]] {
    page* pg = &s->pages[(a / page_bytes) % pages_per_segment];
    if (pg->kind == page_kind::small) [[likely]] {
      auto* b = static_cast<block*>(p);
      // Cheap: the block lies in the carved part of a page in use at a multiple of its size.
      const std::uint32_t off = static_cast<std::uint32_t>(a % page_bytes) - pg->start;
      if (ISO_DEBUG_LEVEL >= 1 &&
          (s->owner != this || pg->used == 0 || off >= std::uint32_t{pg->bump} - pg->start ||
           std::uint64_t{off} * pg->divisor >= pg->divisor)) {
        bad_free(p);
      }
      if (ISO_DEBUG_LEVEL >= 2) {
        for (const block* f = pg->free; f != nullptr; f = f->next) {
          if (f == b) bad_free(p);
        }
      }
      b->next = pg->free;
      pg->free = b;
      if (--pg->used == 0 || pg->in_avail == 0) [[unlikely]] small_page_slow(pg);
      return;
    }
  }
  free_slow(p);
}

void heap::free_slow(void* p) noexcept {
  if (p == nullptr) return;
  const std::uintptr_t a = addr_of(p);
  auto* c = reinterpret_cast<chunk_header*>(chunk_floor(a - 1));
  if (c->owner != this) bad_free(p);
  if (c->magic == segment_magic) {
    auto* s = static_cast<segment*>(c);
    const auto idx = static_cast<unsigned>((a / page_bytes) % pages_per_segment);
    if (idx == 0 || a % page_bytes != 0 || s->pages[idx].kind != page_kind::medium) bad_free(p);
    release_pages(s, idx, s->pages[idx].span);
  } else if (c->magic == large_magic) {
    auto* l = static_cast<large*>(c);
    if (a != addr_of(l) + l->block_offset) bad_free(p);
    chunks_unlink(l);
    const std::uintptr_t run = l->run;
    const std::size_t n = l->run_chunks;
    l->magic = 0;
    region::get().free_chunks(reinterpret_cast<void*>(run), n);
  } else {
    bad_free(p);
  }
}

// ---- ownership: the gate, and frees from other OS threads ----------------------------------------

void heap::free_unusual(void* p, heap* h) noexcept {
  if (h != nullptr && !t_heap_thread) {
    // The identity first, then the gate: the chunk's warm reuse by a new heap in between shows
    // as another identity (a ring entry pushed with this one is refused when drained).
    const std::uint64_t id = h->id_before_gate();
    if (h->in_use_here() && ring_push(p, id)) [[likely]] return;
    h->free_from_other_thread(p, id);  // the ring's first use, a full ring, another heap, or refused
    return;
  }
  refuse_foreign_free(p, h);  // no heap holds it, or its heap is not in use here
}

// A block pushed here is written (its first word) only once the gate was seen open with this
// thread counted in it, and leave() waits for the count to drop before the image is built: so no
// push ever writes memory that a departure sends. The push itself is one CAS (mimalloc's
// thread_free); the gate costs two more atomic adds on the same line and a membarrier system call
// (gate_), paid only here, when the caller's ring is full, so that the heap thread's close is free.
void heap::free_from_other_thread(void* p, std::uint64_t id) noexcept {
  bool refused = false;
  if (ring_free(this, p, id, &refused)) return;
  if (refused) {
    refuse_foreign_free(p, this);
    return;
  }
  // The ring is full: onto thread_free_. Counted first, then the gate read after a heavy barrier
  // (see gate_): a system call, on this path only.
  pushers_.fetch_add(1, std::memory_order_relaxed);
  prim::heavy_barrier();
  if (!in_use_here_as(id)) {  // closed, or reopened by a new heap in the chunk (no identity travels with the block)
    pushers_.fetch_sub(1, std::memory_order_release);
    refuse_foreign_free(p, this);
    return;
  }
  auto* b = static_cast<block*>(p);
  block* head = thread_free_.load(std::memory_order_relaxed);
  do {
    b->next = head;
  } while (!thread_free_.compare_exchange_weak(head, b, std::memory_order_release, std::memory_order_relaxed));
  pushers_.fetch_sub(1, std::memory_order_release);
}

void* heap::realloc_any(void* p, std::size_t bytes) noexcept {
  heap* h = owner_of(p);
  if (h != nullptr && t_heap_thread && h->in_use_here()) return h->realloc(p, bytes);
  if (h == nullptr || t_heap_thread) {
    refuse_foreign_free(p, h, "realloc");
    return nullptr;
  }
  // Another OS thread allocates from the system heap: the block moves there.
  const std::uint64_t id = h->id_before_gate();
  if (bytes == 0) {
    h->free_from_other_thread(p, id);
    return nullptr;
  }
  void* q = __libc_malloc(bytes);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, std::min(h->usable_size(p), bytes));
  h->free_from_other_thread(p, id);
  return q;
}

void heap::close_gate() noexcept {
  // First what other OS threads freed into their rings while it was open (after the gate closes
  // those entries would be refused).
  if (rings_exist()) drain_rings();
  gate_.store(0, std::memory_order_relaxed);
  prim::light_barrier();  // pairs with the pusher's heavy_barrier (see gate_)
  // Pushers counted before the gate closed finish their push; those after see it closed.
  while (pushers_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

void heap::leave(int dest, const char* label) noexcept {
  close_gate();
  collect();
  left_for_ = dest;
  std::snprintf(label_, sizeof label_, "%s", label);
}

void heap::arrive() noexcept {
  claim_heap_thread();
  gate_.store(static_cast<std::uint32_t>(region_rank) + 1, std::memory_order_release);
}

void heap::collect() noexcept {
  if (rings_exist()) drain_rings();
  // The list is only used when a ring was full: look before the exchange, a locked instruction
  // that costs here as much as a thousand local frees.
  if (thread_free_.load(std::memory_order_relaxed) == nullptr) return;
  block* b = thread_free_.exchange(nullptr, std::memory_order_acquire);
  std::size_t n = 0;
  for (; b != nullptr; ++n) {
    block* next = b->next;  // free() reuses the link
    free(b);
    b = next;
  }
  if (n != 0) count_delayed_frees(n);
}

void heap::bad_free(const void* p) const noexcept {
  fatal("free(%p): not a live block of thread heap %p", p, static_cast<const void*>(this));
}

// A small page just got a block back and is either empty now or was full (off its class list).
void heap::small_page_slow(page* pg) noexcept {
  if (pg->used != 0) {
    avail_insert_second(pg);
    return;
  }
  segment* s = segment_of(pg);
  // Keep the class's only page, so that a loop of alloc + free of one block does not give its
  // page back every time; unless it alone keeps a segment other than the first from the region.
  const bool only = pg->in_avail != 0 ? cur_[pg->cls] == pg && pg->next == nullptr
                                      : cur_[pg->cls] == &empty_;
  if (only && (s == first_segment() || !segment_idle(s))) {
    if (pg->in_avail == 0) avail_push_front(pg);
    return;
  }
  if (pg->in_avail != 0) avail_unlink(pg);
  release_pages(s, page_index(pg), 1);
}

bool heap::segment_idle(const segment* s) noexcept {
  for (const page& pg : s->pages) {
    if (holds_data(pg)) return false;
  }
  return true;
}

void heap::release_pages(segment* s, unsigned first, unsigned n) noexcept {
  const bool was_spacious = (s->free_mask & ~1u) != 0;
  for (unsigned i = first; i < first + n; ++i) mark_free(s->pages[i]);
  s->free_mask |= ((1u << n) - 1) << first;
  if (!was_spacious && (s->free_mask & ~1u) != 0) space_push(s);
  if (s != first_segment() && segment_idle(s)) release_segment(s);
}

// pre: segment_idle(s); its empty small pages may still be on their class lists.
void heap::release_segment(segment* s) noexcept {
  for (page& pg : s->pages) {
    if (pg.kind == page_kind::small && pg.in_avail != 0) avail_unlink(&pg);
  }
  if ((s->free_mask & ~1u) != 0) space_unlink(s);
  chunks_unlink(s);
  s->magic = 0;
  region::get().free_chunks(s, 1);
}

// ---- intrusive lists ---------------------------------------------------------------------------

void heap::avail_push_front(page* pg) noexcept {
  page*& head = cur_[pg->cls];
  pg->prev = nullptr;
  pg->next = head != &empty_ ? head : nullptr;
  if (pg->next != nullptr) pg->next->prev = pg;
  head = pg;
  pg->in_avail = 1;
}

// Behind the head: the head may be full (the fast path does not unlink it), the others never are.
void heap::avail_insert_second(page* pg) noexcept {
  page* head = cur_[pg->cls];
  if (head == &empty_) {
    avail_push_front(pg);
    return;
  }
  pg->prev = head;
  pg->next = head->next;
  if (head->next != nullptr) head->next->prev = pg;
  head->next = pg;
  pg->in_avail = 1;
}

void heap::avail_unlink(page* pg) noexcept {
  if (pg->prev != nullptr) {
    pg->prev->next = pg->next;
  } else {
    cur_[pg->cls] = pg->next != nullptr ? pg->next : &empty_;
  }
  if (pg->next != nullptr) pg->next->prev = pg->prev;
  pg->next = pg->prev = nullptr;
  pg->in_avail = 0;
}

inline void heap::chunks_push(chunk_header* c) noexcept { list_push<&chunk_header::next, &chunk_header::prev>(chunks_, c); }
void heap::chunks_unlink(chunk_header* c) noexcept { list_unlink<&chunk_header::next, &chunk_header::prev>(chunks_, c); }
inline void heap::space_push(segment* s) noexcept { list_push<&segment::space_next, &segment::space_prev>(space_, s); }
void heap::space_unlink(segment* s) noexcept { list_unlink<&segment::space_next, &segment::space_prev>(space_, s); }

// Sorts chunks_ by address: a bottom-up merge sort, O(n log n) with no allocation (bins[k] holds
// a sorted list of 2^k nodes).
void heap::sort_chunks() const noexcept {
  auto merge = [](chunk_header* a, chunk_header* b) {
    chunk_header head{};
    chunk_header* tail = &head;
    while (a != nullptr && b != nullptr) {
      chunk_header*& low = addr_of(a) < addr_of(b) ? a : b;
      tail->next = low;
      tail = low;
      low = low->next;
    }
    tail->next = a != nullptr ? a : b;
    return head.next;
  };
  chunk_header* bins[64] = {};
  for (chunk_header* c = chunks_; c != nullptr;) {
    chunk_header* carry = c;
    c = c->next;
    carry->next = nullptr;
    unsigned k = 0;
    for (; bins[k] != nullptr; ++k) {
      carry = merge(bins[k], carry);
      bins[k] = nullptr;
    }
    bins[k] = carry;
  }
  chunk_header* sorted = nullptr;
  for (chunk_header* bin : bins) {
    if (bin != nullptr) sorted = merge(bin, sorted);
  }
  chunks_ = sorted;
  chunk_header* prev = nullptr;
  for (chunk_header* c = chunks_; c != nullptr; c = c->next) {
    c->prev = prev;
    prev = c;
  }
}

// ---- queries -----------------------------------------------------------------------------------

// A chunk-aligned block is a large block aligned to 64 KiB or more, its header one chunk below;
// any other chunk-aligned pointer (a block of the C interface just above a heap chunk, say)
// belongs to no heap.
const heap::chunk_header* heap::aligned_large_header(std::uintptr_t a) noexcept {
  const auto* l = reinterpret_cast<const large*>(a - chunk_bytes);
  return in_region(l) && l->magic == large_magic && l->block_offset == chunk_bytes ? l : nullptr;
}

std::size_t heap::usable_size(const void* p) const noexcept {
  const std::uintptr_t a = addr_of(p);
  if (p == nullptr) return 0;
  const auto* c = reinterpret_cast<const chunk_header*>(chunk_floor(a - 1));
  if (c->magic == segment_magic) {
    const page& pg = static_cast<const segment*>(c)->pages[(a / page_bytes) % pages_per_segment];
    if (pg.kind == page_kind::small) return pg.block_bytes;
    if (pg.kind == page_kind::medium && a % page_bytes == 0) return pg.span * page_bytes;
  } else if (c->magic == large_magic) {
    return static_cast<const large*>(c)->usable;
  }
  return 0;
}

void heap::visit_runs(extent_fn fn, void* ctx) const {
  for (const chunk_header* c = chunks_; c != nullptr; c = c->next) {
    if (c->magic == large_magic) {
      const auto* l = static_cast<const large*>(c);
      fn(ctx, reinterpret_cast<void*>(l->run), l->run_chunks);
    } else {
      fn(ctx, const_cast<chunk_header*>(c), 1);
    }
  }
}

void heap::visit_extents(extent_fn fn, void* ctx, bool live_bytes) const {
  sort_chunks();
  std::uintptr_t lo = 0, hi = 0;  // the run being merged, [lo, hi)
  auto emit = [&](std::uintptr_t from, std::size_t bytes) {
    if (from == hi && hi != 0) {
      hi += bytes;
      return;
    }
    if (hi != 0) fn(ctx, reinterpret_cast<void*>(lo), hi - lo);
    lo = from;
    hi = from + bytes;
  };
  // A small page's blocks lie below its bump (page 0's after the header, at start). A page
  // carved to its last block, or to within merge_gap bytes of its end, ships whole: its tail is
  // at most small_max or merge_gap, and the next page's extent then continues it, so that a heap
  // of small blocks is one extent per run of such pages, not one of just under a page each
  // (which would each cost a message of their own once they add up past the inline cap).
  constexpr std::size_t merge_gap = 1024;
  auto small_end = [&](const page& pg) -> std::size_t {
    const bool carved = pg.bump == pg.start + std::size_t{pg.capacity} * pg.block_bytes;
    return carved || page_bytes - pg.bump < merge_gap ? page_bytes : pg.bump;
  };
  for (const chunk_header* c = chunks_; c != nullptr; c = c->next) {
    if (c->magic == segment_magic) {
      const auto* s = static_cast<const segment*>(c);
      const page& first = s->pages[0];
      emit(addr_of(s), !live_bytes ? page_bytes : first.kind == page_kind::small ? small_end(first) : s->header_bytes);
      for (unsigned i = 1; i < pages_per_segment; ++i) {
        const page& pg = s->pages[i];
        if (!holds_data(pg)) continue;
        emit(addr_of(s) + i * page_bytes, live_bytes && pg.kind == page_kind::small ? small_end(pg) : page_bytes);
      }
    } else {
      const auto* l = static_cast<const large*>(c);
      emit(addr_of(l), live_bytes ? sizeof(large) : page_bytes);
      emit(addr_of(l) + l->block_offset, l->usable);
    }
  }
  if (hi != 0) fn(ctx, reinterpret_cast<void*>(lo), hi - lo);
}

std::size_t heap::extent_bytes() const noexcept {
  std::size_t total = 0;
  for_each_extent([&](void*, std::size_t bytes) { total += bytes; });
  return total;
}

heap::stats_t heap::stats() const noexcept {
  stats_t st;
  for (const chunk_header* c = chunks_; c != nullptr; c = c->next) {
    if (c->magic == segment_magic) {
      ++st.segments;
      for (const page& pg : static_cast<const segment*>(c)->pages) {
        if (pg.kind == page_kind::small) {
          st.live_blocks += pg.used;
          st.live_bytes += std::size_t{pg.used} * pg.block_bytes;
        } else if (pg.kind == page_kind::medium) {
          ++st.live_blocks;
          st.live_bytes += pg.span * page_bytes;
        }
      }
    } else {
      ++st.large_runs;
      ++st.live_blocks;
      st.live_bytes += static_cast<const large*>(c)->usable;
    }
  }
  return st;
}

// ---- trim and images ---------------------------------------------------------------------------

// Empty small pages (kept as their class's spare, or in an image where their bytes were not
// carried) start over untouched; with `decommit`, their memory and that of free pages goes back
// to the kernel. Page 0 always stays: it holds the header.
void heap::reset_empty_pages(bool decommit) noexcept {
  for (chunk_header* c = chunks_; c != nullptr; c = c->next) {
    if (c->magic != segment_magic) continue;
    auto* s = static_cast<segment*>(c);
    unsigned run = 0;  // pages in the current run of pages to decommit, ending before page i
    for (unsigned i = 0; i <= pages_per_segment; ++i) {
      bool idle = false;
      if (i < pages_per_segment) {
        page& pg = s->pages[i];
        if (pg.kind == page_kind::small && pg.used == 0) {
          pg.free = nullptr;
          pg.bump = pg.start;
        }
        idle = i != 0 && !holds_data(pg);
      }
      if (idle) {
        ++run;
      } else if (run != 0) {
        if (decommit) detail::release_pages(reinterpret_cast<char*>(s) + (i - run) * page_bytes, run * page_bytes);
        run = 0;
      }
    }
  }
}

void heap::trim() noexcept { reset_empty_pages(true); }

void heap::drop_empty_pages() noexcept { reset_empty_pages(false); }

std::size_t heap::image_bytes() const noexcept {
  std::size_t extents = 0, data = 0;
  for_each_extent([&](void*, std::size_t bytes) {
    ++extents;
    data += bytes;
  });
  return sizeof(image_header) + extents * sizeof(image_extent) + data;
}

void heap::write_image(void* buffer) const noexcept {
  std::size_t extents = 0, data_bytes = 0;
  for_each_extent([&](void*, std::size_t bytes) {
    ++extents;
    data_bytes += bytes;
  });
  auto* out = static_cast<unsigned char*>(buffer);
  unsigned char* table = out + sizeof(image_header);
  unsigned char* data = table + extents * sizeof(image_extent);
  std::size_t i = 0, off = 0;
  for_each_extent([&](void* addr, std::size_t bytes) {
    const image_extent e{addr_of(addr), bytes};
    std::memcpy(table + i++ * sizeof e, &e, sizeof e);
    std::memcpy(data + off, addr, bytes);
    off += bytes;
  });
  image_header h{image_magic, image_version, sizeof(image_header), addr_of(this), extents,
                 data_bytes,  checksum64(data, data_bytes), 0};
  h.header_checksum = header_sum(h, table);
  std::memcpy(out, &h, sizeof h);
}

heap* heap::read_image(const void* image, std::size_t bytes) {
  const auto* in = static_cast<const unsigned char*>(image);
  image_header h;
  if (image == nullptr || bytes < sizeof h) {
    raise(errc::corrupt_image, "heap image: truncated (%zu bytes, the header alone is %zu)", bytes,
          sizeof h);
  }
  std::memcpy(&h, in, sizeof h);
  if (h.magic != image_magic) raise(errc::corrupt_image, "heap image: not a heap image (bad magic)");
  if (h.version != image_version || h.header_bytes != sizeof h) {
    raise(errc::corrupt_image, "heap image: format version %u, this build reads version %u",
          h.version, image_version);
  }
  if (h.extents > (bytes - sizeof h) / sizeof(image_extent)) {
    raise(errc::corrupt_image, "heap image: truncated (%zu bytes cannot hold %llu extents)", bytes,
          static_cast<unsigned long long>(h.extents));
  }
  const unsigned char* table = in + sizeof h;
  if (header_sum(h, table) != h.header_checksum) {
    raise(errc::corrupt_image, "heap image: the header or extent table is corrupt (checksum mismatch)");
  }
  const std::size_t data_at = sizeof h + h.extents * sizeof(image_extent);
  if (bytes - data_at != h.data_bytes) {
    raise(errc::corrupt_image, "heap image: %zu bytes of data, the header says %llu",
          bytes - data_at, static_cast<unsigned long long>(h.data_bytes));
  }
  // The extents: page-aligned, ascending, disjoint, inside the region, adding up to data_bytes;
  // and one of them holds the first segment's page 0 with the heap object where it belongs.
  const region& r = region::get();
  const std::uintptr_t first = chunk_floor(h.heap);
  const unsigned char* first_page = nullptr;  // its bytes in the image
  std::uint64_t sum = 0, prev_end = 0;
  for (std::size_t i = 0; i < h.extents; ++i) {
    image_extent e;
    std::memcpy(&e, table + i * sizeof e, sizeof e);
    const std::uint64_t end = e.addr + e.bytes;
    if (e.addr % page_bytes != 0 || e.bytes % page_bytes != 0 || e.bytes == 0 || end < e.addr ||
        e.addr < prev_end || !r.contains(reinterpret_cast<void*>(e.addr)) ||
        !r.contains(reinterpret_cast<void*>(end - 1)) || e.bytes > h.data_bytes - sum) {
      raise(errc::corrupt_image,
            "heap image: extent %zu [%#llx, +%#llx) is misaligned, out of order or outside this "
            "run's isomalloc region [%#zx, +%#zx)",
            i, static_cast<unsigned long long>(e.addr), static_cast<unsigned long long>(e.bytes),
            r.base(), r.bytes());
    }
    if (e.addr <= first && first + page_bytes <= end) first_page = in + data_at + sum + (first - e.addr);
    sum += e.bytes;
    prev_end = end;
  }
  if (sum != h.data_bytes) {
    raise(errc::corrupt_image, "heap image: the extents hold %llu bytes, the header says %llu",
          static_cast<unsigned long long>(sum), static_cast<unsigned long long>(h.data_bytes));
  }
  if (checksum64(in + data_at, h.data_bytes) != h.data_checksum) {
    raise(errc::corrupt_image, "heap image: the data of heap %#llx is corrupt (checksum mismatch)",
          static_cast<unsigned long long>(h.heap));
  }
  chunk_header seg;
  std::uint64_t hmagic = 0;
  if (first_page != nullptr) {
    std::memcpy(&seg, first_page, sizeof seg);
    std::memcpy(&hmagic, first_page + heap_offset() + offsetof(heap, magic_), sizeof hmagic);
  }
  if (first_page == nullptr || h.heap != first + heap_offset() || seg.magic != segment_magic ||
      addr_of(seg.owner) != h.heap || hmagic != heap_magic) {
    raise(errc::corrupt_image, "heap image: no heap object at %#llx in the image",
          static_cast<unsigned long long>(h.heap));
  }

  std::size_t off = data_at;
  for (std::size_t i = 0; i < h.extents; ++i) {
    image_extent e;
    std::memcpy(&e, table + i * sizeof e, sizeof e);
    std::memcpy(reinterpret_cast<void*>(e.addr), in + off, e.bytes);
    off += e.bytes;
  }
  auto* hp = reinterpret_cast<heap*>(h.heap);
  hp->reset_empty_pages(false);
  hp->arrive();
  ISO_ASSERT_EXPENSIVE(hp->is_valid());
  return hp;
}

// ---- validation --------------------------------------------------------------------------------

bool heap::small_page_valid(const segment* s, unsigned idx) noexcept {
  const page& pg = s->pages[idx];
  if (pg.cls >= small_classes || pg.block_bytes != class_bytes[pg.cls] ||
      pg.divisor != divisor_of(pg.block_bytes)) {
    return false;
  }
  const std::uint32_t bs = pg.block_bytes;
  const std::uint32_t start = idx == 0 ? page0_start(s->header_bytes, bs) : 0;
  if (pg.start != start || start + bs > page_bytes || pg.capacity != (page_bytes - start) / bs) return false;
  const std::uint32_t limit = start + pg.capacity * bs;
  if (pg.bump < start || pg.bump > limit || (pg.bump - start) % bs != 0) return false;
  const std::uintptr_t base = addr_of(s) + idx * page_bytes;
  std::size_t listed = 0;
  for (const block* b = pg.free; b != nullptr; b = b->next) {
    const std::uintptr_t off = addr_of(b) - base;  // wraps for a block below the page
    if (++listed > pg.capacity || off < start || off >= pg.bump || (off - start) % bs != 0) return false;
  }
  const std::size_t untouched = (limit - pg.bump) / bs;
  return pg.used + listed + untouched == pg.capacity;
}

bool heap::segment_valid(const segment* s) const noexcept {
  if (s == first_segment() ? s->header_bytes < first_header_bytes() || s->header_bytes > first_header_bytes(max_reserve_bytes)
                           : s->header_bytes != sizeof(segment)) {
    return false;
  }
  std::uint32_t mask = 0;
  for (unsigned i = 0; i < pages_per_segment;) {
    const page& pg = s->pages[i];
    switch (pg.kind) {
      case page_kind::free:
        if (pg.in_avail != 0) return false;
        mask |= 1u << i;
        ++i;
        break;
      case page_kind::small:
        if (!small_page_valid(s, i)) return false;
        ++i;
        break;
      case page_kind::medium:
        if (i == 0 || pg.span == 0 || pg.span > medium_max_pages || i + pg.span > pages_per_segment ||
            pg.used != 1 || pg.in_avail != 0) {
          return false;
        }
        for (unsigned j = 1; j < pg.span; ++j) {
          if (s->pages[i + j].kind != page_kind::medium_tail) return false;
        }
        i += pg.span;
        break;
      default:  // a tail without its head, or garbage
        return false;
    }
  }
  return mask == s->free_mask;
}

bool heap::is_valid() const noexcept {
  const region& r = region::get();
  const segment* first = first_segment();
  if (magic_ != heap_magic || first->magic != segment_magic || first->owner != this ||
      addr_of(this) != addr_of(first) + heap_offset() || empty_.free != nullptr) {
    return false;
  }
  const std::size_t max_chunks = r.bytes() / chunk_bytes;
  std::size_t chunks = 0, spacious = 0, on_lists = 0;
  std::size_t expected_bytes = 0;  // what for_each_extent must visit
  bool saw_first = false;
  const chunk_header* prev = nullptr;
  for (const chunk_header* c = chunks_; c != nullptr; prev = c, c = c->next) {
    if (++chunks > max_chunks || c->prev != prev || !r.contains(c) || addr_of(c) % chunk_bytes != 0 ||
        c->owner != this) {
      return false;
    }
    if (c->magic == segment_magic) {
      const auto* s = static_cast<const segment*>(c);
      if (!segment_valid(s)) return false;
      saw_first = saw_first || s == first;
      spacious += (s->free_mask & ~1u) != 0;
      expected_bytes += page_bytes;
      for (unsigned i = 0; i < pages_per_segment; ++i) {
        const page& pg = s->pages[i];
        on_lists += pg.in_avail;
        if (i != 0 && holds_data(pg)) expected_bytes += page_bytes;
      }
    } else if (c->magic == large_magic) {
      const auto* l = static_cast<const large*>(c);
      const std::uintptr_t run_end = l->run + l->run_chunks * chunk_bytes;
      if (l->run % chunk_bytes != 0 || l->run > addr_of(l) || l->run_chunks == 0 ||
          l->block_offset < page_bytes || l->block_offset > chunk_bytes ||
          l->block_offset % page_bytes != 0 || l->usable == 0 || l->usable % page_bytes != 0 ||
          addr_of(l) + l->block_offset + l->usable > run_end || !r.contains(reinterpret_cast<void*>(run_end - 1))) {
        return false;
      }
      expected_bytes += page_bytes + l->usable;
    } else {
      return false;
    }
  }
  if (!saw_first) return false;

  std::size_t listed = 0;
  const segment* sprev = nullptr;
  for (const segment* s = space_; s != nullptr; sprev = s, s = s->space_next) {
    if (++listed > spacious || s->space_prev != sprev || s->magic != segment_magic ||
        s->owner != this || (s->free_mask & ~1u) == 0) {
      return false;
    }
  }
  if (listed != spacious) return false;

  listed = 0;
  for (unsigned cls = 0; cls < small_classes; ++cls) {
    if (cur_[cls] == &empty_) continue;
    if ((classes_used_ >> cls & 1u) == 0) return false;  // retire() would leave it listed
    const page* pprev = nullptr;
    for (const page* pg = cur_[cls]; pg != nullptr; pprev = pg, pg = pg->next) {
      const segment* s = segment_of(pg);
      if (++listed > on_lists || pg->prev != pprev || s->magic != segment_magic || s->owner != this ||
          pg->kind != page_kind::small || pg->cls != cls || pg->in_avail == 0) {
        return false;
      }
      // Only the head may be full.
      if (pprev != nullptr && pg->free == nullptr && pg->bump == pg->start + pg->capacity * pg->block_bytes) {
        return false;
      }
    }
  }
  if (listed != on_lists) return false;

  std::size_t total = 0;
  std::uintptr_t last_end = 0;
  bool ok = true;
  for_each_extent([&](void* p, std::size_t bytes) {
    const std::uintptr_t a = addr_of(p);
    // Merged: a gap before every extent but the first.
    if (a % page_bytes != 0 || bytes % page_bytes != 0 || bytes == 0 || (last_end != 0 && a <= last_end)) {
      ok = false;
    }
    last_end = a + bytes;
    total += bytes;
  });
  return ok && total == expected_bytes;
}

}  // namespace iso::detail
