// glibc's calls that mangle or demangle process-wide state with the pointer guard, run under the
// process's pair when called while a migratable thread runs (guards.hpp says why).
//
// Each wrapper finds glibc's definition with dlsym(RTLD_NEXT): the program's own definitions
// (these) come first in symbol lookup, glibc's next. The linker exports them from the program
// (threads/CMakeLists.txt), so that shared libraries, and those opened later, call them too.
#include "guards.hpp"

#include <dlfcn.h>
#include <execinfo.h>
#include <iconv.h>

#include <atomic>
#include <cstdlib>

#include "diag.hpp"
#include "interpose.hpp"
#include "scheduler.hpp"

namespace iso::detail {

tls_guards process_guards;

namespace {

// glibc's definition of `name`, looked up once. Fatal if missing: every glibc has these.
template <class Fn>
Fn glibc_fn(std::atomic<Fn>& cache, const char* name) noexcept {
  Fn fn = cache.load(std::memory_order_acquire);
  if (fn == nullptr) {
    heap_scope system(nullptr);  // dlsym may allocate its error state
    fn = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
    if (fn == nullptr) fatal("glibc's %s not found (dlsym: %s)", name, dlerror());
    cache.store(fn, std::memory_order_release);
  }
  return fn;
}

using cxa_atexit_fn = int (*)(void (*)(void*), void*, void*);
using on_exit_fn = int (*)(void (*)(int, void*), void*);
using at_quick_exit_fn = int (*)(void (*)(void*), void*);
using exit_fn = void (*)(int);
using backtrace_fn = int (*)(void**, int);
using iconv_open_fn = iconv_t (*)(const char*, const char*);
using iconv_fn = std::size_t (*)(iconv_t, char**, std::size_t*, char**, std::size_t*);
using iconv_close_fn = int (*)(iconv_t);

std::atomic<cxa_atexit_fn> g_cxa_atexit{nullptr};
std::atomic<cxa_atexit_fn> g_cxa_thread_atexit_impl{nullptr};
std::atomic<on_exit_fn> g_on_exit{nullptr};
std::atomic<exit_fn> g_exit{nullptr};
std::atomic<at_quick_exit_fn> g_cxa_at_quick_exit{nullptr};
std::atomic<exit_fn> g_quick_exit{nullptr};
std::atomic<backtrace_fn> g_backtrace{nullptr};
std::atomic<iconv_open_fn> g_iconv_open{nullptr};
std::atomic<iconv_fn> g_iconv{nullptr};
std::atomic<iconv_close_fn> g_iconv_close{nullptr};

// Looked up before main, while nothing else runs; the lazy look-up covers calls from other
// libraries' constructors that run before this one.
[[gnu::constructor]] void find_glibc_fns() noexcept {
  glibc_fn(g_cxa_atexit, "__cxa_atexit");
  glibc_fn(g_cxa_thread_atexit_impl, "__cxa_thread_atexit_impl");
  glibc_fn(g_on_exit, "on_exit");
  glibc_fn(g_exit, "exit");
  glibc_fn(g_cxa_at_quick_exit, "__cxa_at_quick_exit");
  glibc_fn(g_quick_exit, "quick_exit");
  glibc_fn(g_backtrace, "backtrace");
  glibc_fn(g_iconv_open, "iconv_open");
  glibc_fn(g_iconv, "iconv");
  glibc_fn(g_iconv_close, "iconv_close");
}

// exit() and quick_exit() from a migratable thread run the process's exit handlers, which were
// mangled with the process's pair, with the system heap current: they release process-wide
// state. Nothing returns into the thread afterwards, so its frames' canaries are never checked.
void leave_for_good() noexcept {
  if (process_guards.canary != 0) write_tls_guards(process_guards);
  current_heap = nullptr;
}

}  // namespace
}  // namespace iso::detail

using iso::detail::glibc_fn;
using iso::detail::process_guards_scope;

extern "C" {

// Exit handlers (atexit calls this too, and so does the first pass through a function-local
// static with a destructor): run by exit() under the process's pair.
int __cxa_atexit(void (*fn)(void*), void* arg, void* dso) {
  process_guards_scope process;
  return glibc_fn(iso::detail::g_cxa_atexit, "__cxa_atexit")(fn, arg, dso);
}

// thread_local destructors of the calling OS thread, run when it exits, under the pair it has
// then: the process's for the scheduler's OS thread (whatever thread runs on it now); its own for
// any other (one started from inside a migratable thread inherited the thread guards).
int __cxa_thread_atexit_impl(void (*fn)(void*), void* obj, void* dso) {
  const auto real = glibc_fn(iso::detail::g_cxa_thread_atexit_impl, "__cxa_thread_atexit_impl");
  if (!iso::detail::on_scheduler_thread()) return real(fn, obj, dso);
  process_guards_scope process;
  return real(fn, obj, dso);
}

int on_exit(void (*fn)(int, void*), void* arg) noexcept {
  process_guards_scope process;
  return glibc_fn(iso::detail::g_on_exit, "on_exit")(fn, arg);
}

void exit(int status) noexcept {
  iso::detail::leave_for_good();
  glibc_fn(iso::detail::g_exit, "exit")(status);
  __builtin_unreachable();
}

// at_quick_exit calls this: the same as __cxa_atexit, for quick_exit's list.
int __cxa_at_quick_exit(void (*fn)(void*), void* dso) noexcept {
  process_guards_scope process;
  return glibc_fn(iso::detail::g_cxa_at_quick_exit, "__cxa_at_quick_exit")(fn, dso);
}

void quick_exit(int status) noexcept {
  iso::detail::leave_for_good();
  glibc_fn(iso::detail::g_quick_exit, "quick_exit")(status);
  __builtin_unreachable();
}

// glibc's backtrace calls libgcc's unwinder through pointers mangled when it loaded libgcc_s.
int backtrace(void** frames, int size) {
  process_guards_scope process;
  return glibc_fn(iso::detail::g_backtrace, "backtrace")(frames, size);
}

// A gconv module that iconv_open loads has its entry points mangled at load and demangled at
// every conversion: all three under the process's pair, whoever calls.
iconv_t iconv_open(const char* to, const char* from) {
  process_guards_scope process;
  return glibc_fn(iso::detail::g_iconv_open, "iconv_open")(to, from);
}

std::size_t iconv(iconv_t cd, char** in, std::size_t* in_left, char** out, std::size_t* out_left) {
  process_guards_scope process;
  return glibc_fn(iso::detail::g_iconv, "iconv")(cd, in, in_left, out, out_left);
}

int iconv_close(iconv_t cd) {
  process_guards_scope process;
  return glibc_fn(iso::detail::g_iconv_close, "iconv_close")(cd);
}

}  // extern "C"
