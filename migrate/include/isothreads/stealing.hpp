// Work stealing across ranks: with it on, a rank that has no thread ready to run takes ready
// stealable threads from other ranks (they migrate to it), so irregular work spreads without
// lb::sync. What it costs and how it meets lb::sync: docs/user-guide.md, "Stealing".
#pragma once

#include <cstdint>

namespace iso {

// Turns stealing on or off on this rank, at once. Off by default; ISO_STEAL=1
// (runtime_options::steal) turns it on at start-up. Collective in that every rank makes the same
// call before the same run() (from main, or from one thread on each rank); a rank with stealing
// off neither asks for threads nor gives its own. Only threads spawned with
// spawn_options::stealable (iso::async without options) are taken, and only while ready: a
// thread that runs, waits, sleeps or holds an iso::mutex stays. Error: (no_runtime).
void stealing(bool on);
// Whether stealing is on on this rank (false without a runtime).
bool stealing() noexcept;

// This rank's stealing since the runtime started.
struct steal_stats {
  std::uint64_t requests = 0;  // steal requests it sent
  std::uint64_t stolen = 0;    // threads it stole (each answered one request)
  std::uint64_t refused = 0;   // requests answered "none"
  std::uint64_t given = 0;     // its threads that thieves took
};
// Error: (no_runtime).
steal_stats stealing_stats();

}  // namespace iso
