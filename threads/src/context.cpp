#include "context.hpp"

#include <boost/context/fiber.hpp>

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

}  // namespace iso::detail
