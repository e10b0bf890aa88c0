// A fault outside migratable threads goes to the SIGSEGV handler the program installed before it
// created iso::runtime: the runtime's handler handles faults inside threads and passes others on.
// The program's handler checks the faulting address, prints FAULT_CHAINED and exits with 0.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>

#include "isothreads/isothreads.hpp"

namespace {

void* bad_page = nullptr;    // PROT_NONE: every access faults
char marker[64];             // formatted before the fault: the handler only write()s
std::size_t marker_bytes = 0;

void on_segv(int, siginfo_t* info, void*) {
  static const char wrong[] = "FAULT_WRONG_ADDRESS\n";
  if (info->si_addr == bad_page) {
    (void)!write(STDOUT_FILENO, marker, marker_bytes);
  } else {
    (void)!write(STDOUT_FILENO, wrong, sizeof wrong - 1);
  }
  _exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  struct sigaction sa {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, nullptr) != 0) {
    std::perror("sigaction");
    return 2;
  }
  try {
    iso::runtime rt(argc, argv);
    bad_page = mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (bad_page == MAP_FAILED) {
      std::perror("mmap");
      return 2;
    }
    const int n = std::snprintf(marker, sizeof marker, "FAULT_CHAINED rank %d\n", rt.rank());
    marker_bytes = n > 0 ? static_cast<std::size_t>(n) : 0;
    std::fflush(stdout);
    *static_cast<volatile int*>(bad_page) = 1;  // in main, outside any thread
    std::printf("FAULT_MISSED: the store to a PROT_NONE page did not fault\n");
  } catch (const iso::error& e) {
    std::fprintf(stderr, "FATAL: iso::runtime: %s\n", e.what());
    return 2;
  }
  return 1;
}
