// Context switching: the only file of the project that touches Boost.Context's fibers (tcb.hpp
// only sizes the saved contexts). The switch paths are inline: every call layer around a stack
// switch costs a mispredicted return, and a yield crosses two switches.
#pragma once

#include <boost/context/fiber.hpp>

#include "tcb.hpp"

namespace iso::detail {

// Builds t's fiber on t->stack (the fiber record at its top) without running it; the fiber will
// call thread_main(t). pre: t->self holds no context.
void context_create(tcb* t) noexcept;

// Scheduler side: runs t until some thread switches back to the scheduler; that thread (t, or
// another one t switched to directly) is read from *comes_back afterwards and gets its saved
// context (nothing if it finished).
inline void context_resume(tcb* t, tcb* const* comes_back) noexcept {
  boost::context::fiber back = std::move(t->self_ctx()).resume();
  (*comes_back)->self_ctx() = std::move(back);
}

// Thread side: the running thread `self` suspends into the scheduler; returns when resumed
// (possibly on another rank: afterwards only `self` and process-wide lookups such as
// scheduler::current() are valid).
inline void context_switch_out(tcb* self) noexcept {
  boost::context::fiber back = std::move(self->caller_ctx()).resume();
  self->caller_ctx() = std::move(back);
}

// Thread side: `self` suspends and `next` (suspended, ready) runs at once, without passing
// through the scheduler: one switch instead of two. On next's stack, self's context is saved in
// self's TCB and the scheduler's context (which the running thread holds in caller) is handed to
// next. Whoever resumes self later hands it the scheduler's context the same way.
inline void context_switch_to(tcb* self, tcb* next) noexcept {
  boost::context::fiber back = std::move(next->self_ctx()).resume_with([self](boost::context::fiber&& from) {
    self->self_ctx() = std::move(from);
    return std::move(self->caller_ctx());
  });
  self->caller_ctx() = std::move(back);
}

// The body of every thread (scheduler.cpp): runs the spawn callable, then marks t finished.
void thread_main(tcb* t) noexcept;

}  // namespace iso::detail
