// Blocking primitives for migratable threads. Waiting suspends only the calling thread; the other
// threads of the rank keep running. They coordinate threads on ONE rank: a thread must not
// migrate while it holds a mutex (migrate_to throws, and a pending iso::migrate waits until it is
// released).
#pragma once

#include <cstdint>

namespace iso {
namespace detail {
struct tcb;
// FIFO of blocked threads, linked through their control blocks (no allocation).
struct wait_queue {
  tcb* head = nullptr;
  tcb* tail = nullptr;
  bool empty() const noexcept { return head == nullptr; }
};
}  // namespace detail

class mutex {
 public:
  mutex() = default;
  mutex(const mutex&) = delete;
  mutex& operator=(const mutex&) = delete;
  ~mutex();  // pre: unlocked, no waiters

  // From a migratable thread only: throws iso::error(not_in_thread) elsewhere, and
  // (invalid_argument) when the caller already holds it.
  void lock();
  bool try_lock();
  // pre: the caller holds it; otherwise throws iso::error(invalid_argument).
  void unlock();

 private:
  friend class condition_variable;
  detail::tcb* owner_ = nullptr;  // control block of the holder, null when unlocked
  detail::wait_queue waiters_;    // threads blocked in lock(), woken in FIFO order
};

class condition_variable {
 public:
  condition_variable() = default;
  condition_variable(const condition_variable&) = delete;
  condition_variable& operator=(const condition_variable&) = delete;
  ~condition_variable();  // pre: no waiters

  // Releases m, waits for a notification, re-acquires m. pre: the caller holds m.
  void wait(mutex& m);
  template <class Pred>
  void wait(mutex& m, Pred pred) {
    while (!pred()) wait(m);
  }
  void notify_one() noexcept;
  void notify_all() noexcept;

 private:
  detail::wait_queue waiters_;
};

}  // namespace iso
