// Ownership of isomalloc memory: which rank, and which OS thread, may write a chunk run.
//
// THE OWNERSHIP INVARIANT. On each rank every chunk run of the region is in exactly one of:
//   free       in this rank's share, in the region's free map or cache: only this rank hands it out
//   in use     held here: by a heap whose gate is open for this rank (heap::in_use_here), the stack
//              of a thread that lives here, or a block of the C interface held here
//   departing  its thread left this rank (heap gate closed, image being sent): MPI reads it, nothing
//              writes it, and a return of it is parked until the send is over
//   kept       its thread left and its image is out: still mapped here (stack guard installed), so
//              that a thread that comes back soon (load balancing moves threads back and forth)
//              migrates without a system call; nothing writes it, nothing hands it out; given back
//              to the kernel after keep_ns, beyond keep_bytes, or when something arrives on it
//              (departures::settle); a run of it that comes home leaves it for the region as it is
//              (its thread freed it elsewhere: departures::park_return)
//   away       (on its owner only) allocated from this share, in use, departing or kept elsewhere:
//              reserved until the rank that ends its use returns it (region::accept_returned)
// and across ranks at most one rank holds a run in use. What keeps it:
//   - free() of memory whose heap is not in use here is refused as foreign (one warning naming
//     the pointer, the thread and the rank; counted in ownership_stats): a departed or kept copy
//     is never freed into this rank's pool, so nothing of it is handed out again here, and nothing
//     writes it while a send reads it;
//   - the heap's gate closes (heap::leave) before its thread's image is built, and opens only on
//     the rank where the image lands (heap::arrive);
//   - the departing and kept states live here, in departures, not in the migration engine: the
//     region asks it about every run that comes home, and arrivals and iso_unpack settle with it
//     before they write;
//   - no stale copy claims memory for a heap in use here: heap::owner_of trusts a chunk's header,
//     so every heap chunk this rank stops using loses its header's magic first (a segment or a
//     large run freed here, kept memory given back, a kept run that comes home (take_home), and
//     the runs a returning thread no longer holds, departures::arrive). Otherwise a pointer into a run that another rank now uses could
//     find, in this rank's old copy, a header naming a heap that is in use here again.
//
// FREES FROM OTHER OS THREADS. Only one OS thread per process, the heap thread (the one that runs
// the scheduler), allocates from thread heaps and changes them. A free() from any other OS thread
// (an OpenMP worker, a std::thread, an MPI progress thread) writes the pointer, after its heap's
// identity (heap::id) when that differs from the one it wrote last, into that OS thread's own
// remote_ring (single producer, the heap thread the single consumer) if the heap is in use here.
// It never touches the block and makes no atomic read-modify-write: a word and the ring's head.
// When its ring is full it pushes the block onto the heap's thread_free list instead (one CAS,
// under the gate's pusher count: mimalloc's thread_free list).
// The heap thread takes both back when a heap allocates on a slow path or collects, and before a
// heap's gate closes (leave, destroy). A ring entry is freed only if the chunk still belongs to
// the heap with that identity and the heap is in use here; an entry published too late (its free
// raced with the heap leaving or ending) is refused as foreign instead: the block then stays
// allocated (it travelled as a live block, or went with its heap), and no other heap's memory is
// ever touched. Rings are never freed: one per OS thread that ever freed thread-heap memory,
// reused after that thread exits.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>

#include "region.hpp"
#include "sysalloc.hpp"

namespace iso::detail {

class heap;

// The OS thread that uses thread heaps (see above). constinit and initial-exec, so that free()
// reads it with one %fs-relative load.
extern constinit thread_local bool t_heap_thread __attribute__((tls_model("initial-exec")));
// On the heap thread: this rank + 1, what the gate of a heap in use here holds; elsewhere a value
// no gate holds. free() compares a heap's gate with it: one load and a compare for both tests.
extern constinit thread_local std::uint32_t t_heap_tag __attribute__((tls_model("initial-exec")));
// Makes the calling OS thread the process's heap thread (and sets its t_heap_tag). fatal() if
// another OS thread is already it: thread heaps are not locked, so two OS threads must never use
// them. Inline: every spawn calls it (heap::create), and only the first call does more than a
// store and a test.
void claim_first_heap_thread() noexcept;  // claim_heap_thread's first call on an OS thread
inline void claim_heap_thread() noexcept {
  t_heap_tag = static_cast<std::uint32_t>(region_rank) + 1;  // the rank is agreed before heaps exist
  if (!t_heap_thread) [[unlikely]] claim_first_heap_thread();
}

// A free() (or `call`) of region memory that no heap in use on this rank holds (h: the heap whose
// header describes p, or null): nothing is changed; counted, and reported on stderr (the first
// max_reported times, then only counted).
void refuse_foreign_free(const void* p, const heap* h, const char* call = "free") noexcept;
void count_delayed_frees(std::size_t n) noexcept;  // frees from other OS threads taken back
struct ownership_stats_t {
  std::size_t refused_frees = 0;       // frees refused as foreign (memory not in use here)
  std::size_t delayed_frees = 0;       // frees from other OS threads that the heap thread took back
};

// One OS thread's frees of thread-heap memory, for the heap thread. Invariant: tail <= head <=
// tail + slots; word[i % slots] for i in [tail, head) is, in order, a stream of entries: a freed
// block's pointer (16-byte aligned, so bit 0 clear), or id_mark followed by the word of a heap
// identity that applies to the pointers after it. A pointer belongs to the heap named by the last
// identity before it: the producer writes an identity only when it changes (last_id), so frees
// into one heap take one word each, and the consumer keeps the identity it last read (cur_id)
// across drains. Only the producer writes head, last_id and the words, only the heap thread tail
// and cur_id. Words rather than (pointer, identity) pairs: the words cross from one core's cache
// to the other's, and that transfer is most of what a free from another OS thread costs.
struct remote_ring {
  static constexpr std::uint64_t slots = 4096;  // 32 KiB: frees between two drains
  static constexpr std::uint64_t id_mark = 1;   // no block pointer has bit 0 set
  std::atomic<std::uint32_t> owned{1};           // an OS thread produces into it (0: free for reuse)
  remote_ring* next = nullptr;                   // the registry, push-only
  alignas(64) std::atomic<std::uint64_t> head{0};
  std::uint64_t last_id = 0;  // the identity the producer wrote last (0: none; no heap has it)
  alignas(64) std::atomic<std::uint64_t> tail{0};
  std::uint64_t cur_id = 0;   // the identity the consumer read last
  alignas(64) std::uint64_t word[slots];
};

// The calling OS thread's ring (null until its first free of thread-heap memory).
extern constinit thread_local remote_ring* t_ring __attribute__((tls_model("initial-exec")));

// ring_free's common case, inline in free(): the calling thread's ring exists and has room, and
// the block's heap is the one it freed into last (so the free is one word). False otherwise,
// nothing written: the caller goes to ring_free. pre: the heap is in use here.
inline bool ring_push(void* p, std::uint64_t id) noexcept {
  remote_ring* r = t_ring;
  const auto word = reinterpret_cast<std::uint64_t>(p);
  if (r == nullptr || id != r->last_id || (word & remote_ring::id_mark) != 0) return false;
  const std::uint64_t head = r->head.load(std::memory_order_relaxed);
  if (head - r->tail.load(std::memory_order_acquire) >= remote_ring::slots) return false;
  // The consumer read these lines last: ask for a line ahead for writing (a line every 8 words).
  if (head % 8 == 0) __builtin_prefetch(&r->word[(head + 16) % remote_ring::slots], 1);
  r->word[head % remote_ring::slots] = word;
  r->head.store(head + 1, std::memory_order_release);
  return true;
}

// A free() from an OS thread that is not the heap thread, of a block of h (identity id, read before
// h's gate): into the calling thread's ring. False if the ring is full (the caller uses h's
// thread_free list), or if h is not in use here as that heap (heap::in_use_here_as: `*refused`
// set; nothing recorded).
bool ring_free(const heap* h, void* p, std::uint64_t id, bool* refused) noexcept;
// On the heap thread: frees every block the rings hold into its heap (see above).
void drain_rings() noexcept;
// Whether any ring exists (any OS thread ever freed thread-heap memory); cheap.
bool rings_exist() noexcept;
ownership_stats_t ownership_stats() noexcept;

// The memory of threads that left this rank: departing (image being sent) and kept (sent, still
// mapped). Records are keyed by the thread's owner word (the threads module's thread id bits).
// Thread-safe (one lock); the migration engine calls it from the scheduler's OS thread, the
// region and the block interface from whichever thread handles a return or an unpack.
class departures {
 public:
  static constexpr std::int64_t keep_ns = 100'000'000;          // kept at most this long, ns
  static constexpr std::size_t keep_bytes = std::size_t{64} << 20;  // kept at most this much, bytes

  static departures& get() noexcept;

  // Thread `owner` leaves this rank for rank `dest`: its heap's gate closes (heap::leave: frees of
  // it are refused from now on, delayed frees are collected first), and its heap's runs and its
  // stack run [stack, +stack_bytes), whose first guard_bytes are guard pages, become departing.
  // Call before the thread's image is built. `label` names the thread in messages.
  void leave(std::uint64_t owner, heap* h, void* stack, std::size_t stack_bytes, std::size_t guard_bytes, int dest,
             const char* label) noexcept;
  // Every byte of owner's image has left (its sends completed, or it was copied): its memory is
  // kept. Runs that came home meanwhile (parked) are taken back by the region now, and the rest
  // is given back with them. now_ns: a steady clock, ns.
  void sent(std::uint64_t owner, std::int64_t now_ns) noexcept;
  // [addr, +bytes) is about to be written by the arrival of thread `arriving` (0: by an iso_unpack):
  // kept memory overlapping it is given back first, except the arriving thread's own, which waits
  // for arrive(). True if that was the case (its pages are mapped, its stack guard installed).
  // pre: no departing record overlaps the range (the caller finished those sends).
  bool settle(std::uintptr_t addr, std::size_t bytes, std::uint64_t arriving) noexcept;
  // Thread `owner` has landed here with heap h: the runs of its kept memory that h no longer holds
  // (it freed them elsewhere) lose their stale headers and go back to the kernel; then h's gate
  // opens here (heap::arrive).
  void arrive(std::uint64_t owner, heap* h) noexcept;
  // Gives back kept memory older than keep_ns, and the oldest while more than keep_bytes are kept.
  void tick(std::int64_t now_ns) noexcept;
  // Whether tick() has anything to look at; cheap enough for every poll.
  bool any_kept() const noexcept { return kept_records_.load(std::memory_order_relaxed) != 0; }
  // The region asks before taking back a run that came home: true if the run belongs to a
  // departing thread's memory (parked: sent() hands it to the region); if kept memory holds it,
  // the run leaves that record (take_home; false: the region takes it now).
  bool park_return(std::uintptr_t addr, std::size_t bytes) noexcept;

  struct stats_t {
    std::size_t departing = 0;     // threads whose image is still being sent
    std::size_t kept = 0;          // threads whose memory is kept
    std::size_t kept_bytes = 0;    // bytes of that memory
    std::size_t parked = 0;        // returns waiting for a departure to finish
  };
  stats_t stats() const noexcept;
  // True if a departing or kept record holds part of [addr, +bytes).
  bool holds(std::uintptr_t addr, std::size_t bytes) const noexcept;

 private:
  struct span {
    std::uintptr_t addr;
    std::size_t bytes;
  };
  // A thread's memory here after it left. Invariant: sent == false exactly while its image is
  // being sent; parked is empty when sent; bytes == stack_bytes + the runs' bytes.
  struct record {
    std::uint64_t owner;
    bool sent = false;
    bool returning = false;         // kept, and its thread is arriving back here (settle)
    std::uintptr_t stack = 0;       // stack run, its guard in [stack, stack + guard_bytes)
    std::size_t stack_bytes = 0;
    std::size_t guard_bytes = 0;
    sys_vector<span> runs;          // the heap's chunk runs
    sys_vector<span> parked;        // runs that came home while departing
    std::size_t bytes = 0;
    std::int64_t since_ns = 0;      // when it was sent
  };
  using list = std::list<record, sys_allocator<record>>;
  static bool overlaps(const record& r, std::uintptr_t addr, std::size_t bytes) noexcept;
  static void give_back(const record& r) noexcept;   // guard removed, pages released lazily
  // [home] came home and the region takes it next (region::retire caches it as it is, or
  // decommits it): what of r it holds leaves r (a heap run only loses its headers, the stack
  // its guard) and the rest stays kept. Parts of r that reach beyond it are given back. Lock held.
  void take_home(record& r, span home) noexcept;
  static void forget(const span& s) noexcept;        // headers cleared, pages released lazily
  static void clear_headers(const span& s) noexcept; // the magic at the start of each chunk zeroed
  list::iterator erase_record(list::iterator it) noexcept;  // lock held

  mutable std::mutex lock_;
  list records_;                               // departing and kept, in the order they left
  std::size_t kept_bytes_ = 0;                 // sum of bytes over kept records
  std::atomic<std::size_t> kept_records_{0};   // kept records
};

}  // namespace iso::detail
