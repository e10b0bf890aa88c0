// The pieces of the ownership invariant (isomalloc/internal/ownership.hpp) on one rank: a heap's gate,
// the departing and kept records, and runs that come home while their departure is still sent.
// tests/mpi/test_ownership.cpp checks the promise itself, through iso::runtime.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "heap.hpp"
#include "ownership.hpp"
#include "region.hpp"

namespace {

using namespace iso::detail;

constexpr std::uint64_t owner_a = 0x100000000001ull;
constexpr std::uint64_t owner_b = 0x100000000002ull;

class Ownership : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { region::get().init_single_rank(); }
  void SetUp() override {
    chunks_before_ = region::get().stats().allocated_chunks;
    h_ = heap::create();
    big_ = h_->alloc(200 << 10);  // a run of its own
    ASSERT_NE(big_, nullptr);
  }
  void TearDown() override {
    EXPECT_EQ(departures::get().stats().departing, 0u);
    EXPECT_EQ(departures::get().stats().kept, 0u);
    EXPECT_TRUE(region::get().is_valid());
  }
  // The chunk run holding big_.
  std::uintptr_t big_run() const { return reinterpret_cast<std::uintptr_t>(big_) & ~(chunk_bytes - 1); }
  void finish_heap() {
    h_->arrive();
    h_->destroy();
    EXPECT_EQ(region::get().stats().allocated_chunks, chunks_before_) << "chunks leaked";
  }

  std::size_t chunks_before_ = 0;
  heap* h_ = nullptr;
  void* big_ = nullptr;
};

TEST_F(Ownership, FreeOfAHeapThatLeftIsRefusedAndChangesNothing) {
  void* small = h_->alloc(40);
  EXPECT_TRUE(h_->in_use_here());
  departures::get().leave(owner_a, h_, nullptr, 0, 0, 3, "0:1");
  EXPECT_FALSE(h_->in_use_here());
  const auto live = h_->stats().live_blocks;
  const auto chunks = region::get().stats().allocated_chunks;
  const auto refused = ownership_stats().refused_frees;
  heap::free_any(small);
  heap::free_any(big_);
  EXPECT_EQ(heap::realloc_any(small, 100), nullptr);
  EXPECT_EQ(ownership_stats().refused_frees, refused + 3);
  EXPECT_EQ(h_->stats().live_blocks, live);
  EXPECT_EQ(region::get().stats().allocated_chunks, chunks) << "a refused free gave a run back";
  EXPECT_STREQ(h_->label(), "0:1");
  EXPECT_EQ(h_->left_for(), 3);
  EXPECT_TRUE(departures::get().holds(big_run(), chunk_bytes));
  // The thread comes back: its own memory is kept as it is (it still holds all of it), and
  // frees work again.
  departures::get().sent(owner_a, 0);
  EXPECT_TRUE(departures::get().settle(big_run(), chunk_bytes, owner_a));
  departures::get().arrive(owner_a, h_);
  EXPECT_FALSE(departures::get().holds(big_run(), chunk_bytes));
  EXPECT_TRUE(h_->in_use_here());
  EXPECT_EQ(heap::owner_of(big_), h_) << "arrive() forgot a run the heap still holds";
  heap::free_any(small);
  heap::free_any(big_);
  EXPECT_EQ(h_->stats().live_blocks, live - 2);
  finish_heap();
}

TEST_F(Ownership, ARunThatComesHomeWhileItsDepartureIsSentIsParkedUntilTheSendIsOver) {
  std::vector<std::pair<std::uintptr_t, std::size_t>> runs;  // (address, bytes), big_'s first
  h_->for_each_run([&](void* run, std::size_t chunks) {
    runs.emplace_back(reinterpret_cast<std::uintptr_t>(run), chunks * chunk_bytes);
  });
  std::sort(runs.begin(), runs.end(), [&](const auto& a, const auto&) { return a.first == big_run(); });
  ASSERT_EQ(runs.size(), 2u);
  ASSERT_EQ(runs[0].first, big_run());
  departures::get().leave(owner_a, h_, nullptr, 0, 0, 1, "0:2");
  // Its thread ran elsewhere and freed the block before this rank saw its sends complete: the run
  // must not be reused while MPI may still read it.
  const auto before = region::get().stats();
  region::get().accept_returned(runs[0].first, runs[0].second);
  EXPECT_EQ(region::get().stats().parked_returns, before.parked_returns + 1);
  EXPECT_EQ(region::get().stats().allocated_chunks, before.allocated_chunks);
  EXPECT_EQ(departures::get().stats().parked, 1u);
  departures::get().sent(owner_a, 0);  // now the region takes it, and nothing of the thread is kept
  EXPECT_EQ(region::get().stats().returned_runs, before.returned_runs + 1);
  EXPECT_EQ(region::get().stats().allocated_chunks, before.allocated_chunks - runs[0].second / chunk_bytes);
  EXPECT_FALSE(departures::get().holds(runs[0].first, runs[0].second));
  // The thread ends elsewhere: its last run comes home too, and is taken at once.
  region::get().accept_returned(runs[1].first, runs[1].second);
  EXPECT_EQ(region::get().stats().allocated_chunks, chunks_before_);
}

// Its thread ends elsewhere: every run of h comes home (its memory here is gone: given back).
void runs_come_home(const std::vector<std::pair<std::uintptr_t, std::size_t>>& runs) {
  for (const auto& [addr, bytes] : runs) region::get().accept_returned(addr, bytes);
}

std::vector<std::pair<std::uintptr_t, std::size_t>> runs_of(const heap* h) {
  std::vector<std::pair<std::uintptr_t, std::size_t>> runs;
  h->for_each_run([&](void* run, std::size_t chunks) {
    runs.emplace_back(reinterpret_cast<std::uintptr_t>(run), chunks * chunk_bytes);
  });
  return runs;
}

TEST_F(Ownership, KeptMemoryIsGivenBackWithoutItsHeadersWhenSomethingElseLandsOnItOrWhenItIsOld) {
  const auto runs = runs_of(h_);
  departures::get().leave(owner_a, h_, nullptr, 0, 0, 1, "0:3");
  departures::get().sent(owner_a, 1000);
  EXPECT_EQ(departures::get().stats().kept, 1u);
  EXPECT_TRUE(departures::get().any_kept());
  departures::get().tick(1000 + departures::keep_ns / 2);  // young: kept
  EXPECT_EQ(departures::get().stats().kept, 1u);
  EXPECT_EQ(heap::owner_of(big_), h_);
  // Another thread's image lands on part of it: given back, and not the arriving thread's own.
  EXPECT_FALSE(departures::get().settle(big_run(), chunk_bytes, owner_b));
  EXPECT_EQ(departures::get().stats().kept, 0u);
  EXPECT_FALSE(departures::get().any_kept());
  EXPECT_EQ(heap::owner_of(big_), nullptr) << "memory given back still claims a heap";
  runs_come_home(runs);

  heap* h2 = heap::create();
  const auto runs2 = runs_of(h2);
  departures::get().leave(owner_b, h2, nullptr, 0, 0, 1, "0:4");
  departures::get().sent(owner_b, 1000);
  departures::get().tick(1000 + 2 * departures::keep_ns);  // old: given back
  EXPECT_EQ(departures::get().stats().kept, 0u);
  runs_come_home(runs2);
  EXPECT_EQ(region::get().stats().allocated_chunks, chunks_before_) << "chunks leaked";
}

// Bytes of this process's pages released with MADV_FREE and not yet taken by the kernel.
std::size_t lazy_free_bytes() {
  std::ifstream in("/proc/self/smaps_rollup");
  for (std::string key; in >> key;) {
    std::size_t kib = 0;
    if (key == "LazyFree:" && in >> kib) return kib << 10;
  }
  ADD_FAILURE() << "no LazyFree in /proc/self/smaps_rollup";
  return 0;
}

// A kept run that comes home (its thread, stolen from here, ended elsewhere) is given to the
// region as it is: the region caches it or decommits it, so the kept copy's release leaves it
// out (the rest of the record is still given back lazily).
TEST_F(Ownership, AKeptRunThatComesHomeIsNotReleasedBeforeTheRegionTakesIt) {
  const auto runs = runs_of(h_);
  ASSERT_EQ(runs.size(), 2u);
  const auto big = std::find_if(runs.begin(), runs.end(), [&](const auto& run) { return run.first == big_run(); });
  ASSERT_NE(big, runs.end());
  std::memset(big_, 0x5a, 200 << 10);  // its pages committed
  departures::get().leave(owner_a, h_, nullptr, 0, 0, 1, "0:5");
  departures::get().sent(owner_a, 1000);
  const auto before = region::get().stats();
  const std::size_t lazy_before = lazy_free_bytes();
  region::get().accept_returned(big->first, big->second);
  EXPECT_EQ(departures::get().stats().kept, 0u);
  EXPECT_EQ(region::get().stats().returned_runs, before.returned_runs + 1);
  EXPECT_EQ(region::get().stats().cached_chunks, before.cached_chunks + big->second / chunk_bytes)
      << "the run was not cached";
  // Only the heap's other run (a segment, at most a chunk) was released lazily.
  EXPECT_LE(lazy_free_bytes() - lazy_before, chunk_bytes) << "the run coming home was released too";
  EXPECT_EQ(heap::owner_of(big_), nullptr) << "memory given back still claims a heap";
  for (const auto& [addr, bytes] : runs) {
    if (addr != big_run()) region::get().accept_returned(addr, bytes);
  }
  EXPECT_EQ(region::get().stats().allocated_chunks, chunks_before_) << "chunks leaked";
}

// A heap's identity tells a pointer recorded for it apart from the same address in a later heap
// (a free from another OS thread published after its heap ended is refused, not applied there).
TEST_F(Ownership, APointerRecordedForAHeapDoesNotMatchTheNextHeapAtTheSameAddress) {
  heap* first = heap::create();
  void* p = first->alloc(64);
  const std::uint64_t id = first->id();
  EXPECT_EQ(heap::owner_with_id(p, id), first);
  first->destroy();
  heap* second = heap::create();  // most likely in the same, cached chunk
  void* q = second->alloc(64);
  EXPECT_EQ(heap::owner_with_id(p, id), nullptr);
  EXPECT_EQ(q, p) << "the chunk was not reused: the test proves less";
  EXPECT_EQ(heap::owner_of(p), second);
  EXPECT_NE(second->id(), id);
  second->free(q);
  second->destroy();
  h_->free(big_);
  finish_heap();
}

// Fault injection, the one fault this build can cause without a hook: the share runs out. A
// heap's allocation that needs a run the share cannot give fails as malloc does (nullptr), and the
// heap, the region and the block interface stay consistent and keep serving.
TEST_F(Ownership, AnExhaustedShareFailsTheAllocationAndLeavesEverythingConsistent) {
  const region& r = region::get();
  const auto before = r.stats();
  EXPECT_EQ(h_->alloc(r.share_bytes()), nullptr);
  EXPECT_EQ(h_->alloc_aligned(std::size_t{1} << 20, r.share_bytes()), nullptr);
  EXPECT_EQ(r.stats().allocated_chunks, before.allocated_chunks) << "a failed allocation kept chunks";
  EXPECT_TRUE(h_->is_valid());
  EXPECT_TRUE(r.is_valid());
  void* p = h_->alloc(300 << 10);  // and the next one works
  EXPECT_NE(p, nullptr);
  h_->free(p);
  h_->free(big_);
  finish_heap();
}

}  // namespace
