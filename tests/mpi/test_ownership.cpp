// Memory has exactly one owner (isomalloc/internal/ownership.hpp), tried the way a user meets it:
// pointers kept by rank-local globals after their thread migrated, frees from other OS threads,
// and realloc from them. Every test is collective: each rank runs it and calls run().
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "fault.hpp"
#include "interpose.hpp"
#include "isothreads/isomalloc.h"
#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"
#include "ownership.hpp"
#include "region.hpp"
#include "scheduler.hpp"
#include "stack.hpp"

namespace {

using iso_test::rt;
using iso::detail::heap;

constexpr std::size_t big_bytes = std::size_t{200} << 10;

// Rank-local globals that keep pointers into a thread's heap: the documented hazard.
std::uint64_t* g_big = nullptr;
char* g_small = nullptr;

bool overlaps_big(const void* p, std::size_t bytes) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  const auto b = reinterpret_cast<std::uintptr_t>(g_big);
  return a < b + big_bytes && b < a + bytes;
}

std::uint64_t pattern(int rank, std::size_t i) { return (static_cast<std::uint64_t>(rank) << 48) ^ (i * 0x9E3779B97F4A7C15ull); }

// What the threads of a test saw, checked on main after run(): a failed assertion inside a
// thread would record itself in GoogleTest's globals from the thread's heap (user guide), and the
// thread moves away.
struct seen {
  std::size_t stale_frees_refused = 0;      // of the 2 stale frees
  std::size_t chunks_given_back = 0;        // this rank's share's allocated chunks lost by them
  std::size_t reused_addresses = 0;         // blocks handed out again that overlap the stale block
  std::size_t overwritten_words = 0;        // words of the departed thread's block found changed
  bool small_intact = false;
  bool checked = false;                     // the departed thread reached its check
};
seen g_seen;

// A thread allocates 200 KiB and a small block, a global keeps the pointers, the thread migrates
// to the next rank. On the rank it left, free() of the stale pointers must be refused (counted,
// nothing returned to this rank's share), and threads spawned there afterwards must never be
// handed those addresses: they move to where the first thread lives and write their memory
// there, and the first thread's data must be intact.
TEST(Ownership, StaleFreeOfADepartedThreadsMemoryIsRefusedAndItsAddressesAreNeverReused) {
  const int me = rt->rank();
  const int next = (me + 1) % rt->size();
  g_seen = {};
  const iso::thread_id checker = iso::spawn([next] {
    const iso::message left = iso::recv();  // the first thread has arrived on `next`
    const std::size_t refused = iso::detail::ownership_stats().refused_frees;
    const std::size_t chunks = iso::detail::region::get().stats().allocated_chunks;
    std::free(g_big);    // its heap is not in use here any more
    std::free(g_small);
    g_seen.stale_frees_refused = iso::detail::ownership_stats().refused_frees - refused;
    g_seen.chunks_given_back = chunks - iso::detail::region::get().stats().allocated_chunks;
    std::vector<iso::thread_id> reusers;
    for (int i = 0; i < 8; ++i) {
      reusers.push_back(iso::spawn([next] {
        auto* p = static_cast<unsigned char*>(std::malloc(big_bytes));
        auto* q = static_cast<unsigned char*>(std::malloc(64));
        const iso::detail::stack_run& stack = iso::detail::scheduler::current()->running()->stack;
        g_seen.reused_addresses += overlaps_big(p, big_bytes) + overlaps_big(q, 64) + overlaps_big(stack.base, stack.bytes);
        std::memset(p, 0x5A, big_bytes);
        iso::this_thread::migrate_to(next);  // to where the first thread lives
        std::memset(p, 0xA5, big_bytes);
        std::free(q);
        std::free(p);
      }));
    }
    for (iso::thread_id t : reusers) iso::join(t);
    iso::send(left.from, "check", 5);
    const iso::message report = iso::recv();
    std::uint64_t r[2];
    std::memcpy(r, report.data.data(), sizeof r);
    g_seen.overwritten_words = r[0];
    g_seen.small_intact = r[1] == 1;
    g_seen.checked = true;
  });
  iso::spawn([me, next, checker] {
    auto* big = static_cast<std::uint64_t*>(std::malloc(big_bytes));
    char* small = static_cast<char*>(std::malloc(100));
    for (std::size_t i = 0; i < big_bytes / 8; ++i) big[i] = pattern(me, i);
    std::strcpy(small, "still mine");
    g_big = big;
    g_small = small;
    iso::this_thread::migrate_to(next);
    iso::send(checker, "left", 4);
    (void)iso::recv();  // the checker has freed the stale pointers and run the reusers here
    // On `next`: this rank's g_seen is not the one main checks; send the findings home.
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < big_bytes / 8; ++i) wrong += big[i] != pattern(me, i);
    const std::uint64_t report[2] = {wrong, std::strcmp(small, "still mine") == 0 ? 1u : 0u};
    std::free(small);  // in use here: accepted
    std::free(big);
    iso::send(checker, report, sizeof report);
  });
  rt->run();
  EXPECT_EQ(g_seen.stale_frees_refused, 2u) << "a stale free was accepted on rank " << me;
  EXPECT_EQ(g_seen.chunks_given_back, 0u)
      << "a stale free gave memory of a thread living on rank " << next << " back to rank " << me << "'s share";
  EXPECT_EQ(g_seen.reused_addresses, 0u) << "rank " << me << " handed out the departed thread's addresses again";
  EXPECT_TRUE(g_seen.checked);
  EXPECT_EQ(g_seen.overwritten_words, 0u) << "the thread's block was overwritten after it moved to rank " << next;
  EXPECT_TRUE(g_seen.small_intact);
  g_big = nullptr;
  g_small = nullptr;
}

struct cross_seen {
  std::size_t delayed = 0;           // frees the other OS thread delayed
  bool valid = false;                // heap::is_valid after collecting them
  std::size_t live_left = 1;         // live blocks beyond those before the test's own
  bool realloc_moved = false;        // realloc gave system memory with the contents
  bool travelled = false;            // the heap kept serving and migrated
};
cross_seen g_cross;

// A std::thread frees blocks of a migratable thread's heap while that thread keeps allocating and
// freeing: the frees are delayed onto the heap's thread_free list and collected by the heap
// thread, and the heap stays consistent. realloc from the std::thread moves a block to the
// system heap with its contents.
TEST(Ownership, FreesAndReallocsFromAnotherOSThreadAreSafeAndReclaimed) {
  g_cross = {};
  iso::spawn([] {
    heap* h = iso::detail::current_heap;
    constexpr std::size_t n = 100000;
    std::vector<void*> theirs(n);
    std::vector<void*> mine;
    mine.reserve(200);
    char* moved = static_cast<char*>(std::malloc(3000));
    std::memcpy(moved, "contents that must survive", 27);
    const std::size_t live_before = h->stats().live_blocks - 1;  // all but `moved`
    for (std::size_t i = 0; i < n; ++i) {
      // Mostly the small classes this heap keeps using below (their pages and lists are shared
      // with the frees), medium and large blocks now and then.
      const std::size_t bytes = i % 997 == 0 ? 100000 : i % 101 == 0 ? 9000 : 16 + i % 64;
      theirs[i] = std::malloc(bytes);
      std::memset(theirs[i], 0x11, 16);
    }
    char* moved_to = nullptr;
    const std::size_t delayed = iso::detail::ownership_stats().delayed_frees;
    std::atomic<bool> go{false}, done{false};
    std::thread other;
    {
      iso::system_heap_scope system;  // the OS thread's own state is process-wide: not in this heap
      other = std::thread([&] {
        while (!go.load(std::memory_order_acquire)) {
        }
        for (std::size_t i = 0; i < n; ++i) std::free(theirs[i]);
        moved_to = static_cast<char*>(std::realloc(moved, 5000));
        done.store(true, std::memory_order_release);
      });
    }
    // Meanwhile this heap keeps working, and collects on its slow paths.
    std::size_t rounds = 0;
    go.store(true, std::memory_order_release);
    while (!done.load(std::memory_order_acquire) || rounds < 50) {
      for (int k = 0; k < 200; ++k) mine.push_back(std::malloc(16 + (rounds * 7 + static_cast<std::size_t>(k)) % 64));
      for (void* p : mine) std::free(p);
      mine.clear();
      ++rounds;
    }
    other.join();
    g_cross.realloc_moved = moved_to != nullptr && !iso::detail::in_region(moved_to) &&
                            std::strcmp(moved_to, "contents that must survive") == 0;
    std::free(moved_to);
    h->collect();
    g_cross.delayed = iso::detail::ownership_stats().delayed_frees - delayed;
    g_cross.valid = h->is_valid();
    g_cross.live_left = h->stats().live_blocks - live_before;
    // The heap still serves, and travels.
    std::vector<int> v(5000, 7);
    iso::this_thread::migrate_to((iso::rank() + 1) % iso::size());
    g_cross.travelled = v[4999] == 7;  // the arriving rank's record: each rank receives one such thread
  });
  rt->run();
  EXPECT_EQ(g_cross.delayed, 100001u);
  EXPECT_TRUE(g_cross.valid) << "the heap is inconsistent after frees from another OS thread";
  EXPECT_EQ(g_cross.live_left, 0u) << "blocks freed by another OS thread were not reclaimed";
  EXPECT_TRUE(g_cross.realloc_moved);
  EXPECT_TRUE(g_cross.travelled);
}

// A std::thread frees the blocks of two migratable threads' heaps alternately, so that every
// free names another heap than the one before (the ring then carries a heap identity with each
// pointer) and the ring fills and wraps between the collects: each block goes back to its own
// heap, none is refused or lost, and both heaps stay consistent.
struct two_heaps_seen {
  std::size_t delayed = 0, refused = 0;
  std::size_t live_left[2] = {~std::size_t{0}, ~std::size_t{0}};
  bool valid[2] = {false, false};
};
two_heaps_seen g_two;

TEST(Ownership, FreesFromAnotherOSThreadIntoTwoHeapsAlternatelyReachEachItsOwnHeap) {
  constexpr std::size_t n = 20000;  // pointers and identities: several times a ring's words
  static std::vector<void*> blocks[2];
  static heap* heaps[2];
  static std::size_t live_before[2];
  static bool freed;
  g_two = {};
  freed = false;
  for (int k = 0; k < 2; ++k) {
    iso::spawn([k] {
      heaps[k] = iso::detail::current_heap;
      live_before[k] = heaps[k]->stats().live_blocks;
      {
        iso::system_heap_scope system;  // the vector is shared with the std::thread
        blocks[k].resize(n);
      }
      for (std::size_t i = 0; i < n; ++i) blocks[k][i] = std::malloc(16 + (i * 13 + static_cast<std::size_t>(k)) % 200);
      while (!freed) iso::this_thread::yield();
      heaps[k]->collect();
      g_two.live_left[k] = heaps[k]->stats().live_blocks - live_before[k];
      g_two.valid[k] = heaps[k]->is_valid();
    });
  }
  iso::spawn([] {
    while (blocks[0].size() != n || blocks[1].size() != n || blocks[0][n - 1] == nullptr || blocks[1][n - 1] == nullptr) iso::this_thread::yield();
    const auto before = iso::detail::ownership_stats();
    std::atomic<std::size_t> next{0};
    std::thread other;
    {
      iso::system_heap_scope system;
      other = std::thread([&] {
        for (std::size_t i = 0; i < n; ++i) {
          std::free(blocks[0][i]);
          std::free(blocks[1][i]);
          next.store(i + 1, std::memory_order_release);
        }
      });
    }
    // The heap thread drains the rings while they fill (the collects race with the pushes).
    while (next.load(std::memory_order_acquire) != n) heaps[0]->collect();
    other.join();
    for (heap* h : heaps) h->collect();  // the rings, and the thread_free lists of both
    const auto after = iso::detail::ownership_stats();
    g_two.delayed = after.delayed_frees - before.delayed_frees;
    g_two.refused = after.refused_frees - before.refused_frees;
    freed = true;
  });
  rt->run();
  EXPECT_EQ(g_two.delayed, 2 * n);
  EXPECT_EQ(g_two.refused, 0u);
  for (int k = 0; k < 2; ++k) {
    EXPECT_EQ(g_two.live_left[k], 0u) << "heap " << k << ": blocks freed by another OS thread were not reclaimed";
    EXPECT_TRUE(g_two.valid[k]) << "heap " << k << " is inconsistent";
    blocks[k] = {};
  }
}

// A thread goes from rank 0 to rank 1 and back, frees its 200 KiB block on rank 0 and ends: rank 1
// still keeps its departed copy of that range. Rank 0 hands the range out again as a block
// (iso_malloc), and its image is unpacked on rank 1: the kept copy must be given back before the
// write, not after it (its later MADV_FREE would let the kernel discard the block).
TEST(Ownership, UnpackOnARankThatKeptADepartedCopyOfTheRangeSettlesItFirst) {
  static std::uint64_t freed_block = 0;
  freed_block = 0;
  if (rt->rank() == 0) {
    iso::spawn([] {
      void* p = std::malloc(big_bytes);
      std::memset(p, 0x77, big_bytes);
      iso::this_thread::migrate_to(1);
      iso::this_thread::migrate_to(0);
      freed_block = reinterpret_cast<std::uintptr_t>(p);
      std::free(p);  // its run goes to rank 0's cache of four-chunk runs
    });
  }
  rt->run();
  const std::uintptr_t run = freed_block & ~(iso::detail::chunk_bytes - 1);
  std::uint64_t msg[2] = {run, 0};  // the run, and whether rank 0 got it back as a block
  std::vector<unsigned char> image;
  void* block = nullptr;
  if (rt->rank() == 0) {
    block = iso_malloc(big_bytes);
    msg[1] = reinterpret_cast<std::uintptr_t>(block) == run;
    std::memset(block, 0x3C, iso_length(block));
    image.resize(iso_pack_size(block));
    iso_pack(block, image.data(), image.size());
    iso_detach(block);
  }
  MPI_Bcast(msg, 2, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  std::uint64_t image_bytes = image.size();
  MPI_Bcast(&image_bytes, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  image.resize(image_bytes);
  MPI_Bcast(image.data(), static_cast<int>(image_bytes), MPI_BYTE, 0, MPI_COMM_WORLD);
  if (rt->rank() == 1 && msg[1] == 1) {
    auto& kept = iso::detail::departures::get();
    EXPECT_TRUE(kept.holds(msg[0], big_bytes)) << "rank 1 no longer keeps the thread's copy: the test proves nothing";
    void* here = iso_unpack(image.data(), image.size());
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(here), msg[0]) << iso_last_error();
    EXPECT_FALSE(kept.holds(msg[0], big_bytes)) << "iso_unpack wrote over kept memory without settling it";
    kept.tick(std::numeric_limits<std::int64_t>::max());  // whatever is still kept goes now
    const auto* bytes = static_cast<const unsigned char*>(here);
    EXPECT_TRUE(std::all_of(bytes, bytes + big_bytes, [](unsigned char c) { return c == 0x3C; }));
    iso_free(here);  // rank 0's block: its range goes home
  }
  EXPECT_EQ(msg[1], 1u) << "rank 0 did not hand the freed run out again; the test proves nothing";
  MPI_Barrier(MPI_COMM_WORLD);
  rt->run();  // the return reaches rank 0
}

// After its thread moved away and ended, a pointer into its heap freed by another OS thread of
// the rank it left is refused, not pushed into memory this rank no longer uses.
TEST(Ownership, FreeFromAnotherOSThreadOfMemoryWhoseThreadLeftIsRefused) {
  static void* kept = nullptr;
  iso::spawn([] {
    kept = std::malloc(48);
    iso::this_thread::migrate_to((iso::rank() + 1) % iso::size());
  });
  rt->run();
  ASSERT_NE(kept, nullptr);
  const std::size_t refused = iso::detail::ownership_stats().refused_frees;
  std::thread([] { std::free(kept); }).join();
  EXPECT_EQ(iso::detail::ownership_stats().refused_frees, refused + 1);
  EXPECT_TRUE(iso::detail::region::get().is_valid());
  kept = nullptr;
}

// Fault injection (fault.hpp): the kernel refuses a new thread's stack guard (madvise, or
// mprotect on older kernels; it does once vm.max_map_count is reached). iso::spawn throws
// iso::error(system_failure) naming it, nothing of the thread stays allocated (heap, control
// block, stack) but what the pool of warm thread memory keeps for the next spawn, and the next
// spawn works.
TEST(Ownership, ASpawnWhoseStackGuardTheKernelRefusesFailsAndKeepsNothing) {
  const iso::detail::region& r = iso::detail::region::get();
  const auto in_use = [&r] {
    return r.stats().allocated_chunks - iso::detail::stack_pool::get().pooled_bytes() / iso::detail::chunk_bytes;
  };
  iso::spawn_options opts;
  opts.stack_bytes = std::size_t{960} << 10;  // a size no earlier thread left in the stack pool
  const std::size_t before = in_use();
  iso::detail::fault::arm("prim.guard_install");
  try {
    iso::spawn([] {}, opts);
    ADD_FAILURE() << "iso::spawn succeeded without a stack guard";
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code(), iso::errc::system_failure) << e.what();
    EXPECT_NE(std::strstr(e.what(), "guard"), nullptr) << e.what();
  }
  EXPECT_EQ(in_use(), before) << "the failed spawn kept chunks of the region";
  EXPECT_TRUE(r.is_valid());
  static bool ran = false;
  iso::spawn([] { ran = true; }, opts);
  rt->run();
  EXPECT_TRUE(ran);
}

// Fault injection on the return path under the runtime: a thread frees memory of its home rank
// after moving away, and the MPI_Isend that sends the range home fails (from inside the thread).
// The run goes on; the range waits in its batch and goes at a later poll, arrives home, and the
// runtime's progress reports the failure once on stderr, naming the call.
TEST(Ownership, ARangeWhoseReturnFailsToSendStillComesHome) {
  iso::detail::region& r = iso::detail::region::get();
  const std::size_t returned_before = r.stats().returned_runs;
  char ignored[512];
  while (r.take_failure(ignored, sizeof ignored)) {
  }
  iso::detail::fault::arm("region-returns:MPI_Isend");
  // The block's run starts in the chunk that holds the block (a large block sits just past its
  // run's header): this rank can claim that chunk once the run is home.
  static std::uintptr_t run_chunk = 0;
  iso::spawn([] {
    // A run of this rank's share of its own; volatile (on this thread's stack, which travels),
    // so that the compiler cannot drop the malloc/free pair.
    void* volatile block = std::malloc(300 << 10);
    std::memset(block, 1, 300 << 10);
    run_chunk = reinterpret_cast<std::uintptr_t>(block) / iso::detail::chunk_bytes * iso::detail::chunk_bytes;
    iso::this_thread::migrate_to((iso::rank() + 1) % iso::size());
    std::free(block);  // on the next rank: the run goes home
  });
  testing::internal::CaptureStderr();
  rt->run();
  const std::string reported = testing::internal::GetCapturedStderr();
  void* const run = reinterpret_cast<void*>(run_chunk);
  ASSERT_EQ(r.owner_of(run), r.rank());
  bool home = false;  // claimed: free here again
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!(home = r.claim(run, 1)) && std::chrono::steady_clock::now() < deadline) {
    r.poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  iso::detail::fault::disarm();
  EXPECT_TRUE(home) << "the run at " << run << " did not come home";
  if (home) r.free_chunks(run, 1);
  EXPECT_GT(r.stats().returned_runs, returned_before);
  EXPECT_NE(reported.find("region returns: region-returns:MPI_Isend with rank"), std::string::npos)
      << "reported: '" << reported << "'";
  EXPECT_EQ(r.stats().bad_returns, 0u);
  EXPECT_TRUE(r.is_valid());
  MPI_Barrier(MPI_COMM_WORLD);
}

// Threads that leave their home rank and end elsewhere (the memory of a work-stealing victim's
// stolen threads): each run comes home once, the home takes it back as it is (committed, no
// release on the way) and hands it out again, so that its resident memory stays bounded however
// many threads it sends away, and nothing is left kept or allocated once the runs are home.
constexpr int away_rounds = 200;
constexpr std::size_t away_block_bytes = std::size_t{600} << 10;  // 10 chunks: no stack's size
std::uintptr_t g_away_block[away_rounds];  // home rank: each round's block, its first byte seen
unsigned char g_away_seen[away_rounds];    // before the round wrote it

std::size_t resident_bytes() {
  std::ifstream in("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  in >> size >> resident;
  EXPECT_TRUE(in.good()) << "could not read /proc/self/statm";
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

TEST(Ownership, MemoryOfThreadsThatEndElsewhereComesHomeOnceAndIsReusedCommitted) {
  iso::detail::region& r = iso::detail::region::get();
  const auto held_here = [&r] {  // allocated from this share and not pooled for reuse here
    return r.stats().allocated_chunks - iso::detail::stack_pool::get().pooled_bytes() / iso::detail::chunk_bytes;
  };
  const auto before = r.stats();
  const std::size_t held_before = held_here();
  std::size_t resident_before = 0;
  for (int pass = 0; pass < 2; ++pass) {  // the first pass warms the cache and the heaps up
    iso::spawn([] {
      const int next = (iso::rank() + 1) % iso::size();
      for (int i = 0; i < away_rounds; ++i) {
        iso::join(iso::spawn([i, next] {
          auto* block = static_cast<unsigned char*>(std::malloc(away_block_bytes));
          g_away_block[i] = reinterpret_cast<std::uintptr_t>(block);
          // What the run held when it was handed out (the compiler must not assume nothing).
          asm volatile("" : : "r"(block) : "memory");
          g_away_seen[i] = block[4096];
          std::memset(block, i % 200 + 1, away_block_bytes);
          iso::this_thread::migrate_to(next);  // ends there: its heap, block and stack go home
        }));
      }
    });
    rt->run();
    if (pass == 0) resident_before = resident_bytes();
  }
  // Returns are not counted for termination: the last ones may still be on their way.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while ((held_here() != held_before || iso::detail::departures::get().stats().kept != 0) &&
         std::chrono::steady_clock::now() < deadline) {
    r.poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(held_here(), held_before) << "runs of threads that ended elsewhere did not all come home";
  EXPECT_EQ(iso::detail::departures::get().stats().kept, 0u) << "a record of a thread that ended elsewhere stayed";
  // Two passes of a stack, a heap segment and a block each at least.
  EXPECT_GE(r.stats().returned_runs - before.returned_runs, std::size_t{3} * 2 * away_rounds);
  EXPECT_EQ(r.stats().bad_returns, before.bad_returns) << "a run came home twice";
  EXPECT_TRUE(r.is_valid());
  // Blocks reuse the runs of earlier rounds' blocks (no other run has their size), committed:
  // each still holds what the last round that had it wrote. A block's run is back in the cache
  // only once its return has arrived, and nothing orders that before the next round's malloc:
  // hence at least half of the rounds, not all.
  int reused = 0, intact = 0;
  for (int i = 1; i < away_rounds; ++i) {
    int j = i - 1;
    while (j >= 0 && g_away_block[j] != g_away_block[i]) --j;
    if (j < 0) continue;
    ++reused;
    if (g_away_seen[i] == j % 200 + 1) ++intact;
  }
  EXPECT_GE(reused, away_rounds / 2) << "blocks were not reused";
  EXPECT_EQ(intact, reused) << "memory that came home was given to the kernel on its way";
  // 200 threads' stacks and blocks are 170 MiB: reused, the second pass adds next to nothing.
  const std::size_t grown = resident_bytes() - std::min(resident_bytes(), resident_before);
  EXPECT_LT(grown, std::size_t{16} << 20) << "resident memory grew by " << (grown >> 20) << " MiB";
  MPI_Barrier(MPI_COMM_WORLD);
}

}  // namespace
