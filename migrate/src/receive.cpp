// Selective and bounded receives (iso::recv(from, tag), try_recv, recv_for) and the runtime's
// reserved messages (reserved.hpp), over the mailbox (mailbox.hpp) and the engine's send.
#include "diag.hpp"
#include "engine.hpp"
#include "mailbox.hpp"
#include "reserved.hpp"

namespace iso::detail {
namespace {

// The running thread, after checking a user filter; `call` names the public call in errors.
tcb* receiver(const char* call, thread_id from, int tag) {
  runtime_part_or_throw(engine::current(), call);
  if (tag < any_tag) {
    raise(errc::invalid_argument, "%s: tag %d is negative (tags are >= 0; iso::any_tag matches every tag)", call, tag);
  }
  if (!from) raise(errc::unknown_thread, "%s: the default thread_id names no sender (iso::any_thread matches all)", call);
  return running_or_throw(call);
}

}  // namespace

void send_reserved(thread_id to, const void* data, std::size_t bytes, int tag, sequencing how) {
  ISO_ASSERT_INTERNAL(tag < any_tag);
  runtime_part_or_throw(engine::current(), "iso::send").send(to, data, bytes, tag, how);
}

message recv_reserved(thread_id from, int tag, const char* call) {
  ISO_ASSERT_INTERNAL(tag < any_tag);
  runtime_part_or_throw(engine::current(), call);
  return *take_message(running_or_throw(call), from, tag, -1);
}

}  // namespace iso::detail

namespace iso {

message recv(thread_id from, int tag) {
  return *detail::take_message(detail::receiver("iso::recv", from, tag), from, tag, -1);
}

std::optional<message> try_recv(thread_id from, int tag) {
  return detail::take_message(detail::receiver("iso::try_recv", from, tag), from, tag, 0);
}

std::optional<message> recv_for_ns(std::int64_t timeout_ns, thread_id from, int tag) {
  detail::tcb* self = detail::receiver("iso::recv_for", from, tag);
  const std::int64_t now = detail::now_ns();
  // Saturates instead of overflowing for timeouts like duration::max().
  const std::int64_t deadline = timeout_ns <= 0 ? 0 : timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
  return detail::take_message(self, from, tag, deadline);
}

}  // namespace iso
