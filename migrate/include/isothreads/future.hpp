// iso::async and iso::future: a migratable thread that returns a value.
//
// Protocol (reserved messages, migrate/src/reserved.hpp): the producer runs the body, keeps its
// value (or the text of what it threw) in its own heap, and waits for one "ask" message; get()
// sends the ask from the calling thread and waits for the answer, so the value goes to whichever
// thread holds the future when it asks, wherever either thread runs. A future destroyed without
// get() sends a "drop" ask instead, and the producer ends without answering.
#pragma once

#include <cstddef>
#include <cstring>
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
// Getter side: asks `producer` for its value and waits for it; `producer` is cleared once the ask
// is sent. Throws iso::error(thread_failed) with the body's what() text if the body threw.
std::vector<std::byte> future_fetch(thread_id& producer, const char* call);
// Tells `producer` that nobody will ask. Never throws (nothing to tell without a runtime).
void future_drop(thread_id producer) noexcept;

template <class R, class F>
void run_producer(F& body) {
  std::string failure;
  try {
    if constexpr (std::is_void_v<R>) {
      body();
      future_serve(nullptr, 0, nullptr);
      return;
    } else {
      const R v = body();
      if constexpr (std::is_same_v<R, std::string> || is_byte_vector<R>::value) {
        future_serve(v.data(), v.size() * sizeof(typename R::value_type), nullptr);
      } else {
        future_serve(&v, sizeof v, nullptr);
      }
      return;
    }
  } catch (const std::exception& e) {
    failure = e.what();
  } catch (...) {
    failure = "an exception that is not a std::exception";
  }
  future_serve(nullptr, 0, failure.c_str());
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
    const std::vector<std::byte> b = detail::future_fetch(producer_, "iso::future::get");
    if constexpr (std::is_void_v<R>) {
      return;
    } else if constexpr (std::is_same_v<R, std::string>) {
      return std::string(reinterpret_cast<const char*>(b.data()), b.size());
    } else if constexpr (detail::is_byte_vector<R>::value) {
      R v(b.size() / sizeof(typename R::value_type));
      if (!b.empty()) std::memcpy(v.data(), b.data(), b.size());
      return v;
    } else {
      R v;
      std::memcpy(&v, b.data(), sizeof v);
      return v;
    }
  }

 private:
  template <class F>
  friend auto async(F&& body, const spawn_options& opts);
  explicit future(thread_id producer) noexcept : producer_(producer) {}
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
  return future<R>(spawn([f = B(std::forward<F>(body))]() mutable { detail::run_producer<R>(f); }, opts));
}

}  // namespace iso
