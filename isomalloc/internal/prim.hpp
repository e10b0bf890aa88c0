// The OS primitive layer: every mmap, madvise, personality and /proc access of the project goes
// through here. Convention (as mimalloc's prim.h): functions return 0 on success or an errno value.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <vector>

namespace iso::detail {

// A half-open range of virtual addresses [lo, hi), in bytes.
struct interval {
  std::uintptr_t lo = 0;
  std::uintptr_t hi = 0;
  std::size_t bytes() const noexcept { return hi - lo; }
  bool empty() const noexcept { return hi <= lo; }
};

namespace prim {

// The kernel's page size in bytes (4096 here). Never fails.
std::size_t page_size() noexcept;

// An asymmetric pair of full barriers (membarrier(2), MEMBARRIER_CMD_PRIVATE_EXPEDITED): between a
// store and a later load, light_barrier() on the frequent side and heavy_barrier() on the rare one
// order both sides' accesses as two full fences would (of the two loads, at least one sees the
// other side's store), while the light one only keeps the compiler from reordering: the heavy one
// makes every running thread of the process pass a full barrier. enable_asymmetric_barriers()
// registers the process once, before either is used; where the kernel refuses (before 4.14, or a
// filter) light_barrier() is a full fence and heavy_barrier() too.
void enable_asymmetric_barriers() noexcept;
extern std::atomic<bool> g_asymmetric_barriers;  // set once by enable_asymmetric_barriers(), before any use
inline void light_barrier() noexcept {
  if (g_asymmetric_barriers.load(std::memory_order_relaxed)) [[likely]] {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
  } else {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
  }
}
void heavy_barrier() noexcept;  // fatal() if the registered membarrier fails

// Maps [addr, addr+bytes) read-write, private, anonymous, MAP_NORESERVE, without replacing
// anything already mapped there (MAP_FIXED_NOREPLACE): EEXIST if any part is in use.
// pre: addr and bytes are page-aligned, bytes > 0.
int reserve_at(void* addr, std::size_t bytes) noexcept;

// Unmaps a range this layer reserved. pre: page-aligned.
int unreserve(void* addr, std::size_t bytes) noexcept;

// Drops the physical pages of [addr, addr+bytes): the range stays mapped and reads as zero.
// Guard pages inside the range stay installed. pre: page-aligned.
int decommit(void* addr, std::size_t bytes) noexcept;

// Gives the physical pages of [addr, addr+bytes) back to the kernel lazily (MADV_FREE): the
// kernel takes them when it needs memory, and until then a write reuses a page without a fault.
// Contents are undefined afterwards (old data, or zero). Falls back to decommit.
int release_lazily(void* addr, std::size_t bytes) noexcept;

// Installs guard pages over [addr, addr+bytes): any access raises SIGSEGV. With
// MADV_GUARD_INSTALL (Linux >= 6.13) no new mapping is created; older kernels fall back to
// mprotect(PROT_NONE), which splits the mapping (see prim.cpp).
// pre: page-aligned, inside a private anonymous mapping.
int guard_install(void* addr, std::size_t bytes) noexcept;
// Removes guard pages from [addr, addr+bytes); the pages read as zero afterwards.
int guard_remove(void* addr, std::size_t bytes) noexcept;
// Whether this kernel supports guard_install (probed once, on a scratch mapping).
bool guard_supported() noexcept;

// Appends to `out` the unmapped gaps of this process's address space, from /proc/self/maps,
// between `floor` and the top of user space, in ascending order. pre: out is empty.
int free_gaps(std::uintptr_t floor, std::vector<interval>& out);

// Highest user-space address + 1 (47-bit address spaces: 0x800000000000).
std::uintptr_t user_space_top() noexcept;

// Resident set peak (VmHWM) and current (VmRSS) of this process, in bytes; 0 if unreadable.
std::size_t peak_resident_bytes() noexcept;
std::size_t resident_bytes() noexcept;

// Number of mappings of this process (lines of /proc/self/maps).
std::size_t mapping_count() noexcept;

// Files, for checkpoints. Each returns 0 or an errno value.
int file_create(const char* path, int* fd) noexcept;      // write-only, truncated, mode 0644
int file_open(const char* path, int* fd) noexcept;        // read-only
int file_write(int fd, const void* data, std::size_t bytes) noexcept;  // all of it
// Reads exactly `bytes` at `offset`; EIO if the file ends first.
int file_read_at(int fd, void* data, std::size_t bytes, std::uint64_t offset) noexcept;
int file_size(int fd, std::uint64_t* bytes) noexcept;
int file_sync_close(int fd) noexcept;                     // fsync, then close
void file_close(int fd) noexcept;
// rename(2), then fsync of the directory holding `to`, so that the new name survives a crash.
int file_commit(const char* from, const char* to) noexcept;
int file_remove(const char* path) noexcept;
int make_directory(const char* path) noexcept;            // one level; an existing one is fine

// CPU time the calling OS thread has used, in ns (CLOCK_THREAD_CPUTIME_ID). A system call (about
// 0.4 us here): read once per idle spell or balancing period, never per switch.
std::int64_t thread_cpu_ns() noexcept;

// A cheap monotonic cycle counter for measuring load (the time-stamp counter on x86-64, about
// 9 ns a read here; elsewhere the monotonic clock in ns). Only differences over one process are
// meaningful; convert with a rate measured against now over a long interval. Inline: it is read
// at every context switch while load is measured.
inline std::uint64_t cycles() noexcept {
#if defined(__x86_64__)
  return __builtin_ia32_rdtsc();
#else
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
#endif
}

}  // namespace prim
}  // namespace iso::detail
