// The isomalloc region: one range of virtual addresses, mapped at the same address on every rank.
//
// Map of the core types and their sizes:
//   region   [base, base + bytes), default min(16 TiB, half the largest free gap), set by
//            ISO_REGION_BYTES; at 16 TiB when that range is free, so every run of a program
//            (with the same size) gets the same addresses. Mapped read-write with MAP_NORESERVE as ONE mapping: untouched
//            pages cost nothing, and nothing inside ever changes protection, so the region adds a
//            single entry to vm.max_map_count however many threads run (guard pages use
//            MADV_GUARD_INSTALL, which adds none).
//   share    region split into `nranks` equal shares; rank r owns
//            [base + r*share_bytes, base + (r+1)*share_bytes) and hands out addresses from it
//            without asking anyone. owner_of(p) = (p - base) / share_bytes.
//   chunk    64 KiB, the unit of ownership and allocation; a run is n contiguous chunks of one share.
//
// A run is in exactly one state on its owner: free (in free_by_addr_), cached (freed, still
// committed, in cache_ and cached_by_addr_), or allocated (held by some rank: this one, or another after migration).
// A run freed on a rank that does not own it is sent back through region_peers::remote_free and
// stays allocated on the owner until it arrives, so nobody reuses it meanwhile. ownership.hpp
// states the whole invariant, with the states a run of a departed thread passes through.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "prim.hpp"
#include "sysalloc.hpp"

namespace iso::detail {

inline constexpr std::size_t chunk_bytes = std::size_t{64} << 10;
inline constexpr std::size_t default_region_bytes = std::size_t{16} << 40;
// The least a share may be: smaller regions would fail at the first thread stack.
inline constexpr std::size_t min_share_bytes = std::size_t{1} << 30;
// Runs of up to this many chunks are cached committed after a free (the hot path: stacks, heap
// segments, and large blocks up to 1 MiB, which with their header take 17 chunks: a thread that
// allocates and frees 1 MiB buffers in a loop, as messages and collectives do, would otherwise
// fault every page in again each time); larger runs are decommitted at once.
inline constexpr std::size_t max_cached_run_chunks = 17;
// Default bound on committed bytes kept in the cache per rank.
inline constexpr std::size_t default_cache_bytes = std::size_t{256} << 20;

// What the region needs from the other ranks. isomalloc knows nothing of MPI: comm/ implements
// this over MPI, and tests over nothing (a single rank).
class region_peers {
 public:
  virtual ~region_peers() = default;
  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  // Collective: every rank contributes a list of words, every rank receives all lists by rank.
  virtual sys_vector<sys_vector<std::uint64_t>> allgather(const sys_vector<std::uint64_t>& mine) = 0;
  // Sends [addr, addr+bytes) back to its owner. Never blocks; the owner's side calls
  // region::accept_returned when it arrives. The region calls it, and poll(), only on its MPI
  // thread (region::on_mpi_thread), one call at a time. A run is never lost: if the other ranks
  // cannot be reached now, it waits and goes at a later poll.
  virtual void remote_free(int owner, std::uintptr_t addr, std::size_t bytes) noexcept = 0;
  // Sends what waits and handles whatever has arrived (returned runs). A call to the other
  // ranks that fails loses nothing: it is tried again at the next poll (take_failure says so).
  virtual void poll() noexcept = 0;
  // Writes the first failure since the last take_failure, described, into out (cap bytes, NUL
  // included; failure_text_bytes hold any) and forgets it; false if none.
  virtual bool take_failure(char* out, std::size_t cap) noexcept = 0;
};
// Bytes that hold any failure take_failure describes: the call, the rank and MPI's message
// (MPI_MAX_ERROR_STRING, at most 1024 in the MPIs we know; comm.hpp checks it).
inline constexpr std::size_t failure_text_bytes = 1024 + 128;

// The region's bounds for the hottest test of all (every free() asks it): plain globals,
// constant-initialised, set once the region is agreed; [lo, lo + bytes).
inline constinit std::uintptr_t region_lo = 0;
inline constinit std::size_t region_bytes = 0;
// This process's rank (0 until the region is agreed): the gate of a heap in use here holds it.
inline constinit int region_rank = 0;
inline bool in_region(const void* p) noexcept { return reinterpret_cast<std::uintptr_t>(p) - region_lo < region_bytes; }

class region {
 public:
  // Inline (a guard byte's test where it is called, not a call): the stack pool asks for it twice a
  // spawn. One object across translation units, as for any inline function's local static.
  static region& get() noexcept {
    static region instance;
    return instance;
  }

  // Reserves a provisional range before main() (a library constructor), so that MPI's later
  // mappings land elsewhere and every rank of the same binary picks the same addresses.
  void reserve_early() noexcept;

  // Collective over `peers`: agrees the range across ranks (the intersection of every rank's free
  // gaps and provisional range), maps it on every rank, and splits it into shares.
  // `requested` bytes (0: the default or ISO_REGION_BYTES). Throws iso::error(region_agreement)
  // naming the ranks and their largest gaps when no common range of min_share_bytes * size exists.
  void agree(region_peers& peers, std::size_t requested = 0);

  // Without MPI: this process is rank 0 of 1 and owns the whole provisional range (unit tests,
  // tools). Throws iso::error if no range could be reserved. Idempotent.
  void init_single_rank();

  bool ready() const noexcept { return ready_.load(std::memory_order_acquire); }
  int rank() const noexcept { return rank_; }
  int nranks() const noexcept { return nranks_; }
  std::uintptr_t base() const noexcept { return base_; }
  std::size_t bytes() const noexcept { return bytes_; }
  std::size_t share_bytes() const noexcept { return share_bytes_; }
  interval share(int r) const noexcept {
    return {base_ + static_cast<std::uintptr_t>(r) * share_bytes_,
            base_ + static_cast<std::uintptr_t>(r + 1) * share_bytes_};
  }

  // True if p lies in the region (on any rank). Cheap enough for every free().
  bool contains(const void* p) const noexcept {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    return a - base_ < bytes_;
  }
  // The rank owning the chunk at p, or -1 outside the region.
  int owner_of(const void* p) const noexcept;

  // Takes a run of n chunks (chunk-aligned) from this rank's share. Its contents are undefined.
  // Throws iso::error(region_exhausted) naming the rank, the share and n.
  void* alloc_chunks(std::size_t n);
  // Releases a run taken by alloc_chunks on any rank: kept or cached here if this rank owns it,
  // else decommitted here and sent back to its owner (at once on the MPI thread; from another OS
  // thread at the MPI thread's next poll()). pre: p chunk-aligned, n the run's length.
  void free_chunks(void* p, std::size_t n) noexcept;
  // On the MPI thread: sends the returns other OS threads queued, then lets the peers handle what
  // arrived (region_peers::poll). From any other OS thread: does nothing. Every block call, the
  // runtime's progress engine and iso_progress call it; iso_progress also reports what failed
  // since it last ran (take_failure).
  void poll() noexcept;
  // On the MPI thread, region_peers::take_failure; elsewhere, or without peers, false.
  bool take_failure(char* out, std::size_t cap) noexcept;
  // On the MPI thread: sends the returns other OS threads queued (before the peers drain).
  void flush_returns() noexcept;
  // True on the OS thread that agreed the region: the one that owns MPI (MPI_THREAD_FUNNELED).
  static bool on_mpi_thread() noexcept;
  // A run freed elsewhere comes home. Ignored (and counted in bad_returns) if it lies outside
  // the share or overlaps free or cached space, before anything else looks at it; parked while
  // a departure from this rank still sends it (departures::park_return; taken back when that
  // send is over). Otherwise freed as a run freed here is (cached while the cache has room),
  // see retire.
  void accept_returned(std::uintptr_t addr, std::size_t bytes) noexcept;
  // Marks [p, p+n chunks) of this rank's share allocated if it is free (restoring an image in a
  // later run). Returns false if any part is already allocated here.
  bool claim(void* p, std::size_t n) noexcept;

  void set_cache_bound(std::size_t bytes) noexcept;

  // Asked (outside the region's lock) before accept_returned takes a run back: the block
  // interface keeps a run whose block this rank still holds (false), and forgets a detached
  // block whose range came home (true).
  using return_hook = bool (*)(std::uintptr_t addr, std::size_t bytes) noexcept;
  void set_return_hook(return_hook hook) noexcept { return_hook_.store(hook, std::memory_order_relaxed); }

  struct stats_t {
    std::size_t allocated_chunks = 0;  // runs currently allocated from this share, in chunks
    std::size_t cached_chunks = 0;     // of those free, still committed in the cache
    std::size_t returned_runs = 0;     // runs that came home from other ranks
    std::size_t bad_returns = 0;       // returned runs that were refused as malformed
    std::size_t kept_returns = 0;      // returned runs kept for a block still held here
    std::size_t parked_returns = 0;    // returned runs that waited for a departure's send
    std::size_t remote_frees = 0;      // runs this rank sent back to their owners
    std::size_t failed_releases = 0;   // ranges whose pages the kernel refused to take back
                                       // (release_pages), whoever called it
  };
  stats_t stats() const noexcept;

  // Full consistency check of the share's bookkeeping (free intervals coalesced, disjoint, inside
  // the share; counts add up). For tests and ISO_ASSERT_EXPENSIVE.
  bool is_valid() const noexcept;

  region_peers* peers() const noexcept { return peers_; }

 private:
  region() = default;
  void set_layout(std::uintptr_t base, std::size_t bytes, int rank, int nranks);
  void insert_free(std::uintptr_t addr, std::size_t n) noexcept;  // coalescing; lock held
  bool take_free(std::uintptr_t addr, std::size_t n) noexcept;    // exact range; lock held
  void flush_cache() noexcept;                                      // lock held
  // Whether [addr, +bytes) may come home: chunk-aligned, inside this rank's share, and no part
  // free or cached (a run returned twice would be handed out twice). O(log n). Lock held.
  bool may_return(std::uintptr_t addr, std::size_t bytes) const noexcept;
  // Whether a run of by_addr (disjoint runs, start -> chunks) reaches into [addr, +bytes).
  // O(log n); bytes > 0.
  static bool reaches_in(const sys_map<std::uintptr_t, std::size_t>& by_addr, std::uintptr_t addr,
                         std::size_t bytes) noexcept;
  // A run of n chunks at addr leaves use: into the cache, committed, if n <= max_cached_run_chunks
  // and the cache stays within cache_bound_; otherwise decommitted into the free map. Lock held.
  // Runs freed here and runs that come home alike: a work-stealing victim is the home of its
  // stolen threads' memory, and decommitting each returned run (an madvise of about 1.5 us,
  // four per stolen thread) kept it from answering steal requests (bench_stealing).
  void retire(std::uintptr_t addr, std::size_t n) noexcept;

  mutable std::mutex lock_;              // guards everything below that changes after set-up
  std::atomic<bool> ready_{false};
  std::uintptr_t early_base_ = 0;        // provisional reservation, 0 if none
  std::size_t early_bytes_ = 0;
  std::uintptr_t base_ = 0;              // agreed region; bytes_ == 0 until agreed
  std::size_t bytes_ = 0;
  std::size_t share_bytes_ = 0;          // multiple of chunk_bytes
  int rank_ = 0;
  int nranks_ = 1;
  region_peers* peers_ = nullptr;        // null in single-rank mode
  struct pending_return {
    int owner;
    std::uintptr_t addr;
    std::size_t bytes;
  };
  sys_vector<pending_return> pending_returns_;  // freed by other OS threads, for the MPI thread
  std::atomic<return_hook> return_hook_{nullptr};

  // Invariant: free_by_addr_ holds disjoint, non-adjacent runs (start -> chunks) inside this
  // rank's share, and free_by_size_ holds exactly the same runs keyed by length.
  sys_map<std::uintptr_t, std::size_t> free_by_addr_;
  sys_multimap<std::size_t, std::uintptr_t> free_by_size_;
  // cache_[n] holds freed runs of exactly n chunks, still committed (n <= max_cached_run_chunks),
  // the last freed at the back (handed out first: its lines are the warmest). cached_by_addr_
  // holds exactly the same runs (start -> chunks), for may_return: runs that come home fill the
  // cache too, up to cache_bound_ / chunk_bytes (4096 by default) of them.
  sys_vector<std::uintptr_t> cache_[max_cached_run_chunks + 1];
  sys_map<std::uintptr_t, std::size_t> cached_by_addr_;
  std::size_t cache_bound_ = default_cache_bytes;
  stats_t stats_;
};

// Gives the pages of [p, p + bytes) back to the kernel: at once (prim::decommit) or lazily
// (prim::release_lazily). When the kernel refuses (madvise fails: locked pages, say), they stay
// committed with their contents, which no caller relies on (a freed run's contents are
// undefined, and heap chunks lose their magic before they are freed): that is counted in
// region::stats().failed_releases and reported on stderr the first time, naming the range and
// the error. Returns 0 or the errno value. From any OS thread. pre: page-aligned.
int release_pages(void* p, std::size_t bytes, bool lazily = false) noexcept;

// Parses sizes like "4096", "64K", "2G", "16T" (binary units); 0 on error.
std::size_t parse_bytes(const char* text) noexcept;

}  // namespace iso::detail
