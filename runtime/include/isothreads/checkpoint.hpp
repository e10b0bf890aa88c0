// Checkpoint and restart of a whole program's threads.
#pragma once

#include <string>

namespace iso {

// Collective: every live migratable thread calls it with the same directory. Once all have, on
// every rank, and no message is in flight, each rank writes its threads' images (live stack,
// live heap pages, control block, with their pending messages) and its runtime state to
// `dir/ckpt.<generation>.rank<r>`; rank 0 then switches `dir/manifest` to the new generation in
// one rename, so a crash at any point leaves the previous checkpoint whole. Returns in every
// thread once written. A later run started with `--iso-restart dir` (or ISO_RESTART=dir), on the
// same or a different number of ranks, resumes every thread as if this call had just returned.
// Errors: (not_in_thread), (no_runtime), (invalid_argument) for an empty directory or threads
// that disagree on it, (io_failure) naming the file and the cause if writing failed (the previous
// checkpoint stays the current one).
void checkpoint(const std::string& dir);

}  // namespace iso
