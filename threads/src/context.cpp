#include "context.hpp"

#include <boost/context/fiber.hpp>

#include <cstring>
#include <memory>

#include "stack.hpp"

namespace ctx = boost::context;

namespace iso::detail {

void context_create(tcb* t) noexcept {
  ctx::fiber f(std::allocator_arg, slot_stack{t->stack}, [t](ctx::fiber&& caller) {
    t->caller_ctx() = std::move(caller);
    thread_main(t);
    return std::move(t->caller_ctx());
  });
  new (t->self) ctx::fiber(std::move(f));
}

void context_resume(tcb* t) noexcept {
  t->self_ctx() = std::move(t->self_ctx()).resume();
}

void context_switch_out(tcb* self) noexcept {
  ctx::fiber back = std::move(self->caller_ctx()).resume();
  self->caller_ctx() = std::move(back);
}

void context_abandon(tcb* t) noexcept {
  // The saved context is just a pointer into the stack run, which now lives on another rank:
  // clear it without resuming it to unwind (what ~fiber would do).
  std::memset(t->self, 0, sizeof t->self);
}

}  // namespace iso::detail
