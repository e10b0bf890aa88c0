// The ready queue of a thread's mailbox against a model: random pushes and receives (wildcard,
// by sender, by tag, by both) in queues short and long, so that it runs without its indexes, builds
// them, and drops them again; every receive must take the message the model says (the first
// queued match). Seeded: prints its seed, ISO_TEST_SEED replays it.
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

}  // namespace
}  // namespace iso::detail
