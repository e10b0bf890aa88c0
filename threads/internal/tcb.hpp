// The thread control block (TCB) and the thread's stack run.
//
// Map: a thread owns
//   stack run  n chunks (stack_bytes rounded up to 64 KiB), guard_bytes at the low end trap
//              overflow; the thread's first frame (context.cpp) sits at the top, so it travels with
//              the stack.
//   heap       iso::detail::heap, its first segment holding the heap object, then this TCB (the
//              heap's reserved bytes, heap::create), which holds the body (the spawn callable) when
//              it fits in inline_body_bytes, else the body is allocated from the thread's own heap.
// The TCB therefore lives in the thread's slots and migrates with it. It holds only what is valid
// in any process of the same binary: addresses inside slots, code addresses (vtables), ids and
// plain values. Queue links point to other TCBs and are meaningful only on the rank whose queues
// hold them; a thread that leaves a rank is in no queue.
#pragma once

#include <boost/context/fiber.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "heap.hpp"
#include "isothreads/sync.hpp"
#include "isothreads/thread.hpp"
#include "isothreads/thread_id.hpp"

namespace iso::detail {

inline constexpr std::size_t stack_guard_bytes = std::size_t{16} << 10;

// A thread's stack: [base, base + bytes), guard in [base, base + stack_guard_bytes).
struct stack_run {
  void* base = nullptr;     // chunk-aligned start of the run
  std::size_t bytes = 0;    // run length, a multiple of chunk_bytes
  void* top() const noexcept { return static_cast<char*>(base) + bytes; }
  bool guard_contains(const void* p) const noexcept {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    const auto b = reinterpret_cast<std::uintptr_t>(base);
    return a >= b && a < b + stack_guard_bytes;
  }
};

enum class thread_state : std::uint8_t {
  ready,      // in the scheduler's ready queue (or about to be: it just yielded)
  running,    // the one thread executing on this rank
  blocked,    // waiting; tcb::wait says for what
  sleeping,   // in the scheduler's timer list until wake_ns
  finished,   // body returned; being torn down
};

// What a blocked thread waits for. `lock` waits sit in rank-local wait_queues, so such a thread
// cannot migrate until it is woken; `join` and `recv` waits are satisfied by messages that find
// the thread wherever it is, and `sync` by the load balancer, so such a thread can migrate while
// blocked. `collective` waits for a collective's result on this rank's combiner (combiner.hpp),
// which points at the thread: it cannot migrate until woken.
// `checkpoint` waits until every thread's image is written; it must stay the last enumerator,
// since wait_reasons counts from it.
enum class wait_reason : std::uint8_t { none, lock, join, recv, sync, collective, checkpoint };
inline constexpr std::size_t wait_reasons = static_cast<std::size_t>(wait_reason::checkpoint) + 1;

// Invariant: every field has a default member initialiser, except inline_body (written by the
// spawn that uses it). scheduler::create_thread default-initialises a TCB in place (no zeroing
// first), so a field without one would start as whatever its heap's reserved bytes held; under
// ISO_DEBUG >= 2 they are filled with a pattern first, so such a field shows in the tests.
struct tcb {
  static constexpr std::uint64_t magic_value = 0x74636273696f7369ull;  // "isoisbct"

  std::uint64_t magic = magic_value;  // checked before a TCB found by address is used
  thread_id id;                       // stable for the thread's life
  thread_state state = thread_state::ready;
  char name[32] = {};                 // spawn_options::name, NUL-terminated

  heap* home_heap = nullptr;          // this thread's heap (in its slots)
  // While suspended: the heap that was current (home_heap, or null inside a heap scope), current
  // again when it resumes.
  heap* suspended_heap = nullptr;
  stack_run stack;                    // this thread's stack run
  body_base* body = nullptr;          // the spawn callable, in home_heap; null once it returned
  // The spawn callable when it fits (body then points here), else unused: a small body costs no
  // heap block, and travels with the TCB.
  alignas(16) unsigned char inline_body[inline_body_bytes];

  // The thread's own context while it is suspended (boost::context::fiber is one pointer: the
  // saved stack pointer, into this thread's stack run); empty while it runs. Raw storage: a fiber
  // left behind by a migration must never run its destructor (that would unwind the thread on the
  // wrong rank).
  alignas(boost::context::fiber) unsigned char self[sizeof(boost::context::fiber)] = {};

  // Links for exactly one queue at a time: ready queue, timer list or a wait_queue.
  tcb* next = nullptr;
  tcb* prev = nullptr;
  std::int64_t wake_ns = 0;           // steady-clock deadline while sleeping, in ns
  wait_reason wait = wait_reason::none;  // while blocked

  thread_id joiner;                   // the thread that joins this one; none until a join
  thread_id waiting_for;              // during a join: the thread being joined; cleared when it ends
  errc join_status = errc::ok;        // how that join ended (set before the joiner is woken)

  std::uint32_t epoch = 0;            // migrations so far: orders location information
  std::int32_t pending_dest = -1;     // rank to move to at the next suspension point; -1: none
  bool stealable = false;             // spawn_options::stealable: an idle rank may take it while ready
  bool stolen = false;                // in transit to a rank that stole it; cleared on arrival there
  bool started = false;               // its body began: thieves prefer threads that have not
  std::int64_t sleep_left_ns = 0;     // in transit while sleeping: the rest of the sleep, in ns
  void* mailbox = nullptr;            // messaging state, in this thread's heap (migrate module)
  // An iso::async thread's side of its future (migrate/src/future.cpp), kept here so that a
  // getter on its rank needs no mailbox of it: what it was asked there (0 none, 1 value, 2 drop)
  // and by whom, and its value while it waits for the ask (a pointer into its own stack).
  std::uint8_t future_asked = 0;
  thread_id future_asker;
  void* future_offer = nullptr;

  // iso::mutex locks held, and a collective's pin while its waiter reads the result its rank's
  // waiters share (migrate/src/collectives.cpp): a thread holding one must not migrate.
  std::uint32_t locks_held = 0;
  std::uint64_t run_cycles = 0;       // TSC cycles spent running since the last balancing step
  // Cycles of its last run measured alone (0: none yet): its weight when a sampled window of runs
  // is shared out (scheduler::window_).
  std::uint64_t run_estimate = 0;
  std::uint32_t window_runs = 0;      // its runs in the scheduler's open window; 0 outside it
  double set_load = -1;               // load set by iso::lb::set_load for this period, s; < 0: none

  boost::context::fiber& self_ctx() noexcept { return *std::launder(reinterpret_cast<boost::context::fiber*>(self)); }
  // While suspended: the stack pointer saved at the switch (the fiber's single pointer), so
  // everything live on the stack lies in [saved_sp(), stack.top()).
  const void* saved_sp() const noexcept {
    const void* sp = nullptr;
    std::memcpy(&sp, self, sizeof sp);
    return sp;
  }
};

static_assert(sizeof(boost::context::fiber) == sizeof(void*),
              "a saved context must be a single pointer into the stack run, so that it migrates");
static_assert(std::is_standard_layout_v<thread_id> && std::is_trivially_copyable_v<thread_id>);

// wait_queue operations on TCB links. pre: t is in no queue (push) / q is not empty (pop).
inline void wait_push(wait_queue& q, tcb* t) noexcept {
  t->next = nullptr;
  t->prev = q.tail;
  if (q.tail != nullptr) q.tail->next = t; else q.head = t;
  q.tail = t;
}

// At the head instead of the tail.
inline void wait_push_front(wait_queue& q, tcb* t) noexcept {
  t->prev = nullptr;
  t->next = q.head;
  if (q.head != nullptr) q.head->prev = t; else q.tail = t;
  q.head = t;
}

inline tcb* wait_pop(wait_queue& q) noexcept {
  tcb* t = q.head;
  q.head = t->next;
  if (q.head != nullptr) q.head->prev = nullptr; else q.tail = nullptr;
  t->next = t->prev = nullptr;
  return t;
}

// pre: t is in q. O(1): the links say where.
inline void wait_remove(wait_queue& q, tcb* t) noexcept {
  if (t->prev != nullptr) t->prev->next = t->next; else q.head = t->next;
  if (t->next != nullptr) t->next->prev = t->prev; else q.tail = t->prev;
  t->next = t->prev = nullptr;
}

}  // namespace iso::detail
