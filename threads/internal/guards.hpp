// The two secrets glibc keeps per process, and the values migratable threads run with instead.
//
// glibc (x86-64) keeps in the control block of each OS thread, which %fs points to:
//   %fs:0x28  the stack-protector canary: every function built with -fstack-protector(-strong),
//             as distributions build all their packages, stores it in its frame on entry and
//             compares on return;
//   %fs:0x30  the pointer guard: setjmp/sigsetjmp, atexit/__cxa_atexit, on_exit, thread_local
//             destructors and loaded gconv modules store code pointers XORed with it.
// Both come from the kernel's AT_RANDOM, so they differ from process to process: a frame pushed
// on one rank fails its canary check on another, and a jmp_buf filled on one rank sends longjmp
// to a garbage address on another.
//
// So migratable threads do not run with their process's values but with the *thread guards*:
// one pair for the whole job (rank 0 draws it, fresh_guards(), and iso::runtime gives it to every
// rank; a checkpoint records it and a restart adopts it). The scheduler writes them into the OS thread's
// control block when it resumes a thread and writes the process's own back when the thread
// switches out (four stores per pair of switches; thread-to-thread switches need none, since
// every thread has the same pair). So from its first instruction a thread sees the same canary
// and pointer guard on every rank and in every job restarted from its checkpoints.
//
// What glibc mangles for the process while a thread runs must not be mangled with the thread
// guards, or the process (running with its own) cannot read it back, nor the other way round; and
// what glibc allocates for the process must not land in the thread's heap. The wrappers of
// guards.cpp (exit handlers and exit itself, error/err, pthread_create and pthread_once, dlopen
// and dlclose, backtrace, iconv, the NSS look-ups) run glibc's under the process's pair with the
// system heap current. The user guide lists what remains.
#pragma once

#include <cstdint>

#if !defined(__x86_64__) || !defined(__linux__)
#error "isothreads: the thread guards (threads/internal/guards.hpp) are written for x86-64 Linux with glibc"
#endif

namespace iso::detail {

struct tls_guards {
  std::uint64_t canary = 0;   // %fs:0x28
  std::uint64_t pointer = 0;  // %fs:0x30
  friend bool operator==(const tls_guards&, const tls_guards&) = default;
};

// The running OS thread's pair.
inline tls_guards read_tls_guards() noexcept {
  tls_guards g;
  asm volatile("movq %%fs:0x28, %0\n\tmovq %%fs:0x30, %1" : "=r"(g.canary), "=r"(g.pointer) : : "memory");
  return g;
}

// pre: no frame that is still to return was entered under the pair being replaced, unless the
// same pair is back in place before it returns.
inline void write_tls_guards(const tls_guards& g) noexcept {
  asm volatile("movq %0, %%fs:0x28\n\tmovq %1, %%fs:0x30" : : "r"(g.canary), "r"(g.pointer) : "memory");
}

// A pair drawn at random (the canary's low byte 0, as glibc's): rank 0 draws the job's, so that
// no rank runs its threads with its own process's pair, and a dependence on that shows on every
// rank, rank 0 and one-rank runs included. Throws iso::error(system_failure) if getrandom fails.
tls_guards fresh_guards();

// The pair of the OS thread that runs the scheduler, as it was before any thread ran: what glibc
// mangled the process's state with. Zero until a scheduler exists.
extern tls_guards process_guards;

// While it lives, the running OS thread has the process's pair, whatever it had before (a
// migratable thread's, when one runs on this OS thread).
// For calls into glibc that mangle or demangle process-wide state.
class process_guards_scope {
 public:
  process_guards_scope() noexcept : saved_(read_tls_guards()), swapped_(process_guards.canary != 0 && saved_ != process_guards) {
    if (swapped_) write_tls_guards(process_guards);
  }
  ~process_guards_scope() {
    if (swapped_) write_tls_guards(saved_);
  }
  process_guards_scope(const process_guards_scope&) = delete;
  process_guards_scope& operator=(const process_guards_scope&) = delete;

 private:
  tls_guards saved_;
  bool swapped_;
};

}  // namespace iso::detail
