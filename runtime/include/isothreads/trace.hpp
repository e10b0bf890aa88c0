// Tracing: a timeline of what every rank does, for Perfetto / chrome://tracing and
// scripts/trace-report (format: docs/trace-format.md).
#pragma once

#include <string>

namespace iso::trace {

// Starts recording on this rank: thread runs, migrations (with bytes and duration), messages and
// balancing steps. At the end of every runtime::run() the ranks' events since enable() are
// written to `path` by rank 0, as Chrome trace-event JSON. Collective only in that every rank
// must enable with the same path before the same run(). The environment variable
// ISO_TRACE=path does the same at start-up. Costs nothing while off.
// Errors: (no_runtime); (io_failure) from run() if the file cannot be written.
void enable(const std::string& path);
bool enabled() noexcept;

}  // namespace iso::trace
