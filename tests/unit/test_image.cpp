// Thread images: what a suspended thread's image describes, and how a corrupt or foreign header
// is rejected before anything is written.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "image.hpp"
#include "isothreads/isothreads.hpp"
#include "region.hpp"
#include "scheduler.hpp"
#include "tcb.hpp"

namespace iso::detail {
namespace {

constexpr std::uint64_t layout = 0x1234abcd;

// Runs f(tcb of a suspended thread that holds a vector of `bytes`) inside another thread.
template <class F>
void with_suspended_thread(F&& f, std::size_t bytes = 100 << 10) {
  scheduler s(0);
  bool release = false;
  std::vector<char>* data = nullptr;
  const thread_id sleeper = spawn([&] {
    std::vector<char> v(bytes, 'x');
    data = &v;
    while (!release) this_thread::yield();
  });
  spawn([&] {
    this_thread::yield();
    f(s.find(sleeper), data);
    release = true;
  });
  s.run();
}

std::string rejection(const sys_vector<unsigned char>& h, bool allow_split = false) {
  try {
    validate_image_header(h.data(), h.size(), layout, allow_split);
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code_value(), errc::corrupt_image);
    return e.what();
  }
  return "";
}

TEST(Image, DescribesTheLiveStackAndTheLiveHeapOnly) {
  with_suspended_thread([](tcb* t, std::vector<char>* v) {
    ASSERT_NE(t, nullptr);
    const sys_vector<unsigned char> h = build_image_header(t, layout);
    const image_header& hdr = validate_image_header(h.data(), h.size(), layout);
    EXPECT_EQ(hdr.thread, t->id.bits());
    EXPECT_EQ(hdr.tcb, reinterpret_cast<std::uintptr_t>(t));
    const image_extent* e = image_extents(hdr);
    bool stack_top = false, vector_data = false;
    std::uint64_t total = 0;
    for (std::uint32_t i = 0; i < hdr.nextents; ++i) {
      total += e[i].bytes;
      stack_top = stack_top || e[i].addr + e[i].bytes == reinterpret_cast<std::uintptr_t>(t->stack.top());
      const auto d = reinterpret_cast<std::uintptr_t>(v->data());
      vector_data = vector_data || (d >= e[i].addr && d + v->size() <= e[i].addr + e[i].bytes);
    }
    EXPECT_TRUE(stack_top);
    EXPECT_TRUE(vector_data);
    EXPECT_EQ(total, hdr.data_bytes);
    // Only what is live: the stack's used part and the heap's live pages, far less than the slots.
    EXPECT_LT(total, (100u << 10) + t->stack.bytes / 2 + (64u << 10));
  });
}

// A small thread travels as its live bytes: the carved part of its heap pages and its used stack,
// not whole pages. Here a 4 KiB block, the TCB and the heap's header: under three pages of data
// (four whole pages before), every heap byte of it inside the extents.
TEST(Image, ASmallThreadsImageIsItsLiveBytesNotItsPages) {
  scheduler s(0);
  bool release = false;
  unsigned char* block = nullptr;
  const thread_id small = spawn([&] {
    block = static_cast<unsigned char*>(std::malloc(4096));
    std::memset(block, 0x5A, 4096);
    while (!release) this_thread::yield();
    std::free(block);
  });
  spawn([&] {
    this_thread::yield();
    tcb* t = s.find(small);
    ASSERT_NE(t, nullptr);
    const sys_vector<unsigned char> h = build_image_header(t, layout);
    const image_header& hdr = validate_image_header(h.data(), h.size(), layout);
    const image_extent* e = image_extents(hdr);
    auto covered = [&](const void* p, std::size_t n) {
      const auto a = reinterpret_cast<std::uintptr_t>(p);
      for (std::uint32_t i = 0; i < hdr.nextents; ++i) {
        if (a >= e[i].addr && a + n <= e[i].addr + e[i].bytes) return true;
      }
      return false;
    };
    EXPECT_TRUE(covered(block, 4096));
    EXPECT_TRUE(covered(t, sizeof(tcb)));
    EXPECT_TRUE(covered(t->home_heap, 64));
    EXPECT_GT(hdr.data_bytes, 4096u);
    EXPECT_LT(hdr.data_bytes, 3u * 4096u);
    bool partial_page = false;
    for (std::uint32_t i = 0; i < hdr.nextents; ++i) partial_page = partial_page || e[i].bytes % 4096 != 0;
    EXPECT_TRUE(partial_page) << "every extent is whole pages";
    release = true;
  });
  s.run();
}

// A heap of small blocks is about one extent per segment: a page carved to its end (48-byte
// blocks leave 16 bytes of each page over) ships whole, so its neighbours merge with it. One
// extent per page (~250 here) would each be a message of their own once the small extents add
// up past inline_image_bytes.
TEST(Image, AHeapOfSmallBlocksIsAboutOneExtentPerSegment) {
  scheduler s(0);
  bool release = false;
  std::vector<void*>* blocks = nullptr;
  const thread_id filler = spawn([&] {
    std::vector<void*> mine;
    mine.reserve(20000);
    for (int i = 0; i < 20000; ++i) mine.push_back(std::malloc(48));  // about 1 MiB
    blocks = &mine;
    while (!release) this_thread::yield();
    for (void* p : mine) std::free(p);
  });
  spawn([&] {
    this_thread::yield();
    tcb* t = s.find(filler);
    ASSERT_NE(t, nullptr);
    const sys_vector<unsigned char> h = build_image_header(t, layout);
    const image_header& hdr = validate_image_header(h.data(), h.size(), layout);
    const image_extent* e = image_extents(hdr);
    const heap::stats_t st = t->home_heap->stats();
    ASSERT_GE(st.segments, 15u);
    // The stack, the vector's large run (header and block) and about one per segment.
    EXPECT_LE(hdr.nextents, 2 * st.segments + 2 * st.large_runs + 1) << st.segments << " segments";
    std::size_t covered = 0;
    for (void* p : *blocks) {
      const auto a = reinterpret_cast<std::uintptr_t>(p);
      for (std::uint32_t i = 0; i < hdr.nextents; ++i) {
        if (a >= e[i].addr && a + 48 <= e[i].addr + e[i].bytes) {
          ++covered;
          break;
        }
      }
    }
    EXPECT_EQ(covered, blocks->size());
    release = true;
  });
  s.run();
}

TEST(Image, CorruptTruncatedOrForeignHeadersAreRejected) {
  with_suspended_thread([](tcb* t, std::vector<char>*) {
    const sys_vector<unsigned char> good = build_image_header(t, layout);
    EXPECT_EQ(rejection(good), "");
    for (std::size_t at = 0; at < good.size(); at += 7) {
      sys_vector<unsigned char> bad = good;
      bad[at] ^= 0x40;
      EXPECT_NE(rejection(bad), "") << "flipped byte " << at << " was accepted";
    }
    sys_vector<unsigned char> cut(good.begin(), good.end() - 1);
    EXPECT_NE(rejection(cut).find("extents"), std::string::npos);
    // With inline data: one byte short of it, and a stack run that no longer holds the stack's
    // extent (the checksum is made good again, so that the extent checks are what refuse it).
    sys_vector<unsigned char> with_data = build_image_header(t, layout, true);
    ASSERT_EQ(reinterpret_cast<const image_header*>(with_data.data())->inline_data, 1u);
    append_inline_data(with_data);
    EXPECT_EQ(rejection(with_data), "");
    sys_vector<unsigned char> short_data(with_data.begin(), with_data.end() - 1);
    EXPECT_NE(rejection(short_data).find("inline data"), std::string::npos) << rejection(short_data);
    for (const std::uint64_t flip : {std::uint64_t{1} << 12, std::uint64_t{1} << 16}) {
      sys_vector<unsigned char> moved = with_data;
      auto& mh = *reinterpret_cast<image_header*>(moved.data());
      mh.stack_bytes ^= flip;
      mh.checksum = header_checksum(mh);
      EXPECT_NE(rejection(moved).find("stack"), std::string::npos) << rejection(moved);
    }
    sys_vector<unsigned char> tiny(good.begin(), good.begin() + 8);
    EXPECT_NE(rejection(tiny).find("too short"), std::string::npos);
    try {
      validate_image_header(good.data(), good.size(), layout + 1);
      ADD_FAILURE() << "an image of another layout was accepted";
    } catch (const iso::error& e) {
      EXPECT_NE(std::string(e.what()).find("different binary"), std::string::npos) << e.what();
    }
  });
}

// A header whose TCB address wraps past the top of the address space, or lies inside an extent
// but off its alignment, is refused before the arrival reads the TCB (checksum made good again),
// each by its own check: the wrapping address is aligned (a sum that wrapped put it inside every
// extent), the misaligned one has a TCB's bytes of an extent after it (the TCB's own extent is
// just its size, so the stack's is taken).
TEST(Image, AControlBlockAddressThatWrapsOrIsMisalignedIsRejected) {
  with_suspended_thread([](tcb* t, std::vector<char>*) {
    const sys_vector<unsigned char> good = build_image_header(t, layout);
    const image_header& gh = *reinterpret_cast<const image_header*>(good.data());
    std::uint64_t misaligned = 0;
    for (std::uint32_t i = 0; i < gh.nextents && misaligned == 0; ++i) {
      const image_extent& e = image_extents(gh)[i];
      if (e.bytes >= sizeof(tcb) + 2 * alignof(tcb)) misaligned = (e.addr / alignof(tcb) + 1) * alignof(tcb) + 1;
    }
    ASSERT_NE(misaligned, 0u) << "no extent of the thread holds a TCB's size past an aligned address";
    const struct {
      std::uint64_t at;
      std::string expected;
    } cases[] = {{~std::uint64_t{0} - (alignof(tcb) - 1), "its control block lies in no extent"},
                 {misaligned, "is not " + std::to_string(alignof(tcb)) + "-byte aligned"}};
    for (const auto& c : cases) {
      sys_vector<unsigned char> bad = good;
      auto& h = *reinterpret_cast<image_header*>(bad.data());
      h.tcb = c.at;
      h.checksum = header_checksum(h);
      EXPECT_NE(rejection(bad).find(c.expected), std::string::npos) << std::hex << c.at << ": " << rejection(bad);
    }
  });
}

// Each rule of an extent table (check_extents, shared with a checkpoint's restore) broken in a
// real thread's header, its checksum redone: the rejection names the extent and the rule.
TEST(Image, EachBrokenExtentRuleIsNamedWithItsExtent) {
  with_suspended_thread([](tcb* t, std::vector<char>*) {
    const sys_vector<unsigned char> good = build_image_header(t, layout);
    const image_header& gh = *reinterpret_cast<const image_header*>(good.data());
    ASSERT_GE(gh.nextents, 2u) << "a thread with a heap block has a stack and a heap extent";
    ASSERT_EQ(rejection(good), "");
    const region& r = region::get();
    const std::uint64_t region_end = r.base() + r.bytes();
    std::uint32_t stack_extent = 0;  // the stack's live top, ending at the stack run's top
    while (image_extents(gh)[stack_extent].addr + image_extents(gh)[stack_extent].bytes != gh.stack + gh.stack_bytes) {
      ASSERT_LT(++stack_extent, gh.nextents) << "no extent ends at the stack's top";
    }
    // Extents 0 and 1 are the two lowest (one may be the stack's).
    const struct {
      std::uint32_t i;
      std::uint64_t addr, bytes;  // extent i's new start and length; 0: as it was
      const char* why;
    } cases[] = {
        {1, 0, ~std::uint64_t{0}, "runs past the end of the address space"},
        {1, region_end, 4096, "lies outside this job's region"},
        {1, image_extents(gh)[0].addr, 0, "overlaps or precedes the extent before it"},
        // Its start moved below the stack run (64 bytes: no other extent ends that close to it).
        {stack_extent, gh.stack - 64, 0, "crosses the end of its stack run"},
    };
    for (const auto& c : cases) {
      sys_vector<unsigned char> bad = good;
      auto& h = *reinterpret_cast<image_header*>(bad.data());
      auto* e = const_cast<image_extent*>(image_extents(h));
      if (c.addr == gh.stack - 64) {
        e[c.i].bytes += e[c.i].addr - c.addr;  // still ending at the stack's top
      } else if (c.bytes != 0) {
        e[c.i].bytes = c.bytes;
      }
      if (c.addr != 0) e[c.i].addr = c.addr;
      h.checksum = header_checksum(h);
      const std::string what = rejection(bad);
      EXPECT_NE(what.find("extent " + std::to_string(c.i) + " "), std::string::npos) << what;
      EXPECT_NE(what.find(c.why), std::string::npos) << c.why << ": " << what;
    }
    sys_vector<unsigned char> empty = good;
    auto& h = *reinterpret_cast<image_header*>(empty.data());
    const_cast<image_extent*>(image_extents(h))[1].bytes = 0;
    h.checksum = header_checksum(h);
    EXPECT_NE(rejection(empty).find("extent 1 [0x"), std::string::npos) << rejection(empty);
    EXPECT_NE(rejection(empty).find("is empty"), std::string::npos) << rejection(empty);
  });
}

// A thread with a 3 KiB block: its image (header, table and inline data) is more than one eager
// message and at most two, so its header message is split. Its first piece alone is a valid
// header message only where split pieces may come (allow_split), and only at its exact length.
TEST(Image, OnlyTheExactFirstPieceOfASplitImageIsAcceptedAlone) {
  with_suspended_thread(
      [](tcb* t, std::vector<char>*) {
        sys_vector<unsigned char> packed = build_image_header(t, layout, true);
        append_inline_data(packed);
        const auto& h = *reinterpret_cast<const image_header*>(packed.data());
        ASSERT_TRUE(split_image(h)) << packed.size() << " bytes";
        EXPECT_EQ(packed.size(), packed_bytes(h));
        EXPECT_EQ(rejection(packed), "");
        EXPECT_EQ(rejection(packed, true), "");
        const sys_vector<unsigned char> first(packed.begin(), packed.begin() + eager_piece_bytes);
        EXPECT_NE(rejection(first).find("inline data"), std::string::npos) << rejection(first);
        EXPECT_EQ(rejection(first, true), "");
        for (const std::size_t n : {eager_piece_bytes - 1, eager_piece_bytes + 1}) {
          const sys_vector<unsigned char> other(packed.begin(), packed.begin() + static_cast<std::ptrdiff_t>(n));
          EXPECT_NE(rejection(other, true).find("inline data"), std::string::npos)
              << n << " bytes: " << rejection(other, true);
        }
      },
      3 << 10);
}

}  // namespace
}  // namespace iso::detail
