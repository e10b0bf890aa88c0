#include "mailbox.hpp"

#include "interpose.hpp"
#include "scheduler.hpp"

namespace iso::detail {

mailbox& mailbox_of(tcb* t) {
  if (t->mailbox == nullptr) t->mailbox = new mailbox();
  return *static_cast<mailbox*>(t->mailbox);
}

bool has_ready_message(const tcb* t) noexcept {
  return t->mailbox != nullptr && !static_cast<const mailbox*>(t->mailbox)->ready.empty();
}

void put_message(tcb* t, thread_id from, std::uint64_t seq, int tag, const void* data, std::size_t bytes) noexcept {
  try {
    heap_scope receiver(t->home_heap);  // the payload and the queues live in the receiver's heap
    mailbox& mb = mailbox_of(t);
    message m{from, tag, std::vector<std::byte>(static_cast<const std::byte*>(data),
                                                 static_cast<const std::byte*>(data) + bytes)};
    mb.incoming.put(from.bits(), seq, std::move(m), [&](message&& ready) { mb.ready.push_back(std::move(ready)); });
  } catch (const std::bad_alloc&) {
    fatal("thread %s has no heap left for a message of %zu bytes from %s", t->id.to_string().c_str(), bytes,
          from.to_string().c_str());
  }
}

message take_message(tcb* self) {
  mailbox& mb = mailbox_of(self);
  // After a suspension only the mailbox (in the thread's heap) and scheduler::current() may be
  // used: the thread may have migrated.
  while (mb.ready.empty()) scheduler::current()->block_running(wait_reason::recv);
  message m = std::move(mb.ready.front());
  mb.ready.pop_front();
  return m;
}

}  // namespace iso::detail
