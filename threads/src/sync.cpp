// iso::mutex and iso::condition_variable: FIFO wait queues of TCBs on one rank.
#include "isothreads/sync.hpp"

#include "diag.hpp"
#include "scheduler.hpp"

namespace iso {
mutex::~mutex() { ISO_ASSERT(owner_ == nullptr && waiters_.empty()); }

void mutex::lock() {
  detail::tcb* self = detail::running_or_throw("iso::mutex::lock");
  if (owner_ == self) detail::raise(errc::invalid_argument, "iso::mutex::lock: thread %s already holds this mutex", self->id.to_string().c_str());
  if (owner_ == nullptr) {
    owner_ = self;
    ++self->locks_held;
    return;
  }
  detail::wait_push(waiters_, self);
  detail::scheduler::current()->block_running(detail::wait_reason::lock);
  ISO_ASSERT_INTERNAL(owner_ == self);  // unlock() handed the mutex over before waking us
}

bool mutex::try_lock() {
  detail::tcb* self = detail::running_or_throw("iso::mutex::try_lock");
  if (owner_ != nullptr) return false;
  owner_ = self;
  ++self->locks_held;
  return true;
}

void mutex::unlock() {
  detail::tcb* self = detail::running_or_throw("iso::mutex::unlock");
  if (owner_ != self) detail::raise(errc::invalid_argument, "iso::mutex::unlock: thread %s does not hold this mutex", self->id.to_string().c_str());
  --self->locks_held;
  owner_ = nullptr;
  if (!waiters_.empty()) {
    // Hand over directly (FIFO fairness: a yielding unlocker cannot take it back first).
    detail::tcb* next = detail::wait_pop(waiters_);
    owner_ = next;
    ++next->locks_held;
    detail::scheduler::current()->wake(next);
  }
}

condition_variable::~condition_variable() { ISO_ASSERT(waiters_.empty()); }

void condition_variable::wait(mutex& m) {
  detail::tcb* self = detail::running_or_throw("iso::condition_variable::wait");
  if (m.owner_ != self) detail::raise(errc::invalid_argument, "iso::condition_variable::wait: thread %s does not hold the mutex", self->id.to_string().c_str());
  detail::wait_push(waiters_, self);
  m.unlock();
  detail::scheduler::current()->block_running(detail::wait_reason::lock);
  m.lock();
}

void condition_variable::notify_one() noexcept {
  if (!waiters_.empty()) detail::scheduler::current()->wake(detail::wait_pop(waiters_));
}

void condition_variable::notify_all() noexcept {
  while (!waiters_.empty()) detail::scheduler::current()->wake(detail::wait_pop(waiters_));
}

}  // namespace iso
