// Selective and bounded receives (iso::recv(from, tag), try_recv, recv_for) under iso::runtime,
// with senders and receivers migrating. Every test is collective: rank 0 spawns the threads,
// which then move between all ranks; every rank calls run().
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "engine.hpp"
#include "isothreads/isothreads.hpp"
#include "mailbox.hpp"
#include "mpi_gtest.hpp"
#include "scheduler.hpp"
#include "test_seed.hpp"

namespace {

using iso_test::rt;
using namespace std::chrono_literals;

// A test message: which sender (its index), its tag, and its number within its (sender, tag)
// stream.
struct note {
  int sender;
  int tag;
  int k;
};

void send_note(iso::thread_id to, const note& n) { iso::send(to, &n, sizeof n, n.tag); }

note read_note(const iso::message& m) {
  note n{};
  EXPECT_EQ(m.data.size(), sizeof n);
  if (m.data.size() == sizeof n) std::memcpy(&n, m.data.data(), sizeof n);
  EXPECT_EQ(m.tag, n.tag);
  return n;
}

std::vector<iso::thread_id> read_ids(const iso::message& m) {
  std::vector<iso::thread_id> ids(m.data.size() / sizeof(iso::thread_id));
  std::memcpy(ids.data(), m.data.data(), m.data.size());
  return ids;
}

// Checks that each (sender, tag) stream arrives in order, each message once.
class stream_checker {
 public:
  void take(const note& n) {
    int& next = next_[{n.sender, n.tag}];
    EXPECT_EQ(n.k, next) << "sender " << n.sender << " tag " << n.tag;
    next = n.k + 1;
    ++taken_;
  }
  int taken() const { return taken_; }
  int next(int sender, int tag) const {
    auto it = next_.find({sender, tag});
    return it == next_.end() ? 0 : it->second;
  }

 private:
  std::map<std::pair<int, int>, int> next_;
  int taken_ = 0;
};

void maybe_migrate(std::mt19937_64& rng, int one_in) {
  if (rng() % static_cast<std::uint64_t>(one_in) == 0) {
    iso::this_thread::migrate_to(static_cast<int>(rng() % static_cast<std::uint64_t>(iso::size())));
  }
}

TEST(Receive, SelectiveBySenderAndTagWhileBothSidesMigrate) {
  const std::uint64_t seed = iso_test::test_seed("Receive.SelectiveBySenderAndTagWhileBothSidesMigrate");
  static constexpr int senders = 4, per_sender = 240, tags = 3;  // tag of message i: i % tags
  static constexpr int per_stream = per_sender / tags;
  if (rt->rank() == 0) {
    const iso::thread_id receiver = iso::spawn([seed] {
      std::mt19937_64 rng(seed);
      const std::vector<iso::thread_id> s = read_ids(iso::recv(iso::thread_id(0, 0), 7));
      stream_checker check;
      auto take = [&](iso::thread_id from, int tag) {
        const iso::message m = iso::recv(from, tag);
        if (from != iso::any_thread) {
          EXPECT_EQ(m.from, from);
        }
        const note n = read_note(m);
        if (tag != iso::any_tag) {
          EXPECT_EQ(n.tag, tag);
        }
        EXPECT_EQ(m.from, s[static_cast<std::size_t>(n.sender)]);
        check.take(n);
        maybe_migrate(rng, 25);
        return n;
      };
      // One exact stream first, while everything else queues behind it.
      for (int k = 0; k < per_stream; ++k) take(s[1], 1);
      // One tag from every sender.
      for (int k = 0; k < senders * per_stream; ++k) take(iso::any_thread, 2);
      // One sender, every tag it has left (0 and 1).
      for (int k = 0; k < 2 * per_stream; ++k) EXPECT_EQ(take(s[0], iso::any_tag).sender, 0);
      // The rest, in any order.
      while (check.taken() < senders * per_sender) take(iso::any_thread, iso::any_tag);
      for (int i = 0; i < senders; ++i) {
        for (int t = 0; t < tags; ++t) EXPECT_EQ(check.next(i, t), per_stream);
      }
      EXPECT_FALSE(iso::try_recv().has_value()) << "a message arrived more than once";
    });
    std::vector<iso::thread_id> s;
    for (int i = 0; i < senders; ++i) {
      s.push_back(iso::spawn([receiver, i, seed] {
        std::mt19937_64 rng(seed + 1 + static_cast<std::uint64_t>(i));
        int k[tags] = {};
        for (int m = 0; m < per_sender; ++m) {
          const int tag = m % tags;
          send_note(receiver, {i, tag, k[tag]++});
          maybe_migrate(rng, 20);
        }
      }));
    }
    iso::send(receiver, s.data(), s.size() * sizeof s[0], 7);
  }
  rt->run();
}

TEST(Receive, ThousandsQueuedFromManySendersTakenSelectively) {
  const std::uint64_t seed = iso_test::test_seed("Receive.ThousandsQueuedFromManySendersTakenSelectively");
  static constexpr int senders = 64, per_sender = 64, tags = 4;
  if (rt->rank() == 0) {
    const iso::thread_id receiver = iso::spawn([seed] {
      std::mt19937_64 rng(seed);
      // Everything is queued before the first selective receive: a coordinator says when.
      const std::vector<iso::thread_id> s = read_ids(iso::recv(iso::any_thread, 9));
      EXPECT_FALSE(iso::try_recv(iso::any_thread, 9).has_value());
      stream_checker check;
      // Last sender first, highest tag first: each receive must find its message deep in a
      // queue of thousands.
      for (int i = senders - 1; i >= 0; --i) {
        for (int t = tags - 1; t >= 0; --t) {
          for (int k = 0; k < per_sender / tags; ++k) {
            const iso::message m = iso::recv(s[static_cast<std::size_t>(i)], t);
            const note n = read_note(m);
            EXPECT_EQ(n.sender, i);
            check.take(n);
          }
        }
        maybe_migrate(rng, 8);
      }
      EXPECT_EQ(check.taken(), senders * per_sender);
      EXPECT_FALSE(iso::try_recv().has_value());
    });
    std::vector<iso::thread_id> s;
    for (int i = 0; i < senders; ++i) {
      s.push_back(iso::spawn([receiver, i] {
        iso::this_thread::migrate_to(i % iso::size());
        int k[tags] = {};
        for (int m = 0; m < per_sender; ++m) send_note(receiver, {i, m % tags, k[m % tags]++});
      }));
    }
    iso::spawn([receiver, s] {
      for (iso::thread_id t : s) iso::join(t);
      iso::send(receiver, s.data(), s.size() * sizeof s[0], 9);
    });
  }
  rt->run();
}

TEST(Receive, TryRecvNeverBlocks) {
  if (rt->rank() == 0) {
    const iso::thread_id waiter = iso::spawn([] {
      EXPECT_FALSE(iso::try_recv().has_value());
      EXPECT_FALSE(iso::try_recv(iso::any_thread, 3).has_value());
      const iso::thread_id me = iso::this_thread::id();
      const int v = 42;
      iso::send(me, &v, sizeof v, 3);
      EXPECT_FALSE(iso::try_recv(iso::any_thread, 4).has_value());  // other tag: stays queued
      EXPECT_FALSE(iso::try_recv(iso::thread_id(0, 0), 3).has_value());  // other sender
      std::optional<iso::message> m = iso::try_recv(me, 3);
      ASSERT_TRUE(m.has_value());
      EXPECT_EQ(m->from, me);
      EXPECT_EQ(m->tag, 3);
      int got = 0;
      std::memcpy(&got, m->data.data(), sizeof got);
      EXPECT_EQ(got, 42);
      EXPECT_FALSE(iso::try_recv().has_value());  // taken once
      // From a thread on the last rank: polls, yielding, until it is there.
      iso::message go = iso::recv(iso::any_thread, 1);
      std::optional<iso::message> late;
      while (!(late = iso::try_recv(go.from, 2))) iso::this_thread::yield();
      EXPECT_EQ(late->tag, 2);
    });
    iso::spawn([waiter] {
      iso::this_thread::migrate_to(iso::size() - 1);
      iso::send(waiter, "go", 2, 1);
      iso::this_thread::sleep_for(5ms);
      iso::send(waiter, "late", 4, 2);
    });
  }
  rt->run();
}

TEST(Receive, RecvForTimesOutOrReceivesBeforeItsDeadlineAlsoWhileMigrating) {
  const int last = rt->size() - 1;
  if (rt->rank() == 0) {
    // W waits; S (on the last rank) sends; M moves W while it waits in recv_for.
    const iso::thread_id w = iso::spawn([last] {
      using clock = std::chrono::steady_clock;
      const std::vector<iso::thread_id> sm = read_ids(iso::recv(iso::thread_id(0, 0), 9));
      const iso::thread_id s = sm[0], m = sm[1];
      // Nothing comes (M never sends W a message): none, after at least the timeout.
      auto t0 = clock::now();
      EXPECT_FALSE(iso::recv_for(20ms, m).has_value());
      EXPECT_GE(clock::now() - t0, 20ms);
      EXPECT_FALSE(iso::recv_for(0ms, m).has_value());
      // Only a message it does not wait for comes: still none, and it stays queued.
      EXPECT_EQ(iso::recv(s, 1).data.size(), 1u);
      t0 = clock::now();
      EXPECT_FALSE(iso::recv_for(30ms, iso::any_thread, 7).has_value());
      EXPECT_GE(clock::now() - t0, 30ms);
      EXPECT_EQ(iso::recv(s, 2).data.size(), 1u);
      // The message comes long before the deadline (60 ms after S started, against 20 s): it
      // ends the wait, not the deadline.
      t0 = clock::now();
      std::optional<iso::message> got = iso::recv_for(20s, s, 3);
      ASSERT_TRUE(got.has_value());
      EXPECT_EQ(got->from, s);
      EXPECT_LT(clock::now() - t0, 10s) << "the message did not end the wait";
      // Moved to the last rank while it waits, and timing out there.
      iso::send(m, "w", 1, 1);
      t0 = clock::now();
      EXPECT_FALSE(iso::recv_for(300ms, s, 8).has_value());
      EXPECT_GE(clock::now() - t0, 300ms);
      EXPECT_EQ(iso::rank(), last);
      // Moved back while it waits; the message finds it on its new rank.
      iso::send(m, "w", 1, 2);
      t0 = clock::now();
      got = iso::recv_for(20s, s, 5);
      ASSERT_TRUE(got.has_value());
      EXPECT_EQ(iso::rank(), 0);
      EXPECT_LT(clock::now() - t0, 10s) << "the message did not end the wait on the new rank";
    });
    const iso::thread_id s = iso::spawn([w, last] {
      iso::this_thread::migrate_to(last);
      iso::send(w, "a", 1, 1);
      iso::send(w, "b", 1, 2);  // not what the 30 ms wait asks for
      iso::this_thread::sleep_for(60ms);
      iso::send(w, "c", 1, 3);
      iso::recv(iso::any_thread, 4);  // from M, once W has been moved home
      iso::send(w, "d", 1, 5);
    });
    const iso::thread_id m = iso::spawn([w, s, last] {
      iso::recv(w, 1);
      iso::this_thread::sleep_for(20ms);  // W sleeps in its 300 ms wait
      iso::migrate(w, last);
      iso::this_thread::migrate_to(last);
      iso::recv(w, 2);
      iso::this_thread::sleep_for(20ms);  // W sleeps in its last wait, now on the last rank
      iso::migrate(w, 0);
      iso::send(s, "go", 2, 4);
    });
    const iso::thread_id sm[] = {s, m};
    iso::send(w, sm, sizeof sm, 9);
  }
  rt->run();
}

// The mailbox is the thread's whatever heap its first receive ran in: made inside a
// system_heap_scope, it stayed on the rank and dangled once the thread moved.
TEST(Receive, AMailboxFirstUsedInsideASystemHeapScopeMovesWithItsThread) {
  static int got = -1;  // rank-local: set where the thread receives
  got = -1;
  iso::thread_id receiver;
  if (rt->rank() == 0) {
    receiver = iso::spawn([] {
      {
        iso::system_heap_scope system;
        (void)iso::try_recv();  // nothing there yet: makes the mailbox
      }
      iso::this_thread::migrate_to(iso::size() - 1);
      const iso::message m = iso::recv();
      std::memcpy(&got, m.data.data(), sizeof got);
    });
    iso::spawn([receiver] {
      iso::this_thread::sleep_for(50ms);  // after the receiver left
      const int v = 42;
      iso::send(receiver, &v, sizeof v);
    });
  }
  rt->run();
  if (rt->rank() == rt->size() - 1) {
    EXPECT_EQ(got, 42);
  }
}

TEST(Receive, NegativeTagsAreRefused) {
  iso::spawn([] {
    const iso::thread_id me = iso::this_thread::id();
    for (int tag : {-1, -2, -1000}) {
      try {
        iso::send(me, "x", 1, tag);
        ADD_FAILURE() << "iso::send with tag " << tag << " must throw";
      } catch (const iso::error& e) {
        EXPECT_EQ(e.code_value(), iso::errc::invalid_argument);
        EXPECT_NE(std::string(e.what()).find("negative"), std::string::npos) << e.what();
      }
    }
    EXPECT_THROW(iso::recv(iso::any_thread, -2), iso::error);
    EXPECT_THROW(iso::try_recv(iso::any_thread, -7), iso::error);
    EXPECT_FALSE(iso::try_recv().has_value());  // nothing was sent
  });
  rt->run();
}

// The most sequence-table entries the collector below had (mailbox.hpp), written on rank 0.
std::size_t g_most_entries = 0;

// A collector sends a job to each of 2,000 short-lived workers (one after another; every 7th
// moves to another rank first) and takes each one's answer, while a long-lived peer on another rank
// keeps streaming numbered messages to it, migrating: the collector's sequence tables stay bounded
// by the peers alive (they grew by two entries a worker: one for what it sent the worker, one for
// what the worker sent it), and the peer's stream arrives in order, each message once.
TEST(Receive, ThreadsThatEndLeaveNoSequenceEntriesWithTheirPeers) {
  constexpr int workers = 2000, streamed = 2000;
  if (rt->rank() == 0) {
    iso::spawn([] {
      const iso::thread_id me = iso::this_thread::id();
      const iso::thread_id peer = iso::spawn([me] {
        iso::this_thread::migrate_to(iso::size() - 1);
        for (int k = 0; k < streamed; ++k) {
          send_note(me, {0, 5, k});
          if (k % 500 == 499) iso::this_thread::migrate_to((iso::rank() + 1) % iso::size());
        }
      });
      stream_checker seen;
      std::size_t most = 0;
      for (int i = 0; i < workers; ++i) {
        const iso::thread_id w = iso::spawn([me, i] {
          if (i % 7 == 1) iso::this_thread::migrate_to(1 + i % (iso::size() - 1));
          const iso::message job = iso::recv(me, 1);
          int v = 0;
          std::memcpy(&v, job.data.data(), sizeof v);
          ++v;
          iso::send(me, &v, sizeof v, 2);
        });
        iso::send(w, &i, sizeof i, 1);
        const iso::message answer = iso::recv(w, 2);
        int v = 0;
        std::memcpy(&v, answer.data.data(), sizeof v);
        ASSERT_EQ(v, i + 1);
        while (std::optional<iso::message> m = iso::try_recv(iso::any_thread, 5)) seen.take(read_note(*m));
        most = std::max(most, iso::detail::sequence_entries(iso::detail::scheduler::current()->running()));
      }
      while (seen.next(0, 5) < streamed) seen.take(read_note(iso::recv(peer, 5)));
      iso::join(peer);
      g_most_entries = most;
    });
  }
  rt->run();
  // The peer, the worker of the moment, and the notices of a few that ended on other ranks still
  // on their way.
  if (rt->rank() == 0) {
    EXPECT_LE(g_most_entries, 32u) << "the collector's sequence tables grew with its workers";
  }
}

// Threads that send numbered messages to themselves, some after moving to another rank, then
// end: nothing is forwarded or dropped (a thread's notices to itself, sent once it is gone from
// its rank's table, went out to its home and were forwarded back before they were dropped).
TEST(Receive, ThreadsThatSentToThemselvesEnd) {
  constexpr int threads = 8;
  const auto before = iso::detail::engine::current()->stats();
  if (rt->rank() == 0) {
    for (int i = 0; i < threads; ++i) {
      iso::spawn([i] {
        if (i % 2 == 1) iso::this_thread::migrate_to(i % iso::size());
        const iso::thread_id me = iso::this_thread::id();
        for (int k = 0; k < 3; ++k) send_note(me, {i, 1, k});
        stream_checker seen;
        for (int k = 0; k < 3; ++k) seen.take(read_note(iso::recv(me, 1)));
      });
    }
  }
  rt->run();
  const auto after = iso::detail::engine::current()->stats();
  EXPECT_EQ(after.dropped, before.dropped);
  EXPECT_EQ(after.forwarded, before.forwarded);
}

// Whether this rank's main has a sequence counter for any of `ids` (messages it sent them).
bool main_counts_any(const std::vector<iso::thread_id>& ids) {
  const auto counters = iso::detail::engine::current()->main_sequences();
  return std::any_of(counters.begin(), counters.end(), [&](const auto& c) {
    return std::find(ids.begin(), ids.end(), iso::thread_id::from_bits(c.first)) != ids.end();
  });
}

// Each rank's main sends a numbered message to threads that take it and end, some on another
// rank: once they have, main keeps no counter for them (its table grew by one a thread).
TEST(Receive, MainKeepsNoCountersForThreadsThatEnd) {
  constexpr int threads = 40;
  std::vector<iso::thread_id> ids;
  for (int i = 0; i < threads; ++i) {
    ids.push_back(iso::spawn([i] {
      if (i % 2 == 1) iso::this_thread::migrate_to((iso::rank() + 1) % iso::size());
      const iso::message m = iso::recv();
      int v = -1;
      ASSERT_EQ(m.data.size(), sizeof v);
      std::memcpy(&v, m.data.data(), sizeof v);
      EXPECT_EQ(v, i);
    }));
    iso::send(ids.back(), &i, sizeof i);
  }
  EXPECT_TRUE(main_counts_any(ids));
  rt->run();
  EXPECT_FALSE(main_counts_any(ids)) << "main kept counters for threads that ended";
}

// The member list spawn_group hands out is unsequenced: a group spawned by main leaves main no
// counter for its members, even while they live.
TEST(Receive, SpawnGroupLeavesMainNoCounters) {
  const iso::group g = iso::spawn_group(8, [](int, const iso::group&) {});
  EXPECT_FALSE(main_counts_any(g.members())) << "main numbered the member lists";
  rt->run();
}

}  // namespace
