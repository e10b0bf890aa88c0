// The decisions of termination rounds (runtime/src/progress.hpp), from their sums alone.
#include <gtest/gtest.h>

#include <array>

#include "progress.hpp"

namespace {

using iso::detail::decide_round;
using iso::detail::round_outcome;
namespace round = iso::detail::round;

using sums = std::array<std::uint64_t, round::fields>;

sums make(std::uint64_t live, std::uint64_t sent, std::uint64_t received, std::uint64_t active, std::uint64_t at_sync,
          std::uint64_t at_checkpoint = 0) {
  sums s{};
  s[round::live] = live;
  s[round::sent] = sent;
  s[round::received] = received;
  s[round::active] = active;
  s[round::at_sync] = at_sync;
  s[round::at_checkpoint] = at_checkpoint;
  return s;
}

round_outcome decide(const sums& now, const sums* last) {
  return decide_round(now.data(), last != nullptr ? last->data() : nullptr, true, true);
}

// A thread travelling as an inline image is in a batch that its sender has handed to MPI and its
// receiver has not taken yet: counted by no rank, only by sent != received. Every thread the ranks
// do hold waits in sync: that must not start the step without the travelling one.
TEST(TerminationRounds, AStepWaitsForAThreadThatIsInABatchOnTheWire) {
  const sums in_transit = make(1, 5, 4, 0, 1);
  EXPECT_EQ(decide(in_transit, nullptr), round_outcome::next_round);
  EXPECT_EQ(decide(in_transit, &in_transit), round_outcome::next_round);
  const sums landed = make(2, 5, 5, 0, 2);
  EXPECT_EQ(decide(landed, &in_transit), round_outcome::next_round);  // not yet stable
  EXPECT_EQ(decide(landed, &landed), round_outcome::balance);
}

TEST(TerminationRounds, EveryDecisionNeedsTwoEqualQuietRounds) {
  const sums done = make(0, 7, 7, 0, 0);
  EXPECT_EQ(decide(done, nullptr), round_outcome::next_round);
  EXPECT_EQ(decide(done, &done), round_outcome::finished);
  const sums before = make(0, 6, 6, 0, 0);
  EXPECT_EQ(decide(done, &before), round_outcome::next_round);  // a message moved in between

  const sums stuck = make(3, 2, 2, 0, 1);
  EXPECT_EQ(decide(stuck, &stuck), round_outcome::deadlock);
  const sums sleeping = make(3, 2, 2, 1, 1);
  EXPECT_EQ(decide(sleeping, &sleeping), round_outcome::next_round);

  const sums checkpoint = make(4, 9, 9, 0, 0, 4);
  EXPECT_EQ(decide(checkpoint, &checkpoint), round_outcome::checkpoint);
  EXPECT_EQ(decide_round(checkpoint.data(), checkpoint.data(), true, false), round_outcome::deadlock);
}

}  // namespace
