// The pieces of the ownership invariant (isomalloc/internal/ownership.hpp) on one rank: a heap's gate,
// the departing and kept records, and runs that come home while their departure is still sent.
// tests/mpi/test_ownership.cpp checks the promise itself, through iso::runtime.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "heap.hpp"
#include "ownership.hpp"
#include "prim.hpp"
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

// Bytes of this process's pages released with MADV_FREE and not yet taken by the kernel. Signed:
// the kernel may take some between two readings, so a difference can be negative.
std::int64_t lazy_free_bytes() {
  std::ifstream in("/proc/self/smaps_rollup");
  for (std::string key; in >> key;) {
    std::int64_t kib = 0;
    if (key == "LazyFree:" && in >> kib) return kib << 10;
  }
  ADD_FAILURE() << "no LazyFree in /proc/self/smaps_rollup";
  return 0;
}

// A kept run that comes home (its thread, stolen from here, ended elsewhere) leaves its record
// as it is: the region caches it or decommits it, so nothing of it is released here, and the
// rest of the record (coming home right behind it) stays kept until it comes home too.
TEST_F(Ownership, AKeptRunThatComesHomeLeavesItsRecordWithoutARelease) {
  const auto runs = runs_of(h_);
  ASSERT_EQ(runs.size(), 2u);
  const auto big = std::find_if(runs.begin(), runs.end(), [&](const auto& run) { return run.first == big_run(); });
  ASSERT_NE(big, runs.end());
  std::memset(big_, 0x5a, 200 << 10);  // its pages committed
  departures::get().leave(owner_a, h_, nullptr, 0, 0, 1, "0:5");
  departures::get().sent(owner_a, 1000);
  const auto before = region::get().stats();
  const auto kept_before = departures::get().stats().kept_bytes;
  const std::int64_t lazy_before = lazy_free_bytes();
  region::get().accept_returned(big->first, big->second);
  EXPECT_LT(lazy_free_bytes() - lazy_before, static_cast<std::int64_t>(chunk_bytes)) << "a run was released";
  EXPECT_EQ(departures::get().stats().kept, 1u) << "the rest of the record was given back";
  EXPECT_EQ(departures::get().stats().kept_bytes, kept_before - big->second);
  EXPECT_EQ(region::get().stats().returned_runs, before.returned_runs + 1);
  EXPECT_EQ(region::get().stats().cached_chunks, before.cached_chunks + big->second / chunk_bytes)
      << "the run was not cached";
  EXPECT_EQ(heap::owner_of(big_), nullptr) << "memory given back still claims a heap";
  for (const auto& [addr, bytes] : runs) {
    if (addr != big_run()) region::get().accept_returned(addr, bytes);
  }
  EXPECT_EQ(departures::get().stats().kept, 0u) << "an empty record stayed";
  EXPECT_EQ(departures::get().stats().kept_bytes, kept_before - runs[0].second - runs[1].second);
  EXPECT_EQ(region::get().stats().allocated_chunks, chunks_before_) << "chunks leaked";
}

// A kept stack that comes home last (its heap's runs came first) loses its guard, and the region
// caches it as it is: no release, and whatever the region hands it to next may write all of it.
TEST_F(Ownership, AKeptStackThatComesHomeLosesItsGuardAndIsCachedCommitted) {
  constexpr std::size_t stack_chunks = 4;
  constexpr std::size_t guard_bytes = 16 << 10;
  auto* stack = static_cast<unsigned char*>(region::get().alloc_chunks(stack_chunks));
  const auto stack_addr = reinterpret_cast<std::uintptr_t>(stack);
  std::memset(stack, 0x6b, stack_chunks * chunk_bytes);  // committed, as a stack that ran is
  ASSERT_EQ(prim::guard_install(stack, guard_bytes), 0);
  const auto runs = runs_of(h_);
  departures::get().leave(owner_a, h_, stack, stack_chunks * chunk_bytes, guard_bytes, 1, "0:6");
  departures::get().sent(owner_a, 1000);
  runs_come_home(runs);
  EXPECT_EQ(departures::get().stats().kept, 1u) << "the stack was given back before it came home";
  EXPECT_TRUE(departures::get().holds(stack_addr, chunk_bytes));
  const std::int64_t lazy_before = lazy_free_bytes();
  region::get().accept_returned(stack_addr, stack_chunks * chunk_bytes);
  EXPECT_LT(lazy_free_bytes() - lazy_before, static_cast<std::int64_t>(chunk_bytes)) << "the stack was released";
  EXPECT_EQ(departures::get().stats().kept, 0u);
  EXPECT_EQ(departures::get().stats().kept_bytes, 0u);
  // Cached last, handed out first: the same run, its contents still there past the guard, and
  // its guard gone (a write there would trap).
  auto* again = static_cast<unsigned char*>(region::get().alloc_chunks(stack_chunks));
  ASSERT_EQ(again, stack);
  EXPECT_EQ(again[guard_bytes + 100], 0x6b) << "the stack was decommitted on its way home";
  again[0] = 1;
  again[guard_bytes - 1] = 1;
  region::get().free_chunks(again, stack_chunks);
  EXPECT_EQ(region::get().stats().allocated_chunks, chunks_before_) << "chunks leaked";
}

// A kept record whose stack came home keeps no stack at all: a later departure's run that
// strictly contains where that stack began is the later record's, and its return is parked
// there while its send is on (it must not reach the region while MPI may still read it).
TEST_F(Ownership, AKeptRecordWhoseStackCameHomeNoLongerClaimsItsOldStart) {
  constexpr std::size_t guard_bytes = 16 << 10;
  auto* run = static_cast<unsigned char*>(region::get().alloc_chunks(3));
  const auto run_addr = reinterpret_cast<std::uintptr_t>(run);
  unsigned char* old_stack = run + chunk_bytes;  // strictly inside run
  ASSERT_EQ(prim::guard_install(old_stack, guard_bytes), 0);
  const auto runs = runs_of(h_);
  departures::get().leave(owner_a, h_, old_stack, chunk_bytes, guard_bytes, 1, "0:8");
  departures::get().sent(owner_a, 1000);
  EXPECT_FALSE(departures::get().park_return(run_addr + chunk_bytes, chunk_bytes));  // the stack comes home
  EXPECT_EQ(departures::get().stats().kept, 1u) << "h_'s runs are still kept";
  EXPECT_FALSE(departures::get().holds(run_addr + chunk_bytes, chunk_bytes));

  heap* h2 = heap::create();
  const auto runs2 = runs_of(h2);
  ASSERT_EQ(prim::guard_install(run, guard_bytes), 0);
  departures::get().leave(owner_b, h2, run, 3 * chunk_bytes, guard_bytes, 1, "0:9");
  EXPECT_TRUE(departures::get().park_return(run_addr, 3 * chunk_bytes)) << "a departing run's return was not parked";
  EXPECT_EQ(departures::get().stats().parked, 1u);
  const auto before = region::get().stats();
  departures::get().sent(owner_b, 1000);  // the parked run goes to the region, the rest is given back
  EXPECT_EQ(region::get().stats().returned_runs, before.returned_runs + 1);
  runs_come_home(runs2);
  runs_come_home(runs);
  EXPECT_EQ(region::get().stats().allocated_chunks, chunks_before_) << "chunks leaked";
}

// A return that is not a run this share lent out is refused before departures see it: it
// neither parks (a departing thread's record keeps nothing of it) nor makes kept memory go.
TEST_F(Ownership, AMalformedReturnTouchesNeitherDepartingNorKeptMemory) {
  const auto runs = runs_of(h_);
  departures::get().leave(owner_a, h_, nullptr, 0, 0, 1, "0:7");
  const auto before = region::get().stats();
  region::get().accept_returned(big_run() + 4096, chunk_bytes);  // misaligned, inside big_'s run
  EXPECT_EQ(region::get().stats().bad_returns, before.bad_returns + 1);
  EXPECT_EQ(region::get().stats().parked_returns, before.parked_returns) << "a malformed return was parked";
  EXPECT_EQ(departures::get().stats().parked, 0u);
  departures::get().sent(owner_a, 1000);
  region::get().accept_returned(big_run(), chunk_bytes / 2);  // not whole chunks
  void* free_run = region::get().alloc_chunks(1);  // a run that is free again (cached), then
  region::get().free_chunks(free_run, 1);          // returned: it overlaps the cache
  region::get().accept_returned(reinterpret_cast<std::uintptr_t>(free_run), chunk_bytes);
  EXPECT_EQ(region::get().stats().bad_returns, before.bad_returns + 3);
  EXPECT_EQ(departures::get().stats().kept, 1u) << "kept memory went for a malformed return";
  EXPECT_EQ(heap::owner_of(big_), h_) << "kept memory lost its headers for a malformed return";
  runs_come_home(runs);
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

// A free from another OS thread that read a heap's identity before the heap ended and its chunk
// went to a new heap (a warm create) reads the gate open, the new heap's (a misuse: the block's
// thread had ended, racing with the reuse): it is refused at once, into the ring and past a full
// ring (onto thread_free_, where no identity travels with the block), and the new heap's block at
// the same address stays live.
TEST_F(Ownership, AFreeThatReadItsHeapBeforeTheChunkWentToANewHeapIsRefused) {
  heap* first = heap::create();
  void* p = first->alloc(64);
  const std::uint64_t old_id = first->id_before_gate();
  heap* second = heap::create(first->retire());
  void* q = second->alloc(64);
  ASSERT_EQ(q, p) << "the new heap's first block is elsewhere: the test proves less";
  // Blocks of the new heap that the other thread frees (rightly) in between, filling its ring.
  std::vector<void*> blocks(remote_ring::slots);
  for (void*& b : blocks) {
    b = second->alloc(16);
    ASSERT_NE(b, nullptr);
  }
  const auto live = second->stats().live_blocks;
  const auto refused = ownership_stats().refused_frees;
  std::thread([&] {
    second->free_from_other_thread(p, old_id);  // the ring has room
    for (void* b : blocks) heap::free_any(b);
    second->free_from_other_thread(p, old_id);  // the ring is full
  }).join();
  EXPECT_EQ(ownership_stats().refused_frees, refused + 2);
  second->collect();
  EXPECT_EQ(ownership_stats().refused_frees, refused + 2);
  EXPECT_EQ(second->stats().live_blocks, live - blocks.size()) << "a refused free was applied to the new heap";
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
