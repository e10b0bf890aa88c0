// The block interface (isothreads/isomalloc.h) across ranks: unique addresses, blocks moved by
// their image, ranges going home to their owner, and the error paths.
//
// Every rank runs every test (mpi_main.cpp). Collective calls are made unconditionally, and
// checks use EXPECT rather than ASSERT before them, so that a failure on one rank cannot leave
// the others waiting in a collective.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "fault.hpp"
#include "heap.hpp"
#include "isothreads/isomalloc.h"
#include "mpi_peers.hpp"
#include "prim.hpp"
#include "region.hpp"

namespace {

using iso::detail::region;
using iso::detail::prim::page_size;
using testing::HasSubstr;
using testing::Not;

int my_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// This rank's place in the ring the moving tests pass blocks around: {me, n, next, prev}.
struct ring_place {
  int me, n, next, prev;
};
ring_place ring_of_ranks() {
  const int me = my_rank();
  const int n = world_size();
  return {me, n, (me + 1) % n, (me + n - 1) % n};
}

// How a pointer appears in iso_last_error() messages.
std::string pointer_text(const void* p) {
  char text[32];
  std::snprintf(text, sizeof text, "%p", p);
  return text;
}

std::string last_error() { return iso_last_error(); }

// Every rank's list of words, by rank.
std::vector<std::vector<std::uint64_t>> allgather(const std::vector<std::uint64_t>& mine) {
  const int n = world_size();
  const int count = static_cast<int>(mine.size());
  std::vector<int> counts(static_cast<std::size_t>(n));
  MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::vector<int> displs(counts.size());
  int total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    displs[r] = total;
    total += counts[r];
  }
  std::vector<std::uint64_t> flat(static_cast<std::size_t>(total));
  MPI_Allgatherv(mine.data(), count, MPI_UINT64_T, flat.data(), counts.data(), displs.data(),
                 MPI_UINT64_T, MPI_COMM_WORLD);
  std::vector<std::vector<std::uint64_t>> out(counts.size());
  for (std::size_t r = 0; r < counts.size(); ++r) {
    out[r].assign(flat.begin() + displs[r], flat.begin() + displs[r] + counts[r]);
  }
  return out;
}

// The byte at `offset` of a test block made by `rank` under `seed`.
unsigned char pattern(int rank, std::size_t offset, unsigned seed) {
  return static_cast<unsigned char>((offset * 131 + static_cast<std::size_t>(rank) * 17 + seed) % 251);
}

void fill(void* block, std::size_t bytes, int rank, unsigned seed) {
  auto* b = static_cast<unsigned char*>(block);
  for (std::size_t i = 0; i < bytes; ++i) b[i] = pattern(rank, i, seed);
}

// Offset of the first byte in [from, bytes) of the block that differs from the pattern, or
// `bytes` if none does.
std::size_t first_mismatch(const void* block, std::size_t bytes, int rank, unsigned seed,
                           std::size_t from = 0) {
  const auto* b = static_cast<const unsigned char*>(block);
  for (std::size_t i = from; i < bytes; ++i) {
    if (b[i] != pattern(rank, i, seed)) return i;
  }
  return bytes;
}

bool all_zero(const void* p, std::size_t bytes) {
  const auto* b = static_cast<const unsigned char*>(p);
  return std::all_of(b, b + bytes, [](unsigned char c) { return c == 0; });
}

// A block's image, sent from one rank to another together with where the block was.
struct moved_image {
  std::uint64_t address = 0;        // the block's address on the sender
  std::vector<unsigned char> data;  // empty if the sender had nothing to send
};

// Sends `data` and the word `address` to rank `to` while receiving the same from rank `from`:
// first the address and the size (tag `tag`), then the bytes (tag `tag + 1`).
moved_image swap_bytes(std::uint64_t address, const std::vector<unsigned char>& data, int to, int from,
                       int tag) {
  std::uint64_t out[2] = {address, data.size()};
  std::uint64_t in[2] = {0, 0};
  MPI_Sendrecv(out, 2, MPI_UINT64_T, to, tag, in, 2, MPI_UINT64_T, from, tag, MPI_COMM_WORLD,
               MPI_STATUS_IGNORE);
  moved_image got;
  got.address = in[0];
  got.data.resize(in[1]);
  MPI_Sendrecv(data.data(), static_cast<int>(data.size()), MPI_BYTE, to, tag + 1, got.data.data(),
               static_cast<int>(got.data.size()), MPI_BYTE, from, tag + 1, MPI_COMM_WORLD,
               MPI_STATUS_IGNORE);
  return got;
}

// Packs `block` (may be null: sends nothing), detaches it, and sends the image to rank `to` while
// receiving one from rank `from`. The block is detached before its image leaves: once the image
// is out, the receiver may free it and its range come home at any block call made here.
// `after_detach` runs between the two.
moved_image pass_on(void* block, int to, int from, const std::function<void()>& after_detach = {}) {
  std::vector<unsigned char> image;
  if (block != nullptr) {
    image.resize(iso_pack_size(block));
    EXPECT_FALSE(image.empty()) << iso_last_error();
    if (!image.empty()) {
      const std::size_t written = iso_pack(block, image.data(), image.size());
      EXPECT_EQ(written, image.size()) << iso_last_error();
      if (written != image.size()) image.clear();
    }
    iso_detach(block);
    EXPECT_STREQ(iso_last_error(), "") << "iso_detach(" << block << ")";
    EXPECT_EQ(iso_length(block), 0u) << block << " is still held after iso_detach";
    if (after_detach) after_detach();
  }
  return swap_bytes(reinterpret_cast<std::uintptr_t>(block), image, to, from, 10);
}

// Polls iso_progress() (1 ms apart, at most `tries` times) until this rank's counter `what` of
// the region's stats has gone past `before`; returns the count reached.
std::size_t await_count(std::size_t region::stats_t::*what, std::size_t before, int tries = 5000) {
  std::size_t now = region::get().stats().*what;
  for (int i = 0; i < tries && now <= before; ++i) {
    iso_progress();
    now = region::get().stats().*what;
    if (now <= before) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return now;
}

// await_count() on the runs that came home from other ranks, for up to ~5 s.
std::size_t await_returned_runs(std::size_t before) {
  return await_count(&region::stats_t::returned_runs, before);
}

// (1) Blocks of mixed sizes allocated on every rank never overlap, and each lies in the share of
// the rank that allocated it.
TEST(Blocks, AddressesAreUniqueAcrossRanks) {
  const int me = my_rank();
  const int n = world_size();
  const region& reg = region::get();
  ASSERT_TRUE(reg.ready());
  EXPECT_EQ(reg.nranks(), n);
  EXPECT_EQ(reg.rank(), me);
  const std::size_t chunks_before = reg.stats().allocated_chunks;

  const std::size_t sizes[] = {0, 1, page_size(), page_size() + 1, 10000, 65536, 65537, 200000, 1 << 20,
                               3 * page_size()};
  constexpr int count = 96;
  std::vector<void*> mine;
  std::vector<std::uint64_t> ranges;  // addr, length, addr, length, ...
  for (int i = 0; i < count; ++i) {
    const std::size_t bytes = sizes[static_cast<std::size_t>(i * 7 + me) % std::size(sizes)];
    void* p = iso_malloc(bytes);
    EXPECT_NE(p, nullptr) << "iso_malloc(" << bytes << "): " << iso_last_error();
    if (p == nullptr) continue;
    const std::size_t length = iso_length(p);
    EXPECT_GE(length, std::max<std::size_t>(bytes, 1));
    EXPECT_EQ(length % page_size(), 0u) << length;
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % page_size(), 0u) << p;
    // Stamp both ends: an overlap between two of this rank's blocks would overwrite a stamp.
    const std::uint64_t stamp = (static_cast<std::uint64_t>(me) << 32) | static_cast<std::uint64_t>(i);
    std::memcpy(p, &stamp, sizeof stamp);
    std::memcpy(static_cast<char*>(p) + length - sizeof stamp, &stamp, sizeof stamp);
    mine.push_back(p);
    ranges.push_back(reinterpret_cast<std::uintptr_t>(p));
    ranges.push_back(length);
  }
  EXPECT_EQ(mine.size(), static_cast<std::size_t>(count));

  const auto all = allgather(ranges);
  struct range {
    std::uint64_t lo, hi;
    int rank;
  };
  std::vector<range> every;
  for (int r = 0; r < n; ++r) {
    const auto& w = all[static_cast<std::size_t>(r)];
    EXPECT_EQ(w.size(), 2u * count) << "rank " << r << " allocated fewer blocks";
    const iso::detail::interval share = reg.share(r);
    for (std::size_t k = 0; k + 1 < w.size(); k += 2) {
      const range b{w[k], w[k] + w[k + 1], r};
      EXPECT_GE(b.lo, share.lo) << "rank " << r << "'s block " << std::hex << b.lo << " below its share";
      EXPECT_LE(b.hi, share.hi) << "rank " << r << "'s block " << std::hex << b.lo << " above its share";
      EXPECT_EQ(reg.owner_of(reinterpret_cast<void*>(b.lo)), r) << std::hex << b.lo;
      EXPECT_EQ(iso_in_range(reinterpret_cast<void*>(b.lo)), 1) << std::hex << b.lo;
      every.push_back(b);
    }
  }
  std::sort(every.begin(), every.end(), [](const range& a, const range& b) { return a.lo < b.lo; });
  for (std::size_t k = 1; k < every.size(); ++k) {
    EXPECT_LE(every[k - 1].hi, every[k].lo)
        << std::hex << "block [" << every[k - 1].lo << ", " << every[k - 1].hi << ") of rank "
        << std::dec << every[k - 1].rank << " overlaps block at " << std::hex << every[k].lo
        << " of rank " << std::dec << every[k].rank;
  }

  for (std::size_t i = 0; i < mine.size(); ++i) {
    std::uint64_t head = 0, tail = 0;
    const std::size_t length = iso_length(mine[i]);
    std::memcpy(&head, mine[i], sizeof head);
    std::memcpy(&tail, static_cast<char*>(mine[i]) + length - sizeof tail, sizeof tail);
    EXPECT_EQ(head, tail) << "block " << mine[i] << " was overwritten";
    EXPECT_EQ(head >> 32, static_cast<std::uint64_t>(me)) << "block " << mine[i] << " was overwritten";
  }
  EXPECT_GT(reg.stats().allocated_chunks, chunks_before);
  for (void* p : mine) {
    iso_free(p);
    EXPECT_STREQ(iso_last_error(), "") << "iso_free(" << p << ")";
    EXPECT_EQ(iso_length(p), 0u) << p;
  }
  EXPECT_EQ(reg.stats().allocated_chunks, chunks_before);
  EXPECT_TRUE(reg.is_valid());
  MPI_Barrier(MPI_COMM_WORLD);
}

// (2) Each rank's block moves to the next rank by its image, keeps its address and content, is
// detached on its owner and freed on the receiver; its range then comes home to the owner.
TEST(Blocks, BlockMovesByImageAndItsRangeGoesHome) {
  const auto [me, n, next, prev] = ring_of_ranks();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  region& reg = region::get();
  constexpr unsigned seed = 7;

  void* mine = iso_malloc(3 * page_size() + 1);
  EXPECT_NE(mine, nullptr) << iso_last_error();
  const std::size_t length = mine != nullptr ? iso_length(mine) : 0;
  EXPECT_EQ(length, 4 * page_size());
  if (mine != nullptr) {
    fill(mine, length, me, seed);
    // A pointer inside the block to another place in the block.
    void* inner = static_cast<char*>(mine) + 2 * page_size() + 8;
    std::memcpy(mine, &inner, sizeof inner);
  }
  // Taken before the block leaves: from then on its range may come home at any block call.
  const auto at_start = reg.stats();

  moved_image got = pass_on(mine, next, prev, [&] {
    EXPECT_EQ(reg.stats().allocated_chunks, at_start.allocated_chunks)
        << "iso_detach must keep the range reserved on the owner";
    EXPECT_TRUE(all_zero(mine, length)) << "iso_detach must drop the local copy";
  });
  if (mine != nullptr) {
    EXPECT_EQ(iso_pack_size(mine), 0u);
    EXPECT_EQ(iso_in_range(mine), 1);
  }

  const auto expected = reinterpret_cast<void*>(got.address);
  void* moved = nullptr;
  EXPECT_FALSE(got.data.empty()) << "rank " << prev << " sent no image";
  if (!got.data.empty()) {
    EXPECT_EQ(reg.owner_of(expected), prev);
    moved = iso_unpack(got.data.data(), got.data.size());
    EXPECT_EQ(moved, expected) << iso_last_error();
  }
  if (moved != nullptr && moved == expected) {
    EXPECT_EQ(iso_length(moved), 4 * page_size());
    void* inner = nullptr;
    std::memcpy(&inner, moved, sizeof inner);
    EXPECT_EQ(inner, static_cast<char*>(moved) + 2 * page_size() + 8) << "the inner pointer changed";
    EXPECT_EQ(first_mismatch(moved, 4 * page_size(), prev, seed, sizeof inner), 4 * page_size())
        << "the content moved from rank " << prev << " differs";
  }

  const auto before = reg.stats();
  if (moved != nullptr && moved == expected) {
    iso_free(moved);
    EXPECT_STREQ(iso_last_error(), "");
    EXPECT_EQ(iso_length(moved), 0u);
    EXPECT_EQ(reg.stats().remote_frees, before.remote_frees + 1)
        << "iso_free of rank " << prev << "'s block must send its range back";
    // Only this rank's own block, coming home meanwhile (one chunk), may change its share.
    const auto now = reg.stats();
    EXPECT_EQ(now.allocated_chunks + (now.returned_runs - before.returned_runs), before.allocated_chunks)
        << "a remote free must not change this rank's own share";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (mine != nullptr) {
    const std::size_t returned = await_returned_runs(at_start.returned_runs);
    EXPECT_EQ(returned, at_start.returned_runs + 1) << "the range of " << mine << " did not come home";
    EXPECT_EQ(reg.stats().allocated_chunks, at_start.allocated_chunks - 1)
        << "the returned run of one chunk must be free again";
    // The owner has forgotten the detached block: its address is no block any more.
    iso_free(mine);
    EXPECT_THAT(last_error(), HasSubstr(pointer_text(mine)));
  }
  EXPECT_EQ(reg.stats().bad_returns, 0u);
  EXPECT_TRUE(reg.is_valid());
  MPI_Barrier(MPI_COMM_WORLD);
}

// (2c) Every block call from several OS threads at once: each rank's blocks travel to the next
// rank by image, where four std::threads unpack, check, pack and free them (their ranges going
// home) while also allocating and freeing blocks of their own. MPI stays on the main thread (the
// one that called iso_init): the ranges freed by the workers go home at its next block call.
TEST(Blocks, EveryCallWorksFromManyOSThreadsAndMPIStaysOnTheMPIThread) {
  const auto [me, n, next, prev] = ring_of_ranks();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  region& reg = region::get();
  constexpr int blocks = 64, workers = 4;
  constexpr unsigned seed = 23;
  const auto at_start = reg.stats();
  std::vector<unsigned char> images;  // every block's image, back to back
  std::vector<std::uint64_t> sizes;
  for (int i = 0; i < blocks; ++i) {
    const std::size_t bytes = page_size() * static_cast<std::size_t>(1 + i % 5);
    void* b = iso_malloc(bytes);
    EXPECT_NE(b, nullptr) << iso_last_error();
    if (b == nullptr) continue;
    fill(b, bytes, me, seed + static_cast<unsigned>(i));
    const std::size_t at = images.size();
    images.resize(at + iso_pack_size(b));
    EXPECT_EQ(iso_pack(b, images.data() + at, images.size() - at), images.size() - at);
    sizes.push_back(images.size() - at);
    iso_detach(b);
  }
  const moved_image got = swap_bytes(sizes.size(), images, next, prev, 40);
  std::vector<std::uint64_t> their_sizes(got.address);
  MPI_Sendrecv(sizes.data(), static_cast<int>(sizes.size()), MPI_UINT64_T, next, 42, their_sizes.data(),
               static_cast<int>(their_sizes.size()), MPI_UINT64_T, prev, 42, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  std::vector<std::size_t> offsets;
  for (std::size_t i = 0, at = 0; i < their_sizes.size(); at += their_sizes[i], ++i) offsets.push_back(at);

  std::atomic<int> bad{0};
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&, w] {
      for (std::size_t i = static_cast<std::size_t>(w); i < offsets.size(); i += workers) {
        void* b = iso_unpack(got.data.data() + offsets[i], their_sizes[i]);
        const std::size_t length = b != nullptr ? iso_length(b) : 0;
        if (b == nullptr || first_mismatch(b, length, prev, seed + static_cast<unsigned>(i)) != length) ++bad;
        std::vector<unsigned char> scratch(iso_pack_size(b));
        if (scratch.empty() || iso_pack(b, scratch.data(), scratch.size()) != scratch.size()) ++bad;
        iso_free(b);  // rank prev's block: its range goes home
        for (int k = 0; k < 16; ++k) {  // and blocks of this rank's own share, meanwhile
          void* own = iso_malloc(page_size() * static_cast<std::size_t>(1 + k % 3));
          if (own == nullptr) ++bad;
          iso_free(own);
        }
      }
    });
  }
  for (std::thread& t : pool) t.join();
  EXPECT_EQ(bad.load(), 0) << "a block call from a worker thread failed";
  EXPECT_EQ(reg.stats().remote_frees, at_start.remote_frees + their_sizes.size());
  MPI_Barrier(MPI_COMM_WORLD);  // every rank's workers have freed what they received
  std::size_t returned = at_start.returned_runs;
  for (int tries = 0; tries < 5000 && returned < at_start.returned_runs + sizes.size(); ++tries) {
    returned = await_count(&region::stats_t::returned_runs, returned, 1);
  }
  EXPECT_EQ(returned, at_start.returned_runs + sizes.size()) << "not every range came home to rank " << me;
  EXPECT_EQ(reg.stats().allocated_chunks, at_start.allocated_chunks);
  EXPECT_EQ(reg.stats().bad_returns, 0u);
  EXPECT_TRUE(reg.is_valid());
  MPI_Barrier(MPI_COMM_WORLD);
}

// (2b) A block hops two ranks (holder -> holder + 1 -> holder + 2) and is freed there. On two
// ranks it comes back to its owner by image and is freed locally; otherwise it goes home.
TEST(Blocks, BlockHopsTwiceThenIsFreed) {
  const auto [me, n, next, prev] = ring_of_ranks();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  const int origin = (me + n - 2) % n;  // the owner of the block this rank ends up with
  region& reg = region::get();
  constexpr unsigned seed = 23;

  void* mine = iso_malloc(page_size());
  EXPECT_NE(mine, nullptr) << iso_last_error();
  if (mine != nullptr) fill(mine, page_size(), me, seed);
  // Taken before the block leaves: from then on its range may come home at any block call.
  const auto before = reg.stats();

  moved_image hop1 = pass_on(mine, next, prev);
  void* middle = hop1.data.empty() ? nullptr : iso_unpack(hop1.data.data(), hop1.data.size());
  EXPECT_EQ(middle, reinterpret_cast<void*>(hop1.address)) << iso_last_error();

  moved_image hop2 = pass_on(middle, next, prev);
  void* last = hop2.data.empty() ? nullptr : iso_unpack(hop2.data.data(), hop2.data.size());
  EXPECT_EQ(last, reinterpret_cast<void*>(hop2.address)) << iso_last_error();
  EXPECT_EQ(reg.owner_of(last), origin);
  if (last != nullptr) {
    EXPECT_EQ(first_mismatch(last, page_size(), origin, seed), page_size()) << "content changed on the way";
    iso_free(last);
    EXPECT_STREQ(iso_last_error(), "");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (origin == me) {
    // Two ranks: this rank's own block came back and was freed here.
    EXPECT_EQ(reg.stats().remote_frees, before.remote_frees);
    EXPECT_EQ(reg.stats().allocated_chunks, before.allocated_chunks - 1);
  } else if (mine != nullptr) {
    EXPECT_EQ(await_returned_runs(before.returned_runs), before.returned_runs + 1)
        << "the range of " << mine << " did not come home";
    EXPECT_EQ(reg.stats().allocated_chunks, before.allocated_chunks - 1);
  }
  EXPECT_EQ(reg.stats().bad_returns, 0u);
  EXPECT_TRUE(reg.is_valid());
  MPI_Barrier(MPI_COMM_WORLD);
}

// (2c) The image leaves but the owner keeps its copy (no iso_detach): when the receiver frees its
// copy, the range must not go back into the owner's free space under the owner's live block.
TEST(Blocks, OwnerThatKeptItsCopyKeepsTheRange) {
  const auto [me, n, next, prev] = ring_of_ranks();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  region& reg = region::get();
  void* mine = iso_malloc(page_size());
  EXPECT_NE(mine, nullptr) << iso_last_error();
  if (mine != nullptr) fill(mine, page_size(), me, 41);
  std::vector<unsigned char> image(mine != nullptr ? iso_pack_size(mine) : 0);
  if (mine != nullptr) {
    EXPECT_EQ(iso_pack(mine, image.data(), image.size()), image.size());
  }
  const auto before = reg.stats();
  // Ring exchange of the images, keeping the local copy.
  const std::vector<unsigned char> theirs = swap_bytes(0, image, next, prev, 5).data;
  void* copy = iso_unpack(theirs.data(), theirs.size());
  EXPECT_NE(copy, nullptr) << iso_last_error();
  if (copy != nullptr) iso_free(copy);  // its range is sent to its owner, who still holds it
  MPI_Barrier(MPI_COMM_WORLD);
  await_count(&region::stats_t::kept_returns, before.kept_returns, 200);
  EXPECT_EQ(reg.stats().kept_returns, before.kept_returns + 1);
  EXPECT_EQ(reg.stats().returned_runs, before.returned_runs);
  if (mine != nullptr) {
    EXPECT_EQ(iso_length(mine), page_size()) << "the owner's block must survive";
    EXPECT_EQ(first_mismatch(mine, page_size(), me, 41), page_size());
    iso_free(mine);
    EXPECT_STREQ(iso_last_error(), "");
  }
  EXPECT_TRUE(reg.is_valid());
  MPI_Barrier(MPI_COMM_WORLD);
}

// (2d) A whole per-thread heap moves by its image: rank r builds one, ships it to r + 1, which
// reads it at the same addresses and goes on allocating and freeing in it; destroying it there
// returns its chunks to rank r.
TEST(Blocks, HeapImageMovesAndKeepsServing) {
  const auto [me, n, next, prev] = ring_of_ranks();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  region& reg = region::get();
  using iso::detail::heap;

  heap* h = heap::create();
  std::vector<std::uint64_t> blocks;  // addresses of the blocks, sent along with the image
  for (int i = 0; i < 300; ++i) {
    const std::size_t bytes = 8 + static_cast<std::size_t>(i % 37) * 24 + (i % 50 == 0 ? 100000 : 0);
    auto* p = static_cast<unsigned char*>(h->alloc(bytes));
    ASSERT_NE(p, nullptr);
    std::memset(p, (me * 31 + i) & 0xff, bytes);
    blocks.push_back(reinterpret_cast<std::uintptr_t>(p));
    blocks.push_back(bytes);
  }
  std::vector<unsigned char> image(h->image_bytes());
  h->write_image(image.data());
  const auto before = reg.stats();
  // The image goes; this rank's copy is dropped (its extents decommitted), as a migration does.
  h->for_each_extent([](void* addr, std::size_t bytes) { iso::detail::prim::decommit(addr, bytes); });

  auto exchange = [&](const std::vector<unsigned char>& data) { return swap_bytes(0, data, next, prev, 7).data; };
  std::vector<unsigned char> list(blocks.size() * sizeof(std::uint64_t));
  std::memcpy(list.data(), blocks.data(), list.size());
  const std::vector<unsigned char> their_image = exchange(image);
  const std::vector<unsigned char> their_list = exchange(list);

  heap* moved = heap::read_image(their_image.data(), their_image.size());
  ASSERT_NE(moved, nullptr);
  EXPECT_EQ(reg.owner_of(moved), prev);
  std::vector<std::uint64_t> theirs(their_list.size() / sizeof(std::uint64_t));
  std::memcpy(theirs.data(), their_list.data(), their_list.size());
  for (std::size_t k = 0; k + 1 < theirs.size(); k += 2) {
    const auto* p = reinterpret_cast<const unsigned char*>(theirs[k]);
    const unsigned char expect = static_cast<unsigned char>((prev * 31 + static_cast<int>(k / 2)) & 0xff);
    EXPECT_EQ(heap::owner_of(p), moved);
    EXPECT_TRUE(p[0] == expect && p[theirs[k + 1] - 1] == expect) << "block " << k / 2 << " changed on the way";
  }
  // It keeps serving: new blocks (from this rank's share when it grows), frees of old ones.
  for (std::size_t k = 0; k + 1 < theirs.size(); k += 4) moved->free(reinterpret_cast<void*>(theirs[k]));
  void* fresh = moved->alloc(200000);
  ASSERT_NE(fresh, nullptr);
  std::memset(fresh, 1, 200000);
  EXPECT_TRUE(moved->is_valid());
  moved->destroy();  // its chunks go home to rank prev, the new one stays here
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_GT(await_returned_runs(before.returned_runs), before.returned_runs)
      << "the moved heap's chunks did not come home";
  EXPECT_TRUE(reg.is_valid());
  MPI_Barrier(MPI_COMM_WORLD);
}

// (3) Misuse is reported, names the pointer, and changes nothing.
TEST(BlockErrors, FreeOfAMallocPointerIsRefused) {
  const auto before = region::get().stats();
  void* m = std::malloc(100);
  ASSERT_NE(m, nullptr);
  iso_free(m);
  EXPECT_THAT(last_error(), HasSubstr(pointer_text(m)));
  EXPECT_EQ(region::get().stats().allocated_chunks, before.allocated_chunks);
  EXPECT_EQ(region::get().stats().remote_frees, before.remote_frees);
  std::free(m);
  EXPECT_TRUE(region::get().is_valid());
}

TEST(BlockErrors, FreeOfAStackAddressIsRefused) {
  const auto before = region::get().stats();
  int on_stack = 0;
  iso_free(&on_stack);
  EXPECT_THAT(last_error(), HasSubstr(pointer_text(&on_stack)));
  EXPECT_EQ(region::get().stats().allocated_chunks, before.allocated_chunks);
  EXPECT_TRUE(region::get().is_valid());
}

TEST(BlockErrors, SecondFreeIsRefusedAndDoesNotCorruptTheShare) {
  void* p = iso_malloc(1);
  ASSERT_NE(p, nullptr) << iso_last_error();
  const std::size_t chunks = region::get().stats().allocated_chunks;
  iso_free(p);
  EXPECT_STREQ(iso_last_error(), "");
  EXPECT_EQ(region::get().stats().allocated_chunks, chunks - 1);
  iso_free(p);
  EXPECT_THAT(last_error(), HasSubstr(pointer_text(p)));
  EXPECT_EQ(region::get().stats().allocated_chunks, chunks - 1) << "the second free changed the share";
  EXPECT_TRUE(region::get().is_valid());
  // Had the run been released twice, two new blocks could share it.
  void* a = iso_malloc(1);
  void* b = iso_malloc(1);
  EXPECT_NE(a, nullptr);
  EXPECT_NE(b, nullptr);
  EXPECT_NE(a, b);
  iso_free(a);
  iso_free(b);
  EXPECT_TRUE(region::get().is_valid());
}

TEST(BlockErrors, LengthOfAnythingButAHeldBlockIsZero) {
  int on_stack = 0;
  void* m = std::malloc(64);
  void* p = iso_malloc(2 * page_size());
  ASSERT_NE(p, nullptr) << iso_last_error();
  EXPECT_EQ(iso_length(p), 2 * page_size());
  EXPECT_EQ(iso_length(m), 0u);
  EXPECT_THAT(last_error(), HasSubstr(pointer_text(m)));
  EXPECT_THAT(last_error(), HasSubstr("outside the isomalloc region"));
  EXPECT_EQ(iso_length(&on_stack), 0u);
  EXPECT_EQ(iso_length(nullptr), 0u);
  EXPECT_EQ(iso_length(static_cast<char*>(p) + page_size()), 0u) << "an interior pointer is not a block";
  EXPECT_EQ(iso_pack_size(m), 0u);
  iso_free(p);
  EXPECT_EQ(iso_length(p), 0u) << "a freed block";
  EXPECT_EQ(iso_pack_size(p), 0u);
  std::free(m);
}

TEST(BlockErrors, PackIntoATooSmallBufferWritesNothing) {
  void* p = iso_malloc(page_size());
  ASSERT_NE(p, nullptr) << iso_last_error();
  fill(p, page_size(), my_rank(), 3);
  const std::size_t need = iso_pack_size(p);
  EXPECT_GT(need, page_size());
  std::vector<unsigned char> buffer(need, 0xAB);
  EXPECT_EQ(iso_pack(p, buffer.data(), need - 1), 0u);
  EXPECT_THAT(last_error(), HasSubstr(std::to_string(need)));
  EXPECT_TRUE(std::all_of(buffer.begin(), buffer.end(), [](unsigned char c) { return c == 0xAB; }))
      << "iso_pack wrote into a buffer that was too small";
  EXPECT_EQ(iso_pack(p, nullptr, 0), 0u);
  EXPECT_EQ(iso_pack(p, buffer.data(), need), need) << iso_last_error();
  int on_stack = 0;
  EXPECT_EQ(iso_pack(&on_stack, buffer.data(), need), 0u);
  iso_free(p);
}

// Corrupt images of a detached block (whose range is reserved and reads as zero) are refused
// before anything is written; the genuine image then restores it; a second image is refused.
TEST(BlockErrors, CorruptImagesAreRefusedAndChangeNothing) {
  const int me = my_rank();
  constexpr unsigned seed = 11;
  region& reg = region::get();
  void* p = iso_malloc(2 * page_size());
  ASSERT_NE(p, nullptr) << iso_last_error();
  const std::size_t length = iso_length(p);
  fill(p, length, me, seed);
  std::vector<unsigned char> image(iso_pack_size(p));
  ASSERT_EQ(iso_pack(p, image.data(), image.size()), image.size()) << iso_last_error();
  const std::size_t header = image.size() - length;
  ASSERT_GE(header, 16u);
  iso_detach(p);
  ASSERT_EQ(iso_length(p), 0u);
  ASSERT_TRUE(all_zero(p, length)) << "a detached block's pages must read as zero";
  const auto before = reg.stats();

  // Runs one corrupt image and checks that it is refused with a message that says `why`, and
  // that nothing changed.
  auto refused = [&](const std::vector<unsigned char>& bad, std::size_t bytes, const std::string& what,
                     const std::string& why = "") {
    void* r = iso_unpack(bad.empty() ? nullptr : bad.data(), bytes);
    EXPECT_EQ(r, nullptr) << what << " was accepted";
    EXPECT_THAT(last_error(), HasSubstr("iso_unpack")) << what;
    EXPECT_THAT(last_error(), HasSubstr(why)) << what;
    EXPECT_EQ(iso_length(p), 0u) << what << " made the block present";
    EXPECT_TRUE(all_zero(p, length)) << what << " wrote into the block";
    EXPECT_EQ(reg.stats().allocated_chunks, before.allocated_chunks) << what;
  };

  refused({}, 0, "an empty image");
  refused(image, header - 1, "an image shorter than its header", "truncated");
  refused(image, image.size() - 1, "an image missing its last byte");
  {
    std::vector<unsigned char> longer = image;
    longer.push_back(0);
    refused(longer, longer.size(), "an image with a byte too many");
  }
  {
    std::vector<unsigned char> bad = image;
    std::memcpy(bad.data(), "NOTMAGIC", 8);
    refused(bad, bad.size(), "an image with a wrong magic", "magic");
  }
  for (std::size_t i = 0; i < header; ++i) {
    std::vector<unsigned char> bad = image;
    bad[i] ^= 0x20;
    refused(bad, bad.size(), "an image with header byte " + std::to_string(i) + " flipped");
  }
  for (std::size_t i : {header, header + length / 2, image.size() - 1}) {
    std::vector<unsigned char> bad = image;
    bad[i] ^= 0x01;
    refused(bad, bad.size(), "an image with data byte " + std::to_string(i - header) + " flipped",
            "corrupt");
  }

  void* back = iso_unpack(image.data(), image.size());
  EXPECT_EQ(back, p) << iso_last_error();
  if (back == p) {
    EXPECT_EQ(iso_length(p), length);
    EXPECT_EQ(first_mismatch(p, length, me, seed), length);
    // Already present: refused, and the block keeps what it holds now.
    fill(p, length, me, seed + 1);
    EXPECT_EQ(iso_unpack(image.data(), image.size()), nullptr);
    EXPECT_THAT(last_error(), HasSubstr(pointer_text(p)));
    EXPECT_EQ(first_mismatch(p, length, me, seed + 1), length) << "a refused image overwrote the block";
    iso_free(p);
    EXPECT_STREQ(iso_last_error(), "");
  }
  EXPECT_TRUE(reg.is_valid());
}

TEST(BlockErrors, InitAgainOnlyWithTheSameCommunicator) {
  region& reg = region::get();
  const std::uintptr_t base = reg.base();
  const std::size_t bytes = reg.bytes();
  EXPECT_EQ(iso_init(MPI_COMM_WORLD), 0) << iso_last_error();
  EXPECT_STREQ(iso_last_error(), "");
  MPI_Comm other = MPI_COMM_NULL;
  ASSERT_EQ(MPI_Comm_dup(MPI_COMM_WORLD, &other), MPI_SUCCESS);
  EXPECT_NE(iso_init(other), 0);
  EXPECT_THAT(last_error(), HasSubstr("iso_init"));
  MPI_Comm_free(&other);
  EXPECT_EQ(reg.base(), base) << "a refused iso_init moved the region";
  EXPECT_EQ(reg.bytes(), bytes);
  // From an OS thread that is not MPI's main one (MPI_Init's thread level): refused, since the
  // block interface makes its MPI calls on the thread that called iso_init.
  int worker_rc = 0;
  std::string worker_error;
  std::thread([&] {
    worker_rc = iso_init(MPI_COMM_WORLD);
    worker_error = iso_last_error();
  }).join();
  EXPECT_NE(worker_rc, 0);
  EXPECT_THAT(worker_error, HasSubstr("not MPI's main thread"));
  void* p = iso_malloc(1);
  EXPECT_NE(p, nullptr) << "blocks no longer work after a refused iso_init: " << iso_last_error();
  EXPECT_EQ(reg.owner_of(p), my_rank());
  iso_free(p);
  MPI_Barrier(MPI_COMM_WORLD);
}

// Fault injection (fault.hpp): the kernel refuses to take back the pages of a detached copy
// (madvise fails, as it does on locked pages). iso_detach says so and changes nothing: the block
// is still held, with its data; the next iso_detach works, and the region stays consistent.
TEST(BlockErrors, ADetachWhosePagesTheKernelRefusesKeepsTheBlockHeld) {
  region& reg = region::get();
  const std::size_t bytes = 3 * page_size();
  auto* block = static_cast<unsigned char*>(iso_malloc(bytes));
  ASSERT_NE(block, nullptr) << iso_last_error();
  std::memset(block, 0x5a, bytes);
  std::vector<unsigned char> image(iso_pack_size(block));
  ASSERT_EQ(iso_pack(block, image.data(), image.size()), image.size());
  const std::size_t failed_before = reg.stats().failed_releases;

  iso::detail::fault::arm("prim.decommit");
  iso_detach(block);
  EXPECT_THAT(last_error(), HasSubstr("iso_detach(" + pointer_text(block) + ")"));
  EXPECT_THAT(last_error(), HasSubstr("still held"));
  EXPECT_EQ(iso_length(block), bytes) << "the block was forgotten while its copy stayed";
  EXPECT_EQ(block[0], 0x5a);
  EXPECT_EQ(block[bytes - 1], 0x5a);
  EXPECT_EQ(reg.stats().failed_releases, failed_before + 1);
  EXPECT_TRUE(reg.is_valid());

  iso_detach(block);  // the kernel takes them this time
  EXPECT_STREQ(iso_last_error(), "");
  EXPECT_EQ(iso_length(block), 0u);
  // Back from its image, and freed, so that the range does not stay reserved for the copy.
  EXPECT_EQ(iso_unpack(image.data(), image.size()), block) << iso_last_error();
  iso_free(block);
  EXPECT_STREQ(iso_last_error(), "");
  EXPECT_TRUE(reg.is_valid());
  MPI_Barrier(MPI_COMM_WORLD);
}

// Fault injection: the kernel refuses to take back the pages of a freed block too large to be
// cached. The free itself succeeds (a freed range's contents are undefined, so pages that stay
// committed harm nothing): the range is free again and serves the next allocation, the refusal
// is counted and reported on stderr, and the region stays consistent.
TEST(BlockErrors, AFreeWhosePagesTheKernelRefusesStillReleasesTheRange) {
  region& reg = region::get();
  const std::size_t bytes = std::size_t{4} << 20;  // more than max_cached_run_chunks chunks
  void* block = iso_malloc(bytes);
  ASSERT_NE(block, nullptr) << iso_last_error();
  std::memset(block, 0x33, bytes);
  const auto before = reg.stats();

  iso::detail::fault::arm("prim.decommit");
  iso_free(block);
  EXPECT_STREQ(iso_last_error(), "");
  const auto after = reg.stats();
  EXPECT_EQ(after.failed_releases, before.failed_releases + 1);
  EXPECT_LT(after.allocated_chunks, before.allocated_chunks) << "the range was not released";
  EXPECT_EQ(iso_length(block), 0u);
  EXPECT_TRUE(reg.is_valid());
  void* again = iso_malloc(bytes);
  EXPECT_NE(again, nullptr) << iso_last_error();
  EXPECT_EQ(reg.stats().allocated_chunks, before.allocated_chunks);
  iso_free(again);
  EXPECT_TRUE(reg.is_valid());
  MPI_Barrier(MPI_COMM_WORLD);
}

// Fault injection on the return path (mpi_peers.hpp): one MPI call of the region's peers fails,
// or a send it posted completes in error (it must be sent again), while a block freed on another
// rank goes home. Nothing is lost and nothing is fatal: an
// iso_progress reports the failure, naming the call, a later one sends or receives what waited,
// the range comes home to its owner, and the region stays consistent. Each point is armed before
// the block calls that pass it (the remote iso_free sends, every block call polls) and after any
// return could have been received: it fires in whichever comes first.
class BlockReturnFaults : public testing::TestWithParam<const char*> {};

TEST_P(BlockReturnFaults, AFailedCallOnTheReturnPathLosesNothing) {
  const auto [me, n, next, prev] = ring_of_ranks();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  region& reg = region::get();
  void* mine = iso_malloc(2 * page_size());
  EXPECT_NE(mine, nullptr) << iso_last_error();
  if (mine != nullptr) fill(mine, 2 * page_size(), me, 11);
  const auto at_start = reg.stats();
  moved_image got = pass_on(mine, next, prev);
  iso::detail::fault::arm(GetParam());  // the next rank frees this rank's block after the swap
  void* theirs = got.data.empty() ? nullptr : iso_unpack(got.data.data(), got.data.size());
  EXPECT_EQ(theirs, reinterpret_cast<void*>(got.address)) << iso_last_error();
  if (theirs != nullptr) iso_free(theirs);  // its range goes home to rank prev
  EXPECT_STREQ(iso_last_error(), "") << "a failure of the return path is not iso_free's";
  // Until the failure has been reported and this rank's own range has come home.
  std::string reported;
  std::size_t returned = reg.stats().returned_runs;
  for (int i = 0; i < 5000 && (reported.empty() || returned == at_start.returned_runs); ++i) {
    iso_progress();
    if (reported.empty()) reported = last_error();
    returned = reg.stats().returned_runs;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  iso::detail::fault::disarm();
  // A send that completes in error is found by its test.
  const std::string call = std::strcmp(GetParam(), "region-returns:send_completes_in_error") == 0
                               ? "region-returns:MPI_Testall"
                               : GetParam();
  EXPECT_THAT(reported, HasSubstr("iso_progress: " + call)) << "the failure was not reported";
  EXPECT_EQ(returned, at_start.returned_runs + 1) << "the range of " << mine << " did not come home";
  EXPECT_EQ(reg.stats().allocated_chunks, at_start.allocated_chunks - 1) << "the returned run must be free again";
  EXPECT_EQ(reg.stats().bad_returns, 0u);
  EXPECT_TRUE(reg.is_valid());
  iso_progress();
  EXPECT_STREQ(iso_last_error(), "");
  MPI_Barrier(MPI_COMM_WORLD);
}

INSTANTIATE_TEST_SUITE_P(, BlockReturnFaults,
                         testing::Values("region-returns:MPI_Isend", "region-returns:MPI_Testall",
                                         "region-returns:MPI_Iprobe", "region-returns:MPI_Get_count",
                                         "region-returns:MPI_Recv", "region-returns:send_completes_in_error"),
                         [](const testing::TestParamInfo<const char*>& info) {
                           return std::string(std::strchr(info.param, ':') + 1);
                         });

// A return whose MPI_Isend failed waits in its batch; shutdown's drain (which the runtime's
// destructor runs) sends it and is not fatal: the failure was tried again, and the send worked.
TEST(Blocks, ShutdownSendsAReturnWhoseSendFailedBefore) {
  const auto [me, n, next, prev] = ring_of_ranks();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  region& reg = region::get();
  void* mine = iso_malloc(page_size());
  EXPECT_NE(mine, nullptr) << iso_last_error();
  const auto at_start = reg.stats();
  moved_image got = pass_on(mine, next, prev);
  void* theirs = got.data.empty() ? nullptr : iso_unpack(got.data.data(), got.data.size());
  EXPECT_EQ(theirs, reinterpret_cast<void*>(got.address)) << iso_last_error();
  iso::detail::fault::arm("region-returns:MPI_Isend");
  if (theirs != nullptr) iso_free(theirs);  // no poll after it: the failure is not taken yet
  iso::detail::fault::disarm();
  iso::detail::installed_peers_or_null()->drain();
  EXPECT_EQ(reg.stats().returned_runs, at_start.returned_runs + 1) << "the range of " << mine << " did not come home";
  EXPECT_TRUE(reg.is_valid());
  MPI_Barrier(MPI_COMM_WORLD);
}

// (4) iso_in_range: 1 for any rank's block address, 0 for system memory.
TEST(Blocks, InRangeTellsRegionFromSystemMemory) {
  const region& reg = region::get();
  void* p = iso_malloc(page_size());
  EXPECT_NE(p, nullptr) << iso_last_error();
  if (p != nullptr) {
    EXPECT_EQ(iso_in_range(p), 1);
    EXPECT_EQ(iso_in_range(static_cast<char*>(p) + page_size() - 1), 1);
  }
  for (std::size_t n : {std::size_t{1}, std::size_t{100}, page_size(), std::size_t{1} << 20, std::size_t{64} << 20}) {
    void* m = std::malloc(n);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(iso_in_range(m), 0) << "malloc(" << n << ") = " << m;
    EXPECT_EQ(iso_in_range(static_cast<char*>(m) + n - 1), 0) << "malloc(" << n << ") = " << m;
    std::free(m);
  }
  int on_stack = 0;
  static int in_data = 0;
  EXPECT_EQ(iso_in_range(&on_stack), 0);
  EXPECT_EQ(iso_in_range(&in_data), 0);
  EXPECT_EQ(iso_in_range(nullptr), 0);
  EXPECT_EQ(iso_in_range(reinterpret_cast<void*>(reg.base())), 1);
  EXPECT_EQ(iso_in_range(reinterpret_cast<void*>(reg.base() - 1)), 0);
  EXPECT_EQ(iso_in_range(reinterpret_cast<void*>(reg.base() + reg.bytes() - 1)), 1);
  EXPECT_EQ(iso_in_range(reinterpret_cast<void*>(reg.base() + reg.bytes())), 0);

  const auto all = allgather({reinterpret_cast<std::uintptr_t>(p)});
  for (std::size_t r = 0; r < all.size(); ++r) {
    ASSERT_EQ(all[r].size(), 1u);
    const auto* theirs = reinterpret_cast<void*>(all[r][0]);
    if (theirs == nullptr) continue;
    EXPECT_EQ(iso_in_range(theirs), 1) << "rank " << r << "'s block " << theirs;
    EXPECT_EQ(reg.owner_of(theirs), static_cast<int>(r));
    if (static_cast<int>(r) != my_rank()) {
      EXPECT_EQ(iso_length(theirs), 0u) << "another rank's block is not held here";
    }
  }
  if (p != nullptr) iso_free(p);
  MPI_Barrier(MPI_COMM_WORLD);
}

}  // namespace
