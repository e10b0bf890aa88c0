// iso::future's protocol (isothreads/future.hpp). The producer, once its body has returned, waits
// for one ask; the ask and the answer pass straight between the two threads when both are on this
// rank, as a join does, and are reserved messages (reserved.hpp) otherwise:
//   ask     getter -> producer. Producer here: recorded in its tcb (future_asked, future_asker). Else a
//           message on future_ask carrying ask_value or ask_drop, unsequenced (sequencing::none):
//           it is the only ask, taken once the body has returned, so no order with the getter's
//           other messages matters, and it leaves no counter on either side.
//   answer  producer -> getter. Getter here, waiting in get() (its landing) and holding every
//           earlier message of the producer: the producer writes the value into the landing.
//           Else a message on future_value, the producer's last to the getter (sequencing::last:
//           neither side keeps a counter for the pair after it), carrying one status byte
//           (answer_value, answer_failure), then the value's bytes or the failure's what() text.
//   A getter that asks a producer here which already waits with its value (tcb::future_offer)
//   takes the value itself, under the same condition, and lets the producer end.
// Invariant (per-sender order, as for any message): the value reaches the getter after every
// message the producer sent it before; it skips the queue only when the getter has released all
// of those (caught_up). Either way the pair leaves no sequence entry behind (mailbox.hpp's bound).
// Once asked (tcb::future_asked set, whichever way the ask came), the producer counts as joined by
// its future: when it ends its home keeps no record of it for a join to come (join.cpp), so a
// getter of many futures leaves no trace of them anywhere.
#include <cstring>

#include "diag.hpp"
#include "interpose.hpp"
#include "isothreads/future.hpp"
#include "mailbox.hpp"
#include "reserved.hpp"
#include "scheduler.hpp"

namespace iso::detail {
namespace {
constexpr unsigned char ask_value = 1, ask_drop = 0;
constexpr unsigned char answer_value = 0, answer_failure = 1;

mailbox& mailbox_here(tcb* t) noexcept { return *static_cast<mailbox*>(t->mailbox); }

// Whether getter g has released every message producer p sent it, so that p's value may reach g
// without a message. pre: both on this rank, g with a mailbox. A producer without a mailbox has
// sent nothing (sending makes it one), so g has no entry for it: no look-up then.
bool caught_up(tcb* p, tcb* g) noexcept {
  if (p->mailbox == nullptr) return true;
  const auto& out = mailbox_here(p).next_out;
  const auto it = out.find(g->id.bits());
  const std::uint64_t sent = it != out.end() ? it->second : 0;
  return mailbox_here(g).incoming.next(p->id.bits()) == sent + 1;
}

future_offer* offer_of(tcb* p) noexcept { return static_cast<future_offer*>(p->future_offer); }

// Writes the value (or the failure text) into getter g's landing, in g's heap.
void land(tcb* g, future_landing& l, bool failed, const void* data, std::size_t bytes) {
  heap_scope own(g->home_heap);
  if (failed) {
    l.failed = true;
    l.failure.assign(static_cast<const char*>(data), bytes);
  } else if (l.store != nullptr) {
    l.store(l.out, data, bytes);
  }
  l.done = true;
}

// Producer p's offer goes straight into getter g's landing l: the value was p's last message to
// g, so both forget their counters for the pair, as a message sent sequencing::last makes them.
// pre: both here, caught_up(p, g); the caller wakes whichever waits. A producer without a mailbox
// sent g nothing: neither has a counter for the pair.
void hand_over(tcb* p, tcb* g, future_landing& l, const future_offer& offer) {
  land(g, l, offer.failed, offer.data, offer.bytes);
  if (p->mailbox == nullptr) return;
  {
    heap_scope own(g->home_heap);
    mailbox_here(g).incoming.forget(p->id.bits());
  }
  heap_scope own(p->home_heap);
  mailbox_here(p).next_out.erase(g->id.bits());
}

// Shows a producer's offer to getters here while it waits for the ask, however the wait ends:
// the offer is on its stack.
struct offer_scope {
  tcb* self;
  offer_scope(tcb* t, future_offer& o) noexcept : self(t) { self->future_offer = &o; }
  ~offer_scope() { self->future_offer = nullptr; }
  offer_scope(const offer_scope&) = delete;
  offer_scope& operator=(const offer_scope&) = delete;
};

// From producer self, which has its value: answers getter `getter`.
void answer(tcb* self, thread_id getter, const future_offer& offer) {
  scheduler& s = *scheduler::current();
  if (tcb* g = s.find(getter); g != nullptr && g->mailbox != nullptr) {
    future_landing* l = mailbox_here(g).landing;
    if (l != nullptr && l->producer == self->id && caught_up(self, g)) {
      try {
        hand_over(self, g, *l, offer);
      } catch (const std::bad_alloc&) {
        fatal("thread %s has no heap left for the value of a future (%zu bytes)", getter.to_string().c_str(),
              offer.bytes);
      }
      wake_receiver(s, g, true);
      return;
    }
  }
  std::vector<unsigned char> a(1 + offer.bytes);
  a[0] = offer.failed ? answer_failure : answer_value;
  if (offer.bytes != 0) std::memcpy(a.data() + 1, offer.data, offer.bytes);
  send_reserved(getter, a.data(), a.size(), future_value, sequencing::last);
}

}  // namespace

void future_serve(const void* value, std::size_t bytes, const char* failure) {
  tcb* self = running_or_throw("iso::async");
  future_offer offer{failure != nullptr, failure != nullptr ? failure : value,
                     failure != nullptr ? std::strlen(failure) : bytes};
  // After a suspension only self, offer and scheduler::current() may be used: the thread may
  // have migrated. Waits for an ask: a message, or a getter here, which records its ask in the
  // tcb (future_asked, by a getter on the rank this thread was on then) or takes the offer.
  std::optional<message> ask;
  // Asked already (by a getter here): take_message_unless would not wait either, its condition
  // holding; skipping it only saves showing the offer and making the condition's callable.
  if (static_cast<future_request>(self->future_asked) == future_request::none) {
    const offer_scope offering(self, offer);
    ask = take_message_unless(self, any_thread, future_ask, [self, &offer] {
      return offer.taken || static_cast<future_request>(self->future_asked) != future_request::none;
    });
  }
  if (offer.taken) return;
  if (ask) {
    ISO_ASSERT(ask->data.size() == 1);
    const bool value = static_cast<unsigned char>(ask->data[0]) == ask_value;
    self->future_asked = static_cast<std::uint8_t>(value ? future_request::value : future_request::drop);
    if (value) answer(self, ask->from, offer);
  } else if (static_cast<future_request>(self->future_asked) == future_request::value) {
    answer(self, self->future_asker, offer);
  }
}

boost::context::fiber* future_get_prepare(thread_id& producer, const char* call, future_landing& landing) {
  tcb* self = running_or_throw(call);  // before the ask: a failed call leaves the future as it was
  const thread_id p = producer;
  (void)mailbox_of(self);  // future_get_next, and a producer here answering, find the landing in it
  scheduler& s = *scheduler::current();
  if (tcb* pt = s.find(p)) {
    future_offer* offer = offer_of(pt);
    if (offer != nullptr && caught_up(pt, self)) {  // it waits with its value: take it
      hand_over(pt, self, landing, *offer);
      offer->taken = true;
    }
    pt->future_asked = static_cast<std::uint8_t>(future_request::value);
    pt->future_asker = self->id;
    if (offer != nullptr) wake_receiver(s, pt, true);  // to end, or to answer with a message
  } else {
    send_reserved(p, &ask_value, 1, future_ask, sequencing::none);
  }
  producer = thread_id{};
  return future_get_next(landing);
}

boost::context::fiber* future_get_next(future_landing& landing) {
  // Perhaps on another rank than the ask: only the tcb, its mailbox, the landing (on the stack)
  // and scheduler::current() are valid after a switch.
  scheduler& s = *scheduler::current();
  tcb* self = s.running();
  mailbox& mb = mailbox_here(self);
  self->wait = wait_reason::none;
  mb.waiting = false;
  // Invariant: mb.landing == &landing exactly while the thread is suspended in get() waiting for
  // the value, from the block prepared below until this call after it, so that a producer here
  // answers into it (answer) and nothing writes into a landing that is gone: this call, running,
  // clears it before anything that may throw (a queue index, land without heap), and sets it
  // again only to block.
  mb.landing = nullptr;
  if (!landing.done) {
    std::optional<message> a;
    if (!mb.reserved.empty()) {
      heap_scope own(self->home_heap);  // the queue's indexes are the thread's
      a = mb.reserved.take(landing.producer, future_value);
    }
    if (!a) {
      await(mb, landing.producer, future_value);
      mb.landing = &landing;
      return &s.prepare_block(wait_reason::recv);  // with the heap the caller has current
    }
    ISO_ASSERT(!a->data.empty());
    land(self, landing, static_cast<unsigned char>(a->data[0]) == answer_failure, a->data.data() + 1,
         a->data.size() - 1);
  }
  if (landing.failed) throw error(errc::thread_failed, std::move(landing.failure));
  return nullptr;
}

void future_drop(thread_id producer) noexcept {
  try {
    runtime_part_or_throw(engine::current(), "iso::future");
    scheduler& s = *scheduler::current();
    if (tcb* pt = s.find(producer)) {
      pt->future_asked = static_cast<std::uint8_t>(future_request::drop);
      if (future_offer* offer = offer_of(pt)) {  // it waits with its value: let it end
        offer->taken = true;
        wake_receiver(s, pt, true);
      }
      return;
    }
    send_reserved(producer, &ask_drop, 1, future_ask, sequencing::none);
  } catch (...) {
    // No runtime any more (the producer's process has gone with it) or no memory: nothing to tell.
  }
}

}  // namespace iso::detail
