#include "context.hpp"

#include <boost/context/detail/fcontext.hpp>
#include <boost/context/fiber.hpp>

#include <type_traits>

// The fcontext layer is used directly below: other Boost.Context back ends keep a different
// object behind a fiber's one pointer (ucontext, Windows fibers), and with shadow stacks a
// context is made with more than make_fcontext.
#if defined(BOOST_USE_UCONTEXT) || defined(BOOST_USE_WINFIB) || defined(BOOST_USE_SEGMENTED_STACKS) || \
    defined(BOOST_CONTEXT_SHADOW_STACK)
#error "isothreads needs Boost.Context's fcontext back end"
#endif

#include "diag.hpp"
#include "scheduler.hpp"
#include "stack.hpp"

namespace ctx = boost::context;
using ctx::detail::fcontext_t;
using ctx::detail::transfer_t;

namespace iso::detail {

ctx::fiber* switch_landing = nullptr;
eh_state* eh_here = nullptr;

namespace {

// A boost::context::fiber is its one member, the fcontext_t it resumes (standard layout, one
// pointer): a pointer to it is a pointer to that member. A thread's context is made with
// Boost.Context's fcontext layer (make_fcontext) rather than fiber's constructor, which switches
// into the new context and back once to hand it its record (two switches and a mispredicted
// return per spawn); every switch still goes through fiber::resume (switch.hpp).
static_assert(std::is_standard_layout_v<ctx::fiber> && sizeof(ctx::fiber) == sizeof(fcontext_t));
fcontext_t& fctx_of(ctx::fiber& f) noexcept { return *reinterpret_cast<fcontext_t*>(&f); }

// Gives the stack run of a thread that ended back to the pool, once its last switch has left it.
void release_ended_stack(const void* run) noexcept { stack_pool::get().release(*static_cast<const stack_run*>(run)); }

// Runs on the context a thread ends on, when that context is suspended in a switch (ontop of its
// resume): what lands there is an empty context, as after Boost.Context's own fiber exit.
transfer_t release_ended_stack_ontop(transfer_t ended) noexcept {
  release_ended_stack(ended.data);
  return {nullptr, nullptr};
}

// The bottom frame of every thread, entered by its first resume (from the scheduler or a direct
// switch, which made it running first: start_running), with no data; or by the end of a thread
// that switches to it directly, with that thread's stack run to give back (a context that never
// ran returns from no switch: ontop_fcontext cannot hand it a result). Never returns.
[[noreturn]] void thread_entry(transfer_t from) noexcept {
  if (from.data != nullptr) {
    release_ended_stack(from.data);
    from.fctx = nullptr;  // the ended thread's context: what lands is empty, as below
  }
  ctx::fiber came_from;
  fctx_of(came_from) = from.fctx;
  *switch_landing = std::move(came_from);  // the first landing, as context_resume_named does for later ones
  stack_run run;  // read by thread_main before the teardown (the TCB is gone after it)
  ctx::fiber& next = thread_main(scheduler::current()->running(), &run);
  // Ends on the next ready thread (now running) or the scheduler, whose context is emptied as
  // fiber::resume leaves the one it resumes.
  const tcb* next_thread = scheduler::current()->running();
  // Whether `next` ever ran is read from the thread now running: it must be next's owner (or
  // none, for the scheduler's context), else a never-run context would be resumed ontop (its
  // entry registers clobbered) or a suspended one by a plain jump (the ended context leaked).
  ISO_ASSERT_INTERNAL(next_thread == nullptr || &next == &const_cast<tcb*>(next_thread)->self_ctx());
  const fcontext_t to = fctx_of(next);
  fctx_of(next) = nullptr;
  if (next_thread != nullptr && !next_thread->started) {
    ctx::detail::jump_fcontext(to, &run);
  } else {
    ctx::detail::ontop_fcontext(to, &run, &release_ended_stack_ontop);
  }
  __builtin_unreachable();
}

}  // namespace

void context_create(tcb* t) noexcept {
  ctx::fiber* f = new (t->self) ctx::fiber();
  // 64 bytes below the run's top, as fiber's constructor left them: the bottom frame's return
  // address then lies inside the run, never at its last word (the next run above may begin with
  // another stack's guard, which an unwinder reading past the frame would hit).
  constexpr std::size_t top_gap = 64;
  fctx_of(*f) = ctx::detail::make_fcontext(static_cast<char*>(t->stack.top()) - top_gap,
                                           t->stack.bytes - stack_guard_bytes - top_gap, &thread_entry);
}

}  // namespace iso::detail
