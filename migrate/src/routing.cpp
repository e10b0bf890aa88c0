// Messages: iso::send, routing through the directory (directory.hpp), delivery, and control
// messages. Part of the engine (engine.hpp).
#include <cstdio>
#include <cstring>

#include "diag.hpp"
#include "engine.hpp"
#include "interpose.hpp"
#include "mailbox.hpp"
#include "reserved.hpp"

namespace iso::detail {
namespace {

std::string id_text(std::uint64_t bits) { return thread_id::from_bits(bits).to_string(); }

}  // namespace

void engine::send(thread_id to, const void* data, std::size_t bytes, int tag, sequencing how) {
  if (!to || to.home() >= directory_.id_ranks()) {
    raise(errc::unknown_thread, "iso::send: thread %s does not exist (home rank out of range, %d ranks)",
          to.to_string().c_str(), directory_.id_ranks());
  }
  if (bytes != 0 && data == nullptr) raise(errc::invalid_argument, "iso::send: null data for %zu bytes", bytes);
  if (bytes > max_message_bytes) {
    raise(errc::invalid_argument, "iso::send: %zu bytes to thread %s: a message carries at most %zu bytes (split it)",
          bytes, to.to_string().c_str(), max_message_bytes);
  }
  tcb* self = sched_.running();
  const thread_id from = self != nullptr ? self->id : thread_id(rank_, 0);
  // Numbers this message in the sender's counter for `to`; a last one drops the counter.
  const auto number = [to, how](auto& counters) -> std::uint64_t {
    const auto it = counters.try_emplace(to.bits(), 0).first;
    const std::uint64_t seq = ++it->second;
    if (how == sequencing::last) counters.erase(it);
    return seq;
  };
  std::uint64_t seq = 0;  // unsequenced: no counter, so no mailbox made for one
  if (how != sequencing::none && self != nullptr) {
    heap_scope own(self->home_heap);  // the counter travels with the sender
    seq = number(mailbox_of(self).next_out);
  } else if (how != sequencing::none) {
    heap_scope system(nullptr);
    seq = number(main_next_seq_);
  }
  heap_scope system(nullptr);
  const std::int64_t at = observer_ != nullptr ? now_ns() : 0;
  const int went = post_user(to, from, seq, how, tag, data, bytes);
  if (observer_ != nullptr) observer_->sent(from, to, went, bytes, tag, at);
}

int engine::post_user(thread_id to, thread_id from, std::uint64_t seq, sequencing how, int tag, const void* data,
                      std::size_t bytes) {
  if (tcb* t = sched_.find(to)) {
    deliver_user(t, from, seq, how, tag, data, bytes);
    return rank_;
  }
  const data_header h{to.bits(), from.bits(), seq, bytes, tag, msg_kind::user, 0, rank_, 0, static_cast<std::uint32_t>(how)};
  return route_out(h, data);
}

// The bound on sequence tables for threads that end (mailbox.hpp): t sends one stream_end to each
// peer it has a counter for, either way. To a peer it sent numbered messages to, the stream_end is
// numbered after its last one there (sequencing::last), so the peer's entry for what t sent goes
// once all of it came (in_order); to another, unsequenced (it has no such entry left once what came
// is released). Released, it makes the peer drop its counter for what it sends t: t receives
// nothing more, so a later message to it is dropped as sent to a finished thread, whatever its
// number (with a line on stderr each, as any such message). t tells itself nothing: its counters
// for itself go with its mailbox, and t is already out of its rank's table here, so a notice to
// itself would be routed out to its home and back. A rank's main sends none (it does not end) and
// receives nothing, so a stream_end to it ends at its rank as sent to a finished thread; there it
// drops the counter of main for t (main_next_seq_, on_data).
void engine::close_streams(tcb* t) noexcept {
  if (t->mailbox == nullptr) return;
  const mailbox& mb = *static_cast<const mailbox*>(t->mailbox);
  const std::uint64_t self = t->id.bits();
  try {
    for (const auto& [to, sent] : mb.next_out) {
      if (to != self) post_user(thread_id::from_bits(to), t->id, sent + 1, sequencing::last, stream_end, nullptr, 0);
    }
    mb.incoming.for_each_sender([&](std::uint64_t from) {
      if (from == self || mb.next_out.count(from) != 0) return;
      post_user(thread_id::from_bits(from), t->id, 0, sequencing::none, stream_end, nullptr, 0);
    });
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while thread %s ended", t->id.to_string().c_str());
  }
}

void engine::send_system(thread_id to, thread_id from, msg_kind kind, errc status) {
  const data_header h{to.bits(), from.bits(), 0, 0, 0, kind, 0, rank_, 0, static_cast<std::uint32_t>(status)};
  if (tcb* t = sched_.find(to)) {
    deliver(t, h, nullptr);  // no wire to build (the join_done of every local join)
    return;
  }
  route_out(h, nullptr);
}

// Sends a message toward its thread from this rank (directory::first_hop); handled here (held)
// when every pointer leads back here. To another rank the header and the payload go straight
// into the batch for it, each copied once (a 1 MiB collective batch is copied into its batch's
// buffer only, not first into a wire vector of its own).
int engine::route_out(data_header h, const void* payload) {
  const place target = directory_.first_hop(h.to);
  if (target.rank == rank_) {
    sys_vector<unsigned char> wire(sizeof h + h.bytes);
    std::memcpy(wire.data(), &h, sizeof h);
    if (h.bytes != 0) std::memcpy(wire.data() + sizeof h, payload, h.bytes);
    on_data(wire.data(), wire.size(), false);
    return rank_;
  }
  h.min_epoch = std::max(h.min_epoch, target.epoch);
  post_data(target.rank, h, payload, h.bytes);
  return target.rank;
}

void engine::on_data(const unsigned char* wire, std::size_t bytes, bool from_network) {
  data_header h;
  std::memcpy(&h, wire, sizeof h);
  const thread_id to = thread_id::from_bits(h.to);
  if (tcb* t = sched_.find(to)) {
    if (from_network && h.hops > 0 && h.origin != rank_) {
      send_ctrl(h.origin, {ctrl_kind::hint, rank_, h.to, t->epoch});  // so the sender goes direct
    }
    deliver(t, h, wire + sizeof h);
    return;
  }
  const route r = directory_.route_in(h.to, h.min_epoch, sched_.next_serial());
  switch (r.what) {
    case route::action::forward:
      ++h.hops;
      h.min_epoch = r.to.epoch;
      ++stats_.forwarded;
      post_data(r.to.rank, h, wire + sizeof h, bytes - sizeof h);
      return;
    case route::action::finished: {
      if (h.kind == msg_kind::user && h.tag == stream_end) {  // nothing left to tidy but main's counter
        if (h.to == thread_id(rank_, 0).bits()) main_next_seq_.erase(h.from);
        return;
      }
      bool joined = false;
      directory_.finished_record(h.to, sched_.next_serial(), &joined);
      answer_finished(h, joined);
      return;
    }
    case route::action::never_spawned:
      if (h.kind == msg_kind::join_request) {
        send_system(thread_id::from_bits(h.from), to, msg_kind::join_done, errc::unknown_thread);
      } else if (h.kind == msg_kind::user && h.tag == stream_end) {
        return;
      } else {
        drop(h, "no such thread was ever spawned");
      }
      return;
    case route::action::hold:
      try {
        directory_.hold(h.to, sys_vector<unsigned char>(wire, wire + bytes));
      } catch (const std::bad_alloc&) {
        fatal("out of system memory while holding a message for thread %s", to.to_string().c_str());
      }
      return;
  }
}

void engine::deliver(tcb* t, const data_header& h, const unsigned char* payload) noexcept {
  const thread_id from = thread_id::from_bits(h.from);
  switch (h.kind) {
    case msg_kind::user: deliver_user(t, from, h.seq, static_cast<sequencing>(h.status), h.tag, payload, h.bytes); return;
    case msg_kind::join_request: deliver_join_request(t, from); return;
    case msg_kind::join_done: deliver_join_done(t, from, static_cast<errc>(h.status)); return;
  }
}

void engine::deliver_user(tcb* t, thread_id from, std::uint64_t seq, sequencing how, int tag, const void* data,
                          std::size_t bytes) noexcept {
  // A future's ask wakes its producer to answer and end, its value the thread that waits in
  // get(): both are fork-join work, as a join is.
  if (put_message(t, from, seq, how == sequencing::last, tag, data, bytes)) {
    wake_receiver(sched_, t, tag == future_ask || tag == future_value);
  }
}

void engine::drop(const data_header& h, const char* why) noexcept {
  ++stats_.dropped;
  std::fprintf(stderr, "isothreads: rank %d: message from thread %s to thread %s (tag %d, %llu bytes) dropped: %s\n",
               rank_, id_text(h.from).c_str(), id_text(h.to).c_str(), h.tag,
               static_cast<unsigned long long>(h.bytes), why);
}

message engine::recv() { return take_message(running_or_throw("iso::recv")); }

void engine::on_ctrl(const ctrl_msg& m) noexcept {
  bool release = false;
  try {
    const place at{m.rank, static_cast<std::uint32_t>(m.epoch)};
    switch (m.kind) {
      case ctrl_kind::location: release = directory_.on_location(m.id, at); break;
      case ctrl_kind::hint: directory_.on_hint(m.id, at); break;
      case ctrl_kind::finished: release = directory_.on_finished(m.id, m.epoch != 0); break;
    }
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while updating the location of thread %s", id_text(m.id).c_str());
  }
  if (release) release_held(m.id);
}

}  // namespace iso::detail

// ---------------------------------------------------------------- public API

namespace iso {

namespace {
detail::engine& engine_or_throw(const char* call) { return detail::runtime_part_or_throw(detail::engine::current(), call); }
}  // namespace

void send(thread_id to, const void* data, std::size_t bytes, int tag) {
  if (tag < 0) {
    detail::raise(errc::invalid_argument, "iso::send: tag %d to thread %s is negative (tags are >= 0; negative tags are "
          "the runtime's own)", tag, to.to_string().c_str());
  }
  engine_or_throw("iso::send").send(to, data, bytes, tag);
}

message recv() { return engine_or_throw("iso::recv").recv(); }

void migrate(thread_id t, int dest) { engine_or_throw("iso::migrate").migrate(t, dest); }

}  // namespace iso
