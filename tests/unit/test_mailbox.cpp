// in_order's entries as items come (each case of its bound), and the ready queue of a thread's
// mailbox against a model: random pushes and receives (wildcard, by sender, by tag, by both) in
// queues short and long, so that it runs without its indexes, builds them, and drops them again;
// every receive must take the message the model says (the first queued match). Seeded: prints
// its seed, ISO_TEST_SEED replays it.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <vector>

#include "mailbox.hpp"

namespace iso::detail {
namespace {

std::uint64_t seed_of(const char* test) {
  const char* s = std::getenv("ISO_TEST_SEED");
  const std::uint64_t seed = s != nullptr && *s != '\0'
                                 ? std::strtoull(s, nullptr, 10)
                                 : static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::printf("%s: seed %llu (replay with ISO_TEST_SEED=%llu)\n", test, static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  return seed;
}

struct queued {
  thread_id from;
  int tag;
  std::uint64_t serial;  // the payload: which push it was
};

TEST(ReadyQueue, TakesTheFirstMatchLikeAModelWithAndWithoutItsIndexes) {
  std::mt19937_64 rng(seed_of("ReadyQueue"));
  ready_queue q;
  std::vector<queued> model;
  std::uint64_t pushed = 0;
  for (int step = 0; step < 20000; ++step) {
    // Phases of filling and draining, so that the queue crosses the indexing threshold both ways.
    const bool filling = (step / 500) % 2 == 0;
    if (filling ? rng() % 3 != 0 : rng() % 3 == 0) {
      const queued m{thread_id(0, 1 + rng() % 4), static_cast<int>(rng() % 3), pushed++};
      message msg{m.from, m.tag, std::vector<std::byte>(sizeof m.serial)};
      std::memcpy(msg.data.data(), &m.serial, sizeof m.serial);
      q.push(std::move(msg));
      model.push_back(m);
      continue;
    }
    const thread_id from = rng() % 2 == 0 ? any_thread : thread_id(0, 1 + rng() % 4);
    const int tag = rng() % 2 == 0 ? any_tag : static_cast<int>(rng() % 3);
    std::optional<queued> want;
    for (auto it = model.begin(); it != model.end(); ++it) {
      if ((from == any_thread || it->from == from) && (tag == any_tag || it->tag == tag)) {
        want = *it;
        model.erase(it);
        break;
      }
    }
    ASSERT_EQ(q.has(from, tag), want.has_value()) << "step " << step;
    const std::optional<message> got = q.take(from, tag);
    ASSERT_EQ(got.has_value(), want.has_value()) << "step " << step;
    if (got) {
      std::uint64_t serial = 0;
      std::memcpy(&serial, got->data.data(), sizeof serial);
      ASSERT_EQ(serial, want->serial) << "step " << step;
    }
    ASSERT_EQ(q.size(), model.size());
  }
}

// in_order's bound (mailbox.hpp): the entries a sender leaves, item by item. Items are their own
// sequence numbers (0 for an unsequenced one); `released` records what put released, in order.
struct in_order_run {
  in_order<int> q;
  std::vector<int> released;
  void put(std::uint64_t from, std::uint64_t seq, bool last = false) {
    q.put(from, seq, static_cast<int>(seq), [this](int&& item) { released.push_back(item); }, last);
  }
};

TEST(InOrder, ALastItemThatComesEarlyErasesItsSenderWhenTheGapFills) {
  in_order_run r;
  r.put(7, 3, true);
  EXPECT_TRUE(r.released.empty());
  EXPECT_EQ(r.q.senders(), 1u);
  EXPECT_EQ(r.q.early(), 1u);
  r.put(7, 1);
  EXPECT_EQ(r.released, (std::vector<int>{1}));
  EXPECT_EQ(r.q.senders(), 1u);  // 2 and the last one (3) are still to be released
  r.put(7, 2);
  EXPECT_EQ(r.released, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(r.q.senders(), 0u);
  EXPECT_EQ(r.q.early(), 0u);
  EXPECT_EQ(r.q.next(7), 1u);
}

TEST(InOrder, ALastItemInOrderErasesItsSenderAndLeavesOthers) {
  in_order_run r;
  r.put(7, 1);
  r.put(8, 1);
  r.put(7, 2, true);
  EXPECT_EQ(r.released, (std::vector<int>{1, 1, 2}));
  EXPECT_EQ(r.q.senders(), 1u);
  EXPECT_EQ(r.q.next(8), 2u);
}

TEST(InOrder, UnsequencedItemsAreReleasedAtOnceAndLeaveNoEntry) {
  in_order_run r;
  r.put(7, 0);
  EXPECT_EQ(r.released, (std::vector<int>{0}));
  EXPECT_EQ(r.q.senders(), 0u);
  r.put(7, 2);  // early: waits for 1
  r.put(7, 0);  // not held behind the gap
  EXPECT_EQ(r.released, (std::vector<int>{0, 0}));
  r.put(7, 1);
  EXPECT_EQ(r.released, (std::vector<int>{0, 0, 1, 2}));
  EXPECT_EQ(r.q.senders(), 1u);  // no last item: 3 may still come
  EXPECT_EQ(r.q.next(7), 3u);
}

TEST(InOrder, ForgetErasesTheEntryOfASenderDoneHere) {
  in_order_run r;
  r.put(7, 1);
  r.put(7, 2);
  r.put(8, 1);
  EXPECT_EQ(r.q.next(7), 3u);
  r.q.forget(7);
  EXPECT_EQ(r.q.senders(), 1u);
  EXPECT_EQ(r.q.next(7), 1u);
  EXPECT_EQ(r.q.next(8), 2u);
}

}  // namespace
}  // namespace iso::detail
