// Where a thread is, as one rank knows it, and where a message for it goes next. Pure logic: no
// MPI, no scheduler; the engine (engine.cpp) feeds it events and acts on its decisions, and the
// unit test (tests/unit/test_directory.cpp) drives N of them over a simulated network.
//
// Locating (Charm++-style forwarding, ordered by epochs). Every thread_id carries its home rank;
// a thread's epoch counts its migrations. The tables of one rank:
//   location_  threads homed here that live elsewhere: where they last landed (told by the rank
//              where they land), or where they were sent from here
//   departed_  forwarding pointers: threads that left this rank, and where to; for a thread that
//              finished away from home, a tombstone pointing home (epoch + 1)
//   cache_     locations learnt from hints (a rank that received a forwarded message tells its
//              first sender where the thread is, so that the next one goes direct)
//   finished_  threads homed here that finished and were never joined (a join must find them);
//              any other thread homed here with a serial below next_serial that is neither here
//              nor in location_ has finished and was joined (invariant: a live thread homed here
//              is on this rank or in location_, from its departure until it is back or finished)
//   held_      messages for threads that are neither here nor known to be elsewhere: they are on
//              their way here (or, at their home, their first location is not known yet)
// Invariant that makes forwarding terminate: a message carries the newest epoch it has followed
// (min_epoch), and a pointer is followed only if its epoch is newer; so every network hop after
// the first raises min_epoch, and a message makes at most 1 + (the thread's migrations) hops.
// A message that finds no newer pointer is held here until its thread lands here, or, at the
// home, until the thread's fate is known (location or finished).
// Bounds: location_ holds the live threads homed here that are elsewhere, finished_ the finished
// unjoined ones, held_ messages in flight; departed_ and cache_ grow with the migrations and
// hints since the last collect(), which the runtime calls at every balancing and checkpoint step
// (with nothing in flight, the home's location_ alone routes every message right).
#pragma once

#include <cstdint>

#include "isothreads/thread_id.hpp"
#include "sysalloc.hpp"
#include "thread_table.hpp"

namespace iso::detail {

struct place {
  int rank;
  std::uint32_t epoch;
};

// What to do with a message for a thread that is not on this rank.
struct route {
  enum class action {
    forward,        // send it to `to.rank`; it now follows epoch `to.epoch`
    hold,           // keep it here (hold()) until release: the thread is on its way
    finished,       // the thread has finished (at its home: answer or drop it)
    never_spawned,  // at its home: no thread of that serial was ever spawned
  } what;
  place to;
};

class directory {
 public:
  using wire = sys_vector<unsigned char>;  // a held message, opaque here

  directory(int rank, int size) noexcept : rank_(rank), size_(size), id_ranks_(size) {}

  int rank() const noexcept { return rank_; }
  // The rank where t's location is kept: its home rank, folded onto this run's ranks (a run
  // restarted from a checkpoint may have fewer ranks than the one that spawned t).
  int home_of(std::uint64_t id) const noexcept { return thread_id::from_bits(id).home() % size_; }
  // Thread ids name home ranks below this (size, or more after a restart from a larger run).
  int id_ranks() const noexcept { return id_ranks_; }
  void restore_id_ranks(int ranks) noexcept { id_ranks_ = ranks > size_ ? ranks : size_; }

  // --- routing ---
  // A message sent from this rank to a thread that is not here: where it goes first (the newest
  // location known here, else the home). rank() means: it stays here (route_in decides).
  place first_hop(std::uint64_t to) const noexcept;
  // A message for thread `to`, which is not here, that has followed epochs up to min_epoch.
  // next_serial: serials below it have been spawned on this rank (to tell, at the home, a thread
  // that was never spawned from one whose location is not known yet).
  route route_in(std::uint64_t to, std::uint32_t min_epoch, std::uint64_t next_serial) const noexcept;
  // Forgets every forwarding pointer, tombstone and hint. pre: on every rank at once, with no
  // message, control message or thread in flight anywhere and no thread running (then no stale
  // location is in use, and the homes' locations are exact).
  void collect() noexcept;

  // --- events on this rank (each may throw std::bad_alloc) ---
  // Thread `id` left for `dest`, arriving there with `epoch`.
  void departed(std::uint64_t id, int dest, std::uint32_t epoch);
  // Thread `id` landed here with `epoch`. True if its home (another rank) must be told
  // (a location control message).
  bool arrived(std::uint64_t id);
  // Thread `id` finished here after `epoch` migrations, `joined` or not. True if its home
  // (another rank) must be told (a finished control message).
  bool finished_here(std::uint64_t id, std::uint32_t epoch, bool joined);

  // --- what other ranks tell ---
  // A location (the thread landed at `at`), a hint (it is at `at`), or, at the home, that it
  // finished. Each returns true if messages held for it may now go on (take_held).
  bool on_location(std::uint64_t id, place at);
  void on_hint(std::uint64_t id, place at);
  bool on_finished(std::uint64_t id, bool joined);
  // Restart from a checkpoint: thread id now lives at `at` (another rank).
  void restore_location(std::uint64_t id, place at);

  // --- finished threads homed here ---
  // At its home (this rank), for a thread that is not here: true if id finished; *joined says
  // whether it was joined. next_serial as for route_in.
  bool finished_record(std::uint64_t id, std::uint64_t next_serial, bool* joined) const noexcept;
  void mark_joined(std::uint64_t id) noexcept { finished_.erase(id); }
  void restore_finished(std::uint64_t id, bool joined) {
    if (!joined) note_unjoined(id);
  }
  // The finished threads that were never joined (the joined ones follow from finished_record).
  sys_vector<std::pair<std::uint64_t, bool>> finished_records() const;

  // --- held messages ---
  void hold(std::uint64_t id, wire&& w);
  // The messages held for id, in the order they came; none are held for it afterwards.
  sys_vector<wire> take_held(std::uint64_t id);
  std::size_t held_messages() const noexcept;

  // Table sizes, for tests and diagnostics.
  std::size_t pointers() const noexcept { return departed_.size(); }
  std::size_t locations() const noexcept { return location_.size(); }
  std::size_t cached() const noexcept { return cache_.size(); }
  std::size_t unjoined_finished() const noexcept { return finished_.size(); }

 private:
  // A thread homed here finished unjoined: into finished_ unless there already (a restart's
  // record, a late message). Throws std::bad_alloc.
  void note_unjoined(std::uint64_t id) { finished_.insert_if_absent(id, {}); }

  int rank_;
  int size_;
  int id_ranks_;
  sys_unordered_map<std::uint64_t, place> location_;
  sys_unordered_map<std::uint64_t, place> departed_;
  sys_unordered_map<std::uint64_t, place> cache_;
  // The ids only. A table without a node per record: a fork-join program's children that end
  // before their joins put one record each here (the system malloc and free of a map's node were
  // 7-10% of spawning 10,000 threads and joining them, perf).
  finished_set finished_;
  sys_unordered_map<std::uint64_t, sys_vector<wire>> held_;
};

}  // namespace iso::detail
