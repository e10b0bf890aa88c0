// The join protocol and the end of threads. Part of the engine (engine.hpp).
//
// iso::join(t) from thread J: if t is on J's rank, t->joiner = J; otherwise a join_request
// travels to t like any message (at t's home, if t has finished, the home answers). When t
// finishes, a join_done goes to its joiner; J waits in join until that answer names t.
#include "diag.hpp"
#include "engine.hpp"
#include "interpose.hpp"

namespace iso::detail {

void engine::finish_hook(scheduler&, tcb* t) noexcept { current()->finished(t); }

void engine::finished(tcb* t) noexcept {
  heap_scope system(nullptr);
  close_streams(t);
  const thread_id id = t->id;
  const bool joined = static_cast<bool>(t->joiner);
  // A future's producer is joined by the get() or drop that asked it (future.cpp): no record of
  // it is kept for a join to come.
  const bool settled = joined || t->future_asked != 0;
  try {
    if (joined) send_system(t->joiner, id, msg_kind::join_done, errc::ok);
    if (directory_.finished_here(id.bits(), t->epoch, settled)) {
      send_ctrl(home_of(id), {ctrl_kind::finished, rank_, id.bits(), settled ? 1u : 0u});
    }
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while recording that thread %s finished", id.to_string().c_str());
  }
}

void engine::join_hook(scheduler&, tcb* self, thread_id t) { current()->join(self, t); }

void engine::join(tcb* self, thread_id t) {
  if (t.home() < 0 || t.home() >= directory_.id_ranks()) {
    raise(errc::unknown_thread, "iso::join(%s): no such thread (home rank %d does not exist)", t.to_string().c_str(), t.home());
  }
  if (tcb* target = sched_.find(t)) {
    if (target->joiner) {
      raise(errc::already_joined, "iso::join(%s): already joined by thread %s", t.to_string().c_str(),
            target->joiner.to_string().c_str());
    }
    target->joiner = self->id;
    // Cleared by the join_done that finished() sends, which wakes self.
    self->waiting_for = t;
  } else if (bool joined = false;
             home_of(t) == rank_ && directory_.finished_record(t.bits(), sched_.next_serial(), &joined)) {
    if (joined) raise(errc::already_joined, "iso::join(%s): the thread was joined already", t.to_string().c_str());
    directory_.mark_joined(t.bits());
    return;
  } else {
    // The answer may come at once (t's home is this rank): it sets join_status and clears
    // waiting_for.
    self->waiting_for = t;
    send_system(t, self->id, msg_kind::join_request, errc::ok);
  }
  // iso::join (join_next) blocks self until waiting_for is cleared, and raises join_status.
}

void engine::deliver_join_request(tcb* t, thread_id from) noexcept {
  if (t->joiner) {
    send_system(from, t->id, msg_kind::join_done, errc::already_joined);
  } else {
    t->joiner = from;
  }
}

void engine::deliver_join_done(tcb* t, thread_id from, errc status) noexcept {
  // t is blocked in join, or still running the join call that asked (a local answer).
  if (t->waiting_for == from) {
    t->join_status = status;
    t->waiting_for = thread_id{};
    if (t->state == thread_state::blocked && t->wait == wait_reason::join) sched_.wake(t, true);
  }
}

// At its home, a message for a thread that has finished: a join request is answered, the rest
// dropped.
void engine::answer_finished(const data_header& h, bool joined) noexcept {
  const thread_id to = thread_id::from_bits(h.to), from = thread_id::from_bits(h.from);
  switch (h.kind) {
    case msg_kind::join_request:
      directory_.mark_joined(h.to);
      send_system(from, to, msg_kind::join_done, joined ? errc::already_joined : errc::ok);
      return;
    case msg_kind::user: drop(h, "the thread has finished"); return;
    case msg_kind::join_done: drop(h, "the joining thread has finished"); return;
  }
}

}  // namespace iso::detail
