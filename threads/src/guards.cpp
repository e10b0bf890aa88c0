// glibc's calls that mangle or demangle process-wide state with the pointer guard, or allocate
// it, run under the process's pair and with the system heap current when a migratable thread
// makes them (guards.hpp says why).
//
// Each wrapper finds glibc's definition with dlsym(RTLD_NEXT): the program's own definitions
// (these) come first in symbol lookup, glibc's next. The linker exports them from the program
// (threads/CMakeLists.txt), so that shared libraries, and those opened later, call them too.
#include "guards.hpp"

#include <dlfcn.h>
#include <err.h>
#include <error.h>
#include <execinfo.h>
#include <grp.h>
#include <iconv.h>
#include <netdb.h>
#include <pthread.h>
#include <pwd.h>
#include <sys/random.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "diag.hpp"
#include "interpose.hpp"

namespace iso::detail {

tls_guards process_guards;

tls_guards fresh_guards() {
  tls_guards g;
  for (std::size_t got = 0; got < sizeof g;) {
    const ssize_t n = getrandom(reinterpret_cast<char*>(&g) + got, sizeof g - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) raise(errc::system_failure, "cannot draw the thread guards: getrandom: %s", std::strerror(errno));
    got += static_cast<std::size_t>(n);
  }
  g.canary &= ~std::uint64_t{0xff};  // as glibc's: a string copy cannot reproduce it
  if (g.canary == 0) g.canary = 0x100;  // 0 means "no scheduler yet" to process_guards_scope
  return g;
}

namespace {

// A string as a template argument: the name of the glibc function a wrapper forwards to.
template <std::size_t N>
struct glibc_name {
  char text[N];
  constexpr glibc_name(const char (&s)[N]) { std::copy_n(s, N, text); }  // NOLINT: implicit on purpose
};

// glibc's definition of Name, looked up once (`ours` gives its type). Fatal if missing: every
// glibc since 2.34 has these.
template <glibc_name Name, class Fn>
Fn glibc(Fn /*ours*/) noexcept {
  static std::atomic<Fn> cache{nullptr};
  Fn fn = cache.load(std::memory_order_acquire);
  if (fn == nullptr) {
    fn = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, Name.text));
    if (fn == nullptr) fatal("glibc's %s not found (dlsym: %s)", Name.text, dlerror());
    cache.store(fn, std::memory_order_release);
  }
  return fn;
}

// While it lives, glibc's process-wide state can be reached as the process left it: the
// process's pair, and the system heap for what glibc allocates on the process's behalf (exit
// handler lists, gconv and NSS module records, loaded libraries), which must not move or end
// with a thread.
struct for_the_process {
  process_guards_scope guards;
  heap_scope system{nullptr};
};

// exit() and friends from a migratable thread run the process's exit handlers, which were
// mangled with the process's pair, with the system heap current: they release process-wide
// state. Nothing returns into the thread afterwards, so its frames' canaries are never checked.
void leave_for_good() noexcept {
  if (process_guards.canary != 0) write_tls_guards(process_guards);
  current_heap = nullptr;
}

// A message formatted for glibc's report functions, which take no va_list: fmt itself if it cannot
// be formatted (vasprintf leaves its pointer undefined on failure, hence the reset).
class formatted {
 public:
  formatted(const char* fmt, va_list ap) noexcept : fmt_(fmt) {
    if (vasprintf(&text_, fmt, ap) < 0) text_ = nullptr;
  }
  ~formatted() { std::free(text_); }
  formatted(const formatted&) = delete;
  formatted& operator=(const formatted&) = delete;
  const char* c_str() const noexcept { return text_ != nullptr ? text_ : fmt_; }

 private:
  const char* fmt_;
  char* text_ = nullptr;
};

}  // namespace
}  // namespace iso::detail

using iso::detail::for_the_process;
using iso::detail::formatted;
using iso::detail::glibc;
using iso::detail::leave_for_good;

extern "C" {

// ---- exit handlers and leaving the process

// atexit calls this too, and so does the first pass through a function-local static with a
// destructor: exit() runs them under the process's pair.
int __cxa_atexit(void (*fn)(void*), void* arg, void* dso) {
  for_the_process p;
  return glibc<"__cxa_atexit">(__cxa_atexit)(fn, arg, dso);
}

// thread_local destructors of the calling OS thread, run when it exits. Every OS thread has the
// process's pair of its own (pthread_create below), so that is the pair they run under.
int __cxa_thread_atexit_impl(void (*fn)(void*), void* obj, void* dso) {
  for_the_process p;
  return glibc<"__cxa_thread_atexit_impl">(__cxa_thread_atexit_impl)(fn, obj, dso);
}

// dlclose runs a library's exit handlers through this.
void __cxa_finalize(void* dso) {
  for_the_process p;
  glibc<"__cxa_finalize">(__cxa_finalize)(dso);
}

int on_exit(void (*fn)(int, void*), void* arg) noexcept {
  for_the_process p;
  return glibc<"on_exit">(on_exit)(fn, arg);
}

// at_quick_exit calls this: the same as __cxa_atexit, for quick_exit's list.
int __cxa_at_quick_exit(void (*fn)(void*), void* dso) noexcept {
  for_the_process p;
  return glibc<"__cxa_at_quick_exit">(__cxa_at_quick_exit)(fn, dso);
}

void exit(int status) noexcept {
  leave_for_good();
  glibc<"exit">(exit)(status);
  __builtin_unreachable();
}

void quick_exit(int status) noexcept {
  leave_for_good();
  glibc<"quick_exit">(quick_exit)(status);
  __builtin_unreachable();
}

// glibc's error reporting calls its internal exit, past the wrapper above: report with status 0
// (which returns), then leave through exit() ourselves.
void error(int status, int errnum, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  {
    const formatted text(fmt, ap);
    glibc<"error">(error)(0, errnum, "%s", text.c_str());
  }
  va_end(ap);
  if (status != 0) exit(status);
}

void error_at_line(int status, int errnum, const char* file, unsigned line, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  {
    const formatted text(fmt, ap);
    glibc<"error_at_line">(error_at_line)(0, errnum, file, line, "%s", text.c_str());
  }
  va_end(ap);
  if (status != 0) exit(status);
}

void verr(int status, const char* fmt, va_list ap) {
  leave_for_good();
  glibc<"verr">(verr)(status, fmt, ap);
  __builtin_unreachable();
}

void verrx(int status, const char* fmt, va_list ap) {
  leave_for_good();
  glibc<"verrx">(verrx)(status, fmt, ap);
  __builtin_unreachable();
}

void err(int status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  verr(status, fmt, ap);
}

void errx(int status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  verrx(status, fmt, ap);
}

// ---- OS threads, once-routines, loaded libraries, the unwinder

// glibc copies the creator's pair into a new OS thread: it gets the process's, like every OS
// thread the process started itself, whoever calls.
// What glibc allocates for it (its TLS vector, kept with its cached stack after it ends) is the
// process's too.
int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*), void* arg) {
  for_the_process p;
  return glibc<"pthread_create">(pthread_create)(thread, attr, start, arg);
}

// A once-routine initialises process-wide state; one that throws leaves through glibc's frame,
// whose unwinding goes through pointers mangled with the process's pair. It must not suspend
// (user guide): it would resume under the thread pair.
int pthread_once(pthread_once_t* once, void (*init)()) {
  for_the_process p;
  return glibc<"pthread_once">(pthread_once)(once, init);
}

void* dlopen(const char* file, int mode) noexcept {
  for_the_process p;
  return glibc<"dlopen">(dlopen)(file, mode);
}

int dlclose(void* handle) noexcept {
  for_the_process p;
  return glibc<"dlclose">(dlclose)(handle);
}

// glibc's backtrace calls libgcc's unwinder through pointers mangled when it loaded libgcc_s.
int backtrace(void** frames, int size) {
  for_the_process p;
  return glibc<"backtrace">(backtrace)(frames, size);
}

// ---- character-set conversion: a gconv module that iconv_open loads has its entry points
// mangled at load and demangled at every conversion; its records are the process's.

iconv_t iconv_open(const char* to, const char* from) {
  for_the_process p;
  return glibc<"iconv_open">(iconv_open)(to, from);
}

std::size_t iconv(iconv_t cd, char** in, std::size_t* in_left, char** out, std::size_t* out_left) {
  for_the_process p;
  return glibc<"iconv">(iconv)(cd, in, in_left, out, out_left);
}

int iconv_close(iconv_t cd) {
  for_the_process p;
  return glibc<"iconv_close">(iconv_close)(cd);
}

// ---- name service look-ups: an NSS module's entry points are mangled when it loads; results of
// the non-reentrant calls are the process's static buffers.

passwd* getpwnam(const char* name) {
  for_the_process p;
  return glibc<"getpwnam">(getpwnam)(name);
}

passwd* getpwuid(uid_t uid) {
  for_the_process p;
  return glibc<"getpwuid">(getpwuid)(uid);
}

int getpwnam_r(const char* name, passwd* pw, char* buf, std::size_t bytes, passwd** result) {
  for_the_process p;
  return glibc<"getpwnam_r">(getpwnam_r)(name, pw, buf, bytes, result);
}

int getpwuid_r(uid_t uid, passwd* pw, char* buf, std::size_t bytes, passwd** result) {
  for_the_process p;
  return glibc<"getpwuid_r">(getpwuid_r)(uid, pw, buf, bytes, result);
}

group* getgrnam(const char* name) {
  for_the_process p;
  return glibc<"getgrnam">(getgrnam)(name);
}

group* getgrgid(gid_t gid) {
  for_the_process p;
  return glibc<"getgrgid">(getgrgid)(gid);
}

int getgrnam_r(const char* name, group* gr, char* buf, std::size_t bytes, group** result) {
  for_the_process p;
  return glibc<"getgrnam_r">(getgrnam_r)(name, gr, buf, bytes, result);
}

int getgrgid_r(gid_t gid, group* gr, char* buf, std::size_t bytes, group** result) {
  for_the_process p;
  return glibc<"getgrgid_r">(getgrgid_r)(gid, gr, buf, bytes, result);
}

int getgrouplist(const char* user, gid_t gid, gid_t* groups, int* count) {
  for_the_process p;
  return glibc<"getgrouplist">(getgrouplist)(user, gid, groups, count);
}

// The list it returns comes from the system heap: free it with freeaddrinfo on the same rank.
int getaddrinfo(const char* node, const char* service, const addrinfo* hints, addrinfo** result) {
  for_the_process p;
  return glibc<"getaddrinfo">(getaddrinfo)(node, service, hints, result);
}

int getnameinfo(const sockaddr* addr, socklen_t addr_bytes, char* host, socklen_t host_bytes, char* serv,
                socklen_t serv_bytes, int flags) {
  for_the_process p;
  return glibc<"getnameinfo">(getnameinfo)(addr, addr_bytes, host, host_bytes, serv, serv_bytes, flags);
}

hostent* gethostbyname(const char* name) {
  for_the_process p;
  return glibc<"gethostbyname">(gethostbyname)(name);
}

hostent* gethostbyaddr(const void* addr, socklen_t bytes, int type) {
  for_the_process p;
  return glibc<"gethostbyaddr">(gethostbyaddr)(addr, bytes, type);
}

servent* getservbyname(const char* name, const char* proto) {
  for_the_process p;
  return glibc<"getservbyname">(getservbyname)(name, proto);
}

servent* getservbyport(int port, const char* proto) {
  for_the_process p;
  return glibc<"getservbyport">(getservbyport)(port, proto);
}

}  // extern "C"
