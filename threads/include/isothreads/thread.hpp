// Migratable threads: spawn, join, and what a thread can do to itself.
//
// A migratable thread is a Boost.Context fiber whose stack, control block and heap live in
// isomalloc chunks. While it runs, every malloc/new made on its behalf (by the program, the
// standard library or a third-party library) is served from its own heap, so its whole state can
// move to another rank at the same addresses.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include "isothreads/detail/switch.hpp"
#include "isothreads/error.hpp"
#include "isothreads/thread_id.hpp"

namespace iso {

// Default and limits of spawn_options::stack_bytes, in bytes.
inline constexpr std::size_t default_stack_bytes = std::size_t{256} << 10;
inline constexpr std::size_t min_stack_bytes = std::size_t{64} << 10;
inline constexpr std::size_t max_stack_bytes = std::size_t{1} << 30;

struct spawn_options {
  // Stack size in bytes, rounded up to a multiple of 64 KiB, in [min_stack_bytes, max_stack_bytes].
  // Includes a 16 KiB guard region at its low end that traps overflow. Only touched pages are
  // resident.
  std::size_t stack_bytes = default_stack_bytes;
  // Shown in errors, diagnostics and traces; the first 31 bytes are kept.
  std::string name;
  // With iso::stealing on, an idle rank may take this thread while it is ready here (it migrates
  // there, as iso::migrate would move it). Off by default: a thread stays where it is spawned
  // unless the program or the load balancer moves it. iso::async sets it when given no options
  // (options given to iso::async replace that default: set it there too). Moving a stealable
  // thread by id with iso::migrate races with thieves: a thief may take it first, and
  // iso::migrate then raises unknown_thread (it no longer lives here); catch that, or keep
  // threads the program moves itself unstealable (migrate_to from the thread itself is safe).
  bool stealable = false;
};

namespace detail {

// The body of a thread, type-erased. Lives in the thread's own heap (one of at most
// inline_body_bytes, 16-byte aligned, in its control block, which lives there too: no block to
// allocate and free per thread); its vtable pointer is a code address, valid on every rank of
// the same binary.
inline constexpr std::size_t inline_body_bytes = 48;
struct body_base {
  virtual void run() = 0;
  virtual ~body_base() = default;
};
template <class F>
struct body_impl final : body_base {
  template <class G>
  explicit body_impl(G&& g) : f(std::forward<G>(g)) {}
  void run() override { std::invoke(f); }
  F f;
};

// What a body of type B is made from: a copy of the callable when B can be copied, else it is
// moved (see spawn).
template <class B, class F>
decltype(auto) body_source(F&& body) noexcept {
  if constexpr (std::is_copy_constructible_v<B>) {
    return static_cast<const B&>(body);
  } else {
    return std::forward<F>(body);
  }
}

// Spawning in two steps, so that the body is copied with the new thread's heap current (and so
// lands in it, with everything its captures own). Throws iso::error.
class spawn_frame {
 public:
  explicit spawn_frame(const spawn_options& opts);
  ~spawn_frame();  // frees everything if commit() was not reached
  spawn_frame(const spawn_frame&) = delete;
  spawn_frame& operator=(const spawn_frame&) = delete;
  thread_id commit(body_base* body) noexcept;
  // inline_body_bytes, 16-byte aligned, in the new thread's control block: where a body that
  // fits is constructed instead of a heap block. Inline (kept here by the constructor): a spawn
  // makes no call for it.
  void* inline_body() const noexcept { return inline_body_; }

 private:
  void* thread_ = nullptr;    // the new thread's control block
  void* saved_heap_ = nullptr;
  void* inline_body_ = nullptr;  // the new thread's tcb::inline_body, kept for spawn() (valid until commit)
};

}  // namespace detail

// Spawns a migratable thread on this rank running body() (any callable `void()`).
// Callable from main before runtime::run(), or from a migratable thread.
// Errors: iso::error(no_runtime) without a runtime; (stack_size) for a stack size out of range;
// (region_exhausted) when this rank's share of addresses is used up.
//
// The body is COPIED (not moved) into the new thread's heap, even from an rvalue: a copy
// allocates afresh, so what the captures own lands in the thread's slots and migrates with it.
// A move-only body is moved instead; memory its captures already own then stays where it was
// (allocate such state inside the thread if it must migrate).
template <class F>
thread_id spawn(F&& body, const spawn_options& opts = {}) {
  using B = std::decay_t<F>;
  using body_t = detail::body_impl<B>;
  static_assert(std::is_invocable_v<B&>, "iso::spawn needs a callable taking no arguments");
  detail::spawn_frame frame(opts);
  if constexpr (sizeof(body_t) <= detail::inline_body_bytes && alignof(body_t) <= 16) {
    return frame.commit(new (frame.inline_body()) body_t(detail::body_source<B>(std::forward<F>(body))));
  } else {
    return frame.commit(new body_t(detail::body_source<B>(std::forward<F>(body))));
  }
}

namespace detail {
// iso::join in steps, so that its switches happen at the caller's call site, as a yield's do
// (isothreads/detail/switch.hpp): join_prepare checks and registers the join of t, join_next
// looks whether it is done. Each returns null when it is (t has finished), else the context to
// switch to, the caller's slot named in switch_landing (the caller blocks until t's end wakes
// it); join_next is called after each such switch. Errors as iso::join's.
boost::context::fiber* join_prepare(thread_id t);
boost::context::fiber* join_next(thread_id t);
}  // namespace detail

// Blocks the calling migratable thread until thread t has finished. Each thread may be joined
// once. Errors: (not_in_thread) from outside a thread; (already_joined) for a second join or a
// join of oneself; (unknown_thread) for an id that names no thread.
inline void join(thread_id t) {
  for (boost::context::fiber* to = detail::join_prepare(t); to != nullptr; to = detail::join_next(t)) {
    detail::context_resume_named(*to);
  }
}

// While one lives, malloc/new on this OS thread go to the system allocator, even inside a
// migratable thread. For state that outlives the thread or stays on this rank: a library's
// process-wide cache initialised lazily from a thread, a buffer handed to a rank-local service.
// Such memory does not migrate; free it on the rank that allocated it. A scope lasts until it is
// destroyed, across every suspension of its thread inside it (yield, sleep, recv, join, lb::sync,
// migration): the thread resumes with the heap it suspended with. Not copyable or movable;
// scopes nest.
class system_heap_scope {
 public:
  system_heap_scope() noexcept;
  ~system_heap_scope();
  system_heap_scope(const system_heap_scope&) = delete;
  system_heap_scope& operator=(const system_heap_scope&) = delete;

 private:
  void* saved_;  // the allocation target to restore
};

namespace this_thread {

// The calling thread's id, stable across migrations. Default id outside a thread.
thread_id id() noexcept;
// Lets the other ready threads of this rank run. Error: (not_in_thread).
// Inline so that the stack switch happens at the call site (see isothreads/detail/switch.hpp).
inline void yield() { detail::context_resume_named(detail::yield_prepare()); }
// Suspends the calling thread for at least `d` (other threads run meanwhile).
void sleep_for_ns(std::int64_t ns);
template <class Rep, class Period>
void sleep_for(const std::chrono::duration<Rep, Period>& d) {
  sleep_for_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}
// The calling thread moves to rank `dest`; the call returns there. dest == current rank returns
// at once. Errors: (not_in_thread), (invalid_rank), (no_runtime) without migration support.
void migrate_to(int dest);
// The calling thread's name (spawn_options::name), "" outside a thread.
const char* name() noexcept;

}  // namespace this_thread
}  // namespace iso
