// The reserved messages of iso::future (isothreads/future.hpp). An ask carries one byte:
// ask_value or ask_drop; the answer carries one status byte (answer_value, answer_failure), then
// the value's bytes or the failure's what() text.
#include <cstring>

#include "diag.hpp"
#include "isothreads/future.hpp"
#include "reserved.hpp"
#include "scheduler.hpp"

namespace iso::detail {
namespace {
constexpr unsigned char ask_value = 1, ask_drop = 0;
constexpr unsigned char answer_value = 0, answer_failure = 1;
}  // namespace

void future_serve(const void* value, std::size_t bytes, const char* failure) {
  const message ask = recv_reserved(any_thread, future_ask, "iso::async");
  ISO_ASSERT(ask.data.size() == 1);
  if (static_cast<unsigned char>(ask.data[0]) == ask_drop) return;
  const std::size_t n = failure != nullptr ? std::strlen(failure) : bytes;
  std::vector<unsigned char> answer(1 + n);
  answer[0] = failure != nullptr ? answer_failure : answer_value;
  if (n != 0) std::memcpy(answer.data() + 1, failure != nullptr ? failure : value, n);
  send_reserved(ask.from, answer.data(), answer.size(), future_value);
}

std::vector<std::byte> future_fetch(thread_id& producer, const char* call) {
  running_or_throw(call);  // before the ask: a failed call leaves the future as it was
  const thread_id p = producer;
  send_reserved(p, &ask_value, 1, future_ask);
  producer = thread_id{};
  message answer = recv_reserved(p, future_value, call);
  ISO_ASSERT(!answer.data.empty());
  if (static_cast<unsigned char>(answer.data[0]) == answer_failure) {
    throw error(errc::thread_failed,
                std::string(reinterpret_cast<const char*>(answer.data.data()) + 1, answer.data.size() - 1));
  }
  answer.data.erase(answer.data.begin());
  return std::move(answer.data);
}

void future_drop(thread_id producer) noexcept {
  try {
    send_reserved(producer, &ask_drop, 1, future_ask);
  } catch (...) {
    // No runtime any more (the producer's process has gone with it) or no memory: nothing to tell.
  }
}

}  // namespace iso::detail
