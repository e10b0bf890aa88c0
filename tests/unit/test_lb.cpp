// The built-in load-balancing strategies on synthetic loads.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "isothreads/error.hpp"
#include "isothreads/lb.hpp"

namespace iso::lb {
namespace {

problem make(int ranks, const std::vector<std::pair<int, double>>& threads) {
  problem p;
  p.ranks = ranks;
  p.background.assign(static_cast<std::size_t>(ranks), 0.0);
  std::uint64_t serial = 1;
  for (auto [rank, load] : threads) p.threads.push_back({thread_id(rank, serial++), rank, load, 4096});
  return p;
}

// Rank loads after applying the moves; also checks that every move is valid and moves a thread
// at most once.
std::vector<double> after_moves(const problem& p, const std::vector<move>& moves) {
  std::vector<double> load = p.background;
  std::map<thread_id, int> where;
  for (const auto& t : p.threads) where[t.id] = t.rank;
  std::set<thread_id> moved;
  for (const move& m : moves) {
    EXPECT_TRUE(where.count(m.id)) << "unknown thread " << m.id.to_string();
    EXPECT_EQ(where[m.id], m.from);
    EXPECT_NE(m.from, m.to);
    EXPECT_GE(m.to, 0);
    EXPECT_LT(m.to, p.ranks);
    EXPECT_TRUE(moved.insert(m.id).second) << "thread moved twice";
    where[m.id] = m.to;
  }
  for (const auto& t : p.threads) load[static_cast<std::size_t>(where[t.id])] += t.load;
  return load;
}

double max_over_avg(const std::vector<double>& load) {
  const double avg = std::accumulate(load.begin(), load.end(), 0.0) / static_cast<double>(load.size());
  return *std::max_element(load.begin(), load.end()) / avg;
}

// Typical distributions: everything on one rank, uniform random, heavy-tailed, a hot spot.
std::vector<problem> typical(int ranks, int threads) {
  std::mt19937 rng(12345);
  std::vector<problem> out;
  std::vector<std::pair<int, double>> all_on_zero, uniform, tailed, hot;
  std::uniform_real_distribution<double> u(0.5, 1.5);
  std::exponential_distribution<double> e(1.0);
  for (int i = 0; i < threads; ++i) {
    all_on_zero.push_back({0, u(rng)});
    uniform.push_back({i % ranks, u(rng)});
    tailed.push_back({static_cast<int>(rng() % static_cast<unsigned>(ranks)), e(rng)});
    hot.push_back({i % ranks, i % ranks == 1 ? 4.0 : 1.0});
  }
  for (const auto* v : {&all_on_zero, &uniform, &tailed, &hot}) out.push_back(make(ranks, *v));
  return out;
}

TEST(Greedy, ReachesNearBalanceOnTypicalDistributions) {
  for (int ranks : {2, 4, 16}) {
    for (const problem& p : typical(ranks, 40 * ranks)) {
      const auto moves = greedy()->plan(p);
      EXPECT_LE(max_over_avg(after_moves(p, moves)), 1.1) << ranks << " ranks";
    }
  }
}

TEST(Greedy, AccountsForBackgroundLoad) {
  problem p = make(2, {{0, 1}, {0, 1}, {1, 1}, {1, 1}});
  p.background = {0, 2};  // rank 1 is busy with something else
  const auto load = after_moves(p, greedy()->plan(p));
  EXPECT_DOUBLE_EQ(load[0], 3);  // three threads here, one beside rank 1's background: 3 and 3
  EXPECT_DOUBLE_EQ(load[1], 3);
}

TEST(Refine, StaysWithinToleranceAndMovesLittle) {
  for (const problem& p : typical(4, 160)) {
    const auto moves = refine(0.05)->plan(p);
    const auto load = after_moves(p, moves);
    // Moves only threads of ranks that were overloaded, each once.
    std::vector<double> before = after_moves(p, {});
    const double avg = std::accumulate(before.begin(), before.end(), 0.0) / 4;
    std::size_t on_overloaded = 0;
    for (const auto& t : p.threads) on_overloaded += before[static_cast<std::size_t>(t.rank)] > avg * 1.05;
    EXPECT_LE(moves.size(), on_overloaded);
    for (const move& m : moves) EXPECT_GT(before[static_cast<std::size_t>(m.from)], avg * 1.05);
    EXPECT_LE(max_over_avg(load), std::max(1.05 + 0.1, 1.0));
  }
  // One extra thread's worth of imbalance: refine moves one thread, greedy reshuffles.
  problem p = make(2, {{0, 1}, {0, 1}, {0, 1}, {1, 1}});
  EXPECT_EQ(refine()->plan(p).size(), 1u);
  EXPECT_LE(max_over_avg(after_moves(p, refine()->plan(p))), 1.0 + 1e-9);
}

TEST(Refine, BalancedInputMovesNothing) {
  const problem p = make(4, {{0, 1}, {1, 1}, {2, 1}, {3, 1.04}});
  EXPECT_TRUE(refine(0.05)->plan(p).empty());
}

TEST(Rotate, MovesEveryThreadToTheNextRank) {
  const problem p = make(3, {{0, 1}, {1, 2}, {2, 3}, {2, 0}});
  const auto moves = rotate()->plan(p);
  ASSERT_EQ(moves.size(), 4u);
  for (const move& m : moves) EXPECT_EQ(m.to, (m.from + 1) % 3);
}

TEST(Strategies, EdgeCases) {
  for (const char* name : {"greedy", "refine", "rotate", "none"}) {
    auto s = by_name(name);
    EXPECT_STREQ(s->name(), name);
    const problem one = make(4, {{2, 1.0}});
    after_moves(one, s->plan(one));
    const problem more_ranks = make(8, {{0, 1}, {0, 2}, {0, 3}});
    const auto load = after_moves(more_ranks, s->plan(more_ranks));
    if (std::string(name) == "greedy") {
      EXPECT_DOUBLE_EQ(*std::max_element(load.begin(), load.end()), 3.0);
    }
    const problem zero = make(4, {{0, 0}, {0, 0}, {1, 0}});
    const auto zmoves = s->plan(zero);
    if (std::string(name) != "rotate") {
      EXPECT_TRUE(zmoves.empty()) << name << " moved threads with no load";
    }
    const problem empty = make(4, {});
    EXPECT_TRUE(s->plan(empty).empty());
  }
}

TEST(Strategies, DeterministicAcrossCalls) {
  for (const problem& p : typical(4, 100)) {
    const auto a = greedy()->plan(p);
    const auto b = greedy()->plan(p);
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].id, b[i].id);
  }
}

// A thread that cannot move (it holds an iso::mutex) stays, and the others balance around it.
TEST(Strategies, ThreadsThatCannotMoveStayAndTheRestBalanceAroundThem) {
  problem p = make(2, {{0, 4.0}, {0, 1.0}, {0, 1.0}, {0, 1.0}, {0, 1.0}});
  p.threads[0].movable = false;
  for (const char* name : {"greedy", "refine"}) {
    const std::unique_ptr<strategy> s = by_name(name);
    const std::vector<move> moves = s->plan(p);
    for (const move& m : moves) EXPECT_NE(m.id, p.threads[0].id) << s->name() << " moved an unmovable thread";
    const std::vector<double> load = after_moves(p, moves);
    EXPECT_DOUBLE_EQ(load[0], 4.0) << s->name();
    EXPECT_DOUBLE_EQ(load[1], 4.0) << s->name();
  }
}

TEST(Strategies, UnknownNameIsAnError) {
  try {
    by_name("fastest");
    FAIL();
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code_value(), errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("fastest"), std::string::npos);
  }
  EXPECT_THROW(refine(-1), iso::error);
}

}  // namespace
}  // namespace iso::lb
