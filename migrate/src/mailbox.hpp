// A thread's messaging state: the mailbox, and the sequencing that makes delivery exactly once
// and in per-sender order.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <unordered_map>
#include <utility>

#include "diag.hpp"
#include "isothreads/messaging.hpp"

namespace iso::detail {

struct tcb;

// Releases items of many senders in each sender's order: items carry sequence numbers 1, 2, ...
// per sender and may come in any order. Invariant: every item of `from` with seq < next_in[from]
// has been released, in order; `early` holds exactly those that came with seq > next_in[from].
// Allocates with the heap current when called.
template <class Item>
class in_order {
 public:
  // Takes item number `seq` of sender `from`, and calls release(item) for it and each early item
  // it unblocks, in order. pre: seq was not put before (asserted: each arrives exactly once).
  template <class Release>
  void put(std::uint64_t from, std::uint64_t seq, Item&& item, Release&& release) {
    std::uint64_t& next = next_in_.try_emplace(from, 1).first->second;
    ISO_ASSERT(seq >= next);  // no sequence number twice
    if (seq > next) {
      const bool fresh = early_.emplace(std::make_pair(from, seq), std::move(item)).second;
      ISO_ASSERT(fresh);
      return;
    }
    release(std::move(item));
    ++next;
    for (auto it = early_.find({from, next}); it != early_.end(); it = early_.find({from, next})) {
      release(std::move(it->second));
      early_.erase(it);
      ++next;
    }
  }
  std::size_t early() const noexcept { return early_.size(); }

 private:
  std::map<std::pair<std::uint64_t, std::uint64_t>, Item> early_;  // (from, seq) ahead of a gap
  std::unordered_map<std::uint64_t, std::uint64_t> next_in_;        // from -> next seq to release
};

// Lives in the thread's heap (every allocation is made with that heap current), so undelivered
// messages and sequence counters migrate with the thread.
struct mailbox {
  std::deque<message> ready;                                  // for recv(), in release order
  in_order<message> incoming;                                 // per-sender order of what arrives
  std::unordered_map<std::uint64_t, std::uint64_t> next_out;  // to -> next seq to send
};

// t's mailbox, made on first use. pre: t's heap is current.
mailbox& mailbox_of(tcb* t);
// Whether t has a message ready for recv() (false without a mailbox).
bool has_ready_message(const tcb* t) noexcept;

// Puts message number `seq` from `from` into t's mailbox (in t's heap), releasing what is now in
// order. Fatal if t's heap is exhausted.
void put_message(tcb* t, thread_id from, std::uint64_t seq, int tag, const void* data, std::size_t bytes) noexcept;

// The calling thread's next message; blocks it until one is there. pre: self is running.
message take_message(tcb* self);

}  // namespace iso::detail
