// A thread's messaging state: the mailbox, and the sequencing that makes delivery exactly once
// and in per-sender order.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "diag.hpp"
#include "isothreads/messaging.hpp"

namespace iso::detail {

struct tcb;
class scheduler;

// Releases items of many senders in each sender's order: items carry sequence numbers 1, 2, ...
// per sender and may come in any order. Invariant: every item of `from` with seq < next_in[from]
// has been released, in order; `early` holds exactly those that came with seq > next_in[from].
// Bound: a sender's entry exists only while items of it may still come. An item put with `last`
// is its sender's final one to this receiver (the sender has dropped its own counter, and sends
// nothing more here: a future's value, or the stream_end a thread that ends sends each thread it
// sent numbered messages to, reserved.hpp); once it is released, everything of that sender has been (it is
// released after every smaller number, and none larger exists), so its entry is erased. Items
// with seq 0 are unsequenced: released at once, with no entry. So a thread's entries are bounded
// by the peers it exchanges numbered messages with that are alive, whatever number it ever had.
// Allocates with the heap current when called.
template <class Item>
class in_order {
 public:
  // Takes item number `seq` of sender `from`, and calls release(item) for it and each early item
  // it unblocks, in order. pre: seq was not put before (asserted: each arrives exactly once); no
  // item of `from` with a larger seq than a `last` one.
  template <class Release>
  void put(std::uint64_t from, std::uint64_t seq, Item&& item, Release&& release, bool last = false) {
    if (seq == 0) {
      release(std::move(item));
      return;
    }
    const auto slot = next_in_.try_emplace(from, 1).first;
    std::uint64_t& next = slot->second;
    ISO_ASSERT(seq >= next);  // no sequence number twice
    if (seq > next) {
      const bool fresh = early_.emplace(std::make_pair(from, seq), std::make_pair(std::move(item), last)).second;
      ISO_ASSERT(fresh);
      return;
    }
    release(std::move(item));
    ++next;
    for (auto it = early_.find({from, next}); it != early_.end(); it = early_.find({from, next})) {
      last = it->second.second;
      release(std::move(it->second.first));
      early_.erase(it);
      ++next;
    }
    if (last) {
      const auto after = early_.lower_bound({from, 0});
      ISO_ASSERT(after == early_.end() || after->first.first != from);  // nothing of `from` beyond its last
      next_in_.erase(slot);
    }
  }
  std::size_t early() const noexcept { return early_.size(); }
  // Senders with an entry (tests and stats).
  std::size_t senders() const noexcept { return next_in_.size(); }
  // The next number due from `from`: 1 + the items of it released so far (1 without an entry).
  std::uint64_t next(std::uint64_t from) const noexcept {
    const auto it = next_in_.find(from);
    return it == next_in_.end() ? 1 : it->second;
  }
  // Calls f(from) for every sender with an entry.
  template <class F>
  void for_each_sender(F&& f) const {
    for (const auto& [from, next] : next_in_) f(from);
  }
  // Erases the entry of `from`, whose every item has been released and who sends no more here
  // (a future's value handed over without a message, future.cpp). pre: no early item of `from`.
  void forget(std::uint64_t from) noexcept { next_in_.erase(from); }

 private:
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::pair<Item, bool>> early_;  // (from, seq) ahead of a gap -> (item, last)
  std::unordered_map<std::uint64_t, std::uint64_t> next_in_;        // from -> next seq to release
};

// The released messages of one thread that recv/try_recv/recv_for have not taken yet, indexed so
// that a receive finds its message in O(log n) for any filter: exact (from, tag), one sender, one
// tag, or anything. Every message gets an arrival number (increasing); each index holds arrival
// numbers, so "the first matching message" is the smallest number in the right index.
// Invariants: by_arrival_ holds every queued message. While indexed_, an arrival number is in
// by_sender_[from], by_tag_[tag] and by_stream_[(from, tag)] exactly when its message (from, tag)
// is in by_arrival_, and no index holds an empty set; while !indexed_, every index is empty. The
// indexes cost about six allocations a message: they are built only when a receive that filters
// by sender or tag finds index_from messages or more queued, and dropped when the queue empties.
// So a thread that takes what comes (recv(), the common case) pays one map node a message, and a
// short queue is searched from its front. The message a receive takes is always the first of its own
// stream (the oldest of a sender, of a tag, or overall is the oldest of its stream). Allocates
// with the heap current when called (the thread's own).
class ready_queue {
 public:
  void push(message&& m);
  // The first queued message that matches (from: a thread or any_thread; tag: a tag or any_tag),
  // removed; or none. Allocates (the indexes) in the heap current: call it with its thread's.
  std::optional<message> take(thread_id from, int tag);
  bool has(thread_id from, int tag) const noexcept;
  bool empty() const noexcept { return by_arrival_.empty(); }
  std::size_t size() const noexcept { return by_arrival_.size(); }

 private:
  using stream_key = std::pair<std::uint64_t, int>;  // (sender bits, tag)
  struct stream_hash {
    std::size_t operator()(const stream_key& k) const noexcept {
      return std::hash<std::uint64_t>{}(k.first * 0x9e3779b97f4a7c15ull ^ static_cast<std::uint32_t>(k.second));
    }
  };
  // The arrival number of the first message matching (from, tag), or none: from the indexes, or,
  // without them, from the front.
  std::optional<std::uint64_t> first(thread_id from, int tag) const noexcept;
  std::optional<std::uint64_t> scan(thread_id from, int tag) const noexcept;  // from the front
  void index(std::uint64_t n, const message& m);  // adds arrival n of m to the three indexes

  static constexpr std::size_t index_from = 16;  // queued messages before a filtered take indexes
  bool indexed_ = false;                         // see the invariants
  std::uint64_t next_arrival_ = 0;                                     // numbers handed out so far
  std::map<std::uint64_t, message> by_arrival_;                        // arrival -> message
  std::unordered_map<std::uint64_t, std::set<std::uint64_t>> by_sender_;  // sender bits -> arrivals
  std::unordered_map<int, std::set<std::uint64_t>> by_tag_;               // tag -> arrivals
  std::unordered_map<stream_key, std::set<std::uint64_t>, stream_hash> by_stream_;
};

// A future's value handed over between two threads of one rank without a message (future.cpp).
// The producer's side, on its stack while it waits for the ask: what the body gave.
struct future_offer {
  bool failed;           // data is the what() text of what the body threw, not a value
  const void* data;
  std::size_t bytes;
  bool taken = false;    // a getter here took it, or dropped the future: the producer ends
};
// The getter's side, on its stack while it waits in get(): where the value goes (future_landing,
// isothreads/future.hpp, so that get() holds it in its own frame).
struct future_landing;
enum class future_request : std::uint8_t { none = 0, value = 1, drop = 2 };  // tcb::future_asked

// Lives in the thread's heap (every allocation is made with that heap current), so undelivered
// messages, sequence counters and what the thread waits for migrate with the thread.
// User messages (tag >= 0, what iso::any_tag matches) and the runtime's own (reserved negative
// tags: futures, collectives) are queued apart, so that no user receive ever takes the runtime's.
struct mailbox {
  ready_queue user;                                           // tags >= 0, in release order
  ready_queue reserved;                                       // negative tags, in release order
  in_order<message> incoming;                                 // per-sender order of what arrives
  // to -> numbers sent to it. Erased by a send with sequencing::last, by a future's value handed
  // over without a message (hand_over, future.cpp), or when `to` ends and says so (its stream_end,
  // released): a finished thread gets nothing more, whatever a later message's number.
  std::unordered_map<std::uint64_t, std::uint64_t> next_out;
  // While the thread waits in a receive (blocked, or sleeping in recv_for): what it waits for.
  bool waiting = false;
  thread_id want_from;                                        // a thread or any_thread
  int want_tag = 0;                                           // a tag or any_tag
  // Reserved messages a collective took while looking for another collective's (of another
  // group whose tag collides, or a later one of the same group): kept, in order, for the
  // collective they belong to (collectives.cpp).
  // A vector, not a deque: an empty std::deque allocates, and every thread has a mailbox.
  std::vector<message> stash;
  // A future's getter, while it waits in get(): where the value goes (future.cpp; a pointer into
  // the thread's stack, which moves with it). The producer's side is in its tcb.
  future_landing* landing = nullptr;
  // Group fingerprint -> collectives this thread has called on that group (collectives.cpp).
  std::unordered_map<std::uint64_t, std::uint64_t> collectives;
  // The count of the group of this thread's last collective, an element of `collectives` (which
  // stays put as the map grows), so that a run of collectives on one group does not hash, and
  // this thread's index in that group (set with last_count).
  std::uint64_t last_group = 0;
  std::uint64_t* last_count = nullptr;
  int last_index = -1;

  ready_queue& queue_for(int tag) noexcept { return tag >= 0 || tag == any_tag ? user : reserved; }
};

// t's mailbox, made on first use. pre: t's heap is current.
mailbox& mailbox_of(tcb* t);
// Marks the thread of mb as waiting in a receive for (from, tag), so that a matching message wakes
// it (put_message, wake_receiver); the thread then blocks (or sleeps) with wait_reason::recv.
inline void await(mailbox& mb, thread_id from, int tag) noexcept {
  mb.waiting = true;
  mb.want_from = from;
  mb.want_tag = tag;
}
// Entries of t's sequence tables (per peer, for messages t sends and receives): bounded by its
// live peers (in_order's bound), for tests.
std::size_t sequence_entries(const tcb* t) noexcept;
// Whether t waits in a receive and a message it waits for is queued (false without a mailbox).
bool has_ready_message(const tcb* t) noexcept;

// Puts message number `seq` from `from` into t's mailbox (in t's heap), releasing what is now in
// order. True if a released message is one t waits for (wake_receiver(t) then). Fatal if t's
// heap is exhausted.
// last: the sender's final message to t (in_order), seq 0: unsequenced.
bool put_message(tcb* t, thread_id from, std::uint64_t seq, bool last, int tag, const void* data,
                 std::size_t bytes) noexcept;
// Makes t, which waits in a receive on this rank (blocked in recv or sleeping in recv_for), ready.
// fork_join: the message continues fork-join work (a future's ask or value; scheduler::wake).
void wake_receiver(scheduler& s, tcb* t, bool fork_join = false) noexcept;

// The calling thread's first message matching (from, tag) (tag: >= 0, any_tag, or a reserved
// negative tag). deadline_ns (now_ns() clock): < 0 waits as long as it takes; otherwise the wait
// ends at that time, and the result is none if nothing matching came (0: never waits). done
// (optional): what else the thread waits for, set by a thread that wakes it (a future's value
// or ask handed over without a message, future.cpp); done(state) is called before each look at
// the queue, and once true the result is none. The thread stays movable while it waits (state
// must be on its stack or in its heap). A thread without a mailbox gets one only if it waits.
// pre: self is running.
std::optional<message> take_message(tcb* self, thread_id from, int tag, std::int64_t deadline_ns,
                                    bool (*done)(const void* state) = nullptr, const void* state = nullptr);
// take_message waiting as long as it takes, until a match or done() (a callable on the caller's
// stack).
template <class Done>
std::optional<message> take_message_unless(tcb* self, thread_id from, int tag, const Done& done) {
  return take_message(self, from, tag, -1, [](const void* d) { return (*static_cast<const Done*>(d))(); }, &done);
}
// The calling thread's next user message; blocks it until one is there. pre: self is running.
message take_message(tcb* self);

}  // namespace iso::detail
