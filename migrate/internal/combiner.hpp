// Rank-local combining for the collectives of isothreads/collectives.hpp (collectives.cpp).
//
//   partial_tree   exact partial results of the fixed combination tree over member indices
//   rank_combiner  a rank's collectives in progress: what its members deposited and not yet sent
//                  to the combining member, and the members that wait here for a result
//
// The fixed tree. For a group of n members, block (k, lo), lo a multiple of 2^k, stands for
// members [lo, min(lo + 2^k, n)). Its value is op(block (k-1, lo), block (k-1, lo + 2^(k-1))) when
// lo + 2^(k-1) < n, else block (k-1, lo)'s; block (0, i) is member i's value (a leaf) and the
// result is block (K, 0), 2^K >= n. This is the binomial tree toward member 0 (member 0 takes in
// [1, 2), then [2, 4), then [4, 8), ...). Because every block's value is computed by that one
// expression from its two halves, any set of ranks that each evaluate the blocks whose leaves
// they hold and pass the blocks on gets the same bits for the result, wherever the members ran.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "isothreads/collectives.hpp"
#include "diag.hpp"
#include "isothreads/thread_id.hpp"
#include "sysalloc.hpp"

namespace iso::detail {

struct tcb;
class engine;

// Blocks of the system heap for the rank's collectives, kept once freed for the next use, by
// size class: a rank that runs one collective after another takes the same blocks again instead
// of asking glibc each time, whose large blocks (a 1 MiB span's leaves, batches and results) go
// back to the kernel when freed and fault in again on the next use (about 1.5 us a 4 KiB page),
// and whose small ones take its arena lock. Used only on the OS thread of the rank's scheduler
// (where collectives and the engine's polls run).
// Classes: 16 bytes, then four a power of two (20, 24, 28, 32, 40, 48, ... bytes), so that a block
// is at most 25% larger than asked (a 1 MiB result and its 48 bytes of headers: 1.25 MiB), up to
// kept_limit; a larger block is glibc's, of the size asked, and freed at once.
// Invariant: kept() == the bytes of the blocks in free_ <= kept_limit. trim() frees them all:
// the rank_combiner calls it as the engine goes, runtime::run() as each run ends.
class block_cache {
 public:
  static block_cache& get() noexcept;
  void* take(std::size_t bytes);                 // throws std::bad_alloc (fault point "collectives.take")
  void give(void* p, std::size_t bytes) noexcept;  // bytes: as given to take()
  void trim() noexcept;                          // frees every kept block
  std::size_t kept() const noexcept { return kept_; }
  // The bytes of the block take(bytes) gives.
  static std::size_t block_bytes(std::size_t bytes) noexcept;
  // 8 MiB: what one rank's collectives of 1 MiB values have in use at once (its leaves kept until
  // their right siblings come, log2 of its members, the batch and the shared result, each 1 to
  // 1.25 MiB: 5.5 MiB with 8 members) stays faulted in from one call to the next, and a rank done
  // with collectives holds no more than that until its run ends. Larger values cost their
  // faults, which their messages' latency (1 MiB: about 128 us) and copies dwarf less and less.
  static constexpr std::size_t kept_limit = std::size_t{8} << 20;

 private:
  static unsigned class_of(std::size_t bytes) noexcept;     // its blocks have class_bytes(c) bytes
  static std::size_t class_bytes(unsigned c) noexcept;
  static constexpr unsigned classes = 77;  // 16 B, then 4 a power of two up to 2^23 B (kept_limit)
  struct node {
    node* next;
  };
  node* free_[classes] = {};
  std::size_t kept_ = 0;  // bytes of the blocks in free_
};

template <class T>
struct cached_allocator {
  using value_type = T;
  cached_allocator() noexcept = default;
  template <class U>
  cached_allocator(const cached_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(block_cache::get().take(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { block_cache::get().give(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const cached_allocator<U>&) const noexcept { return true; }
};

// A result record as this rank's waiters of one collective share it (deliver()): each reads it in
// place and lets go of it (release), the last one frees it. The record follows this header.
struct shared_result {
  std::size_t readers;  // waiters that have not let go of it yet
  std::size_t bytes;    // the record's
  const std::byte* record() const noexcept { return reinterpret_cast<const std::byte*>(this + 1); }
};
static_assert(sizeof(shared_result) % alignof(std::max_align_t) == 0, "the record is aligned as a heap block");

// How two adjacent blocks combine: element-wise with c when c.fn is set (same lengths, else a
// failure naming both), else by concatenation (gather, broadcast, barrier). `call` names the
// public call in failures.
struct merge_rule {
  combiner c;
  const char* call;
  // left = left . right, where left starts at member left_lo and right at right_lo. A failed
  // block wins over a value, the left one over the right one (the first in index order).
  // An op that throws makes left a failure naming the call and the exception's what(): every
  // member throws it, as for different lengths. Throws only std::bad_alloc; on a throw the
  // blocks it read are unchanged (left may be a failure with part of its text).
  template <class Bytes>
  void merge(bool& left_failed, Bytes& left, std::uint32_t left_lo, const std::byte* right, std::size_t right_bytes,
             bool right_failed, std::uint32_t right_lo) const;
  // block becomes the failure `text` (empty if copying the text throws std::bad_alloc).
  template <class Bytes>
  static void fail(bool& failed, Bytes& block, const std::string& text);
};

// A block's bytes: up to inline_bytes of them in the object itself (a scalar's value, the common
// case, costs no allocation), more in a block of Alloc, after `headroom` bytes of its own where
// the headers of a message can be written, so that a large block is sent without being copied
// into a message first (rank_combiner::send_blocks, combine_at_member_0). Moves leave the source
// empty and never throw; assign and append give the strong guarantee (std::bad_alloc leaves it
// unchanged).
template <class Alloc>
class small_bytes {
 public:
  static constexpr std::size_t inline_bytes = 16;
  static constexpr std::size_t headroom = 64;  // a batch_header and a block_header
  small_bytes() noexcept = default;
  small_bytes(const std::byte* first, const std::byte* last) { assign(first, last); }
  // n bytes at p that it does not own: read in place, never written, until it is assigned,
  // appended to, or rebuilt (which make it own its bytes). pre: p stays valid and unchanged as
  // long as this holds it. For more than inline_bytes, whose copy it saves (fewer are copied
  // into the inline room anyway).
  static small_bytes borrowed(const std::byte* p, std::size_t n) noexcept {
    small_bytes b;
    b.heap_ = const_cast<std::byte*>(p);  // never written through (capacity() is 0)
    b.cap_ = 0;
    b.size_ = n;
    return b;
  }
  bool is_borrowed() const noexcept { return heap_ != nullptr && cap_ == 0; }
  // Becomes n bytes of its own, which fill(out) writes (it may read data() meanwhile). If fill or
  // the allocation throws, it is unchanged.
  template <class F>
  void rebuild(std::size_t n, F&& fill) {
    std::byte* p = allocate(n);
    try {
      fill(p);
    } catch (...) {
      deallocate(p, n);
      throw;
    }
    release();
    heap_ = p;
    cap_ = n;
    size_ = n;
  }
  small_bytes(small_bytes&& o) noexcept { take(o); }
  small_bytes& operator=(small_bytes&& o) noexcept {
    if (this != &o) {
      release();
      take(o);
    }
    return *this;
  }
  ~small_bytes() { release(); }
  std::byte* data() noexcept { return heap_ != nullptr ? heap_ : local_; }
  const std::byte* data() const noexcept { return heap_ != nullptr ? heap_ : local_; }
  const std::byte* begin() const noexcept { return data(); }
  const std::byte* end() const noexcept { return data() + size_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  void clear() noexcept { size_ = 0; }
  // The `headroom` bytes before data(), if the bytes are in a block of Alloc; else null.
  std::byte* room_before() noexcept { return heap_ != nullptr && cap_ != 0 ? heap_ - headroom : nullptr; }
  void assign(const std::byte* first, const std::byte* last) {
    const auto n = static_cast<std::size_t>(last - first);
    if (n > capacity()) {
      std::byte* p = allocate(n);
      release();
      heap_ = p;
      cap_ = n;
    }
    if (n != 0) std::memmove(data(), first, n);
    size_ = n;
  }
  void append(const std::byte* first, const std::byte* last) {
    const auto n = static_cast<std::size_t>(last - first);
    if (size_ + n > capacity()) {
      const std::size_t cap = std::max(size_ + n, 2 * capacity());
      std::byte* p = allocate(cap);
      const std::size_t had = size_;
      if (had != 0) std::memcpy(p, data(), had);
      release();
      heap_ = p;
      cap_ = cap;
      size_ = had;
    }
    if (n != 0) std::memcpy(data() + size_, first, n);
    size_ += n;
  }

 private:
  std::size_t capacity() const noexcept { return heap_ != nullptr ? cap_ : inline_bytes; }  // borrowed: 0
  // Room for n bytes after the headroom; the pointer past the headroom.
  static std::byte* allocate(std::size_t n) {
    Alloc a;
    return std::allocator_traits<Alloc>::allocate(a, headroom + n) + headroom;
  }
  static void deallocate(std::byte* p, std::size_t n) noexcept {
    Alloc a;
    std::allocator_traits<Alloc>::deallocate(a, p - headroom, headroom + n);
  }
  void release() noexcept {
    if (heap_ != nullptr && cap_ != 0) deallocate(heap_, cap_);
    heap_ = nullptr;
    size_ = 0;
  }
  void take(small_bytes& o) noexcept {
    heap_ = o.heap_;
    cap_ = o.cap_;
    size_ = o.size_;
    // All of local_, a fixed size (two moves, no call); bytes past size_ are indeterminate
    // std::byte, which may be copied.
    if (heap_ == nullptr) std::memcpy(local_, o.local_, inline_bytes);
    o.heap_ = nullptr;
    o.size_ = 0;
  }
  std::byte* heap_ = nullptr;  // past the headroom of a block of Alloc (or borrowed); null: in local_
  std::size_t cap_ = 0;        // bytes at heap_; 0: borrowed
  std::size_t size_ = 0;
  std::byte local_[inline_bytes];
};

// Disjoint blocks of the fixed tree; a block and its sibling are merged as soon as both are here.
// Invariant: no two blocks overlap, and no block's sibling is here unless their merge threw
// (put, put_bytes: the block is kept beside its sibling, so that no leaf is lost and drain()
// still hands every one out); root() is set exactly when every leaf [0, n) has been put and no
// merge threw. ByteAlloc: where the bytes live (the system heap for a rank's
// state, the current heap for the combining member's, which may migrate with it).
// The blocks are in an open-addressed table keyed by their first member (lo: disjoint blocks
// have distinct ones), linear probing, at most half full, so that finding a sibling is O(1)
// whatever order the leaves come in, and a put allocates nothing but the table's growth (and
// bytes beyond small_bytes' inline ones).
// The common order has a faster path: a rank's members deposit one after another in index order
// (they run in the order they were spawned), so the blocks form one contiguous run of members,
// kept as a stack in member order (run_): a block that starts where the run ends is pushed, and
// merged with the block below while that is its sibling. That is the table's walk (put_node) with
// the only places a sibling can be (a left one ends where the block starts: the block below; a
// right one has not come), so the merges, and the bits, are the same. Either the run or the table
// holds the blocks, never both: a block anywhere else (or a run of run_capacity blocks) moves the
// run into the table first (spill), and the tree takes the run again once the table is empty.
// The run's room is part of the tree: run_capacity slots of about 56 bytes, 0.9 KiB in each
// rank_combiner entry and on member 0's stack while it combines (against 64 KiB at least).
template <class ByteAlloc>
class partial_tree {
 public:
  using bytes = small_bytes<ByteAlloc>;
  struct part {
    bool failed = false;  // data is the text of an error every member throws
    bytes data;
  };
  partial_tree() noexcept = default;
  partial_tree(partial_tree&& o) noexcept
      : slots_(o.slots_), mask_(o.mask_), count_(o.count_), runs_(o.runs_), root_(std::move(o.root_)) {
    for (std::size_t i = 0; i < runs_; ++i) {
      run_[i].lo = o.run_[i].lo;
      run_[i].level = o.run_[i].level;
      run_[i].p = std::move(o.run_[i].p);
    }
    o.slots_ = nullptr;
    o.mask_ = 0;
    o.count_ = 0;
    o.runs_ = 0;
    o.root_.reset();
  }
  partial_tree& operator=(partial_tree&&) = delete;
  ~partial_tree() { destroy(); }

  // Block (level, lo) of a group of n members, from bytes it does not own: they are copied only
  // if they must be kept (not when they merge at once into their left sibling), and not even then
  // if `borrow` (more than small_bytes keeps inline; pre: they stay valid and unchanged until the
  // tree has handed them out through drain() or merged them). pre: no block put so far overlaps
  // it. Throws only std::bad_alloc: then the bytes are not in the tree, or, borrowed, still are.
  void put_bytes(std::uint32_t level, std::uint32_t lo, const std::byte* data, std::size_t n_bytes, bool failed,
                 std::uint32_t n, const merge_rule& r, bool borrow = false);
  // Leaf `index` becomes the failure `text`: the block that holds it, if one does (a put that
  // threw may have kept it, merged with others), else a block of its own. pre: lo < n. Throws
  // only std::bad_alloc (the block then holds a failure, or the leaf is not in the tree).
  void fail_leaf(std::uint32_t index, const std::string& text, std::uint32_t n, const merge_rule& r);
  const std::optional<part>& root() const noexcept { return root_; }
  std::optional<part>& root() noexcept { return root_; }
  bool empty() const noexcept { return count_ == 0 && runs_ == 0 && !root_; }
  std::size_t blocks() const noexcept { return count_ + runs_ + (root_ ? 1 : 0); }
  // f(level, lo, part&&) for every block (the root as (K, 0)), then empty.
  template <class F>
  void drain(std::uint32_t n, F&& f);

 private:
  static constexpr std::uint32_t none = ~std::uint32_t{0};  // the lo of an empty slot
  struct slot {
    std::uint32_t lo = none;
    std::uint32_t level = 0;
    part p;
  };
  using slot_alloc = typename std::allocator_traits<ByteAlloc>::template rebind_alloc<slot>;
  struct key {
    std::uint32_t level;
    std::uint32_t lo;
  };
  // The block (level, lo) has its sibling at the returned key (the level may be higher: a block
  // whose right half is empty is its own parent); none when it is the root. The one walk of the
  // tree's shape, for put_node and put_bytes.
  static std::optional<key> sibling_of(std::uint32_t level, std::uint32_t lo, std::uint32_t n) noexcept;
  std::size_t home(std::uint32_t lo) const noexcept {
    return static_cast<std::size_t>((std::uint64_t{lo} * 0x9e3779b97f4a7c15ull) >> 32) & mask_;
  }
  // The slot of block (level, lo), null if it is not here.
  slot* find(key k) noexcept;
  // Room for `more` blocks beyond those here without growing (so that keeping a block after a
  // merge threw cannot throw too). Throws only std::bad_alloc, the tree unchanged.
  void reserve(std::size_t more);
  // Keeps the block; pre: room for it (reserve), no block with its lo here.
  void insert(std::uint32_t level, std::uint32_t lo, part&& p) noexcept;
  // Takes the block out of s (backward-shift deletion: no tombstones).
  part remove(slot* s) noexcept;
  // The block (level, lo, p) merged with its sibling, and on up, then kept where it stops (p,
  // worked on in place, is left empty).
  // pre: room for one block more. A merge that throws keeps it beside its sibling before the
  // exception leaves.
  void put_node(std::uint32_t level, std::uint32_t lo, part&& p, std::uint32_t n, const merge_rule& r);
  // put_bytes on the run. pre: the table is empty, the run has room for a block, and it is empty
  // or ends at lo.
  void put_run(std::uint32_t level, std::uint32_t lo, const std::byte* data, std::size_t n_bytes, bool failed,
               std::uint32_t n, const merge_rule& r, bool borrow);
  // The run's top block merged with the block below while that is its sibling (the root, once it
  // is the whole tree). A merge that throws leaves both where they are (as put_node keeps them).
  void collapse_run(std::uint32_t n, const merge_rule& r);
  // The run's blocks into the table (the run is empty after). Throws only std::bad_alloc (the
  // table's room), the tree unchanged.
  void spill_run();
  static std::uint64_t end_of(std::uint32_t level, std::uint32_t lo, std::uint32_t n) noexcept {
    return std::min<std::uint64_t>(std::uint64_t{lo} + (std::uint64_t{1} << level), n);
  }
  void destroy() noexcept;
  slot* slots_ = nullptr;  // mask_ + 1 of them (a power of two), or none
  std::size_t mask_ = 0;
  std::size_t count_ = 0;  // blocks in slots_
  // 16: a rank's contiguous members form at most 2 log2(members) maximal blocks, so a run of up
  // to 256 members always fits, and of 2^16 when they start at a multiple of a power of two
  // above their count (rank-major groups of a power of two on each rank).
  static constexpr std::size_t run_capacity = 16;
  slot run_[run_capacity];  // [0, runs_): the run, in member order, each ending where the next starts
  std::size_t runs_ = 0;
  std::optional<part> root_;
};

// A rank's collectives in progress, keyed by (group fingerprint, the collective's number among
// that group's, counted by each member). Lives in the system heap: the members' own state travels
// with them, this is the rank's.
// Invariant: an entry exists while it has blocks not yet sent to member 0 or members waiting here;
// a waiting member is blocked (wait_reason::collective, so it stays on this rank) until
// deliver() hands it the result; unsent() == the number of entries with blocks not yet sent.
class rank_combiner {
 public:
  using key = std::pair<std::uint64_t, std::uint64_t>;  // (fingerprint, sequence number)
  rank_combiner() = default;
  rank_combiner(const rank_combiner&) = delete;
  rank_combiner& operator=(const rank_combiner&) = delete;
  // With the engine: what is left of its entries (a run that ended in a deadlock) goes, and so
  // does every block the cache kept.
  ~rank_combiner();
  struct waiter {
    tcb* thread;                   // blocked here
    const shared_result** out;     // on its stack: gets the result it shares with this rank's waiters
  };
  // Member `index` of the collective `k` (kind, n members, member 0 `first`, reserved `tag`)
  // puts its value; `w`: the member waits here for the result (it blocks once this returns).
  // A kind other than the one the entry was made for becomes a failure every member throws.
  // Throws std::bad_alloc when the system heap has no room for the value: then the value is a
  // failure naming the member, which every member that returns a result throws, and the member
  // does not wait here (the process stops through fatal() if even that failure cannot be kept).
  void deposit(const key& k, collective kind, std::uint32_t n, thread_id first, int tag, std::uint32_t index,
               const std::byte* data, std::size_t bytes, const merge_rule& r, const waiter* w);
  // At the engine's polls: sends each entry's blocks to its member 0, at once when `idle` (no
  // thread ready here), else once a poll has seen them and no deposit came since. True if it
  // sent any.
  bool flush(engine& e, bool idle) noexcept;
  // A result record (collectives.cpp) for this rank's waiters of its collective: they share one
  // copy of it (shared_result), and each is woken pinned to this rank (tcb::locks_held, as a
  // thread handed an iso::mutex is) until it has read it and called release().
  void deliver(const unsigned char* record, std::size_t bytes) noexcept;
  // The waiter `reader` has read r (it runs on this rank): unpins it; the last reader frees r.
  static void release(const shared_result* r, tcb* reader) noexcept;
  std::size_t unsent() const noexcept { return unsent_; }
  // now_ns() when this rank last sent blocks after which it expects a collective's message: a
  // result for members that wait here, or batches for a member 0 that runs here (never_ns: it
  // never did). The idle loop polls without a pause for a while after it, skipping most of its
  // background work (mpi_progress::poll).
  std::int64_t answer_expected_ns() const noexcept { return answer_expected_ns_; }
  // Far enough in the past that now_ns() minus it cannot overflow.
  static constexpr std::int64_t never_ns = INT64_MIN / 2;

  // Messages between ranks for collectives, sent by this rank so far (tests show the cost).
  struct counts_t {
    std::uint64_t batches = 0;   // blocks sent to a member 0 on another rank
    std::uint64_t results = 0;   // results sent to another rank
  };
  counts_t counts() const noexcept { return counts_; }
  // Gives back the spare entry's table and room for waiters (to block_cache, whose trim() then
  // frees them): as a run ends, so that between runs the rank keeps nothing for collectives.
  void trim() noexcept { spare_ = entry_map::node_type(); }
  void count_result() noexcept { ++counts_.results; }  // engine::send_to_rank, for another rank

 private:
  struct entry {
    collective kind;
    std::uint32_t n;
    thread_id first;
    int tag;
    partial_tree<cached_allocator<std::byte>> blocks;  // deposited here, not yet sent
    bool waiters_unsent = false;   // a waiter's leaf is among them: member 0 must answer this rank
    bool aged = false;             // a poll has seen them, and no deposit came since
    std::vector<waiter, cached_allocator<waiter>> waiters;
  };
  // deposit() without its failure path: `failed`: the bytes are the text of a failure.
  void put_leaf(const key& k, collective kind, std::uint32_t n, thread_id first, int tag, std::uint32_t index,
                const std::byte* data, std::size_t bytes, bool failed, const merge_rule& r, const waiter* w);
  using entry_map = std::map<key, entry, std::less<key>, cached_allocator<std::pair<const key, entry>>>;
  // The entry of k, made (from spare_ if there is one) if there is none; fresh: made now.
  entry_map::iterator entry_of(const key& k, bool& fresh);
  // Sends the entry's blocks to its member 0 (fatal if that fails); erases it unless members
  // wait here. The next entry.
  entry_map::iterator send_blocks(engine& eng, entry_map::iterator it) noexcept;
  // Erases the entry (blocks empty), keeping its node as spare_ if there is none.
  entry_map::iterator retire(entry_map::iterator it) noexcept;
  entry_map entries_;
  // The entry of the last deposit (or end()): a rank's members deposit into one collective after
  // another, so most deposits find their entry without a search.
  entry_map::iterator last_ = entries_.end();
  // An erased entry's node, with its table of blocks and its room for waiters, for the rank's
  // next collective: a run of collectives makes no entry afresh (empty or holding no bytes).
  entry_map::node_type spare_;
  std::size_t unsent_ = 0;
  std::int64_t answer_expected_ns_ = never_ns;
  counts_t counts_;
};

// Wire formats, each header a multiple of 8 bytes (the bytes that follow are not padded). A batch
// (rank -> member 0, a reserved message on the group's tag): batch_header, then `blocks` times
// block_header and its bytes. A result (member 0 -> a rank, engine::send_to_rank; and what a
// waiter gets): result_header and the result's bytes.
struct batch_header {
  std::uint64_t fingerprint;
  std::uint64_t seq;
  std::uint32_t kind;        // collective
  std::uint32_t n;           // members
  std::int32_t rank;         // the sending rank
  std::uint32_t waiters;     // 1: members wait there for the result
  std::uint32_t blocks;
  std::uint32_t unused = 0;
};
struct block_header {
  std::uint32_t lo;
  std::uint32_t level;
  std::uint32_t failed;
  std::uint32_t unused = 0;
  std::uint64_t bytes;
};
struct result_header {
  std::uint64_t fingerprint;
  std::uint64_t seq;
  std::uint32_t failed;      // 1: the bytes are the text of an error every member throws
  std::uint32_t unused = 0;
  std::uint64_t bytes;
};
static_assert(sizeof(result_header) == result_offset, "a waiter's result is a result record");
static_assert(sizeof(batch_header) + sizeof(block_header) == small_bytes<std::allocator<std::byte>>::headroom,
              "a batch of one block is written in front of the block's bytes");
static_assert(sizeof(result_header) <= small_bytes<std::allocator<std::byte>>::headroom,
              "a result is written in front of the root's bytes");

// ---------------------------------------------------------------- templates

template <class Bytes>
void merge_rule::merge(bool& left_failed, Bytes& left, std::uint32_t left_lo, const std::byte* right,
                       std::size_t right_bytes, bool right_failed, std::uint32_t right_lo) const {
  if (left_failed) return;
  if (right_failed) {
    left_failed = true;
    left.assign(right, right + right_bytes);
    return;
  }
  if (c.fn == nullptr) {
    left.append(right, right + right_bytes);
    return;
  }
  if (left.size() != right_bytes) {
    fail(left_failed, left,
         std::string(call) + ": members pass different lengths (member " + std::to_string(left_lo) + ": " +
             std::to_string(left.size() / c.elem) + " elements, member " + std::to_string(right_lo) + ": " +
             std::to_string(right_bytes / c.elem) + ")");
    return;
  }
  std::exception_ptr op_threw;
  bool done = false;
  if constexpr (requires { left.is_borrowed(); }) {
    if (left.is_borrowed()) {
      // Read in place and written into a block of its own: one pass over the bytes less than a
      // copy and a combination. std::bad_alloc (the block) leaves left unchanged.
      const std::byte* in = left.data();
      left.rebuild(right_bytes, [&](std::byte* out) {
        try {
          c.fn_into(c.op, out, in, right, right_bytes / c.elem);
        } catch (...) {
          op_threw = std::current_exception();
        }
      });
      done = true;
    }
  }
  if (!done) {
    try {
      c.fn(c.op, left.data(), right, right_bytes / c.elem);
    } catch (...) {
      op_threw = std::current_exception();
    }
  }
  if (!op_threw) return;
  try {
    std::rethrow_exception(op_threw);
  } catch (const std::exception& x) {
    fail(left_failed, left, std::string(call) + ": the operation threw: " + x.what());
  } catch (...) {
    fail(left_failed, left, std::string(call) + ": the operation threw an exception that is not a std::exception");
  }
}

template <class Bytes>
void merge_rule::fail(bool& failed, Bytes& block, const std::string& text) {
  failed = true;
  block.clear();  // no partly combined value is left behind if the text cannot be copied
  const auto* t = reinterpret_cast<const std::byte*>(text.data());
  block.assign(t, t + text.size());
}

template <class ByteAlloc>
auto partial_tree<ByteAlloc>::sibling_of(std::uint32_t level, std::uint32_t lo, std::uint32_t n) noexcept
    -> std::optional<key> {
  for (;; ++level) {
    const std::uint64_t span = std::uint64_t{1} << level;
    if (lo == 0 && span >= n) return std::nullopt;
    const std::uint64_t sibling = lo ^ span;
    if (sibling < n) return key{level, static_cast<std::uint32_t>(sibling)};
    // The right half is empty: the block is its parent.
  }
}

template <class ByteAlloc>
auto partial_tree<ByteAlloc>::find(key k) noexcept -> slot* {
  if (slots_ == nullptr) return nullptr;
  for (std::size_t i = home(k.lo);; i = (i + 1) & mask_) {
    slot& s = slots_[i];
    if (s.lo == none) return nullptr;
    // A block with this lo but another level is a part of the one asked for (they overlap).
    if (s.lo == k.lo) return s.level == k.level ? &s : nullptr;
  }
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::reserve(std::size_t more) {
  const std::size_t want = count_ + more;
  if (slots_ != nullptr && 2 * want <= mask_ + 1) return;
  std::size_t cap = slots_ != nullptr ? 2 * (mask_ + 1) : 8;
  while (2 * want > cap) cap *= 2;
  slot_alloc a;
  slot* fresh = std::allocator_traits<slot_alloc>::allocate(a, cap);
  for (std::size_t i = 0; i < cap; ++i) new (fresh + i) slot();
  slot* old = slots_;
  const std::size_t old_cap = old != nullptr ? mask_ + 1 : 0;
  slots_ = fresh;
  mask_ = cap - 1;
  count_ = 0;
  for (std::size_t i = 0; i < old_cap; ++i) {
    if (old[i].lo != none) insert(old[i].level, old[i].lo, std::move(old[i].p));
    old[i].~slot();
  }
  if (old != nullptr) std::allocator_traits<slot_alloc>::deallocate(a, old, old_cap);
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::insert(std::uint32_t level, std::uint32_t lo, part&& p) noexcept {
  ISO_ASSERT_INTERNAL(slots_ != nullptr && 2 * (count_ + 1) <= mask_ + 1);
  std::size_t i = home(lo);
  while (slots_[i].lo != none) {
    ISO_ASSERT_INTERNAL(slots_[i].lo != lo);
    i = (i + 1) & mask_;
  }
  slots_[i].lo = lo;
  slots_[i].level = level;
  slots_[i].p = std::move(p);
  ++count_;
}

template <class ByteAlloc>
auto partial_tree<ByteAlloc>::remove(slot* s) noexcept -> part {
  part out = std::move(s->p);
  std::size_t hole = static_cast<std::size_t>(s - slots_);
  // Backward shift: a later block of the probe run moves into the hole unless its home lies
  // cyclically in (hole, its slot], where a search for it would stop before the hole.
  for (std::size_t i = (hole + 1) & mask_; slots_[i].lo != none; i = (i + 1) & mask_) {
    const std::size_t h = home(slots_[i].lo);
    const bool stays = hole <= i ? (hole < h && h <= i) : (hole < h || h <= i);
    if (stays) continue;
    slots_[hole].lo = slots_[i].lo;
    slots_[hole].level = slots_[i].level;
    slots_[hole].p = std::move(slots_[i].p);
    hole = i;
  }
  slots_[hole].lo = none;
  slots_[hole].p = part{};
  --count_;
  return out;
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::destroy() noexcept {
  if (slots_ == nullptr) return;
  const std::size_t cap = mask_ + 1;
  for (std::size_t i = 0; i < cap; ++i) slots_[i].~slot();
  slot_alloc a;
  std::allocator_traits<slot_alloc>::deallocate(a, slots_, cap);
  slots_ = nullptr;
  mask_ = 0;
  count_ = 0;
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::put_node(std::uint32_t level, std::uint32_t lo, part&& in, std::uint32_t n,
                                       const merge_rule& r) {
  part& b = in;  // the caller's, worked on in place (a move would copy its inline bytes again)
  for (;;) {
    const std::optional<key> s = sibling_of(level, lo, n);
    if (!s) {
      root_.emplace(std::move(b));
      return;
    }
    level = s->level;
    slot* const sib = find(*s);
    if (sib == nullptr) {
      insert(level, lo, std::move(b));
      return;
    }
    try {  // a merge that throws leaves both blocks as they were (merge_rule::merge)
      if (s->lo > lo) {
        r.merge(b.failed, b.data, lo, sib->p.data.data(), sib->p.data.size(), sib->p.failed, s->lo);
      } else {
        r.merge(sib->p.failed, sib->p.data, s->lo, b.data.data(), b.data.size(), b.failed, lo);
      }
    } catch (...) {
      insert(level, lo, std::move(b));  // room: the caller's reserve, and nothing was inserted since
      throw;
    }
    if (s->lo > lo) {
      remove(sib);
    } else {
      b = remove(sib);  // the merged block
      lo = s->lo;
    }
    ++level;
  }
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::put_bytes(std::uint32_t level, std::uint32_t lo, const std::byte* data,
                                        std::size_t n_bytes, bool failed, std::uint32_t n, const merge_rule& r,
                                        bool borrow) {
  ISO_ASSERT(lo < n);
  if (count_ == 0 && runs_ < run_capacity &&
      (runs_ == 0 || end_of(run_[runs_ - 1].level, run_[runs_ - 1].lo, n) == lo)) {
    put_run(level, lo, data, n_bytes, failed, n, r, borrow);
    return;
  }
  spill_run();
  // The block's left sibling, if here, takes the bytes straight in; else they are kept (put_node),
  // a left block until its right sibling comes.
  if (const std::optional<key> s = sibling_of(level, lo, n); s && s->lo < lo) {
    if (slot* const sib = find(*s)) {
      r.merge(sib->p.failed, sib->p.data, s->lo, data, n_bytes, failed, lo);
      const std::uint32_t left_lo = s->lo;
      part left = remove(sib);  // leaves room for it again
      put_node(s->level + 1, left_lo, std::move(left), n, r);
      return;
    }
  }
  reserve(1);  // before the copy: a throw leaves nothing half made
  if (borrow && !failed && n_bytes > bytes::inline_bytes) {
    put_node(level, lo, part{false, bytes::borrowed(data, n_bytes)}, n, r);
  } else {
    put_node(level, lo, part{failed, bytes(data, data + n_bytes)}, n, r);
  }
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::put_run(std::uint32_t level, std::uint32_t lo, const std::byte* data,
                                      std::size_t n_bytes, bool failed, std::uint32_t n, const merge_rule& r,
                                      bool borrow) {
  // As put_bytes: a left sibling on top of the run takes the bytes straight in.
  if (runs_ != 0) {
    slot& top = run_[runs_ - 1];
    if (const std::optional<key> s = sibling_of(level, lo, n); s && s->lo == top.lo && s->level == top.level) {
      r.merge(top.p.failed, top.p.data, top.lo, data, n_bytes, failed, lo);  // a throw: nothing changed
      top.level = s->level + 1;
      collapse_run(n, r);
      return;
    }
  }
  slot& b = run_[runs_];
  if (borrow && !failed && n_bytes > bytes::inline_bytes) {
    b.p.data = bytes::borrowed(data, n_bytes);
  } else {
    b.p.data.assign(data, data + n_bytes);  // a throw: nothing changed (runs_ not moved yet)
  }
  b.p.failed = failed;
  b.lo = lo;
  b.level = level;
  ++runs_;
  collapse_run(n, r);
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::collapse_run(std::uint32_t n, const merge_rule& r) {
  for (;;) {
    slot& top = run_[runs_ - 1];
    const std::optional<key> s = sibling_of(top.level, top.lo, n);
    if (!s) {
      ISO_ASSERT_INTERNAL(runs_ == 1);
      root_.emplace(std::move(top.p));
      top.p = part{};
      top.lo = none;
      runs_ = 0;
      return;
    }
    top.level = s->level;  // as put_node keeps it: the level of the pair it belongs to
    if (s->lo > top.lo || runs_ == 1) return;  // its right sibling has not come, or its left one is not here
    slot& below = run_[runs_ - 2];
    if (below.lo != s->lo || below.level != s->level) return;  // the block below is part of its left sibling
    r.merge(below.p.failed, below.p.data, below.lo, top.p.data.data(), top.p.data.size(), top.p.failed, top.lo);
    top.p = part{};
    top.lo = none;
    --runs_;
    below.level = s->level + 1;
  }
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::spill_run() {
  if (runs_ == 0) return;
  ISO_ASSERT_INTERNAL(count_ == 0);
  reserve(runs_ + 1);  // the run's blocks and the one the caller puts next
  for (std::size_t i = 0; i < runs_; ++i) {
    insert(run_[i].level, run_[i].lo, std::move(run_[i].p));
    run_[i].p = part{};
    run_[i].lo = none;
  }
  runs_ = 0;
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::fail_leaf(std::uint32_t index, const std::string& text, std::uint32_t n,
                                        const merge_rule& r) {
  ISO_ASSERT(index < n);
  if (root_) {
    merge_rule::fail(root_->failed, root_->data, text);
    return;
  }
  const auto holds = [index](const slot& s) {
    return s.lo != none && s.lo <= index && index - s.lo < (std::uint64_t{1} << s.level);
  };
  for (std::size_t i = 0; i < runs_; ++i) {
    if (holds(run_[i])) {
      merge_rule::fail(run_[i].p.failed, run_[i].p.data, text);
      return;
    }
  }
  for (std::size_t i = 0; slots_ != nullptr && i <= mask_; ++i) {
    slot& s = slots_[i];
    if (holds(s)) {
      merge_rule::fail(s.p.failed, s.p.data, text);
      return;
    }
  }
  put_bytes(0, index, reinterpret_cast<const std::byte*>(text.data()), text.size(), true, n, r);
}

template <class ByteAlloc>
template <class F>
void partial_tree<ByteAlloc>::drain(std::uint32_t n, F&& f) {
  for (std::size_t i = 0; slots_ != nullptr && i <= mask_; ++i) {
    slot& s = slots_[i];
    if (s.lo == none) continue;
    part p = std::move(s.p);
    f(s.level, s.lo, std::move(p));
    s.lo = none;
  }
  count_ = 0;
  for (std::size_t i = 0; i < runs_; ++i) {
    part p = std::move(run_[i].p);
    f(run_[i].level, run_[i].lo, std::move(p));
  }
  runs_ = 0;
  if (root_) {
    std::uint32_t level = 0;
    while ((std::uint64_t{1} << level) < n) ++level;
    f(level, 0, std::move(*root_));
    root_.reset();
  }
}

}  // namespace iso::detail
