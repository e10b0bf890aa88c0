#include "prim.hpp"

#include <fcntl.h>
#include <sched.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "diag.hpp"
#include "fault.hpp"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
// Values from the Linux 6.13 uapi; older libc headers do not have them.
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_GUARD_REMOVE
#define MADV_GUARD_REMOVE 103
#endif

namespace iso::detail::prim {

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

std::atomic<bool> g_asymmetric_barriers{false};

void enable_asymmetric_barriers() noexcept {
  static const bool ok = [] {
    const long cmds = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    return cmds >= 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
           ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  }();
  g_asymmetric_barriers.store(ok, std::memory_order_release);  // false: both barriers are full fences, correct on any kernel
}

void heavy_barrier() noexcept {
  if (!g_asymmetric_barriers.load(std::memory_order_acquire)) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return;
  }
  // A fence is no substitute once the other side relies on this (it then has a compiler barrier
  // only): a transient failure (a kernel that could not allocate its CPU mask, a signal) is
  // retried until the barrier has happened; anything else is a broken kernel contract.
  while (::syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
    if (errno != ENOMEM && errno != EINTR && errno != EAGAIN) {
      fatal("membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after the process registered: %s",
            std::strerror(errno));
    }
    ::sched_yield();
  }
}

std::int64_t thread_cpu_ns() noexcept {
  timespec ts{};
  // Only a kernel without per-thread CPU clocks fails this; a 0 would corrupt every CPU-time sum.
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) {
    fatal("clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed: %s", std::strerror(errno));
  }
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

int reserve_at(void* addr, std::size_t bytes) noexcept {
  if (fault::hit("prim.reserve_at")) return ENOMEM;
  void* p = ::mmap(addr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == MAP_FAILED) return errno;
  if (p != addr) {  // kernels before 4.17 ignore the flag and treat addr as a hint
    ::munmap(p, bytes);
    return EEXIST;
  }
  return 0;
}

int unreserve(void* addr, std::size_t bytes) noexcept {
  return ::munmap(addr, bytes) == 0 ? 0 : errno;
}

int decommit(void* addr, std::size_t bytes) noexcept {
  if (fault::hit("prim.decommit")) return EINVAL;
  return ::madvise(addr, bytes, MADV_DONTNEED) == 0 ? 0 : errno;
}

int release_lazily(void* addr, std::size_t bytes) noexcept {
  if (fault::hit("prim.release_lazily")) return EINVAL;
  if (::madvise(addr, bytes, MADV_FREE) == 0) return 0;
  return decommit(addr, bytes);
}

// Without MADV_GUARD_INSTALL (Linux < 6.13) guards fall back to mprotect(PROT_NONE), which
// splits the region's mapping in three per guard: about 30k threads then exhaust the default
// vm.max_map_count (65530), and the failure surfaces as an error from guard_install.
int guard_install(void* addr, std::size_t bytes) noexcept {
  if (fault::hit("prim.guard_install")) return ENOMEM;
  if (guard_supported()) return ::madvise(addr, bytes, MADV_GUARD_INSTALL) == 0 ? 0 : errno;
  return ::mprotect(addr, bytes, PROT_NONE) == 0 ? 0 : errno;
}

int guard_remove(void* addr, std::size_t bytes) noexcept {
  if (fault::hit("prim.guard_remove")) return ENOMEM;
  if (guard_supported()) return ::madvise(addr, bytes, MADV_GUARD_REMOVE) == 0 ? 0 : errno;
  return ::mprotect(addr, bytes, PROT_READ | PROT_WRITE) == 0 ? 0 : errno;
}

bool guard_supported() noexcept {
  static const bool supported = [] {
    const std::size_t page = page_size();
    void* p = ::mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    const bool ok = ::madvise(p, page, MADV_GUARD_INSTALL) == 0;
    ::munmap(p, 2 * page);
    return ok;
  }();
  return supported;
}

std::uintptr_t user_space_top() noexcept { return std::uintptr_t{1} << 47; }

namespace {

// Reads a whole /proc file into `out` with plain read(2): /proc sizes are not known in advance.
int read_proc(const char* path, std::vector<char>& out) {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  out.clear();
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      return e;
    }
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  ::close(fd);
  out.push_back('\0');
  return 0;
}

std::size_t status_field_bytes(const char* field) noexcept {
  std::vector<char> text;
  if (read_proc("/proc/self/status", text) != 0) return 0;
  const char* at = std::strstr(text.data(), field);
  if (at == nullptr) return 0;
  return std::strtoull(at + std::strlen(field), nullptr, 10) * 1024;  // the file says kB
}

}  // namespace

int free_gaps(std::uintptr_t floor, std::vector<interval>& out) {
  std::vector<char> text;
  if (int e = read_proc("/proc/self/maps", text); e != 0) return e;
  std::uintptr_t cursor = floor;
  const std::uintptr_t top = user_space_top();
  for (const char* line = text.data(); *line != '\0';) {
    char* end = nullptr;
    const std::uintptr_t lo = std::strtoull(line, &end, 16);
    const std::uintptr_t hi = std::strtoull(end + 1, &end, 16);
    if (lo >= top) break;  // [vsyscall] and anything above user space
    if (lo > cursor) out.push_back({cursor, lo});
    if (hi > cursor) cursor = hi;
    const char* nl = std::strchr(line, '\n');
    if (nl == nullptr) break;
    line = nl + 1;
  }
  if (cursor < top) out.push_back({cursor, top});
  return 0;
}

int file_create(const char* path, int* fd) noexcept {
  *fd = ::open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  return *fd < 0 ? errno : 0;
}

int file_open(const char* path, int* fd) noexcept {
  *fd = ::open(path, O_RDONLY | O_CLOEXEC);
  return *fd < 0 ? errno : 0;
}

int file_write(int fd, const void* data, std::size_t bytes) noexcept {
  const auto* p = static_cast<const char*>(data);
  while (bytes != 0) {
    const ssize_t n = ::write(fd, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += n;
    bytes -= static_cast<std::size_t>(n);
  }
  return 0;
}

int file_read_at(int fd, void* data, std::size_t bytes, std::uint64_t offset) noexcept {
  auto* p = static_cast<char*>(data);
  while (bytes != 0) {
    const ssize_t n = ::pread(fd, p, bytes, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;  // truncated
    p += n;
    bytes -= static_cast<std::size_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
  return 0;
}

int file_size(int fd, std::uint64_t* bytes) noexcept {
  struct stat st;
  if (::fstat(fd, &st) != 0) return errno;
  *bytes = static_cast<std::uint64_t>(st.st_size);
  return 0;
}

int file_sync_close(int fd) noexcept {
  const int e = ::fsync(fd) == 0 ? 0 : errno;
  const int c = ::close(fd) == 0 ? 0 : errno;
  return e != 0 ? e : c;
}

void file_close(int fd) noexcept { ::close(fd); }

int file_commit(const char* from, const char* to) noexcept {
  if (::rename(from, to) != 0) return errno;
  std::string dir(to);
  const std::size_t slash = dir.rfind('/');
  dir = slash == std::string::npos ? "." : dir.substr(0, slash == 0 ? 1 : slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno;
  const int e = ::fsync(dfd) == 0 ? 0 : errno;
  ::close(dfd);
  return e;
}

int file_remove(const char* path) noexcept { return ::unlink(path) == 0 ? 0 : errno; }

int make_directory(const char* path) noexcept {
  if (::mkdir(path, 0755) == 0 || errno == EEXIST) return 0;
  return errno;
}

std::size_t peak_resident_bytes() noexcept { return status_field_bytes("VmHWM:"); }
std::size_t resident_bytes() noexcept { return status_field_bytes("VmRSS:"); }

std::size_t mapping_count() noexcept {
  std::vector<char> text;
  if (read_proc("/proc/self/maps", text) != 0) return 0;
  std::size_t lines = 0;
  for (char c : text) lines += (c == '\n');
  return lines;
}

}  // namespace iso::detail::prim
