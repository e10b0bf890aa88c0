// Context switching: the only file of the project that touches Boost.Context's fibers.
#pragma once

#include "tcb.hpp"

namespace iso::detail {

// Builds t's fiber on t->stack (the fiber record at its top) without running it; the fiber will
// call thread_main(t). pre: t->self holds no context.
void context_create(tcb* t) noexcept;
// Scheduler side: runs t until it switches out; afterwards t->self holds its saved context, or
// nothing if it finished.
void context_resume(tcb* t) noexcept;
// Thread side: the running thread `self` suspends; returns when resumed (possibly on another rank).
void context_switch_out(tcb* self) noexcept;
// Forgets t's saved context without running its destructor: the thread now lives elsewhere.
void context_abandon(tcb* t) noexcept;

// The body of every thread (scheduler.cpp): runs the spawn callable, then marks t finished.
void thread_main(tcb* t) noexcept;

}  // namespace iso::detail
