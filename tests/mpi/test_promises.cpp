// The promises of the public API kept under the real runtime, in code built the way Linux
// distributions build it (-O2 -fstack-protector-strong -D_FORTIFY_SOURCE=2, see CMakeLists.txt):
// joins on one rank and across ranks, system-heap scopes that span suspensions, frames guarded by
// a stack canary, setjmp/longjmp and C++ exceptions that cross a migration. Every test is
// collective: each rank runs it and calls run(). Checks inside threads go through thread_checks.hpp.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <source_location>
#include <stdexcept>
#include <string>

#include "isothreads/isomalloc.h"
#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"
#include "thread_checks.hpp"

// The point of this file is code built with the distribution's hardening: keep it so.
#if !defined(__SSP_STRONG__) || !defined(__OPTIMIZE__) || !defined(_FORTIFY_SOURCE) || _FORTIFY_SOURCE < 2
#error "test_promises.cpp must be built with -fstack-protector-strong -D_FORTIFY_SOURCE=2 (and -O2)"
#endif

namespace {

using iso_test::check;
using iso_test::check_eq;
using iso_test::rt;

int next_rank() { return (iso::rank() + 1) % iso::size(); }

// finished_here[r]: the mark the thread started by rank r's test thread leaves on the rank where
// it ends. A plain global is each rank's own, so a thread that reads the mark on that rank after a
// join has seen the joined thread finish there. Cleared on every rank before each test using it.
constexpr int max_ranks = 64;
int finished_here[max_ranks];

void clear_marks() { std::fill(std::begin(finished_here), std::end(finished_here), 0); }

// ---------------------------------------------------------------- joins

TEST(Promises, JoinOnTheSameRankWaitsForTheChildsLastEffect) {
  iso::spawn([] {
    int yields = 0;
    bool done = false;
    const iso::thread_id child = iso::spawn([&yields, &done] {  // same rank, no migration: the
      for (int i = 0; i < 3; ++i) {                               // parent's stack is reachable
        iso::this_thread::yield();
        ++yields;
      }
      done = true;
    });
    iso::join(child);
    check(done, "join returned before the child set its flag");
    check_eq(yields, 3, "yields the child had made when join returned");
  });
  rt->run();
}

TEST(Promises, JoinAcrossRanksReturnsOnlyOnceTheChildHasFinishedThere) {
  ASSERT_LE(rt->size(), max_ranks);
  clear_marks();
  iso::spawn([] {
    const int home = iso::rank(), far = next_rank();
    const iso::thread_id parent = iso::this_thread::id();
    const iso::thread_id child = iso::spawn([parent, home, far] {
      iso::this_thread::migrate_to(far);
      iso::send(parent, &far, sizeof far);  // the child is away: the parent joins it now
      iso::this_thread::sleep_for(std::chrono::milliseconds(20));
      finished_here[home] = 1;  // its last effect, on rank `far`
    });
    const iso::message away = iso::recv();
    check_eq(away.from, child, "sender of the child's message");
    iso::join(child);
    check_eq(iso::rank(), home, "rank of the joiner after join");
    iso::this_thread::migrate_to(far);  // where the child ended
    check_eq(finished_here[home], 1, "the child's last effect, seen after join on the rank it ended on");
    try {
      iso::join(child);
      check(false, "a second join of a thread must throw");
    } catch (const iso::error& e) {
      check_eq(e.code_value(), iso::errc::already_joined, e.what());
    }
  });
  rt->run();
}

TEST(Promises, JoinWhileTheTargetMigratesWaitsForItsLastHop) {
  ASSERT_LE(rt->size(), max_ranks);
  clear_marks();
  iso::spawn([] {
    const int home = iso::rank(), n = iso::size();
    const iso::thread_id parent = iso::this_thread::id();
    // The walker visits every rank (sleeping on each, so the joiner waits across its hops) and
    // ends on the rank before home.
    const int last = (home + n - 1) % n;
    const iso::thread_id walker = iso::spawn([parent, home, n] {
      iso::send(parent, &home, sizeof home);  // started: the parent joins it from now on
      for (int hop = 1; hop < n; ++hop) {
        iso::this_thread::sleep_for(std::chrono::milliseconds(5));
        iso::this_thread::migrate_to(next_rank());
      }
      iso::this_thread::sleep_for(std::chrono::milliseconds(5));
      finished_here[home] = 1;
    });
    iso::recv();
    iso::join(walker);
    iso::this_thread::migrate_to(last);
    check_eq(finished_here[home], 1, "the walker's last effect, seen after join on the rank it ended on");
  });
  rt->run();
}

TEST(Promises, JoiningAFinishedThreadReturnsAndASecondJoinIsAnError) {
  iso::spawn([] {
    const iso::thread_id parent = iso::this_thread::id();
    bool done = false;
    const iso::thread_id near = iso::spawn([&done] { done = true; });
    const iso::thread_id away = iso::spawn([parent] {
      iso::this_thread::migrate_to(next_rank());
      iso::send(parent, "bye", 3);
    });
    while (!done) iso::this_thread::yield();
    iso::recv();  // `away` sent its last words from the other rank; it is gone once this sleep ends
    iso::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (const iso::thread_id t : {near, away}) {
      iso::join(t);  // finished long ago: returns
      try {
        iso::join(t);
        check(false, "a second join of a finished thread must throw");
      } catch (const iso::error& e) {
        check_eq(e.code_value(), iso::errc::already_joined, e.what());
        check(std::strstr(e.what(), t.to_string().c_str()) != nullptr, "the error names the thread");
      }
    }
  });
  rt->run();
}

// ---------------------------------------------------------------- system heap scopes

// Whether malloc and new serve from the system heap here and now (freed at once, on this rank).
void expect_system_allocations(const char* when, std::source_location where = std::source_location::current()) {
  void* p = std::malloc(64);
  auto q = std::make_unique<long[]>(16);
  const bool system = iso_in_range(p) == 0 && iso_in_range(q.get()) == 0;
  std::free(p);
  check(system, when, where);
}

TEST(Promises, SystemHeapScopeHoldsAcrossEverySuspension) {
  const iso::thread_id scoped = iso::spawn([] {
    const iso::thread_id child = iso::spawn([] { iso::this_thread::sleep_for(std::chrono::milliseconds(2)); });
    {
      iso::system_heap_scope system;
      expect_system_allocations("malloc inside a system_heap_scope");
      iso::this_thread::yield();
      expect_system_allocations("malloc after yield() inside a system_heap_scope");
      iso::this_thread::sleep_for(std::chrono::milliseconds(1));
      expect_system_allocations("malloc after sleep_for() inside a system_heap_scope");
      iso::join(child);
      expect_system_allocations("malloc after join() inside a system_heap_scope");
      {
        const iso::message m = iso::recv();  // blocks: the sender sleeps first. Its payload dies
        check_eq(m.data.size(), std::size_t{4}, "payload bytes");  // here, before the migration
      }
      expect_system_allocations("malloc after a blocking recv() inside a system_heap_scope");
      iso::this_thread::migrate_to(next_rank());
      expect_system_allocations("malloc after migrate_to() inside a system_heap_scope");
    }
    void* p = std::malloc(64);
    check(iso_in_range(p) == 1, "malloc after the scope ended is in the thread's heap again");
    std::free(p);
  });
  iso::spawn([scoped] {
    iso::this_thread::sleep_for(std::chrono::milliseconds(10));
    iso::send(scoped, "wake", 4);
  });
  rt->run();
}

// ---------------------------------------------------------------- stack canaries

// Frames that -fstack-protector-strong guards with a canary (a local array whose address escapes
// to snprintf): the migration happens in the deepest one, and every one returns on the
// destination rank, checking its canary there. Returns the rank the deepest frame landed on.
__attribute__((noinline)) int guarded_frames(int depth, int dest) {
  char label[48];
  std::snprintf(label, sizeof label, "depth %d entered on rank %d", depth, iso::rank());
  const int entered_on = iso::rank();
  int landed;
  if (depth == 0) {
    iso::this_thread::migrate_to(dest);
    landed = iso::rank();
  } else {
    landed = guarded_frames(depth - 1, dest);
  }
  char expected[48];
  std::snprintf(expected, sizeof expected, "depth %d entered on rank %d", depth, entered_on);
  check(std::strcmp(label, expected) == 0, "a guarded frame's array changed across the migration");
  return landed;
}

TEST(Promises, FramesGuardedByTheStackProtectorReturnOnAnotherRank) {
  iso::spawn([] {
    const int start = iso::rank(), n = iso::size();
    for (int hop = 0; hop < n; ++hop) {  // one frame, then five, across every pair of ranks
      int dest = next_rank();
      check_eq(guarded_frames(0, dest), dest, "rank where one guarded frame returned");
      dest = next_rank();
      check_eq(guarded_frames(4, dest), dest, "rank where five guarded frames returned");
    }
    check_eq(iso::rank(), start, "rank after walking every rank twice");
  });
  rt->run();
}

// Main's own guarded frames span run() while threads migrate in and out of this process: they
// must still find this process's canary when they return.
__attribute__((noinline)) void run_in_a_guarded_frame() {
  char label[32];
  std::snprintf(label, sizeof label, "main on rank %d", rt->rank());
  iso::spawn([] {
    const int dest = next_rank();
    check_eq(guarded_frames(2, dest), dest, "rank where three guarded frames returned");
  });
  rt->run();
  char expected[32];
  std::snprintf(expected, sizeof expected, "main on rank %d", rt->rank());
  EXPECT_STREQ(label, expected);
}

TEST(Promises, MainsGuardedFramesReturnAfterRunsThatMigrate) { run_in_a_guarded_frame(); }

// ---------------------------------------------------------------- setjmp / longjmp

// Moves to `dest` and jumps back to `env`, which was set on the rank before. With
// _FORTIFY_SOURCE, longjmp and siglongjmp are glibc's __longjmp_chk.
[[noreturn]] __attribute__((noinline)) void longjmp_from(std::jmp_buf& env, int dest) {
  iso::this_thread::migrate_to(dest);
  std::longjmp(env, 1);
}
[[noreturn]] __attribute__((noinline)) void siglongjmp_from(sigjmp_buf& env, int dest) {
  iso::this_thread::migrate_to(dest);
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  // siglongjmp must restore the mask sigsetjmp saved, without SIGUSR1.
  check(pthread_sigmask(SIG_BLOCK, &usr1, nullptr) == 0, "pthread_sigmask(SIG_BLOCK)");
  siglongjmp(env, 1);
}

// Sets a jmp_buf on this rank and is jumped back to from `dest`; returns the rank it resumed on.
__attribute__((noinline)) int setjmp_here_longjmp_there(int dest) {
  std::jmp_buf env;
  if (setjmp(env) == 0) longjmp_from(env, dest);
  return iso::rank();
}
__attribute__((noinline)) int sigsetjmp_here_siglongjmp_there(int dest) {
  sigjmp_buf env;
  if (sigsetjmp(env, 1) == 0) siglongjmp_from(env, dest);
  return iso::rank();
}

bool usr1_blocked() {
  sigset_t now;
  check(pthread_sigmask(SIG_SETMASK, nullptr, &now) == 0, "pthread_sigmask(query)");
  return sigismember(&now, SIGUSR1) == 1;
}

TEST(Promises, LongjmpOnAnotherRankReturnsToTheSetjmp) {
  iso::spawn([] {
    for (int hop = 0; hop < iso::size(); ++hop) {
      int dest = next_rank();
      check_eq(setjmp_here_longjmp_there(dest), dest, "rank where setjmp returned the second time");
      dest = next_rank();
      check(!usr1_blocked(), "SIGUSR1 is not blocked before sigsetjmp");
      check_eq(sigsetjmp_here_siglongjmp_there(dest), dest, "rank where sigsetjmp returned the second time");
      check(!usr1_blocked(), "siglongjmp restored the signal mask saved by sigsetjmp(env, 1)");
    }
  });
  rt->run();
}

// ---------------------------------------------------------------- exceptions

// Records the rank its destructor ran on, and how many such destructors ran.
struct unwound_on {
  int* rank;
  int* count;
  ~unwound_on() {
    *rank = iso::rank();
    ++*count;
  }
};

[[noreturn]] __attribute__((noinline)) void migrate_and_throw(int depth, int dest, int* rank, int* count) {
  const unwound_on guard{rank, count};
  if (depth > 0) migrate_and_throw(depth - 1, dest, rank, count);
  iso::this_thread::migrate_to(dest);
  throw std::runtime_error("thrown on rank " + std::to_string(iso::rank()));
}

TEST(Promises, ExceptionsThrownAfterAMigrationAreCaughtAndUnwindThere) {
  iso::spawn([] {
    for (int hop = 0; hop < iso::size(); ++hop) {
      const int dest = next_rank();
      int rank = -1, count = 0;
      std::string what;
      try {
        const unwound_on outer{&rank, &count};
        migrate_and_throw(3, dest, &rank, &count);
      } catch (const std::runtime_error& e) {
        what = e.what();
      }
      check_eq(what, "thrown on rank " + std::to_string(dest), "the message of the exception caught");
      check_eq(count, 5, "destructors that ran during unwinding");
      check_eq(rank, dest, "rank the last destructor ran on");
    }
    // An exception captured on one rank and rethrown on the next.
    std::exception_ptr kept;
    const int made_on = iso::rank();
    try {
      throw std::invalid_argument("made on rank " + std::to_string(made_on));
    } catch (...) {
      kept = std::current_exception();
    }
    iso::this_thread::migrate_to(next_rank());
    std::string what;
    try {
      std::rethrow_exception(kept);
    } catch (const std::invalid_argument& e) {
      what = e.what();
    }
    check_eq(what, "made on rank " + std::to_string(made_on), "the message of the exception rethrown");
  });
  rt->run();
}

// The C++ runtime keeps the exceptions being handled (what `throw;` and std::current_exception
// see, and what the end of a handler releases) and the count of uncaught ones per OS thread;
// threads that suspend inside a handler or while unwinding must each keep their own.
TEST(Promises, ThreadsSuspendedInCatchHandlersEachKeepTheirOwnException) {
  // a enters its handler first and waits there until b is in its own; b waits until a has
  // rethrown and left its handler; so the two handlers interleave whatever the schedule.
  static bool a_in = false, b_in = false, a_done = false;
  a_in = b_in = a_done = false;
  const auto handler = [](const char* name, bool* in, bool* wait_for, bool* done) {
    std::string rethrown, current;
    try {
      throw std::runtime_error(name);
    } catch (const std::runtime_error&) {
      *in = true;
      while (!*wait_for) iso::this_thread::yield();
      try {
        std::rethrow_exception(std::current_exception());
      } catch (const std::runtime_error& e) {
        current = e.what();
      }
      try {
        throw;
      } catch (const std::runtime_error& e) {
        rethrown = e.what();
      }
    }
    if (done != nullptr) *done = true;
    check_eq(current, std::string(name), "std::current_exception() in a handler after a switch");
    check_eq(rethrown, std::string(name), "the exception `throw;` rethrows in a handler after a switch");
  };
  iso::spawn([&handler] { handler("a", &a_in, &b_in, &a_done); });
  iso::spawn([&handler] {
    while (!a_in) iso::this_thread::yield();
    handler("b", &b_in, &a_done, nullptr);
  });
  rt->run();
}

// Yields while its frame unwinds: std::uncaught_exceptions() is 1 there, 0 in other threads.
struct yields_while_unwinding {
  bool* suspended;
  int* seen_after;
  ~yields_while_unwinding() {
    *suspended = true;
    iso::this_thread::yield();
    *seen_after = std::uncaught_exceptions();
    *suspended = false;
  }
};

TEST(Promises, AThreadUnwindingAcrossASwitchIsTheOnlyOneWithAnUncaughtException) {
  static bool suspended = false;
  static int seen_after = -1, seen_by_other = -1;
  suspended = false;
  seen_after = seen_by_other = -1;
  iso::spawn([] {
    try {
      const yields_while_unwinding guard{&suspended, &seen_after};
      throw std::runtime_error("unwinding");
    } catch (const std::runtime_error&) {
    }
    check_eq(seen_after, 1, "std::uncaught_exceptions() in a destructor run by unwinding, after a switch");
  });
  iso::spawn([] {
    while (!suspended) iso::this_thread::yield();
    seen_by_other = std::uncaught_exceptions();
    check_eq(seen_by_other, 0, "std::uncaught_exceptions() in a thread beside one that is unwinding");
  });
  rt->run();
}

TEST(Promises, AHandlerThatMigratesRethrowsItsExceptionOnTheNewRank) {
  iso::spawn([] {
    std::string rethrown;
    const int made_on = iso::rank();
    try {
      throw std::out_of_range("caught on rank " + std::to_string(made_on));
    } catch (const std::out_of_range&) {
      iso::this_thread::migrate_to(next_rank());
      try {
        throw;
      } catch (const std::out_of_range& e) {
        rethrown = e.what();
      }
      check(std::uncaught_exceptions() == 0, "no uncaught exception in a handler after a migration");
    }
    check_eq(rethrown, "caught on rank " + std::to_string(made_on), "the exception rethrown after migrating");
    // The rank the handler left holds nothing of it: an exception thrown and caught there now
    // is the only one its handler sees.
    iso::this_thread::migrate_to(made_on);
    try {
      throw std::logic_error("second");
    } catch (...) {
      try {
        throw;
      } catch (const std::logic_error& e) {
        check_eq(std::string(e.what()), std::string("second"), "the exception caught on the rank left before");
      }
    }
  });
  rt->run();
}

}  // namespace
