// The directory (migrate/internal/directory.hpp) on a simulated network of N ranks: messages and
// control messages are delivered after random delays, in order only between one pair of ranks
// (as MPI keeps the records of one rank's batches to another; thread images travel apart and may
// overtake or be overtaken), threads migrate and finish at random, directories collect their
// pointers whenever nothing is in flight, and every message must reach its thread exactly once (or, sent to a thread that
// finished, end at its home as finished), be released in per-sender order by the mailbox's
// sequencing, within the hop bound, with nothing left held. The glue below is what engine.cpp does
// with the directory's decisions (route_out, on_data, on_ctrl, arrival, departure, end).
//
// Seeded: each run prints its seed; ISO_TEST_SEED=<seed> replays it (schedule k of a run uses
// seed + k).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "directory.hpp"
#include "mailbox.hpp"

namespace {

using iso::thread_id;
using iso::detail::directory;
using iso::detail::in_order;
using iso::detail::place;
using iso::detail::route;

struct msg {
  std::uint64_t to, from, seq;
  std::uint32_t min_epoch, hops;
  int origin;
};

struct packet {
  enum class kind { data, location, hint, finished, image } k;
  int src;
  int dest;
  msg m;               // data
  std::uint64_t id;    // the others: the thread
  place at;            // location, hint: where; image: (dest, its epoch there)
};

struct thread_state {
  std::uint64_t id;
  int at = -1;            // the rank it is on; -1 while in transit
  std::uint32_t epoch = 0;
  bool finished = false;
  bool joined = false;
  in_order<std::uint64_t> mailbox;               // releases seqs of each sender in order
  std::map<std::uint64_t, std::uint64_t> last;   // sender -> last seq released
};

class network {
 public:
  network(std::uint64_t seed, int ranks, int threads, bool finishing) : rng_(seed), finishing_(finishing) {
    for (int r = 0; r < ranks; ++r) dirs_.emplace_back(r, ranks);
    next_serial_.assign(static_cast<std::size_t>(ranks), 1);
    for (int i = 0; i < threads; ++i) {
      const int home = pick(ranks);
      const thread_id id(home, next_serial_[static_cast<std::size_t>(home)]++);
      threads_.emplace(id.bits(), thread_state{id.bits()}).first->second.at = home;
      ids_.push_back(id.bits());
    }
  }

  // steps random events, then delivers everything left with threads standing still.
  void run(int steps) {
    for (int s = 0; s < steps; ++s) {
      const int dice = pick(10);
      if (dice < 3) {
        send_random();
      } else if (dice < 5) {
        migrate_random();
      } else if (dice < 6 && finishing_) {
        finish_random();
      } else if (dice < 7 && in_flight_ == 0) {
        // Quiet: nothing in flight and no thread running, as at a balancing step.
        for (directory& d : dirs_) d.collect();
      } else {
        deliver_random();
      }
    }
    while (in_flight_ != 0) deliver_random();
    for (directory& d : dirs_) d.collect();
  }

  void check_end() const {
    for (const auto& [key, n] : delivered_) {
      EXPECT_EQ(n, 1) << "message " << std::get<2>(key) << " from " << thread_id::from_bits(std::get<0>(key)).to_string()
                      << " to " << thread_id::from_bits(std::get<1>(key)).to_string() << " delivered " << n << " times";
    }
    EXPECT_EQ(delivered_.size() + ended_at_home_, sent_) << "messages lost";
    // After the last collect, a rank keeps exactly the live threads homed there that are
    // elsewhere and the finished ones homed there that nobody joined: nothing of the rest.
    for (const directory& d : dirs_) {
      EXPECT_EQ(d.held_messages(), 0u) << "rank " << d.rank() << " still holds messages";
      EXPECT_EQ(d.pointers(), 0u);
      EXPECT_EQ(d.cached(), 0u);
      std::size_t away = 0, unjoined = 0;
      for (const auto& [id, t] : threads_) {
        if (home_of(id) != d.rank()) continue;
        if (!t.finished && t.at != d.rank()) ++away;
        if (t.finished && !t.joined) ++unjoined;
      }
      EXPECT_EQ(d.locations(), away) << "rank " << d.rank();
      EXPECT_EQ(d.unjoined_finished(), unjoined) << "rank " << d.rank();
    }
    // A thread that finished may miss messages still on their way (they end at its home).
    for (const auto& [id, t] : threads_) {
      if (!t.finished) {
        EXPECT_EQ(t.mailbox.early(), 0u) << "a gap in a sender's sequence";
      }
    }
  }

 private:
  int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
  directory& dir(int r) { return dirs_[static_cast<std::size_t>(r)]; }
  int home_of(std::uint64_t id) const { return dirs_[0].home_of(id); }
  bool here(std::uint64_t id, int rank) const {
    const thread_state& t = threads_.at(id);
    return !t.finished && t.at == rank;
  }

  void send_random() {
    // From a thread on some rank, or from a rank's main (thread_id(rank, 0)).
    const std::uint64_t from_thread = ids_[static_cast<std::size_t>(pick(static_cast<int>(ids_.size())))];
    const thread_state& f = threads_.at(from_thread);
    std::uint64_t from = from_thread;
    int rank = f.at;
    if (f.finished || f.at < 0) {
      rank = pick(static_cast<int>(dirs_.size()));
      from = thread_id(rank, 0).bits();
    }
    const std::uint64_t to = ids_[static_cast<std::size_t>(pick(static_cast<int>(ids_.size())))];
    msg m{to, from, ++next_seq_[{from, to}], 0, 0, rank};
    ++sent_;
    if (here(to, rank)) {
      deliver(m);
      return;
    }
    // engine::route_out
    const place target = dir(rank).first_hop(to);
    if (target.rank == rank) {
      on_data(rank, m, false);
      return;
    }
    m.min_epoch = std::max(m.min_epoch, target.epoch);
    put({packet::kind::data, rank, target.rank, m, 0, {}});
  }

  void migrate_random() {
    thread_state& t = threads_.at(ids_[static_cast<std::size_t>(pick(static_cast<int>(ids_.size())))]);
    if (t.finished || t.at < 0 || dirs_.size() < 2) return;
    int dest = pick(static_cast<int>(dirs_.size()) - 1);
    if (dest >= t.at) ++dest;
    ++t.epoch;
    dir(t.at).departed(t.id, dest, t.epoch);
    put({packet::kind::image, t.at, dest, {}, t.id, {dest, t.epoch}});
    t.at = -1;
    ++migrations_;
  }

  void finish_random() {
    thread_state& t = threads_.at(ids_[static_cast<std::size_t>(pick(static_cast<int>(ids_.size())))]);
    if (t.finished || t.at < 0) return;
    t.finished = true;
    t.joined = pick(2) == 0;
    if (dir(t.at).finished_here(t.id, t.epoch, t.joined)) {
      put({packet::kind::finished, t.at, home_of(t.id), {}, t.id, {t.at, t.joined ? 1u : 0u}});
    }
  }

  // The head of a random channel that has packets.
  void deliver_random() {
    if (in_flight_ == 0) return;
    std::vector<channel*> busy;
    for (auto& [key, queue] : wire_) {
      if (!queue.empty()) busy.push_back(&queue);
    }
    channel& c = *busy[static_cast<std::size_t>(pick(static_cast<int>(busy.size())))];
    const packet p = c.front();
    c.pop_front();
    --in_flight_;
    switch (p.k) {
      case packet::kind::data: on_data(p.dest, p.m, true); break;
      case packet::kind::location:
        if (dir(p.dest).on_location(p.id, p.at)) release(p.dest, p.id);
        break;
      case packet::kind::hint: dir(p.dest).on_hint(p.id, p.at); break;
      case packet::kind::finished:
        if (dir(p.dest).on_finished(p.id, p.at.epoch != 0)) release(p.dest, p.id);
        break;
      case packet::kind::image: {  // engine::finish_arrival
        thread_state& t = threads_.at(p.id);
        t.at = p.dest;
        if (dir(p.dest).arrived(p.id)) {
          send_ctrl(home_of(p.id), {packet::kind::location, p.dest, 0, {}, p.id, {p.dest, t.epoch}}, p.dest);
        }
        release(p.dest, p.id);
        break;
      }
    }
  }

  // engine::send_ctrl: to this rank, handled at once.
  void send_ctrl(int dest, packet p, int from_rank) {
    p.dest = dest;
    if (dest != from_rank) {
      put(p);
      return;
    }
    if (p.k == packet::kind::location && dir(dest).on_location(p.id, p.at)) release(dest, p.id);
    if (p.k == packet::kind::hint) dir(dest).on_hint(p.id, p.at);
  }

  void release(int rank, std::uint64_t id) {
    for (auto& w : dir(rank).take_held(id)) {
      msg m;
      std::memcpy(&m, w.data(), sizeof m);
      on_data(rank, m, false);
    }
  }

  // engine::on_data
  void on_data(int rank, msg m, bool from_network) {
    if (here(m.to, rank)) {
      if (from_network && m.hops > 0 && m.origin != rank) {
        send_ctrl(m.origin, {packet::kind::hint, rank, 0, {}, m.to, {rank, threads_.at(m.to).epoch}}, rank);
      }
      deliver(m);
      return;
    }
    const route r = dir(rank).route_in(m.to, m.min_epoch, next_serial_[static_cast<std::size_t>(rank)]);
    switch (r.what) {
      case route::action::forward:
        ++m.hops;
        m.min_epoch = r.to.epoch;
        ASSERT_LE(m.hops, 1 + migrations_) << "a message is going round in circles";
        put({packet::kind::data, rank, r.to.rank, m, 0, {}});
        return;
      case route::action::hold: {
        directory::wire w(sizeof m);
        std::memcpy(w.data(), &m, sizeof m);
        dir(rank).hold(m.to, std::move(w));
        return;
      }
      case route::action::finished:
        EXPECT_TRUE(threads_.at(m.to).finished) << "a live thread was taken for finished";
        EXPECT_EQ(rank, home_of(m.to));
        ++ended_at_home_;
        return;
      case route::action::never_spawned:
        ADD_FAILURE() << "thread " << thread_id::from_bits(m.to).to_string() << " was spawned";
        return;
    }
  }

  void deliver(const msg& m) {
    thread_state& t = threads_.at(m.to);
    // Forwarding follows only newer epochs: at most one hop per migration of the thread.
    EXPECT_LE(m.hops, t.epoch) << "more hops than the thread has migrated";
    ++delivered_[{m.from, m.to, m.seq}];
    t.mailbox.put(m.from, m.seq, std::uint64_t{m.seq}, [&](std::uint64_t seq) {
      EXPECT_EQ(seq, t.last[m.from] + 1) << "released out of order";
      t.last[m.from] = seq;
    });
  }

  // Records between two ranks keep their order; images have channels of their own.
  void put(const packet& p) {
    wire_[{p.src, p.dest, p.k == packet::kind::image}].push_back(p);
    ++in_flight_;
  }

  std::mt19937_64 rng_;
  bool finishing_;
  std::vector<directory> dirs_;
  std::vector<std::uint64_t> next_serial_;
  std::map<std::uint64_t, thread_state> threads_;
  std::vector<std::uint64_t> ids_;
  using channel = std::deque<packet>;
  std::map<std::tuple<int, int, bool>, channel> wire_;  // (from, to, image?) -> packets in order
  std::size_t in_flight_ = 0;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::uint64_t> next_seq_;
  std::map<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>, int> delivered_;
  std::size_t sent_ = 0;
  std::size_t ended_at_home_ = 0;
  std::uint32_t migrations_ = 0;
};

std::uint64_t base_seed() {
  if (const char* s = std::getenv("ISO_TEST_SEED"); s != nullptr && *s != '\0') return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

void run_schedules(int count, bool finishing) {
  const std::uint64_t seed = base_seed();
  std::printf("directory simulation: seed %llu (replay with ISO_TEST_SEED=%llu)\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  for (int k = 0; k < count; ++k) {
    std::mt19937_64 shape(seed + static_cast<std::uint64_t>(k));
    const int ranks = 2 + static_cast<int>(shape() % 5);
    const int threads = 1 + static_cast<int>(shape() % 12);
    SCOPED_TRACE(testing::Message() << "schedule " << k << " (seed " << seed + static_cast<std::uint64_t>(k) << "), "
                                    << ranks << " ranks, " << threads << " threads");
    network net(seed + static_cast<std::uint64_t>(k), ranks, threads, finishing);
    net.run(400);
    net.check_end();
    if (testing::Test::HasFailure()) return;  // the first failing schedule is the one to replay
  }
}

TEST(DirectorySimulation, EveryMessageReachesItsMigratingThreadOnceInOrder) { run_schedules(3000, false); }

TEST(DirectorySimulation, MessagesToThreadsThatFinishEndAtTheirHome) { run_schedules(3000, true); }

// The records of threads that finished unjoined at their home (a table without a node per
// record): each id once, whichever way it came (its end here, a finished message, a restart), gone
// at its join; the joined ones still told apart from the never spawned.
TEST(Directory, KeepsOneRecordPerUnjoinedFinishedThread) {
  directory d(0, 2);
  const auto id = [](std::uint64_t serial) { return thread_id(0, serial).bits(); };
  for (std::uint64_t s = 1; s <= 1000; ++s) EXPECT_FALSE(d.finished_here(id(s), 0, false));
  EXPECT_TRUE(d.on_finished(id(7), false));  // told again (a restart's record, a late message)
  d.restore_finished(id(8), false);
  d.restore_finished(id(1001), true);  // joined: no record
  EXPECT_EQ(d.unjoined_finished(), 1000u);
  std::set<std::uint64_t> listed;
  for (const auto& [i, joined] : d.finished_records()) {
    EXPECT_FALSE(joined);
    EXPECT_TRUE(listed.insert(i).second) << "listed twice: " << i;
  }
  EXPECT_EQ(listed.size(), 1000u);
  EXPECT_EQ(*listed.begin(), id(1));
  EXPECT_EQ(*listed.rbegin(), id(1000));
  for (std::uint64_t s = 1; s <= 1000; s += 2) d.mark_joined(id(s));
  EXPECT_EQ(d.unjoined_finished(), 500u);
  bool joined = false;
  EXPECT_TRUE(d.finished_record(id(2), 1002, &joined));
  EXPECT_FALSE(joined);
  EXPECT_TRUE(d.finished_record(id(3), 1002, &joined));
  EXPECT_TRUE(joined);
  EXPECT_FALSE(d.finished_record(id(1002), 1002, &joined)) << "never spawned";
  d.mark_joined(id(3));  // twice: nothing to forget
  EXPECT_EQ(d.unjoined_finished(), 500u);
}

}  // namespace
