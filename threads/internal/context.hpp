// Creating threads' contexts: with context.cpp, the only code of the project that builds
// Boost.Context fibers (tcb.hpp only sizes the saved contexts). Switching between them is
// isothreads/detail/switch.hpp, inline in every caller.
#pragma once

#include <boost/context/fiber.hpp>

#include "isothreads/detail/switch.hpp"
#include "tcb.hpp"

namespace iso::detail {

// Builds t's fiber on t->stack (the fiber record at its top) without running it; the fiber will
// call thread_main(t). pre: t->self holds no context.
void context_create(tcb* t) noexcept;

// The body of every thread (scheduler.cpp): runs the spawn callable and marks t finished; returns
// the context to end on (the scheduler's), having named where the scheduler lands t's last one.
boost::context::fiber thread_main(tcb* t) noexcept;

}  // namespace iso::detail
