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

#include <cstddef>
#include <cstdint>
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

// Disjoint blocks of the fixed tree; a block and its sibling are merged as soon as both are here.
// Invariant: no two blocks overlap, and no block's sibling is here unless their merge threw
// (put, put_bytes: the block is kept beside its sibling, so that no leaf is lost and drain()
// still hands every one out); root() is set exactly when every leaf [0, n) has been put and no
// merge threw. ByteAlloc: where the bytes live (the system heap for a rank's
// state, the current heap for the combining member's, which may migrate with it).
template <class ByteAlloc>
class partial_tree {
 public:
  using bytes = std::vector<std::byte, ByteAlloc>;
  struct part {
    bool failed = false;  // data is the text of an error every member throws
    bytes data;
  };

  // Block (level, lo) of a group of n members. pre: no block put so far overlaps it. Throws
  // only std::bad_alloc: then p is unchanged if it was not taken in, else kept in the tree.
  void put(std::uint32_t level, std::uint32_t lo, part&& p, std::uint32_t n, const merge_rule& r);
  // Block (level, lo) from bytes it does not own: they are copied only if they must be kept (not
  // when they merge at once into their left sibling). pre, throws: as put's (the bytes are not
  // in the tree then).
  void put_bytes(std::uint32_t level, std::uint32_t lo, const std::byte* data, std::size_t n_bytes, bool failed,
                 std::uint32_t n, const merge_rule& r);
  // Leaf `index` becomes the failure `text`: the block that holds it, if one does (a put that
  // threw may have kept it, merged with others), else a block of its own. pre: lo < n. Throws
  // only std::bad_alloc (the block then holds a failure, or the leaf is not in the tree).
  void fail_leaf(std::uint32_t index, const std::string& text, std::uint32_t n, const merge_rule& r);
  const std::optional<part>& root() const noexcept { return root_; }
  bool empty() const noexcept { return parts_.empty() && !root_; }
  // f(level, lo, part&&) for every block (the root as (K, 0)), then empty.
  template <class F>
  void drain(std::uint32_t n, F&& f);

 private:
  using key = std::pair<std::uint32_t, std::uint32_t>;  // (level, lo)
  using part_alloc = typename std::allocator_traits<ByteAlloc>::template rebind_alloc<std::pair<const key, part>>;
  using part_map = std::map<key, part, std::less<key>, part_alloc>;
  // The block (level, lo) has its sibling at the returned key (the level may be higher: a block
  // whose right half is empty is its own parent); none when it is the root. The one walk of the
  // tree's shape, for put_node and put_bytes.
  static std::optional<key> sibling_of(std::uint32_t level, std::uint32_t lo, std::uint32_t n) noexcept;
  // The block in b (keyed by its level and lo) merged with its sibling, and on up, then kept
  // where it stops. A merge that throws keeps it beside its sibling before the exception leaves.
  void put_node(typename part_map::node_type&& b, std::uint32_t n, const merge_rule& r);
  part_map parts_;
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

  // Messages between ranks for collectives, sent by this rank so far (tests show the cost).
  struct counts_t {
    std::uint64_t batches = 0;   // blocks sent to a member 0 on another rank
    std::uint64_t results = 0;   // results sent to another rank
  };
  counts_t counts() const noexcept { return counts_; }
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
  std::map<key, entry, std::less<key>, cached_allocator<std::pair<const key, entry>>> entries_;
  std::size_t unsent_ = 0;
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
    left.insert(left.end(), right, right + right_bytes);
    return;
  }
  if (left.size() != right_bytes) {
    fail(left_failed, left,
         std::string(call) + ": members pass different lengths (member " + std::to_string(left_lo) + ": " +
             std::to_string(left.size() / c.elem) + " elements, member " + std::to_string(right_lo) + ": " +
             std::to_string(right_bytes / c.elem) + ")");
    return;
  }
  try {
    c.fn(c.op, left.data(), right, right_bytes / c.elem);
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
void partial_tree<ByteAlloc>::put(std::uint32_t level, std::uint32_t lo, part&& p, std::uint32_t n,
                                  const merge_rule& r) {
  ISO_ASSERT(lo < n);  // a block of this group (fingerprints of groups of other sizes could collide)
  // The node is the one allocation: from there on, nothing that was put can be lost.
  put_node(parts_.extract(parts_.emplace(key{level, lo}, std::move(p)).first), n, r);
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
void partial_tree<ByteAlloc>::put_node(typename part_map::node_type&& b, std::uint32_t n, const merge_rule& r) {
  for (;;) {
    const std::uint32_t lo = b.key().second;
    const std::optional<key> s = sibling_of(b.key().first, lo, n);
    if (!s) {
      root_.emplace(std::move(b.mapped()));
      return;
    }
    const auto [level, sibling] = *s;
    b.key() = key{level, lo};
    const auto it = parts_.find(*s);
    if (it == parts_.end()) {
      parts_.insert(std::move(b));
      return;
    }
    try {  // a merge that throws leaves both blocks as they were (merge_rule::merge)
      if (sibling > lo) {
        r.merge(b.mapped().failed, b.mapped().data, lo, it->second.data.data(), it->second.data.size(),
                it->second.failed, sibling);
      } else {
        r.merge(it->second.failed, it->second.data, sibling, b.mapped().data.data(), b.mapped().data.size(),
                b.mapped().failed, lo);
      }
    } catch (...) {
      parts_.insert(std::move(b));
      throw;
    }
    if (sibling > lo) {
      parts_.erase(it);
      b.key() = key{level + 1, lo};
    } else {
      b = parts_.extract(it);  // the merged block, in its node
      b.key() = key{level + 1, sibling};
    }
  }
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::put_bytes(std::uint32_t level, std::uint32_t lo, const std::byte* data,
                                        std::size_t n_bytes, bool failed, std::uint32_t n, const merge_rule& r) {
  ISO_ASSERT(lo < n);
  // The block's left sibling, if here, takes the bytes straight in; else they are kept (put()),
  // a left block until its right sibling comes.
  if (const std::optional<key> s = sibling_of(level, lo, n); s && s->second < lo) {
    if (const auto it = parts_.find(*s); it != parts_.end()) {
      r.merge(it->second.failed, it->second.data, s->second, data, n_bytes, failed, lo);
      auto left = parts_.extract(it);
      left.key() = key{s->first + 1, s->second};
      put_node(std::move(left), n, r);
      return;
    }
  }
  put(level, lo, part{failed, bytes(data, data + n_bytes)}, n, r);
}

template <class ByteAlloc>
void partial_tree<ByteAlloc>::fail_leaf(std::uint32_t index, const std::string& text, std::uint32_t n,
                                        const merge_rule& r) {
  ISO_ASSERT(index < n);
  if (root_) {
    merge_rule::fail(root_->failed, root_->data, text);
    return;
  }
  for (auto& [k, p] : parts_) {
    if (k.second <= index && index - k.second < (std::uint64_t{1} << k.first)) {
      merge_rule::fail(p.failed, p.data, text);
      return;
    }
  }
  put_bytes(0, index, reinterpret_cast<const std::byte*>(text.data()), text.size(), true, n, r);
}

template <class ByteAlloc>
template <class F>
void partial_tree<ByteAlloc>::drain(std::uint32_t n, F&& f) {
  for (auto& [k, p] : parts_) f(k.first, k.second, std::move(p));
  parts_.clear();
  if (root_) {
    std::uint32_t level = 0;
    while ((std::uint64_t{1} << level) < n) ++level;
    f(level, 0, std::move(*root_));
    root_.reset();
  }
}

}  // namespace iso::detail
