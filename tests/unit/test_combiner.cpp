// The partial tree of a rank's collectives (migrate/internal/combiner.hpp) when memory runs out in
// the middle of a put: a merge that throws std::bad_alloc must keep every leaf put so far, the
// ones merged into the block being put included, so that the rank still sends them all to member
// 0. The collectives themselves are tested through the runtime (tests/mpi/test_collectives.cpp);
// running out of memory there cannot be brought about on purpose.
#include <gtest/gtest.h>

#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "combiner.hpp"

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

}  // namespace
}  // namespace iso::detail
