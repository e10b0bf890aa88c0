// Pieces of the promises a thread keeps, on one process without MPI: the canary and pointer guard
// threads run with, exit handlers and exit() under other guards, heap scopes across suspensions,
// where raise() puts its exceptions, the async-signal-safe formatter, fault-handler chaining and
// iso_malloc when the system heap is exhausted. The same promises under the real runtime, on 2
// and 4 ranks, are tests/mpi/test_promises.cpp.
#include <gtest/gtest.h>
#include <dlfcn.h>
#include <error.h>
#include <execinfo.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "diag.hpp"
#include "guards.hpp"
#include "isothreads/isomalloc.h"
#include "isothreads/isothreads.hpp"
#include "scheduler.hpp"

namespace iso {
namespace {

using detail::scheduler;
using detail::tls_guards;

// A pair no process has: the canary's low byte stays 0, as glibc keeps it.
tls_guards foreign_guards() {
  const tls_guards mine = detail::read_tls_guards();
  return {mine.canary ^ 0x5a5a5a5a5a5a5a00ull, mine.pointer ^ 0x0123456789abcdefull};
}

TEST(Guards, ThreadsRunWithTheThreadGuardsAndTheSchedulerWithItsOwn) {
  scheduler sched{0};
  const tls_guards process = detail::read_tls_guards();
  const tls_guards job = foreign_guards();
  sched.set_thread_guards(job);
  std::vector<tls_guards> seen(4);
  for (int i = 0; i < 2; ++i) {
    spawn([&seen, i] {
      seen[2 * i] = detail::read_tls_guards();       // from its first run
      this_thread::yield();                           // a direct switch to the other thread
      seen[2 * i + 1] = detail::read_tls_guards();
    });
  }
  sched.run();
  for (const tls_guards& g : seen) EXPECT_EQ(g, job);
  EXPECT_EQ(detail::read_tls_guards(), process);
}

// Writes `text` and leaves with `code`: the exit handler that shows exit() got that far.
void say_and_leave(const char* text, int code) {
  [[maybe_unused]] ssize_t w = ::write(STDERR_FILENO, text, std::strlen(text));
  ::_exit(code);
}

bool atexit_handler_ran = false;  // by the handler registered last, which exit() runs first

struct exit_witness {
  ~exit_witness() { say_and_leave(atexit_handler_ran ? "local static destroyed\n" : "atexit handler skipped\n", 7); }
};

void reach_local_static() { static exit_witness witness; }

// Scribbles over memory that ended threads gave back, so that anything left in a thread's heap
// is garbage by the time the process reads it again.
void reuse_thread_memory() {
  for (int i = 0; i < 4; ++i) {
    spawn([] {
      std::vector<void*> blocks;
      for (std::size_t bytes = 16; bytes <= 4096; bytes *= 2) {
        for (int k = 0; k < 64; ++k) blocks.push_back(std::memset(std::malloc(bytes), 0xa5, bytes));
      }
      this_thread::yield();
      for (void* b : blocks) std::free(b);
    });
  }
  scheduler::current()->run();
}

// Registered with the thread's pointer guard, an exit handler would be demangled with the
// process's at exit (a jump to a garbage address); registered in the thread's heap, glibc's list
// of them would be garbage once the thread ended and its memory was reused.
void exit_handlers_from_a_thread() {
  scheduler sched{0};
  sched.set_thread_guards(foreign_guards());
  spawn([] {
    reach_local_static();
    for (int i = 0; i < 40; ++i) std::atexit([] {});  // past glibc's first block of 32 entries
    std::atexit([] { atexit_handler_ran = true; });
  });
  sched.run();
  reuse_thread_memory();
  std::exit(0);
}

TEST(GuardsDeathTest, ExitHandlersRegisteredInAThreadRunAtExit) {
  EXPECT_EXIT(exit_handlers_from_a_thread(), ::testing::ExitedWithCode(7), "local static destroyed");
}

// The same for the scheduler's OS thread's thread_local destructors, run by exit().
struct tls_exit_witness {
  ~tls_exit_witness() { say_and_leave("thread_local destroyed\n", 8); }
};

void thread_local_first_reached_in_a_thread() {
  scheduler sched{0};
  sched.set_thread_guards(foreign_guards());
  spawn([] {
    thread_local tls_exit_witness witness;
    (void)&witness;
  });
  sched.run();
  reuse_thread_memory();
  std::exit(0);
}

TEST(GuardsDeathTest, ThreadLocalsFirstReachedInAThreadAreDestroyedAtExit) {
  EXPECT_EXIT(thread_local_first_reached_in_a_thread(), ::testing::ExitedWithCode(8), "thread_local destroyed");
}

void error_from_a_thread() {
  std::atexit([] { say_and_leave("exit handlers ran after error()\n", 4); });
  scheduler sched{0};
  sched.set_thread_guards(foreign_guards());
  spawn([] { ::error(3, 0, "reported from a thread"); });
  sched.run();
}

// glibc's error() exits from inside libc, past the exit wrapper.
TEST(GuardsDeathTest, ErrorFromAThreadExitsThroughTheProcesssHandlers) {
  EXPECT_EXIT(error_from_a_thread(), ::testing::ExitedWithCode(4), "reported from a thread.*\n.*exit handlers ran");
}

TEST(GuardsDeathTest, ExitFromAThreadRunsTheProcesssExitHandlers) {
  EXPECT_EXIT(
      {
        std::atexit([] { say_and_leave("registered before the runtime\n", 5); });
        scheduler sched{0};
        sched.set_thread_guards(foreign_guards());
        spawn([] { std::exit(0); });
        sched.run();
      },
      ::testing::ExitedWithCode(5), "registered before the runtime");
}

TEST(GuardsDeathTest, QuickExitFromAThreadRunsTheProcesssHandlers) {
  EXPECT_EXIT(
      {
        std::at_quick_exit([] { say_and_leave("quick exit handler ran\n", 6); });
        scheduler sched{0};
        sched.set_thread_guards(foreign_guards());
        spawn([] { std::quick_exit(0); });
        sched.run();
      },
      ::testing::ExitedWithCode(6), "quick exit handler ran");
}

// glibc's backtrace() reaches libgcc's unwinder through pointers it mangled when it loaded it.
TEST(Guards, BacktraceInsideAThreadUnderOtherGuards) {
  void* frames[16];
  ASSERT_GT(backtrace(frames, 16), 0);  // loads the unwinder under the process's pair
  scheduler sched{0};
  sched.set_thread_guards(foreign_guards());
  int depth = 0;
  spawn([&depth, &frames] { depth = backtrace(frames, 16); });
  sched.run();
  EXPECT_GT(depth, 1);
}

// An OS thread started from inside a migratable thread inherits the thread guards; its
// thread_local destructors run when it exits, under that pair.
int tls_destroyed = 0;
struct tls_witness {
  ~tls_witness() { ++tls_destroyed; }
};

TEST(Guards, OsThreadsStartedFromAThreadRunTheirThreadLocalDestructors) {
  scheduler sched{0};
  sched.set_thread_guards(foreign_guards());
  spawn([] {
    std::thread os_thread([] {
      thread_local tls_witness witness;
      (void)&witness;
    });
    os_thread.join();
  });
  sched.run();
  EXPECT_EQ(tls_destroyed, 1);
}

TEST(Guards, NameServiceLookUpsInAThreadAfterMain) {
  const passwd* in_main = getpwuid(0);  // loads the NSS module under the process's pair
  ASSERT_NE(in_main, nullptr);
  scheduler sched{0};
  sched.set_thread_guards(foreign_guards());
  std::string name;
  name.reserve(64);
  spawn([&name] {
    if (const passwd* pw = getpwuid(0)) name = pw->pw_name;
  });
  sched.run();
  EXPECT_EQ(name, "root");
}

TEST(Guards, PthreadExitInAnOsThreadStartedFromAThread) {
  scheduler sched{0};
  sched.set_thread_guards(foreign_guards());
  int exited = 0;
  spawn([&exited] {
    pthread_t os_thread;
    ASSERT_EQ(pthread_create(&os_thread, nullptr, [](void*) -> void* { pthread_exit(reinterpret_cast<void*>(5)); }, nullptr), 0);
    void* result = nullptr;
    ASSERT_EQ(pthread_join(os_thread, &result), 0);
    exited = static_cast<int>(reinterpret_cast<std::intptr_t>(result));
  });
  sched.run();
  EXPECT_EQ(exited, 5);
}

// An exception leaving a once-routine unwinds through glibc's pthread_once frame.
TEST(Guards, CallOnceWhoseCallableThrowsInAThread) {
  void* frames[4];
  ASSERT_GT(backtrace(frames, 4), 0);  // the unwinder glibc uses, loaded under the process's pair
  scheduler sched{0};
  sched.set_thread_guards(foreign_guards());
  int attempts = 0;
  spawn([&attempts] {
    static std::once_flag once;
    for (int i = 0; i < 2; ++i) {
      try {
        std::call_once(once, [&attempts] {
          if (++attempts == 1) throw std::runtime_error("first attempt fails");
        });
      } catch (const std::runtime_error&) {
      }
    }
  });
  sched.run();
  EXPECT_EQ(attempts, 2);  // the first threw, so the second ran
}

// dlclose runs the library's exit handlers (its static destructors) through __cxa_finalize.
TEST(Guards, DlopenAndDlcloseInAThread) {
  scheduler sched{0};
  sched.set_thread_guards(foreign_guards());
  int destroyed = 0;
  spawn([&destroyed] {
    void* dso = dlopen(ISO_TEST_DSO_PATH, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(dso, nullptr) << dlerror();
    auto watch = reinterpret_cast<void (*)(int*)>(dlsym(dso, "iso_test_dso_watch"));
    ASSERT_NE(watch, nullptr);
    watch(&destroyed);
    EXPECT_EQ(dlclose(dso), 0);
  });
  sched.run();
  EXPECT_EQ(destroyed, 1);
}

// glibc allocates an OS thread's TLS vector when it starts and keeps it with the thread's cached
// stack after it ends: from a migratable thread's heap, a later pthread_create would write into
// whatever reuses that heap's memory.
void* own_dtv(void* out) {
  void* dtv = nullptr;
  asm volatile("movq %%fs:8, %0" : "=r"(dtv));
  *static_cast<void**>(out) = dtv;
  return nullptr;
}

TEST(Guards, OsThreadsStartedFromAThreadKeepGlibcsStateOutOfItsHeap) {
  scheduler sched{0};
  void* dtv = nullptr;
  spawn([&dtv] {
    pthread_t os_thread;
    ASSERT_EQ(pthread_create(&os_thread, nullptr, &own_dtv, &dtv), 0);
    ASSERT_EQ(pthread_join(os_thread, nullptr), 0);
  });
  sched.run();
  EXPECT_NE(dtv, nullptr);
  EXPECT_EQ(iso_in_range(dtv), 0) << "the OS thread's TLS vector is at " << dtv << ", in a thread's heap";
}

TEST(HeapScopes, LastAcrossYieldAndSleep) {
  scheduler sched{0};
  std::vector<int> in_range;
  in_range.reserve(8);
  spawn([&in_range] {
    {
      system_heap_scope system;
      void* a = std::malloc(32);
      this_thread::yield();
      void* b = std::malloc(32);
      this_thread::sleep_for(std::chrono::milliseconds(1));
      void* c = std::malloc(32);
      for (void* p : {a, b, c}) {
        in_range.push_back(iso_in_range(p));
        std::free(p);
      }
    }
    void* d = std::malloc(32);
    in_range.push_back(iso_in_range(d));
    std::free(d);
  });
  spawn([] {
    for (int i = 0; i < 3; ++i) this_thread::yield();
  });
  sched.run();
  EXPECT_EQ(in_range, (std::vector<int>{0, 0, 0, 1}));
}

TEST(Raise, PutsTheExceptionInTheRunningThreadsHeapInsideAScope) {
  scheduler sched{0};
  int object_in_range = -1, text_in_range = -1;
  spawn([&] {
    system_heap_scope system;  // what a library call does around its own state
    try {
      detail::raise(errc::invalid_argument, "an error of %d bytes", 42);
    } catch (const iso::error& e) {
      object_in_range = iso_in_range(&e);
      text_in_range = iso_in_range(e.what());
    }
    void* after = std::malloc(16);  // the scope still holds after the exception left raise()
    EXPECT_EQ(iso_in_range(after), 0);
    std::free(after);
  });
  sched.run();
  EXPECT_EQ(object_in_range, 1);
  EXPECT_EQ(text_in_range, 1);
}

std::string with_snprintf(const char* fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

std::string with_safe(const char* fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  detail::safe_vformat(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

#define EXPECT_SAME_FORMAT(...) EXPECT_EQ(with_safe(__VA_ARGS__), with_snprintf(__VA_ARGS__))

TEST(SafeFormat, AgreesWithSnprintfOnTheConversionsItKnows) {
  EXPECT_SAME_FORMAT("plain text, 100%% sure");
  EXPECT_SAME_FORMAT("%d %d %d %i", 0, -1, 2147483647, -2147483647 - 1);
  EXPECT_SAME_FORMAT("%u %x %X %#x %#x", 4000000000u, 0xbeefu, 0xbeefu, 0xbeefu, 0u);
  EXPECT_SAME_FORMAT("%ld %lu %lld %llu", -5l, 5ul, -9223372036854775807ll - 1, 18446744073709551615ull);
  EXPECT_SAME_FORMAT("%zu %zx %#zx %td %jd", static_cast<std::size_t>(1) << 40, std::size_t{255}, std::size_t{4096},
                     static_cast<std::ptrdiff_t>(-3), static_cast<std::intmax_t>(77));
  EXPECT_SAME_FORMAT("%hd %hu %hhd %hhu", 70000, 70000, 300, 300);
  EXPECT_SAME_FORMAT("[%5d] [%-5d] [%05d] [%-5s] [%5s] [%.3s] [%.*s]", 42, 42, -42, "ab", "ab", "abcdef", 2, "xyz");
  EXPECT_SAME_FORMAT("%p %p %c%c", static_cast<void*>(nullptr), reinterpret_cast<void*>(0x7f00dead0000), 'o', 'k');
  EXPECT_SAME_FORMAT("%s and %s", "this", "that");
}

TEST(SafeFormat, CutsAtTheCapacityAndTerminates) {
  char buf[8];
  EXPECT_EQ(detail::safe_format(buf, sizeof buf, "%s-%d", "abcdef", 12345), 7u);
  EXPECT_STREQ(buf, "abcdef-");
}

// A store to address 16, which is never mapped (volatile: the compiler may not drop it).
void touch_unmapped_page() {
  volatile std::uintptr_t address = 16;
  *reinterpret_cast<volatile int*>(address) = 1;
}

// The program's SIGSEGV handler, installed before the runtime's: faults outside migratable
// threads reach it.
void programs_handler(int, siginfo_t*, void*) { say_and_leave("the program's handler ran\n", 3); }

TEST(FaultsDeathTest, OutsideThreadsReachTheHandlerTheRuntimeReplaced) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process: its first scheduler installs ours
  EXPECT_EXIT(
      {
        struct sigaction sa {};
        sa.sa_sigaction = programs_handler;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, nullptr);
        scheduler sched{0};
        touch_unmapped_page();
      },
      ::testing::ExitedWithCode(3), "the program's handler ran");
}

// A one-shot handler: the kernel would reset the action before running it, so a fault it
// returns from kills the process by the default action the second time.
int oneshot_calls = 0;
void oneshot_handler(int, siginfo_t*, void*) { ++oneshot_calls; }

void fault_under_a_one_shot_handler() {
  struct sigaction sa {};
  sa.sa_sigaction = oneshot_handler;
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, nullptr);
  scheduler sched{0};
  alarm(10);  // were the reset lost, the fault would come back for ever: SIGALRM ends it
  touch_unmapped_page();
}

TEST(FaultsDeathTest, AOneShotHandlerRunsOnceThenTheDefaultAction) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(fault_under_a_one_shot_handler(), ::testing::KilledBySignal(SIGSEGV), "");
}

TEST(FaultsDeathTest, InsideAThreadAreReportedWithTheThreadsName) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        scheduler sched{0};
        spawn_options opts;
        opts.name = "faulty";
        spawn([] {
          touch_unmapped_page();
        }, opts);
        sched.run();
      },
      ::testing::ExitedWithCode(EXIT_FAILURE), "fatal: rank 0, thread 0:1 'faulty': segmentation fault at address 0x10");
}

// With the system heap exhausted, the block table cannot record a new block: iso_malloc must
// return NULL (naming the cause), not a block nobody tracks.
void iso_malloc_with_the_system_heap_full() {
  scheduler sched{0};  // readies the region for one rank
  rlimit now{};
  getrlimit(RLIMIT_AS, &now);
  FILE* statm = std::fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  if (statm == nullptr || std::fscanf(statm, "%lu", &pages) != 1) say_and_leave("no statm\n", 20);
  std::fclose(statm);
  rlimit tight = now;
  tight.rlim_cur = pages * static_cast<unsigned long>(sysconf(_SC_PAGESIZE)) + (1ul << 20);
  if (setrlimit(RLIMIT_AS, &tight) != 0) say_and_leave("setrlimit failed\n", 21);
  // Fill the system heap, every size class down to the smallest (glibc keeps freed chunks per
  // class): from here on the table's next node cannot be allocated.
  for (std::size_t bytes = 4096; bytes >= 8; bytes -= bytes > 1024 ? 1024 : 8) {
    void* volatile filler = nullptr;  // volatile: the compiler may not drop the allocations
    do filler = std::malloc(bytes);
    while (filler != nullptr);
  }
  void* block = iso_malloc(1 << 16);
  if (block != nullptr) say_and_leave("iso_malloc returned a block it does not track\n", 22);
  std::fprintf(stderr, "iso_malloc: NULL, %s\n", iso_last_error());
  std::_Exit(0);
}

TEST(BlocksDeathTest, IsoMallocReturnsNullWhenTheBlockTableCannotGrow) {
  EXPECT_EXIT(iso_malloc_with_the_system_heap_full(), ::testing::ExitedWithCode(0), "iso_malloc: NULL, out of memory");
}

}  // namespace
}  // namespace iso
