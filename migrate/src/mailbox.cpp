#include "mailbox.hpp"

#include "interpose.hpp"
#include "reserved.hpp"
#include "scheduler.hpp"

namespace iso::detail {

// ---------------------------------------------------------------- ready_queue

void ready_queue::index(std::uint64_t n, const message& m) {
  const std::uint64_t from = m.from.bits();
  by_sender_[from].emplace_hint(by_sender_[from].end(), n);
  by_tag_[m.tag].emplace_hint(by_tag_[m.tag].end(), n);
  auto& stream = by_stream_[{from, m.tag}];
  stream.emplace_hint(stream.end(), n);
}

void ready_queue::push(message&& m) {
  const std::uint64_t n = next_arrival_++;
  const auto at = by_arrival_.emplace_hint(by_arrival_.end(), n, std::move(m));
  if (indexed_) index(n, at->second);
}

std::optional<std::uint64_t> ready_queue::scan(thread_id from, int tag) const noexcept {
  for (const auto& [n, m] : by_arrival_) {
    if ((from == any_thread || m.from == from) && (tag == any_tag || m.tag == tag)) return n;
  }
  return std::nullopt;
}

std::optional<std::uint64_t> ready_queue::first(thread_id from, int tag) const noexcept {
  if (by_arrival_.empty()) return std::nullopt;
  const bool any_from = from == any_thread;
  if (any_from && tag == any_tag) return by_arrival_.begin()->first;
  if (!indexed_) return scan(from, tag);
  if (tag == any_tag) {
    const auto it = by_sender_.find(from.bits());
    if (it == by_sender_.end()) return std::nullopt;
    return *it->second.begin();
  }
  if (any_from) {
    const auto it = by_tag_.find(tag);
    if (it == by_tag_.end()) return std::nullopt;
    return *it->second.begin();
  }
  const auto it = by_stream_.find({from.bits(), tag});
  if (it == by_stream_.end()) return std::nullopt;
  return *it->second.begin();
}

bool ready_queue::has(thread_id from, int tag) const noexcept { return first(from, tag).has_value(); }

std::optional<message> ready_queue::take(thread_id from, int tag) {
  const bool filtered = from != any_thread || tag != any_tag;
  if (filtered && !indexed_ && by_arrival_.size() >= index_from) {
    for (const auto& [k, queued] : by_arrival_) index(k, queued);
    indexed_ = true;
  }
  const std::optional<std::uint64_t> n = first(from, tag);
  if (!n) return std::nullopt;
  const auto at = by_arrival_.find(*n);
  ISO_ASSERT_INTERNAL(at != by_arrival_.end());
  message m = std::move(at->second);
  by_arrival_.erase(at);
  if (!indexed_) return m;
  if (by_arrival_.empty()) {  // the indexes held only n
    by_sender_.clear();
    by_tag_.clear();
    by_stream_.clear();
    indexed_ = false;
    return m;
  }
  // Drops arrival n from one index, and the index's entry once it is empty.
  const auto drop = [n = *n](auto& index, const auto& key) {
    const auto it = index.find(key);
    ISO_ASSERT_INTERNAL(it != index.end());
    it->second.erase(it->second.find(n));
    if (it->second.empty()) index.erase(it);
  };
  drop(by_sender_, m.from.bits());
  drop(by_tag_, m.tag);
  drop(by_stream_, std::make_pair(m.from.bits(), m.tag));
  return m;
}

// ---------------------------------------------------------------- mailbox

mailbox& mailbox_of(tcb* t) {
  if (t->mailbox == nullptr) {
    heap_scope own(t->home_heap);  // whatever scope its caller is in: the mailbox migrates with t
    t->mailbox = new mailbox();
  }
  return *static_cast<mailbox*>(t->mailbox);
}

namespace {
bool wanted(const mailbox& mb, thread_id from, int tag) noexcept {
  if (!mb.waiting) return false;
  if (mb.want_from != any_thread && mb.want_from != from) return false;
  return mb.want_tag == any_tag ? tag >= 0 : mb.want_tag == tag;
}
}  // namespace

bool has_ready_message(const tcb* t) noexcept {
  if (t->mailbox == nullptr) return false;
  auto& mb = *static_cast<mailbox*>(t->mailbox);
  return mb.waiting && mb.queue_for(mb.want_tag).has(mb.want_from, mb.want_tag);
}

std::size_t sequence_entries(const tcb* t) noexcept {
  if (t->mailbox == nullptr) return 0;
  const auto& mb = *static_cast<const mailbox*>(t->mailbox);
  return mb.next_out.size() + mb.incoming.senders();
}

bool put_message(tcb* t, thread_id from, std::uint64_t seq, bool last, int tag, const void* data,
                 std::size_t bytes) noexcept {
  try {
    heap_scope receiver(t->home_heap);  // the payload and the queues live in the receiver's heap
    mailbox& mb = mailbox_of(t);
    message m{from, tag, std::vector<std::byte>(static_cast<const std::byte*>(data),
                                                 static_cast<const std::byte*>(data) + bytes)};
    bool wake = false;
    mb.incoming.put(from.bits(), seq, std::move(m), [&](message&& ready) {
      if (ready.tag == stream_end) {  // the sender ended: nothing sent to it matters now
        mb.next_out.erase(ready.from.bits());
        return;
      }
      wake = wake || wanted(mb, ready.from, ready.tag);
      mb.queue_for(ready.tag).push(std::move(ready));
    }, last);
    return wake;
  } catch (const std::bad_alloc&) {
    fatal("thread %s has no heap left for a message of %zu bytes from %s", t->id.to_string().c_str(), bytes,
          from.to_string().c_str());
  }
}

void wake_receiver(scheduler& s, tcb* t, bool fork_join) noexcept {
  if (t->wait != wait_reason::recv) return;
  if (t->state == thread_state::blocked) {
    s.wake(t, fork_join);
  } else if (t->state == thread_state::sleeping) {
    s.wake_sleeper(t);
  }
}

std::optional<message> take_message(tcb* self, thread_id from, int tag, std::int64_t deadline_ns,
                                    bool (*done)(const void*), const void* state) {
  // After a suspension only the mailbox (in the thread's heap), self, state and
  // scheduler::current() may be used: the thread may have migrated.
  for (;;) {
    if (done != nullptr && done(state)) return std::nullopt;
    if (self->mailbox != nullptr) {
      heap_scope own(self->home_heap);  // the queue's indexes are the thread's, whatever scope it is in
      ready_queue& queue = static_cast<mailbox*>(self->mailbox)->queue_for(tag);
      if (std::optional<message> m = queue.take(from, tag)) return m;
    }
    if (deadline_ns >= 0 && now_ns() >= deadline_ns) return std::nullopt;
    mailbox& mb = mailbox_of(self);
    await(mb, from, tag);
    if (deadline_ns < 0) {
      scheduler::current()->block_running(wait_reason::recv);
    } else {
      // A sleeper marked as waiting in a receive: a matching message ends the sleep early
      // (wake_receiver); a sleeping thread is movable and keeps the rest of its sleep in transit.
      self->wait = wait_reason::recv;
      scheduler::current()->sleep_running_until(deadline_ns);
      self->wait = wait_reason::none;
    }
    mb.waiting = false;
  }
}

message take_message(tcb* self) { return *take_message(self, any_thread, any_tag, -1); }

}  // namespace iso::detail
