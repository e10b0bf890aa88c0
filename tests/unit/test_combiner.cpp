// The partial tree of a rank's collectives (migrate/internal/combiner.hpp) when memory runs out in
// the middle of a put: a merge that throws std::bad_alloc must keep every leaf put so far, the
// ones merged into the block being put included, so that the rank still sends them all to member
// 0. And the cache of system blocks the rank's collectives use: its sizes, its limit, its trim.
// The collectives themselves are tested through the runtime (tests/mpi/test_collectives.cpp,
// running out of memory too, by fault injection).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "combiner.hpp"
#include "scheduler.hpp"

namespace iso::detail {
namespace {

int g_allocations_left = -1;  // allocations the next ones may make; -1: any number
int g_allocations = 0;        // made so far

template <class T>
struct limited_allocator {
  using value_type = T;
  limited_allocator() noexcept = default;
  template <class U>
  limited_allocator(const limited_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (g_allocations_left == 0) throw std::bad_alloc();
    if (g_allocations_left > 0) --g_allocations_left;
    ++g_allocations;
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
  template <class U>
  bool operator==(const limited_allocator<U>&) const noexcept { return true; }
};

using tree = partial_tree<limited_allocator<std::byte>>;

// Leaf i: `leaf_bytes` times the character c, as many as a block keeps inline (small_bytes): the
// leaves are inline, a merge of two needs more and allocates.
constexpr std::size_t leaf_bytes = small_bytes<std::allocator<std::byte>>::inline_bytes;

void put_leaf(tree& t, std::uint32_t i, char c, const merge_rule& r, std::uint32_t n = 4) {
  const std::string v(leaf_bytes, c);
  t.put_bytes(0, i, reinterpret_cast<const std::byte*>(v.data()), v.size(), false, n, r);
}

// "level:lo:" and the first character of every leaf_bytes of each block, sorted.
template <class Tree>
std::vector<std::string> drained(Tree& t, std::uint32_t n) {
  std::vector<std::string> blocks;
  t.drain(n, [&](std::uint32_t level, std::uint32_t lo, auto&& p) {
    EXPECT_FALSE(p.failed);
    std::string b = std::to_string(level) + ":" + std::to_string(lo) + ":";
    for (std::size_t at = 0; at < p.data.size(); at += leaf_bytes) b += static_cast<char>(p.data.data()[at]);
    blocks.push_back(b);
  });
  std::sort(blocks.begin(), blocks.end());
  return blocks;
}

TEST(PartialTree, AMergeThatRunsOutOfMemoryKeepsTheBlockItWasPutting) {
  const merge_rule concatenate{{nullptr, nullptr, 1}, "iso::gather"};
  tree t;
  put_leaf(t, 0, 'a', concatenate);
  put_leaf(t, 1, 'b', concatenate);  // [0, 2) = "ab", in a block of capacity 2 leaves
  put_leaf(t, 2, 'c', concatenate);
  // Leaf 3 merges into leaf 2 (one allocation: "cd"), and [2, 4) then into [0, 2), which must
  // grow "ab" and cannot.
  g_allocations_left = 1;
  EXPECT_THROW(put_leaf(t, 3, 'd', concatenate), std::bad_alloc);
  g_allocations_left = -1;
  EXPECT_FALSE(t.root().has_value());
  EXPECT_EQ(drained(t, 4), (std::vector<std::string>{"1:0:ab", "1:2:cd"})) << "every leaf, once";
  EXPECT_TRUE(t.empty());
}

// The same on the table (leaves out of index order): the block being put is kept beside the
// sibling whose merge threw.
TEST(PartialTree, AMergeThatRunsOutOfMemoryOnTheTableKeepsTheBlockItWasPutting) {
  const merge_rule concatenate{{nullptr, nullptr, 1}, "iso::gather"};
  tree t;
  put_leaf(t, 3, 'd', concatenate);
  put_leaf(t, 2, 'c', concatenate);  // not where the run of leaf 3 ends: the table, [2, 4) = "cd"
  put_leaf(t, 1, 'b', concatenate);
  // Leaf 0 merges with leaf 1 (one allocation: "ab"), and [0, 2) then with [2, 4), which must
  // grow "ab" and cannot.
  g_allocations_left = 1;
  EXPECT_THROW(put_leaf(t, 0, 'a', concatenate), std::bad_alloc);
  g_allocations_left = -1;
  EXPECT_FALSE(t.root().has_value());
  EXPECT_EQ(drained(t, 4), (std::vector<std::string>{"1:0:ab", "1:2:cd"})) << "every leaf, once";
  EXPECT_TRUE(t.empty());
}

// A value that fits a block inline (a scalar's 8 bytes) costs no allocation: leaves kept until
// their siblings come, and the merges, allocate only the table of blocks (8 slots, then 16).
TEST(PartialTree, ScalarLeavesAllocateOnlyTheTable) {
  const merge_rule sum{combiner_for<std::uint64_t>(iso::sum), "iso::allreduce"};
  partial_tree<limited_allocator<std::byte>> t;
  const std::uint64_t one = 1;
  g_allocations = 0;
  for (std::uint32_t i = 64; i-- > 0;) {  // in reverse: blocks wait for their left siblings
    t.put_bytes(0, i, reinterpret_cast<const std::byte*>(&one), sizeof one, false, 64, sum);
  }
  EXPECT_LE(g_allocations, 2);
  ASSERT_TRUE(t.root().has_value());
  std::uint64_t total = 0;
  std::memcpy(&total, t.root()->data.data(), sizeof total);
  EXPECT_EQ(total, 64u);
}

// Leaves that come in index order (a rank's members deposit in the order they run) are combined
// on the run of contiguous blocks, without the table: not even its first allocation.
TEST(PartialTree, ScalarLeavesInIndexOrderAllocateNothing) {
  const merge_rule sum{combiner_for<std::uint64_t>(iso::sum), "iso::allreduce"};
  for (std::uint32_t first : {0u, 32u, 5u}) {
    partial_tree<limited_allocator<std::byte>> t;
    const std::uint64_t one = 1;
    g_allocations = 0;
    for (std::uint32_t i = first; i < 64; ++i) {
      t.put_bytes(0, i, reinterpret_cast<const std::byte*>(&one), sizeof one, false, 64, sum);
    }
    EXPECT_EQ(g_allocations, 0) << "members " << first << " to 63";
    std::uint64_t total = 0;
    t.drain(64, [&](std::uint32_t, std::uint32_t, auto&& p) {
      std::uint64_t v = 0;
      std::memcpy(&v, p.data.data(), sizeof v);
      total += v;
    });
    EXPECT_EQ(total, 64u - first);
  }
}

// The fixed tree's value of block (level, lo) for op (the header comment of combiner.hpp).
template <class Op>
std::uint64_t fixed_tree(const std::vector<std::uint64_t>& leaf, std::uint32_t level, std::uint64_t lo, Op op) {
  if (level == 0) return leaf[lo];
  const std::uint64_t half = std::uint64_t{1} << (level - 1);
  const std::uint64_t left = fixed_tree(leaf, level - 1, lo, op);
  return lo + half < leaf.size() ? op(left, fixed_tree(leaf, level - 1, lo + half, op)) : left;
}

// An op that is neither associative nor commutative, so that any other association than the
// fixed tree's gives another value: ranks that each hold contiguous members in index order (on
// the run), some out of order (the table), some more than the run holds, each flushing its blocks
// at random points, and member 0 taking the batches in any order, all get the fixed tree's value.
TEST(PartialTree, RunsAndTablesTogetherGiveTheFixedTreesValue) {
  const auto op = [](std::uint64_t a, std::uint64_t b) { return a * 3 + b; };
  const merge_rule rule{combiner_for<std::uint64_t>(op), "iso::allreduce"};
  std::uint64_t rng = 0x2545f4914f6cdd1dull;
  const auto draw = [&rng](std::uint64_t below) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % below;
  };
  for (std::uint32_t n : {1u, 2u, 3u, 7u, 64u, 100u, 600u, 5000u}) {
    std::vector<std::uint64_t> leaf(n);
    for (std::uint64_t& v : leaf) v = draw(1000) + 1;
    std::uint32_t levels = 0;
    while ((std::uint64_t{1} << levels) < n) ++levels;
    const std::uint64_t want = fixed_tree(leaf, levels, 0, op);
    for (int round = 0; round < 10; ++round) {
      // Ranks of contiguous members: [cut[r], cut[r + 1]).
      const std::uint32_t ranks = 1 + static_cast<std::uint32_t>(draw(std::min<std::uint32_t>(n, 5)));
      std::vector<std::uint32_t> cut{0};
      for (std::uint32_t r = 1; r < ranks; ++r) cut.push_back(static_cast<std::uint32_t>(draw(n)));
      cut.push_back(n);
      std::sort(cut.begin(), cut.end());
      struct block {
        std::uint32_t level, lo;
        std::uint64_t value;
      };
      std::vector<block> batches;  // what the ranks send
      for (std::uint32_t r = 0; r < ranks; ++r) {
        std::vector<std::uint32_t> order;
        for (std::uint32_t i = cut[r]; i < cut[r + 1]; ++i) order.push_back(i);
        if (round % 3 == 1 && order.size() > 1) {  // a few members late
          for (int k = 0; k < 3; ++k) std::swap(order[draw(order.size())], order[draw(order.size())]);
        }
        partial_tree<std::allocator<std::byte>> t;
        const auto flush = [&] {
          t.drain(n, [&](std::uint32_t level, std::uint32_t lo, auto&& p) {
            ASSERT_FALSE(p.failed);
            block b{level, lo, 0};
            std::memcpy(&b.value, p.data.data(), sizeof b.value);
            batches.push_back(b);
          });
        };
        for (std::uint32_t i : order) {
          t.put_bytes(0, i, reinterpret_cast<const std::byte*>(&leaf[i]), sizeof leaf[i], false, n, rule);
          if (round % 3 == 2 && draw(16) == 0) flush();  // a poll sent what the rank had
        }
        flush();
      }
      for (std::size_t i = batches.size(); i > 1; --i) std::swap(batches[i - 1], batches[draw(i)]);
      partial_tree<std::allocator<std::byte>> member_0;
      for (const block& b : batches) {
        member_0.put_bytes(b.level, b.lo, reinterpret_cast<const std::byte*>(&b.value), sizeof b.value, false, n,
                           rule);
      }
      ASSERT_TRUE(member_0.root().has_value()) << n << " members, round " << round;
      std::uint64_t got = 0;
      std::memcpy(&got, member_0.root()->data.data(), sizeof got);
      EXPECT_EQ(got, want) << n << " members on " << ranks << " ranks, round " << round;
    }
  }
}

// Bytes put as borrowed (a waiting member's values) are read where they lie and never written:
// a left block borrowed is combined into a block of its own, with the same bits; an op that
// throws there makes the block a failure, the member's bytes still untouched.
TEST(PartialTree, BorrowedLeavesAreReadInPlaceAndNeverWritten) {
  const merge_rule sum{combiner_for<double>(iso::sum), "iso::allreduce"};
  std::vector<std::vector<double>> v;
  for (int i = 0; i < 6; ++i) v.emplace_back(4, 0.1 * (i + 1));
  const std::vector<std::vector<double>> before = v;
  const auto put = [&](auto& t, std::uint32_t i, const merge_rule& r) {
    t.put_bytes(0, i, reinterpret_cast<const std::byte*>(v[i].data()), v[i].size() * sizeof(double), false, 6, r,
                true);
  };
  partial_tree<std::allocator<std::byte>> t;
  for (std::uint32_t i : {4u, 2u, 3u, 0u, 5u, 1u}) put(t, i, sum);
  ASSERT_TRUE(t.root().has_value());
  EXPECT_EQ(v, before) << "no member's values written";
  double got[4];
  std::memcpy(got, t.root()->data.data(), sizeof got);
  const double exact = ((v[0][0] + v[1][0]) + (v[2][0] + v[3][0])) + (v[4][0] + v[5][0]);  // the fixed tree
  EXPECT_EQ(got[3], exact);
  const auto throws = [](double, double) -> double { throw std::runtime_error("no"); };
  const merge_rule bad{combiner_for<double>(throws), "iso::allreduce"};
  partial_tree<std::allocator<std::byte>> u;
  put(u, 0, bad);
  put(u, 1, bad);  // merges into borrowed leaf 0
  put(u, 2, bad);
  put(u, 3, bad);
  put(u, 4, bad);
  put(u, 5, bad);
  ASSERT_TRUE(u.root().has_value());
  EXPECT_TRUE(u.root()->failed);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(u.root()->data.data()), u.root()->data.size()),
            "iso::allreduce: the operation threw: no");
  EXPECT_EQ(v, before) << "no member's values written";
}

// Leaves in any order (members migrate, ranks send what they hold) give the fixed tree's blocks:
// the concatenation in index order, whatever the order they came in, and every partial block
// drained is one of the tree's, each leaf in exactly one.
TEST(PartialTree, LeavesInAnyOrderMakeTheFixedTreesBlocks) {
  const merge_rule concatenate{{nullptr, nullptr, 1}, "iso::gather"};
  for (std::uint32_t n : {1u, 2u, 3u, 5u, 13u, 64u, 100u}) {
    std::vector<std::uint32_t> order(n);
    for (std::uint32_t i = 0; i < n; ++i) order[i] = i;
    std::uint64_t rng = 0x9e3779b97f4a7c15ull * n;
    for (int round = 0; round < 20; ++round) {
      for (std::uint32_t i = n; i > 1; --i) {  // Fisher-Yates with a fixed xorshift
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::swap(order[i - 1], order[rng % i]);
      }
      tree whole, part;
      for (std::uint32_t k = 0; k < n; ++k) {
        put_leaf(whole, order[k], static_cast<char>(' ' + order[k] % 90), concatenate, n);
        if (k < n / 2) put_leaf(part, order[k], static_cast<char>(' ' + order[k] % 90), concatenate, n);
      }
      ASSERT_TRUE(whole.root().has_value()) << n << " members";
      std::string want, got;
      for (std::uint32_t i = 0; i < n; ++i) want += static_cast<char>(' ' + i % 90);
      for (std::size_t at = 0; at < whole.root()->data.size(); at += leaf_bytes) {
        got += static_cast<char>(whole.root()->data.data()[at]);
      }
      EXPECT_EQ(got, want) << n << " members";
      std::vector<int> seen(n, 0);
      for (const std::string& b : drained(part, n)) {
        const std::size_t c1 = b.find(':'), c2 = b.find(':', c1 + 1);
        const std::uint32_t level = std::stoul(b.substr(0, c1)), lo = std::stoul(b.substr(c1 + 1, c2 - c1 - 1));
        EXPECT_EQ(lo % (std::uint64_t{1} << level), 0u) << b;
        const std::string leaves = b.substr(c2 + 1);
        EXPECT_EQ(leaves.size(), std::min<std::uint64_t>(std::uint64_t{1} << level, n - lo)) << b;
        for (std::uint32_t i = lo; i < lo + leaves.size(); ++i) {
          ++seen[i];
          EXPECT_EQ(leaves[i - lo], static_cast<char>(' ' + i % 90)) << b;
        }
      }
      EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), n / 2) << "each leaf put, once";
      EXPECT_TRUE(part.empty());
    }
  }
}

// The block cache of a rank's collectives (combiner.hpp) is used on the scheduler's OS thread.
class BlockCache : public ::testing::Test {
 protected:
  void SetUp() override { block_cache::get().trim(); }
  void TearDown() override { block_cache::get().trim(); }
  scheduler sched{0};
};

TEST_F(BlockCache, ABlockIsAtMostAQuarterLargerThanAskedUpToTheLimit) {
  EXPECT_EQ(block_cache::block_bytes(1), 16u);
  EXPECT_EQ(block_cache::block_bytes(17), 20u);
  EXPECT_EQ(block_cache::block_bytes(std::size_t{1} << 20), std::size_t{1} << 20);
  // A 1 MiB result with its headers (shared_result and result_header): 1.25 MiB, not 2.
  EXPECT_EQ(block_cache::block_bytes((std::size_t{1} << 20) + 48), std::size_t{5} << 18);
  for (std::size_t b = 17; b <= block_cache::kept_limit; b = b * 9 / 8 + 1) {
    EXPECT_GE(block_cache::block_bytes(b), b);
    EXPECT_LE(block_cache::block_bytes(b), b + b / 4) << b << " bytes";
  }
  EXPECT_EQ(block_cache::block_bytes(block_cache::kept_limit), block_cache::kept_limit);
  EXPECT_EQ(block_cache::block_bytes(block_cache::kept_limit + 1), block_cache::kept_limit + 1) << "exact above";
}

TEST_F(BlockCache, KeepsBlocksUpToItsLimitAndTrimFreesThemAll) {
  block_cache& c = block_cache::get();
  void* largest = c.take(block_cache::kept_limit);
  c.give(largest, block_cache::kept_limit);
  EXPECT_EQ(c.kept(), block_cache::kept_limit) << "a block of the largest class is kept";
  EXPECT_EQ(c.take(block_cache::kept_limit), largest) << "and taken again";
  void* above = c.take(block_cache::kept_limit + 1);
  c.give(above, block_cache::kept_limit + 1);
  EXPECT_EQ(c.kept(), 0u) << "a block above the limit is freed";
  c.give(largest, block_cache::kept_limit);
  void* small = c.take(100);
  c.give(small, 100);
  EXPECT_EQ(c.kept(), block_cache::kept_limit) << "nothing past the limit is kept";
  c.trim();
  EXPECT_EQ(c.kept(), 0u);
}

TEST_F(BlockCache, ARankCombinerFreesTheKeptBlocksAsItGoes) {
  {
    rank_combiner rc;
    void* p = block_cache::get().take(4096);
    block_cache::get().give(p, 4096);
    EXPECT_EQ(block_cache::get().kept(), 4096u);
  }
  EXPECT_EQ(block_cache::get().kept(), 0u);
}

TEST(BlockCacheDeathTest, UseOffTheSchedulersOSThreadIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        scheduler sched{0};
        std::thread([] { block_cache::get().give(block_cache::get().take(16), 16); }).join();
      },
      "on_scheduler_thread");
}

}  // namespace
}  // namespace iso::detail
