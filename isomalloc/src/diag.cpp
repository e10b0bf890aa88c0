#include "diag.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace iso {
namespace {

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "isothreads"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::ok: return "success";
      case errc::invalid_argument: return "invalid argument";
      case errc::invalid_rank: return "invalid rank";
      case errc::unknown_thread: return "unknown thread";
      case errc::not_in_thread: return "not called from a migratable thread";
      case errc::no_runtime: return "no isothreads runtime";
      case errc::region_exhausted: return "isomalloc region exhausted";
      case errc::bad_pointer: return "bad pointer";
      case errc::corrupt_image: return "corrupt image";
      case errc::layout_mismatch: return "ranks differ in code layout";
      case errc::region_agreement: return "no common address range";
      case errc::stack_size: return "stack size out of range";
      case errc::already_joined: return "thread already joined";
      case errc::deadlock: return "deadlock";
      case errc::mpi_failure: return "MPI failure";
      case errc::io_failure: return "I/O failure";
      case errc::system_failure: return "system call failure";
      case errc::thread_failed: return "the thread's body threw";
    }
    return "unknown isothreads error";
  }
};

}  // namespace

const std::error_category& error_category() noexcept {
  static const category instance;
  return instance;
}

namespace detail {
namespace {
std::atomic<context_hook> g_context_hook{nullptr};
std::atomic<int> g_rank{-1};
}  // namespace

void set_context_hook(context_hook hook) noexcept { g_context_hook.store(hook); }
void set_diag_rank(int rank) noexcept { g_rank.store(rank); }
int diag_rank() noexcept { return g_rank.load(); }

std::string vformat(const char* fmt, va_list ap) {
  va_list copy;
  va_copy(copy, ap);
  const int n = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::string out(n > 0 ? static_cast<std::size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, fmt, ap);
  return out;
}

std::string format(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  return s;
}

void raise(errc code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  throw error(code, s);
}

void fatal(const char* fmt, ...) {
  // Formats into a stack buffer: no allocation, so this works from a signal handler or with a
  // corrupt heap. vsnprintf with %s/%d/%p/%zu does not allocate in glibc.
  char buf[1024];
  std::size_t len = static_cast<std::size_t>(
      std::snprintf(buf, sizeof buf, "isothreads: fatal: rank %d", g_rank.load()));
  if (context_hook hook = g_context_hook.load(); hook != nullptr && len + 2 < sizeof buf) {
    buf[len++] = ',';
    buf[len++] = ' ';
    len += hook(buf + len, sizeof buf - len);
  }
  if (len + 2 < sizeof buf) {
    buf[len++] = ':';
    buf[len++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    const int n = std::vsnprintf(buf + len, sizeof buf - len, fmt, ap);
    va_end(ap);
    if (n > 0) len += static_cast<std::size_t>(n);
  }
  if (len >= sizeof buf - 1) len = sizeof buf - 2;
  buf[len++] = '\n';
  for (std::size_t off = 0; off < len;) {
    const ssize_t w = ::write(STDERR_FILENO, buf + off, len - off);
    if (w <= 0) break;
    off += static_cast<std::size_t>(w);
  }
  ::_exit(EXIT_FAILURE);
}

}  // namespace detail
}  // namespace iso
