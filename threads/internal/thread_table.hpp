// Tables keyed by thread id (thread_id::bits) on a thread's hot path: the scheduler's table of the
// live threads of a rank (thread_table), and the records of threads that finished before they
// were joined (the scheduler's without the migrate module, the migrate directory's homes'): an
// open-addressing hash table (linear probing, deletion by backward shift, so no tombstones),
// because a spawn inserts, a join looks up and a teardown erases on every thread's hot path (and
// a child that ends before its join inserts a record that the join erases), and a node-based map
// would take a system malloc and free for each thread besides the hashing.
// Invariants: slots_.size() is 0 or a power of two at least twice size_ (the load stays at most
// one half, so a probe ends soon at an empty slot); a slot is empty iff its key is 0 (a valid
// thread_id's bits are never 0: its home field holds home + 1); every key sits in the run of
// occupied slots that starts at its home slot (hash) and reaches it without an empty slot between.
// The table shrinks too, once it has stayed sparse: after slots_.size() erasures in a row that
// each left it over min_slots and shrink_factor times larger than size_, it is rehashed to a load
// of one quarter (unless system memory for that runs out). The hash scatters the keys of
// consecutive spawns over the whole table, so a table left sized for 10^5 threads would make
// every later spawn miss the cache and the TLB at its insert (after bench_threads' resident line,
// that one miss was 29% of a spawn + join); waiting for as many sparse erasures as it has slots
// keeps the rehash O(1) amortised and never shrinks a table between the batches of a program that
// spawns and joins thousands at a time (each batch would grow it again: allocations, page faults).
// Rank-local; not thread-safe (the scheduler's OS thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

#include "diag.hpp"
#include "sysalloc.hpp"

namespace iso::detail {

struct tcb;

// Value of a set: none, taking no room in a slot.
struct no_value {};

// Value: what a key maps to, trivially copyable; Value{} is what find() gives for a key that is
// not in the table.
template <class Value>
class id_table {
 public:
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  std::size_t slots() const noexcept { return slots_.size(); }
  static constexpr std::size_t slot_bytes() noexcept { return sizeof(slot); }

  // The value of these id bits, or Value{} (thread_table: the thread, or null).
  Value find(std::uint64_t key) const noexcept {
    const slot* s = lookup(key);
    return s != nullptr ? s->value : Value{};
  }
  bool contains(std::uint64_t key) const noexcept { return lookup(key) != nullptr; }
  // pre: key != 0 and not in the table. Throws std::bad_alloc (when it grows).
  void insert(std::uint64_t key, Value value) {
    ISO_ASSERT_INTERNAL(key != 0);  // 0 marks an empty slot
    grow_for_one();
    place(key, value);
  }
  // Inserts key unless it is there already, with one probe: true if it inserted. pre: key != 0.
  // Throws std::bad_alloc (when it grows, which it may do even when key is there).
  bool insert_if_absent(std::uint64_t key, Value value) {
    ISO_ASSERT_INTERNAL(key != 0);
    grow_for_one();
    std::size_t i = home(key);
    for (; slots_[i].key != 0; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return false;
    }
    slots_[i] = {key, value};
    ++size_;
    return true;
  }
  // Removes key if present (true), shrinking the table when the erasure leaves it sparse (see
  // above); false if it was not there.
  bool erase(std::uint64_t key) noexcept {
    if (size_ == 0) return false;
    std::size_t i = home(key);
    while (slots_[i].key != key) {
      if (slots_[i].key == 0) return false;
      i = (i + 1) & mask_;
    }
    // Backward shift: move later keys of the run into the hole when their home slot does not lie
    // (cyclically) in (hole, j], so that each stays reachable from its home slot.
    for (std::size_t j = (i + 1) & mask_; slots_[j].key != 0; j = (j + 1) & mask_) {
      const std::size_t h = home(slots_[j].key);
      if (((j - h) & mask_) >= ((j - i) & mask_)) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = {0, Value{}};
    --size_;
    if (slots_.size() <= min_slots || shrink_factor * size_ >= slots_.size()) {
      sparse_erasures_ = 0;
    } else if (++sparse_erasures_ >= slots_.size()) {
      std::size_t n = min_slots;
      while (n < 4 * size_) n *= 2;
      try {
        rehash(n);
      } catch (const std::bad_alloc&) {
        // Kept as it is: a sparse table costs misses, not correctness; another slots() sparse
        // erasures in a row try again (not every erasure: each try is a failing allocation).
        sparse_erasures_ = 0;
      }
    }
    return true;
  }
  // f(value) for every key (thread_table: f(tcb*) for every thread), in no particular order. f
  // must not insert or erase.
  template <class F>
  void for_each(F&& f) const {
    for (const slot& s : slots_) {
      if (s.key != 0) f(s.value);
    }
  }
  // f(key) for every key, in no particular order. f must not insert or erase.
  template <class F>
  void for_each_key(F&& f) const {
    for (const slot& s : slots_) {
      if (s.key != 0) f(s.key);
    }
  }

 private:
  struct slot {
    std::uint64_t key;
    [[no_unique_address]] Value value;
  };
  static constexpr std::size_t min_slots = 32;
  static constexpr std::size_t shrink_factor = 16;
  // Fibonacci hashing: the serial (low bits) and home rank (high bits) both reach the top bits.
  std::size_t home(std::uint64_t key) const noexcept { return static_cast<std::size_t>((key * 0x9e3779b97f4a7c15ull) >> shift_); }
  // The slot holding key, or null.
  const slot* lookup(std::uint64_t key) const noexcept {
    if (size_ == 0) return nullptr;
    for (std::size_t i = home(key);; i = (i + 1) & mask_) {
      const slot& s = slots_[i];
      if (s.key == key) return &s;
      if (s.key == 0) return nullptr;
    }
  }
  // Room for one more key (the load stays at most one half). Throws std::bad_alloc.
  void grow_for_one() {
    if (2 * (size_ + 1) > slots_.size()) rehash(slots_.size() < min_slots ? min_slots : 2 * slots_.size());
  }
  // pre: key != 0, not in the table, and a slot is free.
  void place(std::uint64_t key, Value value) noexcept {
    std::size_t i = home(key);
    for (; slots_[i].key != 0; i = (i + 1) & mask_) {
      ISO_ASSERT_INTERNAL(slots_[i].key != key);  // a second copy would outlive one erase
    }
    slots_[i] = {key, value};
    ++size_;
  }
  // Moves every key into a table of n slots (a power of two at least twice size_). Throws
  // std::bad_alloc, leaving the table as it was.
  void rehash(std::size_t n) {
    sys_vector<slot> old(n, slot{0, Value{}});
    old.swap(slots_);
    mask_ = n - 1;
    shift_ = 64 - static_cast<unsigned>(__builtin_ctzll(n));
    size_ = 0;
    sparse_erasures_ = 0;
    for (const slot& s : old) {
      if (s.key != 0) place(s.key, s.value);
    }
  }

  sys_vector<slot> slots_;
  std::size_t mask_ = 0;
  unsigned shift_ = 64;
  std::size_t size_ = 0;
  std::size_t sparse_erasures_ = 0;  // erasures in a row that left the table sparse (see above)
};

// The live threads of a rank.
using thread_table = id_table<tcb*>;
// Threads that finished and were not joined yet: a set, 8 bytes a slot.
using finished_set = id_table<no_value>;
static_assert(finished_set::slot_bytes() == sizeof(std::uint64_t), "a set's slot is its key");

}  // namespace iso::detail
