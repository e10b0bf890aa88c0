// iso::async and iso::future: a migratable thread that returns a value.
//
// Protocol (migrate/src/future.cpp): the producer runs the body, keeps its value (or the text of
// what it threw) and waits for one ask; get() asks from the calling thread and waits for the
// value, so the value goes to whichever thread holds the future when it asks, wherever either
// thread runs. On one rank the ask and the value pass between the two threads directly, as a join
// does; across ranks they are reserved messages (migrate/src/reserved.hpp). A future destroyed
// without get() asks "drop" instead, and the producer ends without answering.
#pragma once

#include <cstddef>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "isothreads/error.hpp"
#include "isothreads/messaging.hpp"
#include "isothreads/thread.hpp"

namespace iso {

namespace detail {

template <class R>
struct is_byte_vector : std::false_type {};
template <class T, class A>
struct is_byte_vector<std::vector<T, A>> : std::bool_constant<std::is_trivially_copyable_v<T>> {};

// The value types a future carries.
template <class R>
inline constexpr bool future_value_type = std::is_void_v<R> || std::is_trivially_copyable_v<R> ||
                                          std::is_same_v<R, std::string> || is_byte_vector<R>::value;

// Producer side, after the body: waits for the ask and answers it with `bytes` bytes of value, or
// with `failure` (the what() text of what the body threw; null: it returned). From the producer.
void future_serve(const void* value, std::size_t bytes, const char* failure);
// The getter's side while it waits in get(), in get()'s frame (on its stack, so that it moves
// with the thread): where the value goes.
struct future_landing {
  thread_id producer;
  // Writes the value's `bytes` bytes into `out` (an R in get()'s frame); called once, with the
  // getter's heap current. Null for a future<void>.
  void (*store)(void* out, const void* data, std::size_t bytes);
  void* out;
  bool done = false;     // the value (or the failure) is in
  bool failed = false;
  std::string failure;   // the body's what() text, in the getter's heap
};
// get() in steps, so that its switches happen in get()'s frame, as a join's do (iso::join): a
// thread that resumes there returns through no runtime frames. future_get_prepare asks
// `producer` for the value (and clears it once asked), to land in `l` (l.producer ==
// producer); future_get_next looks whether it is in. Each returns null when it is, else the
// context to switch to, the caller's slot named in switch_landing (the caller blocks until the
// value, or a message, wakes it); future_get_next is called after each such switch. If the body
// threw, instead of returning null the last call throws iso::error(thread_failed) with the
// body's what() text. Nothing but these switches may come between the calls: the producer
// writes into `l` while the caller is suspended.
boost::context::fiber* future_get_prepare(thread_id& producer, const char* call, future_landing& l);
boost::context::fiber* future_get_next(future_landing& l);
// Tells `producer` that nobody will ask. Never throws (nothing to tell without a runtime).
void future_drop(thread_id producer) noexcept;

// Writes a value of R received as `bytes` bytes into the R at `out`.
template <class R>
void store_value(void* out, const void* data, std::size_t bytes) {
  R& v = *static_cast<R*>(out);
  if constexpr (std::is_same_v<R, std::string>) {
    v.assign(static_cast<const char*>(data), bytes);
  } else if constexpr (is_byte_vector<R>::value) {
    v.resize(bytes / sizeof(typename R::value_type));
    if (bytes != 0) std::memcpy(v.data(), data, bytes);
  } else {
    std::memcpy(&v, data, sizeof v);
  }
}

// The producer thread's body. The callable is destroyed before the value leaves, so that nothing
// of it (a capture's destructor) runs, or sends, after the answer: the answer is the producer's
// last message to its getter (future.cpp).
template <class R, class F>
void run_producer(std::optional<F>& body) {
  [[maybe_unused]] std::conditional_t<std::is_void_v<R>, bool, std::optional<R>> value{};
  std::string failure;
  bool failed = false;
  try {
    if constexpr (std::is_void_v<R>) {
      (*body)();
    } else {
      value.emplace((*body)());
    }
  } catch (const std::exception& e) {
    failed = true;
    failure = e.what();
  } catch (...) {
    failed = true;
    failure = "an exception that is not a std::exception";
  }
  body.reset();
  if (failed) {
    future_serve(nullptr, 0, failure.c_str());
  } else if constexpr (std::is_void_v<R>) {
    future_serve(nullptr, 0, nullptr);
  } else if constexpr (std::is_same_v<R, std::string> || is_byte_vector<R>::value) {
    future_serve(value->data(), value->size() * sizeof(typename R::value_type), nullptr);
  } else {
    future_serve(&*value, sizeof(R), nullptr);
  }
}

}  // namespace detail

template <class R>
class future;
// Spawns body (a callable R()) as a migratable thread on this rank (as iso::spawn, with opts) and
// returns the future of its value. Take the value with get(), or destroy the future, while run()
// runs: the thread waits for one or the other before it ends. Errors: those of iso::spawn.
// Without options the thread is stealable (iso::stealing): the default argument is
// spawn_options{.stealable = true}. Options given replace that default whole, so
// iso::async(f, {.name = "leaf"}) is NOT stealable; say {.name = "leaf", .stealable = true}.
template <class F>
auto async(F&& body, const spawn_options& opts = spawn_options{.stealable = true});

// The value of an iso::async thread, to be taken once with get(). Move-only; a default-constructed
// or moved-from future, or one whose get() was called, is not valid().
template <class R>
class future {
  static_assert(detail::future_value_type<R>,
                "iso::future<R>: R must be void, trivially copyable, std::string, or std::vector of a trivially "
                "copyable type");

 public:
  future() noexcept = default;
  future(future&& o) noexcept : producer_(std::exchange(o.producer_, thread_id{})) {}
  future& operator=(future&& o) noexcept {
    if (this != &o) {
      reset();
      producer_ = std::exchange(o.producer_, thread_id{});
    }
    return *this;
  }
  future(const future&) = delete;
  future& operator=(const future&) = delete;
  ~future() { reset(); }

  bool valid() const noexcept { return static_cast<bool>(producer_); }

  // Blocks the calling migratable thread until the body has returned, wherever either runs, and
  // gives its value. Once: afterwards the future is not valid(). Errors: (thread_failed) if the
  // body threw, what() being its what(); (invalid_argument) if the future is not valid();
  // (not_in_thread) from outside a migratable thread.
  R get() {
    if (!producer_) {
      throw error(errc::invalid_argument,
                  "iso::future::get: the future has no value to give (get() was called already, or it was "
                  "moved from or default-constructed)");
    }
    if constexpr (std::is_void_v<R>) {
      wait(nullptr, nullptr);
    } else {
      R v;
      wait(&detail::store_value<R>, &v);
      return v;
    }
  }

 private:
  template <class F>
  friend auto async(F&& body, const spawn_options& opts);
  explicit future(thread_id producer) noexcept : producer_(producer) {}
  void wait(void (*store)(void*, const void*, std::size_t), void* out) {
    detail::future_landing l{producer_, store, out};
    for (boost::context::fiber* to = detail::future_get_prepare(producer_, "iso::future::get", l); to != nullptr;
         to = detail::future_get_next(l)) {
      detail::context_resume_named(*to);
    }
  }
  void reset() noexcept {
    if (producer_) detail::future_drop(std::exchange(producer_, thread_id{}));
  }

  thread_id producer_;  // the thread that runs the body; none once get() has asked
};

template <class F>
auto async(F&& body, const spawn_options& opts) {
  using B = std::decay_t<F>;
  static_assert(std::is_invocable_v<B&>, "iso::async needs a callable taking no arguments");
  using R = std::invoke_result_t<B&>;
  static_assert(detail::future_value_type<R>,
                "iso::async: the body must return void, a trivially copyable type, std::string, or std::vector of "
                "a trivially copyable type");
  return future<R>(spawn([f = std::optional<B>(std::in_place, std::forward<F>(body))]() mutable {
    detail::run_producer<R>(f);
  }, opts));
}

}  // namespace iso
