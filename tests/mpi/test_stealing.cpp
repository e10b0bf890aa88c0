// Work stealing under iso::runtime (iso::stealing, spawn_options::stealable): idle ranks take
// ready stealable threads, every thread runs to its end exactly once wherever it was taken,
// messages and futures follow stolen threads, lb::sync steps interleave with steals, and a
// thread that is not stealable (or holds an iso::mutex) never moves by stealing. Randomised
// parts are seeded (printed; ISO_TEST_SEED replays the seed, timing aside).
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <random>
#include <set>
#include <vector>

#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"
#include "test_seed.hpp"

namespace {

using iso_test::rt;

// Tags of the tests' messages.
constexpr int tag_moved = 1;
constexpr int tag_done = 2;
constexpr int tag_stop = 3;
constexpr int tag_hello = 4;

struct report {
  int index;        // which worker
  int start_rank;   // where its body began (a thread may be stolen before it starts)
  int end_rank;     // where it ended
  int moves;        // times it found itself on another rank than before (spawned on rank 0)
  std::uint64_t sum;
};

// Work that cannot be optimised away: a few microseconds.
std::uint64_t churn(std::uint64_t x, int rounds) {
  for (int i = 0; i < rounds; ++i) x = x * 6364136223846793005ull + 1442695040888963407ull;
  return x;
}

// Sum over this rank's steal statistics, on every rank.
iso::steal_stats global_steal_stats() {
  const iso::steal_stats s = iso::stealing_stats();
  std::uint64_t mine[4] = {s.requests, s.stolen, s.refused, s.given}, all[4] = {};
  MPI_Allreduce(mine, all, 4, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  return {all[0], all[1], all[2], all[3]};
}

// Stealing must be off unless a test turns it on, and each test leaves it off.
class Stealing : public testing::Test {
 protected:
  void TearDown() override { iso::stealing(false); }
};

TEST_F(Stealing, OffByDefaultAndStealableThreadsThenStay) {
  EXPECT_FALSE(iso::stealing());
  const iso::steal_stats before = global_steal_stats();
  if (rt->rank() == 0) {
    for (int i = 0; i < 16; ++i) {
      iso::spawn(
          [] {
            for (int k = 0; k < 200; ++k) {
              EXPECT_EQ(iso::rank(), 0);
              iso::this_thread::yield();
            }
          },
          iso::spawn_options{.stealable = true});
    }
  }
  rt->run();
  const iso::steal_stats after = global_steal_stats();
  EXPECT_EQ(after.requests, before.requests);
  EXPECT_EQ(after.stolen, before.stolen);
}

// Rank 0 holds every worker at first. Stealable workers spin (work and yield, so they stay
// ready) until the controller has heard from a worker on every other rank, then they are told to
// stop: so the test ends only if every other rank stole. Workers that are not stealable, and
// stealable ones while they hold an iso::mutex, must stay where they are.
TEST_F(Stealing, IdleRanksStealEachThreadRunsOnceAndMessagesFollowIt) {
  const std::uint64_t seed = iso_test::test_seed("Stealing.IdleRanksSteal");
  iso::stealing(true);
  EXPECT_TRUE(iso::stealing());
  const iso::steal_stats before = global_steal_stats();
  constexpr int stealable_workers = 40;
  constexpr int fixed_workers = 8;
  if (rt->rank() == 0) {
    iso::spawn([seed] {
      const iso::thread_id controller = iso::this_thread::id();
      std::mt19937_64 rng(seed);
      std::vector<iso::thread_id> workers;
      for (int i = 0; i < stealable_workers + fixed_workers; ++i) {
        const bool stealable = i < stealable_workers;
        const int rounds = 50 + static_cast<int>(rng() % 400);
        const bool locks = stealable && rng() % 4 == 0;  // holds a mutex over some of its yields
        workers.push_back(iso::spawn(
            [=] {
              report r{i, iso::rank(), iso::rank(), 0, static_cast<std::uint64_t>(i)};
              int here = 0;  // where it was spawned
              for (int k = 0;; ++k) {
                r.sum = churn(r.sum, rounds);
                if (locks && k % 8 == 0) {
                  iso::mutex m;
                  m.lock();
                  const int at = iso::rank();
                  for (int y = 0; y < 4; ++y) {
                    iso::this_thread::yield();
                    EXPECT_EQ(iso::rank(), at) << "worker " << i << " moved while it held an iso::mutex";
                  }
                  m.unlock();
                }
                if (iso::rank() != here) {
                  ++r.moves;
                  here = iso::rank();
                  iso::send(controller, &here, sizeof here, tag_moved);
                }
                if (iso::try_recv(controller, tag_stop)) break;
                iso::this_thread::yield();
              }
              r.end_rank = iso::rank();
              iso::send(controller, &r, sizeof r, tag_done);
            },
            iso::spawn_options{.name = stealable ? "stealable" : "fixed", .stealable = stealable}));
      }
      // Hear from a stolen worker on every other rank (each rank steals once it is idle).
      std::set<int> ranks_heard;
      int moves_heard = 0;
      while (static_cast<int>(ranks_heard.size()) < iso::size() - 1) {
        ++moves_heard;
        const iso::message m = iso::recv(iso::any_thread, tag_moved);
        int at = -1;
        std::memcpy(&at, m.data.data(), sizeof at);
        EXPECT_NE(at, 0);
        ranks_heard.insert(at);
      }
      for (iso::thread_id w : workers) iso::send(w, nullptr, 0, tag_stop);
      std::vector<int> seen(workers.size(), 0);
      int moved = 0;
      for (std::size_t n = 0; n < workers.size(); ++n) {
        const iso::message m = iso::recv(iso::any_thread, tag_done);
        ASSERT_EQ(m.data.size(), sizeof(report));
        report r;
        std::memcpy(&r, m.data.data(), sizeof r);
        ASSERT_GE(r.index, 0);
        ASSERT_LT(r.index, static_cast<int>(workers.size()));
        EXPECT_EQ(m.from, workers[static_cast<std::size_t>(r.index)]);
        ++seen[static_cast<std::size_t>(r.index)];
        if (r.index >= stealable_workers) {
          EXPECT_EQ(r.start_rank, 0) << "worker " << r.index << " is not stealable but moved";
          EXPECT_EQ(r.end_rank, 0) << "worker " << r.index << " is not stealable but moved";
          EXPECT_EQ(r.moves, 0);
        }
        moved += r.moves;
      }
      for (std::size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], 1) << "worker " << i;
      // A worker's move reports all came before its final report (order per sender): each move
      // was reported exactly once.
      while (iso::try_recv(iso::any_thread, tag_moved)) ++moves_heard;
      EXPECT_EQ(moves_heard, moved);
      EXPECT_GE(moved, iso::size() - 1);
      EXPECT_FALSE(iso::try_recv().has_value());  // nothing duplicated
    });
  }
  rt->run();
  const iso::steal_stats after = global_steal_stats();
  const std::uint64_t stolen = after.stolen - before.stolen;
  EXPECT_GE(stolen, static_cast<std::uint64_t>(rt->size() - 1));
  EXPECT_EQ(stolen, after.given - before.given);  // each thread given was taken by exactly one thief
  // Each request got one answer: a thread or "none".
  EXPECT_EQ(after.requests - before.requests, stolen + (after.refused - before.refused));
}

// fib by futures: every async thread is stealable, producers are stolen while their getters wait
// elsewhere, and get() brings each value back. The result and the count of bodies run are exact.
struct fib_result {
  std::uint64_t value;
  std::uint64_t bodies;  // async bodies run for it, itself included
};

std::uint64_t serial_fib(int n) { return n < 2 ? static_cast<std::uint64_t>(n) : serial_fib(n - 1) + serial_fib(n - 2); }

fib_result fib_by_futures(int n, int cutoff) {
  if (n < cutoff) return {serial_fib(n), 1};
  iso::future<fib_result> left = iso::async([n, cutoff] { return fib_by_futures(n - 1, cutoff); });
  iso::future<fib_result> right = iso::async([n, cutoff] { return fib_by_futures(n - 2, cutoff); });
  const fib_result a = left.get(), b = right.get();
  return {a.value + b.value, a.bodies + b.bodies + 1};
}

// Bodies fib_by_futures(n, cutoff) runs as async threads, the call itself counted as one.
std::uint64_t fib_bodies(int n, int cutoff) { return n < cutoff ? 1 : fib_bodies(n - 1, cutoff) + fib_bodies(n - 2, cutoff) + 1; }

struct produced {
  std::uint64_t value;
  int rank;  // where the producer returned it
};

TEST_F(Stealing, FuturesWhoseProducersAreStolen) {
  const std::uint64_t seed = iso_test::test_seed("Stealing.FuturesWhoseProducersAreStolen");
  std::mt19937_64 rng(seed);
  const int n = 21 + static_cast<int>(rng() % 3);
  const int cutoff = 8 + static_cast<int>(rng() % 4);
  iso::stealing(true);
  const iso::steal_stats before = global_steal_stats();
  if (rt->rank() == 0) {
    iso::spawn([n, cutoff] {
      // Producers that stay ready until one of them has been stolen: get() fetches values from
      // stolen producers, and the stop messages reach them where they are.
      constexpr int producers = 4;
      const iso::thread_id root = iso::this_thread::id();
      std::vector<iso::future<produced>> waiting;
      for (int k = 0; k < producers; ++k) {
        waiting.push_back(iso::async([root, k] {
          const iso::thread_id me = iso::this_thread::id();
          iso::send(root, &me, sizeof me, tag_hello);
          bool reported = false;
          while (!iso::try_recv(root, tag_stop)) {
            if (iso::rank() != 0 && !reported) {
              const int at = iso::rank();
              iso::send(root, &at, sizeof at, tag_moved);
              reported = true;
            }
            iso::this_thread::yield();
          }
          return produced{serial_fib(10 + k), iso::rank()};
        }));
      }
      std::vector<iso::thread_id> ids;
      for (int k = 0; k < producers; ++k) {
        const iso::message m = iso::recv(iso::any_thread, tag_hello);
        iso::thread_id id;
        std::memcpy(&id, m.data.data(), sizeof id);
        EXPECT_EQ(id, m.from);
        ids.push_back(id);
      }
      (void)iso::recv(iso::any_thread, tag_moved);
      for (iso::thread_id id : ids) iso::send(id, nullptr, 0, tag_stop);
      int elsewhere = 0;
      for (int k = 0; k < producers; ++k) {
        const produced p = waiting[static_cast<std::size_t>(k)].get();
        EXPECT_EQ(p.value, serial_fib(10 + k));
        elsewhere += p.rank != 0 ? 1 : 0;
      }
      EXPECT_GE(elsewhere, 1);
      while (iso::try_recv(iso::any_thread, tag_moved)) {
      }

      const fib_result r = fib_by_futures(n, cutoff);
      EXPECT_EQ(r.value, serial_fib(n)) << "fib(" << n << ") with cutoff " << cutoff;
      EXPECT_EQ(r.bodies, fib_bodies(n, cutoff));  // the root too, run here by a plain thread
    });
  }
  rt->run();
  const iso::steal_stats after = global_steal_stats();
  EXPECT_EQ(after.stolen - before.stolen, after.given - before.given);
  EXPECT_EQ(after.requests - before.requests, (after.stolen - before.stolen) + (after.refused - before.refused));
}

// Threads on every rank do seeded amounts of work between lb::sync steps, with stealing on: the
// balancer's moves and thieves' steals interleave, and each thread still does every iteration
// exactly once, sees every step and ends with the state a serial run computes (its generator and
// running value live on its stack). Some steals must come after a step: a thread finds itself on
// another rank after a yield (only a steal moves a thread there; the balancer moves threads in
// lb::sync).
struct lb_thread_state {
  std::uint64_t x;
  std::mt19937_64 rng;
  explicit lb_thread_state(std::uint64_t seed) : x(seed), rng(seed) {}
  void iterate(int weight) { x = churn(x, weight * (100 + static_cast<int>(rng() % 400))); }
};

TEST_F(Stealing, LbSyncStepsInterleaveWithSteals) {
  const std::uint64_t seed = iso_test::test_seed("Stealing.LbSyncStepsInterleaveWithSteals");
  iso::stealing(true);
  constexpr int threads_per_rank = 6;
  constexpr int steps = 6;
  constexpr int iterations = 10;  // between two steps
  const iso::steal_stats before = global_steal_stats();
  // No collector thread: a step waits for every live thread to be in lb::sync. Each thread counts
  // its iterations where it runs them and its result where it ends; the totals are reduced after
  // run().
  static std::uint64_t iterations_done = 0;  // on this rank
  static std::uint64_t threads_done = 0;     // threads that ended on this rank
  static std::uint64_t checksum = 0;         // sum of their final values
  static std::uint64_t steals_seen = 0;      // yields after which a thread was on another rank
  static std::uint64_t steals_seen_after_a_step = 0;
  iterations_done = threads_done = checksum = steals_seen = steals_seen_after_a_step = 0;
  const auto thread_seed = [seed](int rank, int i) {
    return seed ^ (static_cast<std::uint64_t>(rank) << 32) ^ static_cast<std::uint64_t>(i);
  };
  // In step s the threads spawned on rank s % size are the heavy ones: the balancer plans from
  // the step before, so every step leaves ranks idle early, and they steal.
  const int ranks_spawning = rt->size();
  const auto weight_of = [ranks_spawning](int rank, int step) { return rank == step % ranks_spawning ? 100 : 1; };
  for (int i = 0; i < threads_per_rank; ++i) {
    iso::spawn(
        [my_seed = thread_seed(rt->rank(), i), origin = rt->rank(), weight_of] {
          lb_thread_state state(my_seed);
          for (int s = 0; s < steps; ++s) {
            for (int k = 0; k < iterations; ++k) {
              state.iterate(weight_of(origin, s));
              ++iterations_done;
              const int at = iso::rank();
              iso::this_thread::yield();
              if (iso::rank() != at) {
                ++steals_seen;
                if (s > 0) ++steals_seen_after_a_step;
              }
            }
            iso::lb::sync();
          }
          checksum += state.x;
          ++threads_done;
        },
        iso::spawn_options{.stealable = true});
  }
  rt->run();
  std::uint64_t mine_counts[5] = {iterations_done, threads_done, checksum, steals_seen, steals_seen_after_a_step},
                all[5] = {};
  MPI_Allreduce(mine_counts, all, 5, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  std::uint64_t expected_checksum = 0;
  for (int r = 0; r < rt->size(); ++r) {
    for (int i = 0; i < threads_per_rank; ++i) {
      lb_thread_state state(thread_seed(r, i));
      for (int k = 0; k < steps * iterations; ++k) state.iterate(weight_of(r, k / iterations));
      expected_checksum += state.x;
    }
  }
  const auto ranks = static_cast<std::uint64_t>(rt->size());
  EXPECT_EQ(all[0], ranks * threads_per_rank * steps * iterations);
  EXPECT_EQ(all[1], ranks * threads_per_rank);
  EXPECT_EQ(all[2], expected_checksum);
  const iso::steal_stats after = global_steal_stats();
  const std::uint64_t stolen = after.stolen - before.stolen;
  EXPECT_EQ(stolen, after.given - before.given);
  EXPECT_GE(stolen, 1u);
  EXPECT_LE(all[3], stolen);  // a thread can also be stolen before it starts or leaving lb::sync
  EXPECT_GE(all[4], 1u) << "no steal between two lb::sync steps (" << stolen << " steals in all)";
}

// A victim that turned stealing off mid-run still answers: rank 0 keeps it on and, idle (its only
// thread sleeps), keeps asking; every other rank turns it off and sleeps. Each request must get
// its "none" within the idle back-off, not when the run ends.
TEST_F(Stealing, AVictimThatTurnedStealingOffStillAnswers) {
  iso::stealing(true);
  using namespace std::chrono_literals;
  if (rt->rank() == 0) {
    iso::spawn([] {
      iso::this_thread::sleep_for(30ms);  // the others are off by now, and idle
      const iso::steal_stats a = iso::stealing_stats();
      iso::this_thread::sleep_for(100ms);
      const iso::steal_stats b = iso::stealing_stats();
      EXPECT_GE(b.requests - a.requests, 2u);
      EXPECT_GE(b.refused - a.refused, 1u) << "no answer from ranks with stealing off in 100 ms";
    });
  } else {
    iso::spawn([] {
      iso::stealing(false);
      iso::this_thread::sleep_for(200ms);
    });
  }
  rt->run();
  const iso::steal_stats s = global_steal_stats();
  EXPECT_EQ(s.requests, s.stolen + s.refused);
}

// Idle ranks that keep asking for work must neither hide a deadlock (their requests are not
// counted as work) nor be taken for one while a thread can still run; the run after the deadlock
// is resolved ends normally.
TEST_F(Stealing, ADeadlockWithStealingOnIsReportedOnEveryRank) {
  iso::stealing(true);
  // One thread per rank, blocked in a receive nobody sends to: a rank keeps its only ready thread,
  // so none is stolen before it blocks.
  const iso::thread_id waiter = iso::spawn([] { (void)iso::recv(iso::any_thread, tag_stop); },
                                           iso::spawn_options{.stealable = true});
  try {
    rt->run();
    ADD_FAILURE() << "run() returned with every thread blocked";
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code_value(), iso::errc::deadlock) << e.what();
  }
  iso::send(waiter, nullptr, 0, tag_stop);  // from main: the waiter can end now
  rt->run();
  const iso::steal_stats s = global_steal_stats();
  EXPECT_EQ(s.requests, s.stolen + s.refused);  // every request was answered
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Last of the suite: tracing stays on for the later runs of this process.
TEST_F(Stealing, TheTraceMarksEachStealAndNothingElse) {
  const std::string path = "trace-steals.json";  // the same on every rank; rank 0 writes it
  iso::trace::enable(path);
  iso::stealing(true);
  const iso::steal_stats before = global_steal_stats();
  static std::uint64_t given_before = 0;
  given_before = iso::stealing_stats().given;
  if (rt->rank() == 0) {
    // One thread that moves by migrate_to (a migration, not a steal), and stealable ones that
    // yield until rank 0 has given a few away.
    iso::spawn([] {
      iso::this_thread::migrate_to(1);
      iso::this_thread::migrate_to(0);
    });
    for (int i = 0; i < 8; ++i) {
      iso::spawn(
          [] {
            for (int k = 0; k < 100000 && iso::rank() == 0 && iso::stealing_stats().given - given_before < 3; ++k) {
              iso::this_thread::yield();
            }
          },
          iso::spawn_options{.stealable = true});
    }
  }
  rt->run();
  const iso::steal_stats after = global_steal_stats();
  const std::uint64_t stolen = after.stolen - before.stolen;
  EXPECT_GE(stolen, 1u);
  if (rt->rank() == 0) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    const std::string t = text.str();
    EXPECT_EQ(occurrences(t, R"("name":"steal )"), stolen);   // departures to thieves
    EXPECT_EQ(occurrences(t, R"("name":"stolen )"), stolen);  // their arrivals
    EXPECT_EQ(occurrences(t, R"("steal":true)"), 2 * stolen);
    EXPECT_EQ(occurrences(t, R"("name":"migrate )"), 2u);     // the migrate_to pair, not marked
    std::remove(path.c_str());
  }
}

TEST(StealingOptions, IsoStealMapsOntoRuntimeOptions) {
  ::setenv("ISO_STEAL", "1", 1);
  ::setenv("ISO_STEAL_SEED", "12345", 1);
  const iso::runtime_options on = iso::runtime_options::from_environment();
  EXPECT_TRUE(on.steal);
  EXPECT_EQ(on.steal_seed, 12345u);
  ::setenv("ISO_STEAL", "yes", 1);
  try {
    (void)iso::runtime_options::from_environment();
    ADD_FAILURE() << "ISO_STEAL=yes was accepted";
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code_value(), iso::errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("ISO_STEAL=yes"), std::string::npos) << e.what();
  }
  ::setenv("ISO_STEAL", "0", 1);
  for (const char* bad : {"-3", " -3", " 3", "+3", "3x", "99999999999999999999"}) {
    ::setenv("ISO_STEAL_SEED", bad, 1);
    EXPECT_THROW((void)iso::runtime_options::from_environment(), iso::error) << "ISO_STEAL_SEED=\"" << bad << '"';
  }
  ::unsetenv("ISO_STEAL_SEED");
  EXPECT_FALSE(iso::runtime_options::from_environment().steal);
  ::unsetenv("ISO_STEAL");
  EXPECT_FALSE(iso::runtime_options::from_environment().steal);
  EXPECT_FALSE(iso::runtime_options{}.steal);
}

}  // namespace
