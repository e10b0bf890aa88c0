// Creating threads' contexts: with context.cpp, the only code of the project that builds
// Boost.Context fibers (tcb.hpp only sizes the saved contexts). Switching between them is
// isothreads/detail/switch.hpp, inline in every caller.
#pragma once

#include <boost/context/fiber.hpp>

#include "isothreads/detail/switch.hpp"
#include "tcb.hpp"

namespace iso::detail {

// Builds t's context at the top of t->stack without running it (no switch); its first resume
// calls thread_main(t) there. pre: t->self holds no context.
void context_create(tcb* t) noexcept;

// The body of every thread (scheduler.cpp): runs the spawn callable, then ends t and tears it
// down on its own stack (scheduler::finish_running); returns the context to end on: the next
// ready thread's (t's joiner, in fork-join) when it can run at once, else the scheduler's, having
// named where t's last context lands (not in t, which is gone). *stack gets t's stack run, which
// goes back to the pool on that context, after the switch away from it.
boost::context::fiber& thread_main(tcb* t, stack_run* stack) noexcept;

}  // namespace iso::detail
