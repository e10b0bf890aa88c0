// The per-thread heap (isomalloc/internal/heap.hpp) on a single-rank region: a shadow-model stress
// test with full validation, then one test per property of the interface (alignment, realloc
// across classes, owner_of, recycling of pages, segments and runs, extents, images, misuse).
#include "heap.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "isothreads/error.hpp"
#include "prim.hpp"
#include "region.hpp"

namespace {

using iso::detail::chunk_bytes;
using iso::detail::heap;
using iso::detail::region;
constexpr std::size_t page = 4096;

std::uintptr_t addr(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

// Block contents: word k of the block with this id is pattern(id, k), so a block moved by
// realloc keeps verifying against its id, and two blocks never look alike.
std::uint64_t pattern(std::uint64_t id, std::size_t k) {
  return (id * 0x9E3779B97F4A7C15ull) ^ (k * 0xD6E8FEB86659FD93ull) ^ 0x5555;
}

void fill(void* p, std::size_t from, std::size_t to, std::uint64_t id) {
  auto* b = static_cast<unsigned char*>(p);
  for (std::size_t i = from; i < to;) {
    const std::uint64_t w = pattern(id, i / 8);
    if (i % 8 == 0 && i + 8 <= to) {
      std::memcpy(b + i, &w, 8);
      i += 8;
    } else {
      b[i] = static_cast<unsigned char>(w >> (8 * (i % 8)));
      ++i;
    }
  }
}

bool verify(const void* p, std::size_t n, std::uint64_t id) {
  const auto* b = static_cast<const unsigned char*>(p);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, b + i, 8);
    if (w != pattern(id, i / 8)) return false;
  }
  for (; i < n; ++i) {
    if (b[i] != static_cast<unsigned char>(pattern(id, i / 8) >> (8 * (i % 8)))) return false;
  }
  return true;
}

class Heap : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { region::get().init_single_rank(); }
  void SetUp() override {
    chunks_before_ = region::get().stats().allocated_chunks;
    h_ = heap::create();
  }
  void TearDown() override {
    if (h_ != nullptr) {
      EXPECT_TRUE(h_->is_valid());
      h_->destroy();
    }
    EXPECT_EQ(region::get().stats().allocated_chunks, chunks_before_) << "the heap leaked chunks";
    EXPECT_TRUE(region::get().is_valid());
  }

  std::size_t chunks_before_ = 0;
  heap* h_ = nullptr;
};

// ---- shadow-model stress -----------------------------------------------------------------------

struct live_block {
  void* p;
  std::size_t n;     // bytes asked for (and filled)
  std::uint64_t id;  // pattern seed
};

class model {
 public:
  explicit model(heap* h) : h_(h) {}

  // Records a new block and checks it against every live one.
  void add(void* p, std::size_t n, std::uint64_t id) {
    ASSERT_NE(p, nullptr) << "allocation of " << n << " bytes failed";
    const std::size_t usable = h_->usable_size(p);
    ASSERT_GE(usable, n);
    ASSERT_EQ(addr(p) % 16, 0u);
    ASSERT_EQ(heap::owner_of(p), h_);
    auto next = ranges_.lower_bound(addr(p));
    ASSERT_TRUE(next == ranges_.end() || addr(p) + usable <= next->first) << "overlaps the next block";
    if (next != ranges_.begin()) {
      ASSERT_LE(std::prev(next)->second, addr(p)) << "overlaps the previous block";
    }
    ranges_.emplace(addr(p), addr(p) + usable);
    index_[addr(p)] = blocks_.size();
    blocks_.push_back({p, n, id});
  }

  // Forgets block i (swap with the last).
  live_block remove(std::size_t i) {
    const live_block b = blocks_[i];
    ranges_.erase(addr(b.p));
    index_.erase(addr(b.p));
    blocks_[i] = blocks_.back();
    blocks_.pop_back();
    if (i < blocks_.size()) index_[addr(blocks_[i].p)] = i;
    return b;
  }

  std::vector<live_block>& blocks() { return blocks_; }
  const std::map<std::uintptr_t, std::uintptr_t>& ranges() const { return ranges_; }

 private:
  heap* h_;
  std::vector<live_block> blocks_;
  std::map<std::uintptr_t, std::uintptr_t> ranges_;  // start -> end of usable bytes
  std::map<std::uintptr_t, std::size_t> index_;      // start -> index in blocks_
};

// Mostly small, some medium, a few large (up to 4 MiB).
std::size_t random_size(std::mt19937_64& rng) {
  const unsigned r = rng() % 10000;
  if (r < 6000) return rng() % 129;
  if (r < 9000) return rng() % 2049;
  if (r < 9950) return 2049 + rng() % (40 << 10);
  if (r < 9995) return (40 << 10) + rng() % (256 << 10);
  return (256 << 10) + rng() % (4 << 20);
}

TEST_F(Heap, ShadowModelStress) {
  std::uint64_t seed = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  if (const char* s = std::getenv("HEAP_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::printf("ShadowModelStress seed %llu (rerun with HEAP_SEED=%llu)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  model m(h_);
  std::uint64_t next_id = 1;
  constexpr int ops = 3'000'000;
  std::size_t target = 5000;  // live blocks the walk drifts towards; changes now and then
  for (int op = 0; op < ops; ++op) {
    if (op % 200'000 == 0) target = 100 + rng() % 30000;
    auto& live = m.blocks();
    const unsigned kind = rng() % 100;
    const bool grow = live.size() < target;
    if (live.empty() || (grow && kind < 55) || (!grow && kind < 35)) {
      const std::size_t n = random_size(rng);
      const std::uint64_t id = next_id++;
      void* p;
      if (kind % 10 == 0) {
        const std::size_t align = std::size_t{1} << (rng() % 21);
        p = h_->alloc_aligned(align, n);
        ASSERT_EQ(addr(p) % align, 0u) << "align " << align << " size " << n;
      } else {
        p = h_->alloc(n);
      }
      m.add(p, n, id);
      fill(p, 0, n, id);
    } else if (kind < 85) {
      const live_block b = m.remove(rng() % live.size());
      ASSERT_TRUE(verify(b.p, b.n, b.id)) << "block " << b.p << " of " << b.n << " bytes changed";
      h_->free(b.p);
    } else {
      const live_block b = m.remove(rng() % live.size());
      ASSERT_TRUE(verify(b.p, b.n, b.id));
      const std::size_t n = random_size(rng) + 1;
      void* q = h_->realloc(b.p, n);
      m.add(q, n, b.id);
      ASSERT_TRUE(verify(q, std::min(n, b.n), b.id)) << "realloc " << b.n << " -> " << n;
      if (n > b.n) fill(q, b.n, n, b.id);
    }
    if (op % 10'000 == 0) {
      ASSERT_TRUE(h_->is_valid()) << "after op " << op;
    }
  }
  ASSERT_TRUE(h_->is_valid());
  auto& live = m.blocks();
  EXPECT_EQ(h_->stats().live_blocks, live.size());
  while (!live.empty()) {
    const live_block b = m.remove(live.size() - 1);
    ASSERT_TRUE(verify(b.p, b.n, b.id));
    h_->free(b.p);
  }
  ASSERT_TRUE(h_->is_valid());
  EXPECT_EQ(h_->stats().live_blocks, 0u);
  EXPECT_EQ(h_->stats().segments, 1u);
  EXPECT_EQ(h_->stats().large_runs, 0u);
}

// ---- alignment, sizes, realloc -----------------------------------------------------------------

TEST_F(Heap, AlignmentEveryPowerOfTwo) {
  std::vector<void*> held;
  for (std::size_t align = 1; align <= (std::size_t{1} << 20); align <<= 1) {
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{24}, std::size_t{100},
                          std::size_t{1000}, std::size_t{3000}, std::size_t{5000},
                          std::size_t{70000}}) {
      void* p = h_->alloc_aligned(align, n);
      ASSERT_NE(p, nullptr);
      EXPECT_EQ(addr(p) % align, 0u) << "align " << align << " size " << n;
      EXPECT_EQ(addr(p) % 16, 0u);
      EXPECT_GE(h_->usable_size(p), n);
      EXPECT_EQ(heap::owner_of(p), h_);
      std::memset(p, 0xA5, n);
      held.push_back(p);
    }
    ASSERT_TRUE(h_->is_valid()) << "align " << align;
  }
  for (void* p : held) h_->free(p);
  EXPECT_EQ(h_->alloc_aligned(0, 16), nullptr);
  EXPECT_EQ(h_->alloc_aligned(48, 16), nullptr);
  EXPECT_EQ(h_->alloc(std::size_t{1} << 62), nullptr);
  EXPECT_EQ(h_->stats().live_blocks, 0u);
}

TEST_F(Heap, AllocZeroIsUnique) {
  void* a = h_->alloc(0);
  void* b = h_->alloc(0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(a, b);
  EXPECT_EQ(h_->stats().live_blocks, 2u);
  h_->free(a);
  h_->free(b);
  h_->free(nullptr);
  EXPECT_EQ(h_->stats().live_blocks, 0u);
}

TEST_F(Heap, UsableSizeCoversEveryRequest) {
  for (std::size_t n = 0; n <= 70000; n += (n < 4200 ? 1 : 97)) {
    void* p = h_->alloc(n);
    ASSERT_NE(p, nullptr);
    ASSERT_GE(h_->usable_size(p), n);
    ASSERT_EQ(addr(p) % 16, 0u);
    h_->free(p);
  }
}

TEST_F(Heap, ReallocAcrossClassesKeepsContents) {
  // small -> small -> medium -> medium -> large -> larger -> large (shrink) -> small
  const std::size_t sizes[] = {10, 100, 2000, 3000, 20000, 30000, 100000, 3 << 20, 50000, 40, 16, 1};
  std::size_t have = sizes[0];
  void* p = h_->realloc(nullptr, have);
  ASSERT_NE(p, nullptr);
  fill(p, 0, have, 7);
  for (std::size_t n : sizes) {
    void* q = h_->realloc(p, n);
    ASSERT_NE(q, nullptr);
    ASSERT_GE(h_->usable_size(q), n);
    ASSERT_TRUE(verify(q, std::min(n, have), 7)) << have << " -> " << n;
    if (n > have) fill(q, have, n, 7);
    p = q;
    have = n;
    ASSERT_TRUE(h_->is_valid());
    EXPECT_EQ(h_->stats().live_blocks, 1u);
  }
  EXPECT_EQ(h_->realloc(p, 0), nullptr);
  EXPECT_EQ(h_->stats().live_blocks, 0u);
  EXPECT_EQ(h_->stats().large_runs, 0u);
}

TEST_F(Heap, ReallocOfLargeGrowsInPlaceWhileItFits) {
  void* p = h_->alloc(40000);  // a large block alone in a one-chunk run
  fill(p, 0, 40000, 3);
  EXPECT_EQ(h_->realloc(p, 50000), p);
  EXPECT_EQ(h_->realloc(p, 36000), p);
  EXPECT_TRUE(verify(p, 36000, 3));
  void* q = h_->realloc(p, 1 << 20);
  EXPECT_TRUE(verify(q, 36000, 3));
  h_->free(q);
}

// ---- ownership and recycling -------------------------------------------------------------------

TEST_F(Heap, OwnerOf) {
  void* small = h_->alloc(24);
  void* medium = h_->alloc(9000);
  void* large = h_->alloc(200000);
  void* huge_aligned = h_->alloc_aligned(std::size_t{1} << 20, 100);
  for (void* p : {small, medium, large, huge_aligned}) EXPECT_EQ(heap::owner_of(p), h_);

  void* glibc = std::malloc(64);
  int on_stack = 0;
  EXPECT_EQ(heap::owner_of(glibc), nullptr);
  EXPECT_EQ(heap::owner_of(&on_stack), nullptr);
  EXPECT_EQ(heap::owner_of(nullptr), nullptr);
  std::free(glibc);

  // A chunk of the region that is not a heap: neither its start nor its inside.
  auto* chunk = static_cast<char*>(region::get().alloc_chunks(2));
  std::memset(chunk, 0x5A, 2 * chunk_bytes);
  EXPECT_EQ(heap::owner_of(chunk), nullptr);
  EXPECT_EQ(heap::owner_of(chunk + 4096), nullptr);
  EXPECT_EQ(heap::owner_of(chunk + chunk_bytes + 16), nullptr);
  region::get().free_chunks(chunk, 2);

  heap* other = heap::create();
  void* theirs = other->alloc(24);
  EXPECT_EQ(heap::owner_of(theirs), other);
  EXPECT_EQ(heap::owner_of(small), h_);
  other->free(theirs);
  other->destroy();

  for (void* p : {small, medium, large, huge_aligned}) h_->free(p);
  // Freed large runs are gone from the heap: owner_of no longer names it.
  EXPECT_EQ(heap::owner_of(large), nullptr);
}

TEST_F(Heap, DestroyReturnsEveryChunk) {
  heap* h = heap::create();
  for (int i = 0; i < 20000; ++i) h->alloc(static_cast<std::size_t>(i % 3000));
  for (int i = 0; i < 10; ++i) h->alloc(std::size_t{100000} * i + 1);
  h->alloc_aligned(std::size_t{1} << 20, 10);
  EXPECT_GT(h->stats().segments, 1u);
  EXPECT_TRUE(h->is_valid());
  h->destroy();
  // TearDown checks the region's count against the one before h_ was created.
}

TEST_F(Heap, EmptySegmentsGoBackToTheRegion) {
  std::mt19937_64 rng(42);
  std::vector<void*> blocks;
  for (int i = 0; i < 50000; ++i) {
    blocks.push_back(h_->alloc(i % 7 == 0 ? 2049 + rng() % 30000 : rng() % 1500));
  }
  const std::size_t chunks_full = region::get().stats().allocated_chunks;
  EXPECT_GT(h_->stats().segments, 100u);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  for (void* p : blocks) h_->free(p);
  EXPECT_TRUE(h_->is_valid());
  EXPECT_EQ(h_->stats().segments, 1u);
  EXPECT_EQ(h_->stats().live_blocks, 0u);
  EXPECT_EQ(region::get().stats().allocated_chunks, chunks_before_ + 1);
  EXPECT_LT(region::get().stats().allocated_chunks, chunks_full);
  // Pages and segments come back into use.
  for (int i = 0; i < 1000; ++i) blocks[static_cast<std::size_t>(i)] = h_->alloc(100);
  for (int i = 0; i < 1000; ++i) h_->free(blocks[static_cast<std::size_t>(i)]);
  h_->trim();
  EXPECT_TRUE(h_->is_valid());
}

TEST_F(Heap, AWarmChunkHoldsNothingOfTheHeapThatRetiredIt) {
  // The retired heap used every page of its first segment: small pages of several classes (page 0
  // among them), full, partly carved and emptied, and medium blocks; some blocks are left live.
  heap* old = heap::create(nullptr, 200);
  std::vector<void*> blocks;
  for (std::size_t n : {16, 48, 100, 700, 2000}) {
    for (int i = 0; i < 30; ++i) blocks.push_back(old->alloc(n));
  }
  for (std::size_t pages = 1; pages <= 3; ++pages) blocks.push_back(old->alloc(pages * page - 100));
  for (std::size_t i = 0; i < blocks.size(); i += 2) old->free(blocks[i]);
  const std::uint64_t old_id = old->id();
  void* kept = blocks[1];  // still live when its heap retires
  void* chunk = old->retire();
  EXPECT_EQ(heap::owner_of(kept), nullptr) << "a retired chunk is no heap's";

  // create(warm) skips rewriting the descriptors: the new heap must start empty all the same.
  heap* h = heap::create(chunk, 200);
  ASSERT_EQ(static_cast<void*>(h), static_cast<void*>(old)) << "the heap object sits where the old one did";
  EXPECT_NE(h->id(), old_id);
  EXPECT_TRUE(h->is_valid());
  EXPECT_EQ(h->stats().live_blocks, 0u);
  EXPECT_EQ(h->extent_bytes(), page) << "the new heap's image must hold its header page only";
  EXPECT_EQ(heap::owner_with_id(kept, old_id), nullptr);
  // Its pages serve new blocks, none overlapping another, with the old heap's pages all free again.
  std::vector<live_block> fresh;
  for (int i = 0; i < 400; ++i) {
    const std::size_t n = i % 5 == 0 ? 3 * page : static_cast<std::size_t>(16 + 13 * i % 2000);
    void* p = h->alloc(n);
    ASSERT_NE(p, nullptr);
    fill(p, 0, n, static_cast<std::uint64_t>(i) + 1);
    fresh.push_back({p, n, static_cast<std::uint64_t>(i) + 1});
  }
  EXPECT_TRUE(h->is_valid());
  for (const live_block& b : fresh) {
    EXPECT_TRUE(verify(b.p, b.n, b.id));
    EXPECT_EQ(heap::owner_of(b.p), h);
  }
  EXPECT_EQ(h->stats().live_blocks, fresh.size());
  for (const live_block& b : fresh) h->free(b.p);
  EXPECT_TRUE(h->is_valid());
  h->destroy();
}

TEST_F(Heap, AWarmHeapForgetsWhereTheOneBeforeWent) {
  // create(warm) rewrites the heap object's hot line only: what the old heap recorded when its
  // thread left (the label and destination of messages about refused frees) must not carry over.
  heap* old = heap::create(nullptr, 200);
  old->free(old->alloc(64));
  old->leave(3, "0:77");
  ASSERT_STREQ(old->label(), "0:77");
  old->arrive();  // it came back; retire() is for a heap in use here
  heap* h = heap::create(old->retire(), 200);
  EXPECT_EQ(h->left_for(), -1);
  EXPECT_STREQ(h->label(), "");
  EXPECT_TRUE(h->is_valid());
  h->destroy();
}

// ---- extents -----------------------------------------------------------------------------------

std::vector<std::pair<std::uintptr_t, std::size_t>> extents_of(const heap* h) {
  std::vector<std::pair<std::uintptr_t, std::size_t>> v;
  h->for_each_extent([&](void* p, std::size_t n) { v.emplace_back(addr(p), n); });
  return v;
}

bool covered(const std::vector<std::pair<std::uintptr_t, std::size_t>>& ext, const void* p, std::size_t n) {
  auto it = std::upper_bound(ext.begin(), ext.end(), std::make_pair(addr(p), ~std::size_t{0}));
  if (it == ext.begin()) return false;
  --it;
  return it->first <= addr(p) && addr(p) + n <= it->first + it->second;
}

TEST_F(Heap, FreshHeapIsOnePage) {
  void* p = h_->alloc(40);
  EXPECT_EQ(h_->extent_bytes(), page);
  EXPECT_EQ(chunk_bytes, 16 * page);
  // The heap object, the segment header and the block share page 0.
  EXPECT_EQ(addr(p) / page, addr(h_) / page);
  h_->free(p);
  EXPECT_EQ(h_->extent_bytes(), page);
}

TEST_F(Heap, ExtentsCoverLiveBlocksOnly) {
  std::vector<std::pair<void*, std::size_t>> blocks;
  for (int i = 0; i < 20000; ++i) {
    const std::size_t n = i % 50 == 0 ? 5000 + i : (i % 500 == 1 ? 100000 : 64);
    blocks.emplace_back(h_->alloc(n), n);
  }
  auto ext = extents_of(h_);
  std::size_t sum = 0;
  for (std::size_t i = 0; i < ext.size(); ++i) {
    EXPECT_EQ(ext[i].first % page, 0u);
    EXPECT_EQ(ext[i].second % page, 0u);
    if (i > 0) {
      EXPECT_GT(ext[i].first, ext[i - 1].first + ext[i - 1].second) << "not merged or not ascending";
    }
    sum += ext[i].second;
  }
  EXPECT_EQ(sum, h_->extent_bytes());
  EXPECT_GT(h_->image_bytes(), sum);
  for (auto [p, n] : blocks) ASSERT_TRUE(covered(ext, p, n));
  const std::size_t before = h_->extent_bytes();

  // Keep one block in 300: most pages empty out and leave the image.
  std::vector<std::pair<void*, std::size_t>> kept;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    if (i % 300 == 0) {
      kept.push_back(blocks[i]);
    } else {
      h_->free(blocks[i].first);
    }
  }
  ext = extents_of(h_);
  for (auto [p, n] : kept) ASSERT_TRUE(covered(ext, p, n));
  const std::size_t after = h_->extent_bytes();
  EXPECT_LT(after * 4, before) << before << " -> " << after;
  for (auto [p, n] : kept) h_->free(p);
  EXPECT_EQ(h_->extent_bytes(), page);
}

// ---- images ------------------------------------------------------------------------------------

struct filled_heap {
  std::vector<live_block> blocks;
  void make(heap* h, int count, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (int i = 0; i < count; ++i) {
      const std::size_t n = i % 97 == 0 ? (1 << 20) + i : random_size(rng);
      void* p = i % 41 == 0 ? h->alloc_aligned(std::size_t{1} << (rng() % 18), n) : h->alloc(n);
      fill(p, 0, n, static_cast<std::uint64_t>(i) + 1);
      blocks.push_back({p, n, static_cast<std::uint64_t>(i) + 1});
    }
    // Holes: free pages and spare pages must survive the trip too.
    for (std::size_t i = 0; i < blocks.size(); i += 3) h->free(blocks[i].p);
    std::vector<live_block> rest;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if (i % 3 != 0) rest.push_back(blocks[i]);
    }
    blocks = rest;
  }
  bool intact() const {
    return std::all_of(blocks.begin(), blocks.end(), [](const live_block& b) { return verify(b.p, b.n, b.id); });
  }
};

class HeapImage : public Heap, public ::testing::WithParamInterface<int> {};

// Mode 0: the heap's memory is decommitted (reads as zeros); mode 1: overwritten with garbage.
TEST_P(HeapImage, RoundTripRestoresEveryBlock) {
  filled_heap f;
  f.make(h_, 3000, 11);
  ASSERT_TRUE(h_->is_valid());
  const auto stats = h_->stats();
  std::vector<unsigned char> image(h_->image_bytes());
  h_->write_image(image.data());
  const auto ext = extents_of(h_);
  for (auto [a, n] : ext) {
    if (GetParam() == 0) {
      ASSERT_EQ(iso::detail::prim::decommit(reinterpret_cast<void*>(a), n), 0);
    } else {
      std::memset(reinterpret_cast<void*>(a), 0xE7, n);
    }
  }
  heap* back = heap::read_image(image.data(), image.size());
  ASSERT_EQ(back, h_);
  ASSERT_TRUE(h_->is_valid());
  EXPECT_TRUE(f.intact());
  EXPECT_EQ(h_->stats().live_blocks, stats.live_blocks);
  EXPECT_EQ(h_->stats().segments, stats.segments);
  EXPECT_EQ(h_->image_bytes(), image.size());

  // It keeps working: more blocks, frees of old ones, everything checked.
  filled_heap g;
  g.make(h_, 2000, 12);
  ASSERT_TRUE(h_->is_valid());
  EXPECT_TRUE(f.intact());
  for (std::size_t i = 0; i < f.blocks.size(); i += 2) h_->free(f.blocks[i].p);
  EXPECT_TRUE(g.intact());
  ASSERT_TRUE(h_->is_valid());
}

INSTANTIATE_TEST_SUITE_P(Scribble, HeapImage, ::testing::Values(0, 1),
                         [](const auto& info) { return info.param == 0 ? "Decommitted" : "Garbage"; });

template <class F>
void expect_corrupt(F&& f, const char* what) {
  try {
    f();
    ADD_FAILURE() << what << ": read_image accepted it";
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code_value(), iso::errc::corrupt_image) << what << ": " << e.what();
    EXPECT_NE(std::strstr(e.what(), "heap image"), nullptr) << e.what();
  }
}

TEST_F(Heap, CorruptImagesAreRefusedBeforeWriting) {
  filled_heap f;
  f.make(h_, 500, 5);
  std::vector<unsigned char> image(h_->image_bytes());
  h_->write_image(image.data());
  const std::size_t table_at = 56;  // sizeof the image header
  const std::size_t data_at = image.size() - h_->extent_bytes();
  // The heap changes after the image: a refused image must leave these bytes alone.
  void* extra = h_->alloc(100);
  fill(extra, 0, 100, 999);
  std::vector<std::pair<std::uintptr_t, std::vector<unsigned char>>> snapshot;
  for (auto [a, n] : extents_of(h_)) {
    const auto* b = reinterpret_cast<const unsigned char*>(a);
    snapshot.emplace_back(a, std::vector<unsigned char>(b, b + n));
  }
  auto unchanged = [&] {
    return std::all_of(snapshot.begin(), snapshot.end(), [](const auto& s) {
      return std::memcmp(reinterpret_cast<const void*>(s.first), s.second.data(), s.second.size()) == 0;
    });
  };
  struct flip {
    const char* what;
    std::size_t at;
  };
  for (const flip& c : {flip{"magic", 0}, flip{"version", 8}, flip{"heap address", 17},
                        flip{"extent count", 24}, flip{"data checksum", 40},
                        flip{"header checksum", 50}, flip{"extent table", table_at + 3},
                        flip{"first data byte", data_at},
                        flip{"data", data_at + (image.size() - data_at) / 2},
                        flip{"last data byte", image.size() - 1}}) {
    std::vector<unsigned char> bad = image;
    bad[c.at] ^= 0x10;
    expect_corrupt([&] { heap::read_image(bad.data(), bad.size()); }, c.what);
    ASSERT_TRUE(unchanged()) << c.what;
  }
  for (std::size_t cut : {std::size_t{0}, std::size_t{10}, table_at, table_at + 16, data_at,
                          image.size() - 1}) {
    expect_corrupt([&] { heap::read_image(image.data(), cut); }, "truncated");
    ASSERT_TRUE(unchanged()) << "cut at " << cut;
  }
  std::vector<unsigned char> longer = image;
  longer.push_back(0);
  expect_corrupt([&] { heap::read_image(longer.data(), longer.size()); }, "trailing byte");
  expect_corrupt([&] { heap::read_image(nullptr, 0); }, "null");
  ASSERT_TRUE(unchanged());
  EXPECT_TRUE(h_->is_valid());
  EXPECT_TRUE(verify(extra, 100, 999));
  EXPECT_TRUE(f.intact());
}

// ---- misuse ------------------------------------------------------------------------------------

using HeapDeathTest = Heap;

TEST_F(HeapDeathTest, FreeOfANonBlockIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto* small = static_cast<char*>(h_->alloc(64));
  auto* medium = static_cast<char*>(h_->alloc(10000));
  auto* large = static_cast<char*>(h_->alloc(100000));
  const char* msg = "free\\(0x[0-9a-f]+\\): not a live block of thread heap 0x[0-9a-f]+";
  EXPECT_DEATH(h_->free(small + 16), msg);
  EXPECT_DEATH(h_->free(small + 8), msg);
  EXPECT_DEATH(h_->free(medium + 4096), msg);
  EXPECT_DEATH(h_->free(large + 4096), msg);
  EXPECT_DEATH(h_->free(reinterpret_cast<char*>(h_) + 16), msg);
  char* free_page = reinterpret_cast<char*>(addr(h_) & ~(chunk_bytes - 1)) + 15 * page;
  EXPECT_DEATH(h_->free(free_page), msg);
  EXPECT_DEATH(h_->free(free_page + 64), msg);
  EXPECT_DEATH(
      {
        h_->free(small);
        h_->free(small);
      },
      msg);
  if (ISO_DEBUG_LEVEL >= 2) {
    EXPECT_DEATH(
        {
          void* keep = h_->alloc(64);  // the page stays in use: found only by the free-list scan
          (void)keep;
          h_->free(small);
          h_->free(small);
        },
        msg);
  }
  EXPECT_DEATH(
      {
        h_->free(medium);
        h_->free(medium);
      },
      msg);
  h_->free(small);
  h_->free(medium);
  h_->free(large);
}

}  // namespace
