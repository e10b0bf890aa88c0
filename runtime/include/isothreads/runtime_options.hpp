// iso::runtime_options — the runtime's knobs, one documented value type.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace iso {

// What the runtime prints on success, on rank 0's stdout. Errors and warnings go to stderr
// whatever this says.
enum class verbosity : int {
  quiet = 0,  // nothing (the default): a program's output is the program's choice
  steps = 1,  // one line per balancing step ("iso::lb step N ..."), checkpoint written and restart
};

// Every field has a default; runtime_options::from_environment() applies the environment variable
// named in brackets to it.
struct runtime_options {
  // Size of the isomalloc region, all ranks' shares together, in bytes. 0: the smaller of 16 TiB
  // and half the largest free gap. Each rank's share must be at least 1 GiB.  [ISO_REGION_BYTES:
  // a byte count with an optional K, M, G or T suffix, e.g. 64G]
  std::size_t region_bytes = 0;
  // The load-balancing strategy at start-up, a name as for iso::lb::by_name.  [ISO_LB]
  std::string strategy = "greedy";
  // Write a trace (docs/trace-format.md) to this file at the end of every run(); empty: none.
  // [ISO_TRACE]
  std::string trace_path;
  // Restart from the checkpoint in this directory; empty: start afresh. `--iso-restart DIR` among
  // the program's arguments overrides it.  [ISO_RESTART]
  std::string restart_dir;
  // Re-execute the program once with address-space randomisation off when it is on (the ranks'
  // layouts must match anyway; without it they usually do not).  [ISO_NO_REEXEC set: false]
  bool reexec = true;
  iso::verbosity verbosity = verbosity::quiet;  // [ISO_VERBOSE: 0 or 1]
  // Idle back-off of a rank with nothing to run: for idle_spin it only gives its core away
  // between polls (a reply a few microseconds away is seen at once), then it sleeps, doubling
  // from min_backoff up to max_backoff (oversubscribed ranks do not starve each other, and a
  // message still wakes a long-idle rank within max_backoff).
  std::chrono::nanoseconds idle_spin{200'000};
  std::chrono::nanoseconds min_backoff{20'000};
  std::chrono::nanoseconds max_backoff{1'000'000};
  // Work stealing (iso::stealing) at start-up: an idle rank asks random others for ready
  // stealable threads; after each request answered "none" it waits as the back-off above says,
  // doubling from min_backoff up to max_backoff.  [ISO_STEAL: 0 or 1]
  bool steal = false;
  // Seeds the choice of steal victims (with the rank), so that a schedule can be replayed as far
  // as timing allows.  [ISO_STEAL_SEED: an unsigned decimal number]
  std::uint64_t steal_seed = 0;

  // The defaults, with the environment variables above applied. Throws iso::error(invalid_argument)
  // naming the variable whose value is malformed.
  static runtime_options from_environment();
};

}  // namespace iso
