// The partial tree of a rank's collectives (migrate/internal/combiner.hpp) when memory runs out in
// the middle of a put: a merge that throws std::bad_alloc must keep every leaf put so far, the
// ones merged into the block being put included, so that the rank still sends them all to member
// 0. And the cache of system blocks the rank's collectives use: its sizes, its limit, its trim.
// The collectives themselves are tested through the runtime (tests/mpi/test_collectives.cpp,
// running out of memory too, by fault injection).
#include <gtest/gtest.h>

#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "combiner.hpp"
#include "scheduler.hpp"

namespace iso::detail {
namespace {

int g_allocations_left = -1;  // allocations the next ones may make; -1: any number

template <class T>
struct limited_allocator {
  using value_type = T;
  limited_allocator() noexcept = default;
  template <class U>
  limited_allocator(const limited_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (g_allocations_left == 0) throw std::bad_alloc();
    if (g_allocations_left > 0) --g_allocations_left;
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
  template <class U>
  bool operator==(const limited_allocator<U>&) const noexcept { return true; }
};

using tree = partial_tree<limited_allocator<std::byte>>;

void put_leaf(tree& t, std::uint32_t i, char c, const merge_rule& r) {
  const std::byte b{static_cast<unsigned char>(c)};
  t.put_bytes(0, i, &b, 1, false, 4, r);
}

TEST(PartialTree, AMergeThatRunsOutOfMemoryKeepsTheBlockItWasPutting) {
  const merge_rule concatenate{{nullptr, nullptr, 1}, "iso::gather"};
  tree t;
  put_leaf(t, 0, 'a', concatenate);
  put_leaf(t, 1, 'b', concatenate);  // [0, 2) = "ab", in a block of capacity 2
  put_leaf(t, 2, 'c', concatenate);
  // Leaf 3 merges into leaf 2 (one allocation: "cd"), and [2, 4) then into [0, 2), which must
  // grow "ab" and cannot.
  g_allocations_left = 1;
  EXPECT_THROW(put_leaf(t, 3, 'd', concatenate), std::bad_alloc);
  g_allocations_left = -1;
  EXPECT_FALSE(t.root().has_value());
  std::vector<std::string> blocks;
  t.drain(4, [&](std::uint32_t level, std::uint32_t lo, auto&& p) {
    EXPECT_FALSE(p.failed);
    blocks.push_back(std::to_string(level) + ":" + std::to_string(lo) + ":" +
                     std::string(reinterpret_cast<const char*>(p.data.data()), p.data.size()));
  });
  EXPECT_EQ(blocks, (std::vector<std::string>{"1:0:ab", "1:2:cd"})) << "every leaf, once";
  EXPECT_TRUE(t.empty());
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
