// The isomalloc region on a single rank: reservation, chunk runs, recycling, bounds, bookkeeping.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "isothreads/error.hpp"
#include "prim.hpp"
#include "region.hpp"

namespace iso::detail {
namespace {

class RegionTest : public ::testing::Test {
 protected:
  void SetUp() override { region::get().init_single_rank(); }
  region& r = region::get();
};

TEST_F(RegionTest, ReservedOnceAsOneMapping) {
  ASSERT_TRUE(r.ready());
  EXPECT_GE(r.bytes(), min_share_bytes);
  EXPECT_EQ(r.base() % chunk_bytes, 0u);
  EXPECT_EQ(r.owner_of(reinterpret_cast<void*>(r.base())), 0);
  EXPECT_EQ(r.owner_of(reinterpret_cast<void*>(r.base() + r.bytes())), -1);
  int on_stack = 0;
  EXPECT_FALSE(r.contains(&on_stack));
  void* sys = std::malloc(64);
  EXPECT_FALSE(r.contains(sys));
  std::free(sys);
}

TEST_F(RegionTest, RunsAreAlignedDisjointAndWritable) {
  std::set<std::uintptr_t> starts;
  std::vector<std::pair<void*, std::size_t>> runs;
  std::mt19937 rng(7);
  for (int i = 0; i < 500; ++i) {
    const std::size_t n = 1 + rng() % 40;
    void* p = r.alloc_chunks(n);
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p) % chunk_bytes, 0u);
    ASSERT_TRUE(r.contains(p));
    ASSERT_TRUE(r.contains(static_cast<char*>(p) + n * chunk_bytes - 1));
    std::memset(p, i & 0xff, 64);
    runs.emplace_back(p, n);
  }
  std::sort(runs.begin(), runs.end());
  for (std::size_t i = 1; i < runs.size(); ++i) {
    EXPECT_LE(reinterpret_cast<std::uintptr_t>(runs[i - 1].first) + runs[i - 1].second * chunk_bytes,
              reinterpret_cast<std::uintptr_t>(runs[i].first));
  }
  EXPECT_TRUE(r.is_valid());
  for (auto [p, n] : runs) r.free_chunks(p, n);
  EXPECT_TRUE(r.is_valid());
}

TEST_F(RegionTest, SmallRunsAreRecycledFromTheCache) {
  void* a = r.alloc_chunks(4);
  const auto before = r.stats();
  std::memset(a, 0x5a, 4 * chunk_bytes);
  r.free_chunks(a, 4);
  EXPECT_EQ(r.stats().cached_chunks, before.cached_chunks + 4);
  void* b = r.alloc_chunks(4);
  EXPECT_EQ(a, b);  // LIFO: the committed run comes back without a system call
  EXPECT_EQ(static_cast<unsigned char*>(b)[100], 0x5a);
  r.free_chunks(b, 4);
  EXPECT_EQ(r.stats().allocated_chunks, before.allocated_chunks - 4);
  EXPECT_TRUE(r.is_valid());
}

TEST_F(RegionTest, CacheBoundDecommitsTheRest) {
  r.set_cache_bound(2 * chunk_bytes);
  void* a = r.alloc_chunks(2);
  void* b = r.alloc_chunks(2);
  std::memset(a, 1, 2 * chunk_bytes);
  std::memset(b, 1, 2 * chunk_bytes);
  r.free_chunks(a, 2);  // cached: within the bound
  r.free_chunks(b, 2);  // over the bound: decommitted, reads as zero
  EXPECT_EQ(r.stats().cached_chunks, 2u);
  EXPECT_EQ(static_cast<unsigned char*>(b)[0], 0);
  EXPECT_TRUE(r.is_valid());
  r.set_cache_bound(default_cache_bytes);
}

// A run freed elsewhere that comes home is cached like one freed here: no madvise on the way
// (a work-stealing victim takes back each stolen thread's memory so), and reused committed.
TEST_F(RegionTest, ReturnedRunsAreCachedLikeRunsFreedHere) {
  void* a = r.alloc_chunks(2);
  std::memset(a, 0x5a, 2 * chunk_bytes);
  const auto before = r.stats();
  r.accept_returned(reinterpret_cast<std::uintptr_t>(a), 2 * chunk_bytes);
  EXPECT_EQ(r.stats().cached_chunks, before.cached_chunks + 2);
  EXPECT_EQ(r.stats().allocated_chunks, before.allocated_chunks - 2);
  void* b = r.alloc_chunks(2);
  EXPECT_EQ(a, b);
  EXPECT_EQ(static_cast<unsigned char*>(b)[100], 0x5a) << "decommitted on its way back";
  // Beyond the cache's bound, a returned run is decommitted as a local one is.
  r.set_cache_bound(0);
  const std::size_t cached = r.stats().cached_chunks;
  r.accept_returned(reinterpret_cast<std::uintptr_t>(b), 2 * chunk_bytes);
  EXPECT_EQ(r.stats().cached_chunks, cached);
  EXPECT_EQ(static_cast<unsigned char*>(b)[100], 0);
  EXPECT_TRUE(r.is_valid());
  r.set_cache_bound(default_cache_bytes);
}

TEST_F(RegionTest, LargeRunsCoalesceAfterFree) {
  const auto before = r.stats();
  void* a = r.alloc_chunks(100);
  void* b = r.alloc_chunks(100);
  r.free_chunks(a, 100);
  r.free_chunks(b, 100);
  EXPECT_TRUE(r.is_valid());
  EXPECT_EQ(r.stats().allocated_chunks, before.allocated_chunks);
  void* c = r.alloc_chunks(200);  // fits only if the two runs (and their neighbours) merged
  EXPECT_TRUE(r.contains(c));
  r.free_chunks(c, 200);
}

TEST_F(RegionTest, ClaimTakesOnlyFreeRanges) {
  void* a = r.alloc_chunks(3);
  EXPECT_FALSE(r.claim(a, 3));  // allocated
  r.free_chunks(a, 3);
  EXPECT_TRUE(r.claim(a, 3));   // free (after the cache is flushed): claimed
  EXPECT_FALSE(r.claim(a, 1));
  EXPECT_TRUE(r.is_valid());
  r.free_chunks(a, 3);
}

TEST_F(RegionTest, ReturnedRunsAreCheckedBeforeReuse) {
  const auto before = r.stats();
  void* a = r.alloc_chunks(2);
  r.accept_returned(reinterpret_cast<std::uintptr_t>(a), 2 * chunk_bytes);
  EXPECT_EQ(r.stats().returned_runs, before.returned_runs + 1);
  r.accept_returned(reinterpret_cast<std::uintptr_t>(a), 2 * chunk_bytes);  // twice: refused
  r.accept_returned(reinterpret_cast<std::uintptr_t>(a) + 1, chunk_bytes);  // misaligned
  r.accept_returned(r.base() + r.bytes(), chunk_bytes);                     // outside the share
  EXPECT_EQ(r.stats().bad_returns, before.bad_returns + 3);
  EXPECT_TRUE(r.is_valid());
}

// Runs that come home fill the cache (thousands of them on a work-stealing victim), and a return
// overlapping any cached run, wherever it starts, is refused by an address-ordered look-up.
TEST_F(RegionTest, AReturnOverlappingAnyCachedRunIsRefused) {
  const auto before = r.stats();
  std::vector<void*> runs;  // of 1, 2, 3, 1, 2, 3, ... chunks
  for (std::size_t i = 0; i < 600; ++i) runs.push_back(r.alloc_chunks(i % 3 + 1));
  std::vector<void*> held;  // every fourth stays allocated (away): its return is good
  for (std::size_t i = 0; i < runs.size(); ++i) {
    if (i % 4 == 3) {
      held.push_back(runs[i]);
    } else {
      r.free_chunks(runs[i], i % 3 + 1);
    }
  }
  std::size_t refused = 0;
  for (std::size_t i = 0; i + 1 < runs.size(); ++i) {
    if (i % 4 == 3 || (i + 1) % 4 == 3) continue;
    const auto a = reinterpret_cast<std::uintptr_t>(runs[i]);
    const std::size_t n = i % 3 + 1;
    r.accept_returned(a, n * chunk_bytes);                               // itself
    r.accept_returned(a + (n - 1) * chunk_bytes, chunk_bytes);           // its last chunk
    refused += 2;
  }
  // A held run's last chunk and the next run's first: it starts in a run lent out, and only the
  // look-up below its end finds the cached run it reaches into.
  std::size_t into_next = 0;
  for (std::size_t i = 3; i + 1 < runs.size(); i += 4) {
    const auto a = reinterpret_cast<std::uintptr_t>(runs[i]);
    const std::size_t n = i % 3 + 1;
    if (reinterpret_cast<std::uintptr_t>(runs[i + 1]) != a + n * chunk_bytes) continue;  // not adjacent
    r.accept_returned(a + (n - 1) * chunk_bytes, 2 * chunk_bytes);
    ++into_next;
  }
  EXPECT_GE(into_next, runs.size() / 8) << "too few held runs were followed by their neighbour";
  refused += into_next;
  EXPECT_EQ(r.stats().bad_returns, before.bad_returns + refused);
  EXPECT_EQ(r.stats().returned_runs, before.returned_runs);
  for (void* p : held) {
    const std::size_t n = static_cast<std::size_t>(std::find(runs.begin(), runs.end(), p) - runs.begin()) % 3 + 1;
    r.accept_returned(reinterpret_cast<std::uintptr_t>(p), n * chunk_bytes);
  }
  EXPECT_EQ(r.stats().returned_runs, before.returned_runs + held.size());
  EXPECT_EQ(r.stats().allocated_chunks, before.allocated_chunks);
  EXPECT_TRUE(r.is_valid());
}

TEST_F(RegionTest, ExhaustionNamesTheShare) {
  try {
    r.alloc_chunks(r.share_bytes() / chunk_bytes + 1);
    FAIL() << "allocating more than the share must throw";
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code(), iso::errc::region_exhausted);
    EXPECT_NE(std::string(e.what()).find("rank 0's share"), std::string::npos) << e.what();
  }
  EXPECT_THROW(r.alloc_chunks(0), iso::error);
  EXPECT_TRUE(r.is_valid());
}

TEST(ParseBytes, Units) {
  EXPECT_EQ(parse_bytes("4096"), 4096u);
  EXPECT_EQ(parse_bytes("64K"), 64u << 10);
  EXPECT_EQ(parse_bytes("2GiB"), std::size_t{2} << 30);
  EXPECT_EQ(parse_bytes("16T"), std::size_t{16} << 40);
  EXPECT_EQ(parse_bytes("x"), 0u);
  EXPECT_EQ(parse_bytes("12Q"), 0u);
}

TEST(Prim, GuardPagesAddNoMappings) {
  if (!prim::guard_supported()) GTEST_SKIP() << "kernel without MADV_GUARD_INSTALL";
  region::get().init_single_rank();
  region& r = region::get();
  const std::size_t before = prim::mapping_count();
  std::vector<void*> runs;
  for (int i = 0; i < 200; ++i) {
    void* p = r.alloc_chunks(1);
    ASSERT_EQ(prim::guard_install(p, prim::page_size()), 0);
    runs.push_back(p);
  }
  EXPECT_LE(prim::mapping_count(), before + 2);
  for (void* p : runs) {
    ASSERT_EQ(prim::guard_remove(p, prim::page_size()), 0);
    r.free_chunks(p, 1);
  }
}

}  // namespace
}  // namespace iso::detail
