#include "diag.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

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
exception_heap_hooks g_exception_heap{nullptr, nullptr};  // set before any thread runs
}  // namespace

void set_exception_heap_hooks(exception_heap_hooks hooks) noexcept { g_exception_heap = hooks; }

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

hooked_heap_scope::hooked_heap_scope(bool own) noexcept
    : saved_(g_exception_heap.enter != nullptr ? g_exception_heap.enter(own) : nullptr) {}

hooked_heap_scope::~hooked_heap_scope() {
  if (g_exception_heap.leave != nullptr) g_exception_heap.leave(saved_);
}

void raise(errc code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  static thread_local int raising = 0;  // raise() calls in progress on this OS thread
  struct nesting {
    nesting() noexcept { ++raising; }
    ~nesting() { --raising; }
  } nested;
  hooked_heap_scope message(false);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  hooked_heap_scope exception(raising == 1);
  throw error(code, s);
}

namespace {

// Appends to a fixed buffer, keeping one byte for the NUL; what does not fit is dropped.
struct sink {
  char* buf;
  std::size_t cap;
  std::size_t len = 0;
  void put(char c) noexcept {
    if (len + 1 < cap) buf[len++] = c;
  }
  void pad(char c, long n) noexcept {
    for (; n > 0; --n) put(c);
  }
};

// text[0, n) in a field of `width`, padded with spaces on the left (or, with '-', the right).
void put_padded(sink& out, const char* text, long n, long width, bool left) noexcept {
  if (!left) out.pad(' ', width - n);
  for (long i = 0; i < n; ++i) out.put(text[i]);
  if (left) out.pad(' ', width - n);
}

// An unsigned number in base 10 or 16 with the conversion's flags, width and sign.
void put_number(sink& out, unsigned long long v, unsigned base, bool upper, bool negative, bool left, bool zero,
                bool alt, long width) noexcept {
  char digits[24];
  int n = 0;
  const char* set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  do {
    digits[n++] = set[v % base];
    v /= base;
  } while (v != 0);
  const char* prefix = negative ? "-" : (alt && base == 16 ? (upper ? "0X" : "0x") : "");
  const long prefix_len = static_cast<long>(std::strlen(prefix));
  const long fill = width - n - prefix_len;
  if (!left && !zero) out.pad(' ', fill);
  for (const char* p = prefix; *p != '\0'; ++p) out.put(*p);
  if (!left && zero) out.pad('0', fill);
  while (n > 0) out.put(digits[--n]);
  if (left) out.pad(' ', fill);
}

}  // namespace

std::size_t safe_vformat(char* buf, std::size_t cap, const char* fmt, va_list ap) noexcept {
  sink out{buf, cap};
  for (const char* f = fmt; *f != '\0'; ++f) {
    if (*f != '%') {
      out.put(*f);
      continue;
    }
    const char* start = f++;
    bool left = false, zero = false, alt = false;
    for (;; ++f) {
      if (*f == '-') left = true;
      else if (*f == '0') zero = true;
      else if (*f == '#') alt = true;
      else break;
    }
    long width = 0;
    while (*f >= '0' && *f <= '9') width = width * 10 + (*f++ - '0');
    long precision = -1;
    if (*f == '.') {
      ++f;
      precision = 0;
      if (*f == '*') {
        precision = va_arg(ap, int);
        ++f;
      } else {
        while (*f >= '0' && *f <= '9') precision = precision * 10 + (*f++ - '0');
      }
    }
    int size = 0;  // -2 hh, -1 h, 0 int, 1 long, 2 long long, 3 size_t / intmax_t / ptrdiff_t
    if (*f == 'h') size = *++f == 'h' ? (++f, -2) : -1;
    else if (*f == 'l') size = *++f == 'l' ? (++f, 2) : 1;
    else if (*f == 'z' || *f == 'j' || *f == 't') size = (++f, 3);
    switch (*f) {
      case 'd':
      case 'i': {
        long long v = size >= 2 ? va_arg(ap, long long) : size == 1 ? va_arg(ap, long) : va_arg(ap, int);
        if (size == -1) v = static_cast<short>(v);
        if (size == -2) v = static_cast<signed char>(v);
        const unsigned long long mag = v < 0 ? 0ull - static_cast<unsigned long long>(v) : static_cast<unsigned long long>(v);
        put_number(out, mag, 10, false, v < 0, left, zero, false, width);
        break;
      }
      case 'u':
      case 'x':
      case 'X': {
        unsigned long long v = size >= 2 ? va_arg(ap, unsigned long long)
                               : size == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned);
        if (size == -1) v = static_cast<unsigned short>(v);
        if (size == -2) v = static_cast<unsigned char>(v);
        put_number(out, v, *f == 'u' ? 10 : 16, *f == 'X', false, left, zero, alt && v != 0, width);
        break;
      }
      case 'p': {
        const void* p = va_arg(ap, const void*);
        if (p == nullptr) {
          put_padded(out, "(nil)", 5, width, left);
        } else {
          put_number(out, reinterpret_cast<std::uintptr_t>(p), 16, false, false, left, false, true, width);
        }
        break;
      }
      case 's': {
        const char* str = va_arg(ap, const char*);
        if (str == nullptr) str = "(null)";
        long n = 0;
        while (str[n] != '\0' && (precision < 0 || n < precision)) ++n;
        put_padded(out, str, n, width, left);
        break;
      }
      case 'c': {
        const char c = static_cast<char>(va_arg(ap, int));
        put_padded(out, &c, 1, width, left);
        break;
      }
      case '%': out.put('%'); break;
      default:  // not a conversion this formatter knows: copied as it stands
        for (const char* c = start; c <= f && *c != '\0'; ++c) out.put(*c);
        if (*f == '\0') --f;
        break;
    }
  }
  if (cap > 0) buf[out.len] = '\0';
  return out.len;
}

std::size_t safe_format(char* buf, std::size_t cap, const char* fmt, ...) noexcept {
  va_list ap;
  va_start(ap, fmt);
  const std::size_t n = safe_vformat(buf, cap, fmt, ap);
  va_end(ap);
  return n;
}

namespace {

// Ends buf[0, len) with a newline (cutting it to fit cap) and writes it all to stderr.
void write_line(char* buf, std::size_t len, std::size_t cap) noexcept {
  if (len >= cap - 1) len = cap - 2;
  buf[len++] = '\n';
  for (std::size_t off = 0; off < len;) {
    const ssize_t w = ::write(STDERR_FILENO, buf + off, len - off);
    if (w <= 0) break;
    off += static_cast<std::size_t>(w);
  }
}

}  // namespace

void warn(const char* fmt, ...) noexcept {
  char buf[512];
  std::size_t len = safe_format(buf, sizeof buf, "isothreads: rank %d: ", g_rank.load());
  va_list ap;
  va_start(ap, fmt);
  len += safe_vformat(buf + len, sizeof buf - len, fmt, ap);
  va_end(ap);
  write_line(buf, len, sizeof buf);
}

void fatal(const char* fmt, ...) {
  // Formats into a stack buffer with safe_vformat: no allocation, no lock, so this works from a
  // signal handler or with a corrupt heap.
  char buf[1024];
  std::size_t len = safe_format(buf, sizeof buf, "isothreads: fatal: rank %d", g_rank.load());
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
    len += safe_vformat(buf + len, sizeof buf - len, fmt, ap);
    va_end(ap);
  }
  write_line(buf, len, sizeof buf);
  ::_exit(EXIT_FAILURE);
}

}  // namespace detail
}  // namespace iso
