// The scheduler's thread table (threads/internal/thread_table.hpp) against std::unordered_map:
// random inserts, lookups and erasures, keys drawn from few home slots so that runs of colliding
// keys wrap around the end of the table and erasures shift keys back across it.
// Seeded: each run prints its seed; ISO_TEST_SEED=<seed> replays it.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <unordered_map>
#include <vector>

#include "thread_table.hpp"

namespace {

using iso::detail::tcb;
using iso::detail::thread_table;

tcb* value_of(std::uint64_t key) { return reinterpret_cast<tcb*>(static_cast<std::uintptr_t>(key * 16)); }

std::uint64_t seed() {
  if (const char* s = std::getenv("ISO_TEST_SEED"); s != nullptr && *s != '\0') return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

TEST(ThreadTable, AgreesWithAMapUnderRandomInsertsAndErasures) {
  const std::uint64_t s = seed();
  std::printf("thread table: seed %llu (replay with ISO_TEST_SEED=%llu)\n", static_cast<unsigned long long>(s),
              static_cast<unsigned long long>(s));
  std::mt19937_64 rng(s);
  thread_table table;
  std::unordered_map<std::uint64_t, tcb*> model;
  std::vector<std::uint64_t> keys;
  for (int step = 0; step < 200'000; ++step) {
    // Sizes swing between empty and a few thousand, so that the table grows and runs wrap.
    const bool grow = (step / 20'000) % 2 == 0;
    if (model.empty() || rng() % 100 < (grow ? 60u : 35u)) {
      // Keys as thread ids: a home rank in the high bits, a serial (never 0) in the low ones.
      std::uint64_t key;
      do {
        key = ((rng() % 4) << 40) | (1 + rng() % 50'000);
      } while (model.count(key) != 0);
      table.insert(key, value_of(key));
      model.emplace(key, value_of(key));
      keys.push_back(key);
    } else {
      const std::size_t i = rng() % keys.size();
      const std::uint64_t key = keys[i];
      keys[i] = keys.back();
      keys.pop_back();
      table.erase(key);
      model.erase(key);
      ASSERT_EQ(table.find(key), nullptr) << "erased key " << key << " still found at step " << step;
    }
    ASSERT_EQ(table.size(), model.size());
    if (step % 997 == 0) {
      for (const auto& [key, value] : model) ASSERT_EQ(table.find(key), value) << "key " << key << " lost at step " << step;
      std::size_t visited = 0;
      table.for_each([&](tcb* t) {
        ++visited;
        EXPECT_EQ(model.count(reinterpret_cast<std::uintptr_t>(t) / 16), 1u);
      });
      ASSERT_EQ(visited, model.size());
    }
  }
  table.erase(12345);  // absent: no change
  EXPECT_EQ(table.size(), model.size());
}

// After a phase of many threads the table is small again once spawns and joins go on with few
// (a spawn into a table sized for many would miss the cache at its insert), and what stays in it
// is still found; between batches of thousands it keeps its size (no rehash, no allocation).
TEST(ThreadTable, ShrinksOnceFewThreadsComeAndGoAfterMany) {
  thread_table table;
  constexpr std::uint64_t many = 100'000;
  for (std::uint64_t key = 1; key <= many; ++key) table.insert(key, value_of(key));
  const std::size_t big = table.slots();
  ASSERT_GE(big, 2 * many);
  for (std::uint64_t key = 1; key <= many; ++key) {
    if (key % 25'000 != 0) table.erase(key);
  }
  EXPECT_EQ(table.size(), 4u);
  EXPECT_EQ(table.slots(), big) << "shrunk at the end of a batch";
  // Threads spawned and joined one at a time.
  std::uint64_t key = many;
  while (table.slots() == big && key < 2 * many + big) {
    ++key;
    table.insert(key, value_of(key));
    table.erase(key);
  }
  EXPECT_LE(table.slots(), 64u);
  EXPECT_LE(key - many, big) << "more spawns than slots before the table shrank";
  for (std::uint64_t k = 25'000; k <= many; k += 25'000) EXPECT_EQ(table.find(k), value_of(k));
  EXPECT_EQ(table.find(1), nullptr);
  for (std::uint64_t k = 25'000; k <= many; k += 25'000) table.erase(k);
  EXPECT_EQ(table.size(), 0u);
  EXPECT_EQ(table.find(25'000), nullptr);
}

TEST(ThreadTable, KeepsItsSizeBetweenBatches) {
  thread_table table;
  constexpr std::uint64_t batch = 10'000;
  std::uint64_t next = 1;
  std::size_t slots = 0;
  for (int round = 0; round < 20; ++round) {
    for (std::uint64_t i = 0; i < batch; ++i) table.insert(next + i, value_of(next + i));
    if (round == 0) slots = table.slots();
    EXPECT_EQ(table.slots(), slots) << "round " << round;
    for (std::uint64_t i = 0; i < batch; ++i) table.erase(next + i);
    EXPECT_EQ(table.slots(), slots) << "round " << round;
    next += batch;
  }
}

TEST(ThreadTable, EmptyTableFindsAndErasesNothing) {
  thread_table table;
  EXPECT_EQ(table.find(1), nullptr);
  table.erase(1);
  EXPECT_EQ(table.size(), 0u);
}

// The same table as a set of ids (the records of threads that finished unjoined): erase says
// whether the id was there (a join takes the record once), every key is visited once.
TEST(FinishedSet, ErasesEachIdOnceAndListsItsKeys) {
  iso::detail::finished_set set;
  for (std::uint64_t key = 1; key <= 5000; ++key) set.insert(key << 3, {});
  EXPECT_FALSE(set.insert_if_absent(8, {}));  // there already: one copy
  EXPECT_TRUE(set.insert_if_absent(9, {}));
  EXPECT_TRUE(set.erase(9));
  EXPECT_TRUE(set.contains(8));
  EXPECT_FALSE(set.contains(9));
  std::uint64_t sum = 0, n = 0;
  set.for_each_key([&](std::uint64_t key) {
    sum += key >> 3;
    ++n;
  });
  EXPECT_EQ(n, 5000u);
  EXPECT_EQ(sum, 5000u * 5001u / 2);
  EXPECT_TRUE(set.erase(8));
  EXPECT_FALSE(set.erase(8));
  EXPECT_FALSE(set.contains(8));
  EXPECT_FALSE(set.erase(9));
  EXPECT_EQ(set.size(), 4999u);
}

}  // namespace
