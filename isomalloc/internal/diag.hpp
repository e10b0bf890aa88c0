// Diagnostics shared by every module: assertion levels, the one fatal-error path, string formatting.
//
// Levels (ISO_DEBUG_LEVEL, set by the CMake option ISO_DEBUG):
//   ISO_ASSERT           always on: conditions whose failure means memory is already corrupt
//   ISO_ASSERT_INTERNAL  level >= 1: internal invariants, cheap
//   ISO_ASSERT_EXPENSIVE level >= 2: whole-structure validators (is_valid())
// A failed assertion goes through fatal(), which names the rank, the running thread and the cause.
#pragma once

#include <cstdarg>
#include <string>

#include "isothreads/error.hpp"

#ifndef ISO_DEBUG_LEVEL
#define ISO_DEBUG_LEVEL 1
#endif

namespace iso::detail {

// printf-style formatting into a std::string (system heap when called outside a thread).
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string vformat(const char* fmt, va_list ap);

// printf-style formatting into buf (at most cap bytes, NUL-terminated when cap > 0), async-signal-
// safe: no locale, no allocation, no lock, which vsnprintf does not promise. Conversions: d i u x X
// p s c and %%, with the flags '-', '0' and '#', a width, a precision for s (also as .*) and the
// length modifiers hh h l ll z j t; anything else is copied as it stands. Returns the length
// written (excluding the NUL); output past cap - 1 is cut.
std::size_t safe_vformat(char* buf, std::size_t cap, const char* fmt, va_list ap) noexcept;
std::size_t safe_format(char* buf, std::size_t cap, const char* fmt, ...) noexcept __attribute__((format(printf, 3, 4)));

// Throws iso::error(code, formatted message).
[[noreturn]] void raise(errc code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// The fatal-error path: prints "isothreads: fatal: rank R, <context>: <cause>" to stderr with
// async-signal-safe writes only, then _exit(code). Safe from a signal handler.
[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// For a failure the library survives: prints "isothreads: rank R: <message>" to stderr, with the
// same async-signal-safe formatting and writes as fatal() (no allocation, whatever heap is current).
void warn(const char* fmt, ...) noexcept __attribute__((format(printf, 1, 2)));

// Upper layers describe "where we are" for fatal(): the rank and the running thread.
// The hook must be async-signal-safe; it writes at most `cap` bytes into buf and returns the length.
using context_hook = std::size_t (*)(char* buf, std::size_t cap) noexcept;
void set_context_hook(context_hook hook) noexcept;

// Upper layers say where raise() allocates: it formats its message in the system heap, and
// allocates the exception it throws in the running migratable thread's own heap, whatever heap a
// scope made current, so that an error caught after the thread migrated is still in its memory.
// enter(own) makes that heap (own) or the system heap (!own) current and returns what was;
// leave() puts that back (raise() calls it while the exception unwinds out of it). A raise()
// inside another (the thread's heap could not grow while the first allocated its exception)
// keeps to the system heap.
struct exception_heap_hooks {
  void* (*enter)(bool own) noexcept;
  void (*leave)(void* saved) noexcept;
};
void set_exception_heap_hooks(exception_heap_hooks hooks) noexcept;
// Makes the running migratable thread's own heap (own) or the system heap (!own) current for a
// scope, through those hooks (it does nothing while none are set: no scheduler exists). raise()
// uses it, and so does code below threads/, which cannot name a heap: comm/ opens one (!own)
// wherever MPI may allocate, so that nothing MPI keeps lands in a thread's heap.
class hooked_heap_scope {
 public:
  explicit hooked_heap_scope(bool own) noexcept;
  ~hooked_heap_scope();
  hooked_heap_scope(const hooked_heap_scope&) = delete;
  hooked_heap_scope& operator=(const hooked_heap_scope&) = delete;

 private:
  void* saved_;  // what enter() returned, for leave()
};
void set_diag_rank(int rank) noexcept;
int diag_rank() noexcept;

}  // namespace iso::detail

#define ISO_STRINGIFY2(x) #x
#define ISO_STRINGIFY(x) ISO_STRINGIFY2(x)
#define ISO_ASSERT(cond)                                                                   \
  ((cond) ? (void)0                                                                        \
          : ::iso::detail::fatal("assertion failed: %s at %s:%d", #cond, __FILE__, __LINE__))
#if ISO_DEBUG_LEVEL >= 1
#define ISO_ASSERT_INTERNAL(cond) ISO_ASSERT(cond)
#else
#define ISO_ASSERT_INTERNAL(cond) ((void)0)
#endif
#if ISO_DEBUG_LEVEL >= 2
#define ISO_ASSERT_EXPENSIVE(cond) ISO_ASSERT(cond)
#else
#define ISO_ASSERT_EXPENSIVE(cond) ((void)0)
#endif
