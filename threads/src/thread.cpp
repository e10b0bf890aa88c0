// The public thread API (isothreads/thread.hpp) over the scheduler.
#include <cinttypes>

#include "diag.hpp"
#include "interpose.hpp"
#include "scheduler.hpp"

namespace iso {
namespace detail {
migrate_to_fn migrate_to_impl = nullptr;
join_fn join_impl = nullptr;

spawn_frame::spawn_frame(const spawn_options& opts) {
  scheduler& s = scheduler_or_throw("iso::spawn");
  tcb* t = s.create_thread(opts);
  thread_ = t;
  inline_body_ = t->inline_body;
  // The body is copied next (in spawn()) with the new thread's heap current, so that it and
  // everything its captures own land in the new thread's slots.
  saved_heap_ = current_heap;
  current_heap = t->home_heap;
}

spawn_frame::~spawn_frame() {
  if (thread_ == nullptr) return;
  current_heap = static_cast<heap*>(saved_heap_);
  scheduler::current()->discard_thread(static_cast<tcb*>(thread_));
}

thread_id spawn_frame::commit(body_base* body) noexcept {
  tcb* t = static_cast<tcb*>(thread_);
  thread_ = nullptr;
  current_heap = static_cast<heap*>(saved_heap_);
  t->body = body;
  scheduler::current()->start_thread(t);
  return t->id;
}

boost::context::fiber& yield_prepare() {
  scheduler* s = scheduler::current();
  if (s == nullptr || s->running() == nullptr) running_or_throw("iso::this_thread::yield");  // throws
  return s->prepare_yield();
}

}  // namespace detail

system_heap_scope::system_heap_scope() noexcept : saved_(detail::current_heap) { detail::current_heap = nullptr; }

system_heap_scope::~system_heap_scope() { detail::current_heap = static_cast<detail::heap*>(saved_); }

std::string thread_id::to_string() const {
  if (!*this) return "none";
  return std::to_string(home()) + ":" + std::to_string(serial());
}

namespace detail {
namespace {

// Without an engine: t must be a live or unjoined thread of this rank. Returns whether to wait.
bool join_local(scheduler& s, tcb* self, thread_id t) {
  if (s.take_finished(t)) return false;
  tcb* target = s.find(t);
  if (target == nullptr) raise(errc::unknown_thread, "iso::join: thread %s is not a live or unjoined thread", t.to_string().c_str());
  if (target->joiner) {
    raise(errc::already_joined, "iso::join: thread %s is already joined by thread %s", t.to_string().c_str(),
          target->joiner.to_string().c_str());
  }
  target->joiner = self->id;
  self->waiting_for = t;  // cleared by the target's teardown, which then wakes us
  return true;
}

}  // namespace

boost::context::fiber* join_prepare(thread_id t) {
  {
    heap_scope system(nullptr);
    tcb* self = running_or_throw("iso::join");
    scheduler& s = *scheduler::current();
    if (t == self->id) raise(errc::already_joined, "thread %s cannot join itself", t.to_string().c_str());
    if (!t) raise(errc::unknown_thread, "iso::join: the default thread_id names no thread");
    self->join_status = errc::ok;
    // Either sets self->waiting_for while t has not finished (an answer that comes at once, from
    // this rank, clears it again) or returns at once.
    if (join_impl != nullptr) {
      join_impl(s, self, t);
    } else if (!join_local(s, self, t)) {
      return nullptr;
    }
  }
  return join_next(t);  // blocks with the thread's own heap current, as it suspends with it
}

boost::context::fiber* join_next(thread_id t) {
  // Perhaps on another rank than join_prepare: only the TCB (in the thread's slots) and
  // scheduler::current() are valid after a switch.
  scheduler& s = *scheduler::current();
  tcb* self = s.running();
  self->wait = wait_reason::none;
  if (self->waiting_for) return &s.prepare_block(wait_reason::join);
  if (self->join_status != errc::ok) {
    heap_scope system(nullptr);
    raise(self->join_status, "iso::join(%s): %s", t.to_string().c_str(),
          self->join_status == errc::already_joined ? "the thread was joined already" : "no such thread");
  }
  return nullptr;
}

}  // namespace detail

namespace this_thread {

thread_id id() noexcept {
  detail::scheduler* s = detail::scheduler::current();
  detail::tcb* t = s != nullptr ? s->running() : nullptr;
  return t != nullptr ? t->id : thread_id{};
}

const char* name() noexcept {
  detail::scheduler* s = detail::scheduler::current();
  detail::tcb* t = s != nullptr ? s->running() : nullptr;
  return t != nullptr ? t->name : "";
}

void sleep_for_ns(std::int64_t ns) {
  detail::running_or_throw("iso::this_thread::sleep_for");
  detail::scheduler::current()->sleep_running_until(detail::now_ns() + std::max<std::int64_t>(ns, 0));
}

void migrate_to(int dest) {
  detail::heap_scope system(nullptr);
  detail::tcb* self = detail::running_or_throw("iso::this_thread::migrate_to");
  detail::scheduler& s = *detail::scheduler::current();
  if (dest == s.rank()) return;
  if (detail::migrate_to_impl == nullptr) {
    detail::raise(errc::no_runtime, "iso::this_thread::migrate_to(%d): this process has no migration support (no iso::runtime)", dest);
  }
  detail::migrate_to_impl(s, self, dest);
}

}  // namespace this_thread
}  // namespace iso
