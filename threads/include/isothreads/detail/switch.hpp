// The stack switch between migratable threads (and their scheduler), inline in every caller.
//
// Why it is in a public header: a switch made inside a library function returns, after the
// thread is resumed, with a `ret` on the resumed thread's stack while the CPU's return-address
// predictor still holds the suspending thread's caller. Whenever the two threads called from
// different places, every switch costs a mispredicted return (about 7 ns on the reference
// machine, more than the switch itself). iso::this_thread::yield() therefore does its
// bookkeeping in the library and only the switch here, inline at the program's call site.
//
// Protocol: every context (thread or scheduler) that suspends names the slot where its context
// is to be saved in `switch_landing`, then resumes the target; the context that lands (the
// target, at its own switch point) stores the context it came from there. So a saved context is
// written after the switch, through a pointer read then, which stays right when a thread resumes
// in another process: switch_landing is a process global, read afresh. A thread that ends has no
// slot left (its TCB went back with its heap before its last switch): it names one the scheduler
// keeps for that (scheduler::ended_landing_), where the empty context that context.cpp's
// thread_entry leaves lands.
#pragma once

#include <boost/context/fiber.hpp>

#include <utility>

namespace iso::detail {

// Where the context that switches next is to be saved. Set just before every switch; only
// meaningful between a switch and the landing that follows it.
extern boost::context::fiber* switch_landing;

// The C++ runtime's exception state, which it keeps per OS thread (the Itanium C++ ABI's
// __cxa_eh_globals, section 2.2.2): the exceptions being handled, innermost first (what `throw;`
// and std::current_exception() see, and what the end of a handler releases), and the number
// thrown and not yet caught (std::uncaught_exceptions()). Threads that switch inside a handler or
// while unwinding would otherwise see and release each other's exceptions, so every context
// keeps its own across a switch: in the frame that switches, on its own stack, where it travels
// with a thread that migrates (the exceptions are in the thread's heap, at the same addresses).
struct eh_state {
  void* caught;
  unsigned int uncaught;
};
// The scheduler's OS thread's state (__cxa_get_globals() there), set by the scheduler before any
// thread runs; read afresh after every switch, as switch_landing, since a thread may resume in
// another process.
extern eh_state* eh_here;

// Resumes `to` (which must hold a suspended context; it is empty afterwards), the running
// context to be saved where switch_landing points (set by the caller). Returns when some context
// switches back here. Invariant: while a context runs, eh_here holds its own exception state;
// every context leaves it empty when it switches away (so a new thread starts with none), and
// puts its own back when it lands.
inline void context_resume_named(boost::context::fiber& to) noexcept {
  const eh_state mine = *eh_here;
  const bool handling = mine.caught != nullptr || mine.uncaught != 0;  // rarely: keep the switch lean
  if (handling) *eh_here = eh_state{nullptr, 0};
  boost::context::fiber from = std::move(to).resume();
  *switch_landing = std::move(from);
  if (handling) *eh_here = mine;
}

// Suspends the running context, to be saved in *save, and resumes `to`.
inline void context_switch(boost::context::fiber& to, boost::context::fiber* save) noexcept {
  switch_landing = save;
  context_resume_named(to);
}

// iso::this_thread::yield() without the switch: the running thread becomes ready, its save slot
// is named in switch_landing, and the thread (or scheduler) to run next is chosen; returns the
// context to resume. Error: (not_in_thread).
boost::context::fiber& yield_prepare();

}  // namespace iso::detail
