#include "context.hpp"

#include <boost/context/fiber.hpp>

#include <memory>

#include "stack.hpp"

namespace ctx = boost::context;

namespace iso::detail {

ctx::fiber* switch_landing = nullptr;
eh_state* eh_here = nullptr;

void context_create(tcb* t) noexcept {
  ctx::fiber f(std::allocator_arg, slot_stack{t->stack}, [t](ctx::fiber&& from) {
    *switch_landing = std::move(from);  // the first landing, as context_switch does for later ones
    return thread_main(t);
  });
  new (t->self) ctx::fiber(std::move(f));
}

}  // namespace iso::detail
