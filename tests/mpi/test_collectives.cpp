// Groups and collectives under iso::runtime, with members migrating at random (seeded: the seed
// is printed, ISO_TEST_SEED replays it) before, during and between collectives, several
// overlapping groups running collectives at once, floating-point results that must be the same
// bits wherever the members run, the messages between ranks a collective costs, and misuse.
#include <gtest/gtest.h>
#include <mpi.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <new>
#include <random>
#include <stdexcept>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "isothreads/isothreads.hpp"
#include "engine.hpp"    // the rank combiner's message counts
#include "combiner.hpp"  // small_bytes: what a value must exceed to cost an allocation
#include "fault.hpp"     // running out of memory on purpose
#include "mpi_gtest.hpp"
#include "reserved.hpp"  // collective_tag: which groups share a tag
#include "test_seed.hpp"

namespace {

using iso_test::allgather_ids;
using iso_test::rt;

// x -> x * a + b; op(p, q) applies p, then q: associative, not commutative, exact (mod 2^64).
struct affine {
  std::uint64_t a, b;
  friend bool operator==(const affine&, const affine&) = default;
};
affine then(const affine& p, const affine& q) { return {p.a * q.a, p.b * q.a + q.b}; }
affine affine_of(int i, int round) {
  return {static_cast<std::uint64_t>(2 * i + 3 + round), static_cast<std::uint64_t>(i * 7 + round)};
}

void maybe_migrate(std::mt19937_64& rng) {
  if (rng() % 3 == 0) iso::this_thread::migrate_to(static_cast<int>(rng() % static_cast<std::uint64_t>(iso::size())));
}

// Every collective once per round, checked against what it must give, at member i of g.
void every_collective(const iso::group& g, int i, int rounds, std::mt19937_64& rng) {
  const int n = static_cast<int>(g.size());
  for (int round = 0; round < rounds; ++round) {
    const int root = (round * 5 + 1) % n;
    maybe_migrate(rng);
    EXPECT_EQ(iso::allreduce(g, i + round, iso::sum), n * (n - 1) / 2 + n * round);
    maybe_migrate(rng);
    EXPECT_EQ(iso::broadcast(g, i == root ? 1000 + round : -1, root), 1000 + round);
    affine expected = affine_of(0, round);
    for (int k = 1; k < n; ++k) expected = then(expected, affine_of(k, round));
    const affine r = iso::reduce(g, affine_of(i, round), then, root);
    if (i == root) {
      EXPECT_EQ(r, expected) << "round " << round;
    } else {
      EXPECT_EQ(r, affine{}) << "T{} elsewhere";
    }
    EXPECT_EQ(iso::allreduce(g, affine_of(i, round), [](affine p, affine q) { return then(p, q); }), expected);
    maybe_migrate(rng);
    const std::vector<double> mine = {static_cast<double>(i), static_cast<double>(-i), static_cast<double>(round)};
    const std::vector<double> lo = iso::allreduce(g, std::span<const double>(mine), iso::min);
    EXPECT_EQ(lo, (std::vector<double>{0, static_cast<double>(1 - n), static_cast<double>(round)}));
    const std::vector<double> hi = iso::allreduce(g, std::span<const double>(mine), iso::max);
    EXPECT_EQ(hi, (std::vector<double>{static_cast<double>(n - 1), 0, static_cast<double>(round)}));
    EXPECT_EQ(mine, (std::vector<double>{static_cast<double>(i), static_cast<double>(-i), static_cast<double>(round)}))
        << "a member's values are not written";
    const std::vector<int> at_root = iso::gather(g, i * 10 + round, root);
    const std::vector<int> everywhere = iso::allgather(g, i * 10 + round);
    std::vector<int> all(static_cast<std::size_t>(n));
    for (int k = 0; k < n; ++k) all[static_cast<std::size_t>(k)] = k * 10 + round;
    EXPECT_EQ(at_root, i == root ? all : std::vector<int>{});
    EXPECT_EQ(everywhere, all);
    iso::barrier(g);
  }
}

TEST(Collectives, SpawnGroupEveryCollectiveWhileMembersMigrateAtRandom) {
  const std::uint64_t seed = iso_test::test_seed("Collectives.SpawnGroupEveryCollectiveWhileMembersMigrateAtRandom");
  if (rt->rank() == 0) {
    const iso::group g = iso::spawn_group(11, [seed](int i, const iso::group& grp) {
      EXPECT_EQ(grp.size(), 11u);
      EXPECT_EQ(grp[static_cast<std::size_t>(i)], iso::this_thread::id());
      EXPECT_EQ(grp.index_of(iso::this_thread::id()), i);
      std::mt19937_64 rng(seed + static_cast<std::uint64_t>(i));
      every_collective(grp, i, 12, rng);
    });
    EXPECT_EQ(g.size(), 11u);
    EXPECT_EQ(g.index_of(iso::thread_id(0, 0)), -1);
    const iso::group copy = g;  // a value
    EXPECT_EQ(copy.members(), g.members());
  }
  rt->run();
}

std::vector<iso::thread_id> ids_from(const iso::message& m) {
  std::vector<iso::thread_id> ids(m.data.size() / sizeof(iso::thread_id));
  std::memcpy(ids.data(), m.data.data(), m.data.size());
  return ids;
}

// Spawns per_rank threads on every rank; each runs body(ids), ids every rank's threads in rank
// order, which rank 0's main sends them once all are spawned. Collective; returns this rank's.
template <class Body>
std::vector<iso::thread_id> spawn_on_every_rank(int per_rank, Body body) {
  std::vector<iso::thread_id> mine;
  for (int k = 0; k < per_rank; ++k) {
    mine.push_back(iso::spawn([body] { body(ids_from(iso::recv(iso::thread_id(0, 0), 0))); }));
  }
  const std::vector<iso::thread_id> ids = allgather_ids(mine);
  if (rt->rank() == 0) {
    for (iso::thread_id t : ids) iso::send(t, ids.data(), ids.size() * sizeof(iso::thread_id), 0);
  }
  return mine;
}

TEST(Collectives, OverlappingGroupsRunCollectivesAtOnce) {
  const std::uint64_t seed = iso_test::test_seed("Collectives.OverlappingGroupsRunCollectivesAtOnce");
  constexpr int per_rank = 5;
  spawn_on_every_rank(per_rank, [seed](const std::vector<iso::thread_id>& ids) {
    const iso::group all(ids);                                   // every thread
    std::vector<iso::thread_id> rev(ids.rbegin(), ids.rend());
    const iso::group reversed(rev);                              // the same threads, other order
    std::vector<iso::thread_id> even;
    for (std::size_t j = 0; j < ids.size(); j += 2) even.push_back(ids[j]);
    const iso::group evens(even);                                // every other one
    const iso::thread_id me = iso::this_thread::id();
    const int i = all.index_of(me);
    std::mt19937_64 rng(seed + static_cast<std::uint64_t>(i));
    const int n = static_cast<int>(all.size());
    for (int round = 0; round < 8; ++round) {
      // Interleaved, so that messages of the three groups are in flight together.
      const std::vector<int> a = iso::allgather(all, i);
      maybe_migrate(rng);
      const std::vector<int> r = iso::allgather(reversed, i);
      int e = -1;
      if (evens.index_of(me) >= 0) e = iso::allreduce(evens, 1, iso::sum);
      const int s = iso::allreduce(reversed, i * round, iso::sum);
      maybe_migrate(rng);
      for (int k = 0; k < n; ++k) {
        EXPECT_EQ(a[static_cast<std::size_t>(k)], k);
        EXPECT_EQ(r[static_cast<std::size_t>(k)], n - 1 - k);
      }
      if (evens.index_of(me) >= 0) {
        EXPECT_EQ(e, static_cast<int>(evens.size()));
      }
      EXPECT_EQ(s, round * n * (n - 1) / 2);
    }
  });
  rt->run();
}

// Two orders of the same threads whose fingerprints differ but give the same tag, and whose
// members 0 and 1 are the same: the first such pair next_permutation finds (a birthday search over
// the tag's 30 bits, some 2^15 orders; the first two members stay put for (n - 2)! of them).
std::pair<std::vector<iso::thread_id>, std::vector<iso::thread_id>> groups_sharing_a_tag(
    std::vector<iso::thread_id> ids) {
  const auto by_bits = [](iso::thread_id a, iso::thread_id b) { return a.bits() < b.bits(); };
  std::sort(ids.begin(), ids.end(), by_bits);
  std::unordered_map<int, std::vector<iso::thread_id>> seen;  // tag -> the first order giving it
  do {
    const iso::group g(ids);
    const auto [it, fresh] = seen.try_emplace(iso::detail::collective_tag(g.fingerprint()), ids);
    if (!fresh && it->second[0] == ids[0] && it->second[1] == ids[1] &&
        iso::group(it->second).fingerprint() != g.fingerprint()) {
      return {it->second, ids};
    }
  } while (std::next_permutation(ids.begin(), ids.end(), by_bits));
  return {};
}

TEST(Collectives, GroupsWhoseTagsCollideKeepTheirMessagesApart) {
  const std::uint64_t seed = iso_test::test_seed("Collectives.GroupsWhoseTagsCollideKeepTheirMessagesApart");
  const int per_rank = 10 / iso::size() + 1;  // at least 10 threads: 10! orders, enough to find a shared tag
  std::vector<iso::thread_id> mine;
  for (int k = 0; k < per_rank; ++k) {
    mine.push_back(iso::spawn([seed] {
      // Both member lists, one after the other, from main of rank 0.
      const iso::message m = iso::recv(iso::thread_id(0, 0), 0);
      const std::size_t n = m.data.size() / sizeof(iso::thread_id) / 2;
      if (n == 0) return;  // no pair was found: rank 0 reports it
      std::vector<iso::thread_id> a(n), b(n);
      std::memcpy(a.data(), m.data.data(), n * sizeof(iso::thread_id));
      std::memcpy(b.data(), m.data.data() + n * sizeof(iso::thread_id), n * sizeof(iso::thread_id));
      const iso::group ga(a), gb(b);
      ASSERT_EQ(iso::detail::collective_tag(ga.fingerprint()), iso::detail::collective_tag(gb.fingerprint()));
      const int i = ga.index_of(iso::this_thread::id()), j = gb.index_of(iso::this_thread::id());
      std::mt19937_64 rng(seed + static_cast<std::uint64_t>(i));
      const int size = static_cast<int>(n);
      // A member other than member 0 and root in both groups' reduces puts its value in and goes
      // on without waiting, so it may call them in the other order than the rest without a
      // deadlock. Its rank's batch for gb's reduce may then reach member 0 (the same thread in
      // both) on the shared tag while it waits in ga's: that batch must be put aside for gb's
      // reduce, not taken as ga's.
      const bool leaf_of_both = i % 2 == 1 && j % 2 == 1;
      for (int round = 0; round < 16; ++round) {
        const auto in_a = [&] { return iso::reduce(ga, i + round, iso::sum, 0); };
        const auto in_b = [&] { return iso::reduce(gb, 1000 * (j + round), iso::sum, 0); };
        int ra = 0, rb = 0;
        if (leaf_of_both) {
          rb = in_b();
          ra = in_a();
        } else {
          ra = in_a();
          rb = in_b();
        }
        EXPECT_EQ(ra, i == 0 ? size * (size - 1) / 2 + size * round : 0) << "round " << round;
        EXPECT_EQ(rb, j == 0 ? 1000 * (size * (size - 1) / 2 + size * round) : 0) << "round " << round;
        maybe_migrate(rng);
      }
    }));
  }
  const std::vector<iso::thread_id> ids = allgather_ids(mine);
  if (rt->rank() == 0) {
    const auto [a, b] = groups_sharing_a_tag(ids);
    // Without a pair every thread is still released (an empty message), so that this fails
    // instead of hanging.
    EXPECT_FALSE(a.empty()) << "no two orders of " << ids.size() << " threads share a tag";
    std::vector<iso::thread_id> both(a);
    both.insert(both.end(), b.begin(), b.end());
    for (iso::thread_id t : ids) iso::send(t, both.data(), both.size() * sizeof(iso::thread_id), 0);
  }
  rt->run();
}

void expect_invalid(const std::function<void()>& f, const std::string& naming) {
  try {
    f();
    ADD_FAILURE() << "expected iso::error(invalid_argument) naming '" << naming << "'";
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code_value(), iso::errc::invalid_argument) << e.what();
    EXPECT_NE(std::string(e.what()).find(naming), std::string::npos) << e.what();
  }
}

TEST(Collectives, MisuseIsRefusedNamingIt) {
  if (rt->rank() == 0) {
    expect_invalid([] { iso::group g(std::vector<iso::thread_id>{iso::thread_id(0, 5), iso::thread_id(0, 5)}); },
                   "is member 0 and member 1");
    expect_invalid([] { iso::group g(std::vector<iso::thread_id>{iso::thread_id{}}); }, "default thread_id");
    expect_invalid([] { iso::spawn_group(-1, [](int, const iso::group&) {}); }, "negative");
    const iso::group g = iso::spawn_group(4, [](int i, const iso::group& grp) {
      expect_invalid([&] { iso::broadcast(grp, 1, 4); }, "root 4 is out of range");
      expect_invalid([&] { iso::reduce(grp, 1, iso::sum, -1); }, "root -1 is out of range");
      iso::this_thread::migrate_to(i % iso::size());
      // Different lengths: found where two are combined, thrown at every member.
      const std::vector<int> v(i == 2 ? 3 : 2, 1);
      expect_invalid([&] { iso::allreduce(grp, std::span<const int>(v), iso::sum); }, "different lengths");
      // The group still works afterwards.
      EXPECT_EQ(iso::allreduce(grp, 1, iso::sum), 4);
    });
    // A thread that is not a member.
    iso::spawn([g] { expect_invalid([&] { iso::barrier(g); }, "is not a member"); });
  }
  rt->run();
}

// An op that throws is a failure every member that returns a result throws, whether the members
// it combines run on one rank (the merge is in a member's deposit) or on two (at member 0); no
// value is lost, so run() ends, and the group's later collectives still pair up.
TEST(Collectives, AnOpThatThrowsIsThrownAtEveryMemberAndRunEnds) {
  if (rt->rank() == 0) {
    iso::spawn_group(2, [](int i, const iso::group& g) {
      for (bool spread : {false, true}) {
        if (spread) iso::this_thread::migrate_to(i % iso::size());
        const auto boom = [](int, int) -> int { throw std::overflow_error("boom"); };
        try {
          (void)iso::allreduce(g, i, boom);
          ADD_FAILURE() << "member " << i << " returned from an allreduce whose op threw";
        } catch (const iso::error& e) {
          EXPECT_EQ(e.code_value(), iso::errc::invalid_argument) << e.what();
          EXPECT_NE(std::string(e.what()).find("iso::allreduce: the operation threw: boom"), std::string::npos)
              << e.what();
        }
        EXPECT_EQ(iso::allreduce(g, i, iso::sum), 1) << (spread ? "on two ranks" : "on one rank");
      }
    });
  }
  rt->run();
}

// A call whose result cannot fit one message (iso::max_message_bytes with the headers) is refused
// in the call, before a byte of it is read (none can be: the pages are inaccessible), instead of
// killing the job when the batch is sent; the group's later collectives still pair up.
TEST(Collectives, AResultOverTheMessageLimitIsRefusedInTheCall) {
  struct quarter {
    unsigned char b[iso::max_message_bytes / 4];  // four members' together: the limit, and no room for headers
  };
  void* pages = mmap(nullptr, iso::max_message_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT_NE(pages, MAP_FAILED);
  if (rt->rank() == 0) {
    iso::spawn_group(4, [pages](int i, const iso::group& g) {
      expect_invalid([&] { (void)iso::gather(g, *static_cast<const quarter*>(pages), 0); },
                     "iso::gather: 268435456 bytes from each of 4 members");
      expect_invalid([&] { (void)iso::allgather(g, *static_cast<const quarter*>(pages)); }, "iso::allgather");
      const std::span<const int> all(static_cast<const int*>(pages), iso::max_message_bytes / sizeof(int));
      expect_invalid([&] { (void)iso::allreduce(g, all, iso::sum); }, "carries at most");
      EXPECT_EQ(iso::allreduce(g, i, iso::sum), 6);
      EXPECT_EQ(iso::allgather(g, i), (std::vector<int>{0, 1, 2, 3}));
    });
  }
  rt->run();
  munmap(pages, iso::max_message_bytes);
}

// The fixed association of every collective (combiner.hpp): block [lo, lo + span) is
// op(first half, second half), a half past the last member dropped; evaluated serially here.
template <class T, class Op>
T tree_fold(const std::vector<T>& v, std::size_t lo, std::size_t span, Op op) {
  if (span == 1) return v[lo];
  const std::size_t half = span / 2;
  if (lo + half >= v.size()) return tree_fold(v, lo, half, op);
  return op(tree_fold(v, lo, half, op), tree_fold(v, lo + half, half, op));
}
template <class T, class Op>
T fixed_tree(const std::vector<T>& v, Op op) {
  std::size_t span = 1;
  while (span < v.size()) span *= 2;
  return tree_fold(v, 0, span, op);
}

// Member i's value in round r: magnitudes from 2^-30 to 2^50 and both signs, so that a sum
// depends on the association (checked below); the same on every rank.
double fp_value(std::uint64_t seed, int i, int round) {
  std::mt19937_64 g(seed * 1000003 + static_cast<std::uint64_t>(i) * 131 + static_cast<std::uint64_t>(round));
  const double mantissa = 1.0 + std::ldexp(static_cast<double>(g() >> 12), -52);  // every bit random
  const int exponent = static_cast<int>(g() % 81) - 30;
  return (g() % 2 == 0 ? 1 : -1) * std::ldexp(mantissa, exponent);
}

TEST(Collectives, FloatingPointResultsAreTheSameBitsWhileMembersAreMovedDuringCollectives) {
  const std::uint64_t seed = iso_test::test_seed("Collectives.FloatingPointResultsAreTheSameBitsWhileMembersAreMovedDuringCollectives");
  constexpr int n = 13, rounds = 10;
  // Draws of values for which the fixed association and a left-to-right sum differ (most draws
  // do), so that every round can tell an association that depends on where members run from the
  // fixed one: the first `rounds` such draws of the seed.
  std::vector<int> draws;
  for (int d = 0; static_cast<int>(draws.size()) < rounds; ++d) {
    ASSERT_LT(d, 100000) << "no draw's sum depends on the association: choose other values";
    std::vector<double> v;
    for (int i = 0; i < n; ++i) v.push_back(fp_value(seed, i, d));
    double left = v[0];
    for (int i = 1; i < n; ++i) left += v[static_cast<std::size_t>(i)];
    if (left != fixed_tree(v, iso::sum)) draws.push_back(d);
  }
  // On every rank a mover asks iso::migrate for random members while they are in collectives:
  // a member blocked in one moves once woken, and the others' results follow them.
  // Calls after which the member ran on another rank than before (only the movers move a member
  // during a call), counted on the rank where it returned.
  static int moved_in_call = 0;
  moved_in_call = 0;
  const iso::thread_id mover = iso::spawn([seed] {
    const std::vector<iso::thread_id> members = ids_from(iso::recv(iso::thread_id(0, 0), 0));
    std::mt19937_64 rng(seed ^ (0x9e37u + static_cast<std::uint64_t>(iso::rank())));
    for (int k = 0; k < 3000; ++k) {
      try {
        iso::migrate(members[rng() % members.size()], static_cast<int>(rng() % static_cast<std::uint64_t>(iso::size())));
      } catch (const iso::error& e) {
        EXPECT_EQ(e.code_value(), iso::errc::unknown_thread) << e.what();  // it is not on this rank
      }
      iso::this_thread::yield();
    }
  });
  const std::vector<iso::thread_id> movers = allgather_ids({mover});
  if (rt->rank() == 0) {
    const iso::group g = iso::spawn_group(n, [seed, draws](int i, const iso::group& grp) {
      std::mt19937_64 rng(seed + static_cast<std::uint64_t>(i));
      for (int round = 0; round < rounds; ++round) {
        std::vector<double> v;
        for (int k = 0; k < n; ++k) v.push_back(fp_value(seed, k, draws[static_cast<std::size_t>(round)]));
        const double mine = v[static_cast<std::size_t>(i)];
        const int root = (round * 3 + 2) % n;
        maybe_migrate(rng);
        const double want = fixed_tree(v, iso::sum);
        const int before = iso::rank();
        const double s = iso::allreduce(grp, mine, iso::sum);
        moved_in_call += iso::rank() != before ? 1 : 0;
        EXPECT_EQ(std::bit_cast<std::uint64_t>(s), std::bit_cast<std::uint64_t>(want))
            << "round " << round << ": " << s << " != " << want;
        const double r = iso::reduce(grp, mine, iso::sum, root);
        EXPECT_EQ(r, i == root ? want : 0.0) << "round " << round;
        maybe_migrate(rng);
        const std::vector<double> three = {mine, -mine * 3, mine * mine};
        const std::vector<double> e = iso::allreduce(grp, std::span<const double>(three), iso::sum);
        std::vector<double> col1, col2;
        for (double x : v) {
          col1.push_back(-x * 3);
          col2.push_back(x * x);
        }
        EXPECT_EQ(e, (std::vector<double>{fixed_tree(v, iso::sum), fixed_tree(col1, iso::sum), fixed_tree(col2, iso::sum)}))
            << "round " << round;
        // A waiting member's values are read where they lie (combiner.hpp's borrowed blocks),
        // never written.
        EXPECT_EQ(three, (std::vector<double>{mine, -mine * 3, mine * mine})) << "round " << round;
        EXPECT_EQ(iso::allgather(grp, mine), v) << "round " << round;
        const int before_last = iso::rank();
        EXPECT_EQ(iso::broadcast(grp, i == root ? mine : -1.0, root), v[static_cast<std::size_t>(root)]);
        iso::barrier(grp);
        moved_in_call += iso::rank() != before_last ? 1 : 0;
      }
    });
    for (iso::thread_id t : movers) iso::send(t, g.members().data(), g.size() * sizeof(iso::thread_id), 0);
  }
  rt->run();
  int all_moved = 0;
  MPI_Allreduce(&moved_in_call, &all_moved, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_GT(all_moved, 0) << "no member was moved during a collective";
}

// A waiter reads the result its rank's waiters share in place, where it was woken: a woken
// waiter is ready, and a ready thread is one iso::migrate ships at once, so it must stay until it
// has read it, and then move before the call returns (the next call's wait would not move it).
// On every rank a mover asks iso::migrate, at each of its turns, for each member (with odds 1/2,
// so that a member between two collectives gets to run too) to go to the next rank; the members'
// element-wise allreduces must still return the sums, and some must return on another rank than
// the one they were called on.
TEST(Collectives, WaitersAskedToMoveAsSoonAsTheyAreWokenReturnTheirResult) {
  const std::uint64_t seed = iso_test::test_seed("Collectives.WaitersAskedToMoveAsSoonAsTheyAreWokenReturnTheirResult");
  constexpr int per_rank = 4, rounds = 30, len = 300, tag_stop = 9;
  static int moved = 0;  // calls that returned on this rank, called on another
  moved = 0;
  const iso::thread_id mover = iso::spawn([seed] {
    const std::vector<iso::thread_id> members = ids_from(iso::recv(iso::thread_id(iso::rank(), 0), 0));
    const int next = (iso::rank() + 1) % iso::size();
    std::mt19937_64 rng(seed ^ (0x51edu + static_cast<std::uint64_t>(iso::rank())));
    while (!iso::try_recv(iso::any_thread, tag_stop)) {
      for (iso::thread_id m : members) {
        if (rng() % 2 != 0) continue;
        try {
          iso::migrate(m, next);
        } catch (const iso::error& e) {
          EXPECT_EQ(e.code_value(), iso::errc::unknown_thread) << e.what();  // it is not on this rank
        }
      }
      iso::this_thread::yield();
    }
  });
  const std::vector<iso::thread_id> movers = allgather_ids({mover});
  const auto body = [movers](const std::vector<iso::thread_id>& ids) {
    const iso::group g(ids);
    const int i = g.index_of(iso::this_thread::id());
    const int n = static_cast<int>(g.size());
    std::vector<double> v(len);
    for (int round = 0; round < rounds; ++round) {
      for (int k = 0; k < len; ++k) v[static_cast<std::size_t>(k)] = i * len + k + round;
      const int before = iso::rank();
      const std::vector<double> r = iso::allreduce(g, std::span<const double>(v), iso::sum);
      moved += i != 0 && iso::rank() != before ? 1 : 0;  // member 0 may move while it combines
      int wrong = r.size() == static_cast<std::size_t>(len) ? 0 : len;
      for (int k = 0; wrong == 0 && k < len; ++k) {
        // The sum over members j of j * len + k + round.
        wrong += r[static_cast<std::size_t>(k)] != static_cast<double>(len) * (n * (n - 1) / 2) + n * (k + round);
      }
      EXPECT_EQ(wrong, 0) << "member " << i << ", round " << round;
    }
    iso::barrier(g);
    if (i == 0) {
      for (iso::thread_id m : movers) iso::send(m, nullptr, 0, tag_stop);
    }
  };
  const std::vector<iso::thread_id> members = allgather_ids(spawn_on_every_rank(per_rank, body));
  iso::send(mover, members.data(), members.size() * sizeof(iso::thread_id), 0);
  rt->run();
  int all_moved = 0;
  MPI_Allreduce(&moved, &all_moved, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_GT(all_moved, 0) << "no waiter asked to move moved before its call returned";
}

// The blocks a rank keeps for its next collectives (combiner.hpp's block_cache) are freed as
// each run ends: the rank keeps none between runs.
TEST(Collectives, ARunEndsWithNoBlockKeptForCollectives) {
  static std::size_t kept_in_run = 0;  // on this rank, after its members' last call
  kept_in_run = 0;
  spawn_on_every_rank(3, [](const std::vector<iso::thread_id>& ids) {
    const iso::group g(ids);
    const std::vector<double> v(1 << 14, 1.0);  // 128 KiB
    for (int round = 0; round < 4; ++round) {
      EXPECT_EQ(iso::allreduce(g, std::span<const double>(v), iso::sum)[0], static_cast<double>(g.size()));
    }
    kept_in_run = std::max(kept_in_run, iso::detail::block_cache::get().kept());
  });
  rt->run();
  EXPECT_GT(kept_in_run, 0u) << "the collectives kept no block while they ran";
  EXPECT_EQ(iso::detail::block_cache::get().kept(), 0u);
}

// Running out of memory in a collective (fault injection: fault.hpp's collectives.take makes the
// next block of the rank's collectives fail): the member whose value could not be put in throws
// std::bad_alloc from its call, every member that returns a result throws iso::error naming it,
// whether its value got into the rank's record before the failure or not, nobody hangs, and the
// group's next collective works. `how` follows "ran out of memory" in the others' error.
void expect_out_of_memory_of(const std::function<void()>& call, int member, int me, const std::string& how = "") {
  try {
    call();
    ADD_FAILURE() << "member " << me << " returned from a collective where member " << member << " ran out of memory";
  } catch (const std::bad_alloc&) {
    EXPECT_EQ(me, member) << "only the member that ran out of memory throws std::bad_alloc";
  } catch (const iso::error& e) {
    EXPECT_NE(me, member);
    EXPECT_NE(std::string(e.what()).find("member " + std::to_string(member) + " ran out of memory" + how),
              std::string::npos)
        << e.what();
  }
}

TEST(Collectives, AMemberOutOfMemoryThrowsBadAllocAndTheOthersAnErrorNamingIt) {
  // Values larger than a block keeps inline (combiner.hpp's small_bytes): a scalar's value costs
  // the rank no allocation, so it cannot run out of memory for it.
  using wide = std::array<std::uint64_t, 3>;
  static_assert(sizeof(wide) > iso::detail::small_bytes<std::allocator<std::byte>>::inline_bytes);
  const auto add = [](wide a, const wide& b) {
    for (std::size_t k = 0; k < a.size(); ++k) a[k] += b[k];
    return a;
  };
  // One member a rank, reduce to member 0: the others do not wait for a result, so their
  // deposit copies their value into the rank's record of the call (a waiting member's is read
  // where it lies), as member 0's does.
  spawn_on_every_rank(1, [add](const std::vector<iso::thread_id>& ids) {
    const iso::group g(ids);
    const int i = g.index_of(iso::this_thread::id());
    const int n = static_cast<int>(g.size());
    for (int failing : {n - 1, 0}) {
      if (i == failing) iso::detail::fault::arm("collectives.take");
      try {
        (void)iso::reduce(g, wide{1, 1, 1}, add, 0);
        EXPECT_TRUE(i != 0 && i != failing) << "member " << i << " returned where member " << failing
                                            << " ran out of memory";
      } catch (const std::bad_alloc&) {
        EXPECT_EQ(i, failing) << "only the member that ran out of memory throws std::bad_alloc";
      } catch (const iso::error& e) {
        EXPECT_EQ(i, 0) << "only member 0 returns a result";
        EXPECT_NE(std::string(e.what()).find("member " + std::to_string(failing) + " ran out of memory"),
                  std::string::npos)
            << e.what();
      }
      const wide r = iso::reduce(g, wide{1, 1, 1}, add, 0);
      if (i == 0) {
        EXPECT_EQ(r[2], static_cast<std::uint64_t>(n)) << "after member " << failing << " ran out of memory";
      }
    }
  });
  rt->run();
  // Two members on rank 0, member 1 (gather's root) in first: its leaf is on the run of the
  // rank's record (combiner.hpp's partial_tree), and member 0's, left of it, moves it into the
  // table. Member 0's deposit takes the table's room (the 1st block; the rank's spare entry
  // keeps that table for the next calls), then copies its value (1st once the table is kept) and
  // merges member 1's into it (2nd, which fails after the value is in the record).
  if (rt->rank() == 0) {
    iso::spawn_group(2, [](int i, const iso::group& g) {
      constexpr int tag_in = 3;
      for (unsigned long pass : {1ul, 1ul, 2ul}) {
        if (i == 1) {
          iso::send(g[0], nullptr, 0, tag_in);  // member 0 deposits once member 1 waits
        } else {
          (void)iso::recv(g[1], tag_in);
          ASSERT_EQ(iso::detail::engine::current()->combiner().unsent(), 1u) << "member 1's value is here";
          iso::detail::fault::arm("collectives.take", pass);
        }
        expect_out_of_memory_of([&] { (void)iso::gather(g, wide{7, 7, 7}, 1); }, 0, i);
        const auto mine = static_cast<std::uint64_t>(i);
        const std::vector<wide> want = i == 1 ? std::vector<wide>{{0, 0, 0}, {1, 1, 1}} : std::vector<wide>{};
        EXPECT_EQ(iso::gather(g, wide{mine, mine, mine}, 1), want) << "after the failure at pass " << pass;
      }
    });
  }
  rt->run();
  // Four members on rank 0, element-wise allreduce over 3 doubles (more than a block keeps
  // inline, so a waiting member's span is read where it lies). On the table: member 3 deposits
  // first (its borrowed leaf is kept), then member 2, whose combination with it into a block of
  // its own is its deposit's one allocation (an allreduce in the same order before has left the
  // rank's spare entry its table), runs out of memory. On the run: member 2 first, then member 3,
  // whose value is combined with member 2's borrowed leaf into a block of its own, the one
  // allocation of member 3's deposit. The failing member throws std::bad_alloc and at once
  // overwrites its span (the rank has not polled since): nothing of it may be read any more, and
  // every other member throws the error naming it, none a sum of garbage.
  for (const int failing : {2, 3}) {
    if (rt->rank() != 0) {
      rt->run();
      continue;
    }
    iso::spawn_group(4, [failing](int i, const iso::group& g) {
      constexpr int tag_go = 4;
      const int first = failing == 2 ? 3 : 2;  // deposits before the failing member
      std::vector<double> v(3, 1.0);
      // Member `first`, then the failing one, then the others (once it failed, in the faulted call).
      const auto in_order = [&] {
        if (i == first) {
          iso::send(g[failing], nullptr, 0, tag_go);
        } else {
          (void)iso::recv(g[i == failing ? first : failing], tag_go);
        }
      };
      const auto let_the_others_go = [&] {
        for (int k = 0; k < 4; ++k) {
          if (k != first && k != failing) iso::send(g[k], nullptr, 0, tag_go);
        }
      };
      if (failing == 2) {
        in_order();
        if (i == failing) let_the_others_go();
        EXPECT_EQ(iso::allreduce(g, std::span<const double>(v), iso::sum), std::vector<double>(3, 4.0));
      }
      in_order();
      if (i == failing) iso::detail::fault::arm("collectives.take");
      try {
        (void)iso::allreduce(g, std::span<const double>(v), iso::sum);
        ADD_FAILURE() << "member " << i << " returned from an allreduce where member " << failing
                      << " ran out of memory";
      } catch (const std::bad_alloc&) {
        EXPECT_EQ(i, failing) << "only the member that ran out of memory throws std::bad_alloc";
        std::fill(v.begin(), v.end(), -1e300);
        let_the_others_go();
      } catch (const iso::error& e) {
        EXPECT_NE(i, failing);
        EXPECT_NE(std::string(e.what()).find("member " + std::to_string(failing) + " ran out of memory"),
                  std::string::npos)
            << e.what();
      }
      std::fill(v.begin(), v.end(), static_cast<double>(i));
      const std::vector<double> r = iso::allreduce(g, std::span<const double>(v), iso::sum);
      EXPECT_EQ(r, std::vector<double>(3, 6.0)) << "the next allreduce after member " << failing
                                                << " ran out of memory";
    });
    rt->run();
  }
}

// Member 0 running out of memory in its own heap as it combines (fault injection: the point
// collectives.combine makes the next batch it takes in fail as if its heap refused the tree or
// the batch): it throws std::bad_alloc once it has answered the others, every other member
// throws iso::error naming it, instead of waiting until deadlock detection; the group's next
// collective works. Members on every rank, so that member 0 takes in batches from each, the
// failing one first or later (scalars and spans larger than a block keeps inline); and a reduce
// to the last member, on the last rank, the one rank answered (the others have no waiters, and
// their members return T{}).
TEST(Collectives, MemberZeroOutOfMemoryWhileCombiningFailsEveryMember) {
  spawn_on_every_rank(2, [](const std::vector<iso::thread_id>& ids) {
    const iso::group g(ids);
    const int i = g.index_of(iso::this_thread::id());
    const int n = static_cast<int>(g.size());
    const std::vector<double> v(4, 1.0);
    const std::string how = " while it combined";
    for (unsigned long pass : {1ul, 2ul}) {
      if (i == 0) iso::detail::fault::arm("collectives.combine", pass);
      expect_out_of_memory_of([&] { (void)iso::allreduce(g, 1, iso::sum); }, 0, i, how);
      EXPECT_EQ(iso::allreduce(g, i, iso::sum), n * (n - 1) / 2) << "after member 0 ran out of memory";
      if (i == 0) iso::detail::fault::arm("collectives.combine", pass);
      expect_out_of_memory_of([&] { (void)iso::allreduce(g, std::span<const double>(v), iso::sum); }, 0, i, how);
      EXPECT_EQ(iso::allreduce(g, std::span<const double>(v), iso::sum), std::vector<double>(4, n));
      if (i == 0) iso::detail::fault::arm("collectives.combine", pass);
      const int root = n - 1;
      if (i == 0 || i == root) {
        expect_out_of_memory_of([&] { (void)iso::reduce(g, 1, iso::sum, root); }, 0, i, how);
      } else {
        EXPECT_EQ(iso::reduce(g, 1, iso::sum, root), 0) << "a member that waits for no result";
      }
      EXPECT_EQ(iso::reduce(g, i, iso::sum, root), i == root ? n * (n - 1) / 2 : 0) << "after the failed reduce";
    }
  });
  rt->run();
}

// Member 0 out of memory in its tree (fault point collectives.combine_block: the n-th block it
// puts in fails), including after a block it borrowed from a batch is in (so that the batch is
// not kept, and the tree is freed first): rank 0 holds members 0 and iso::size() (not next to
// each other in the group), so that a batch brings two blocks where both deposited before their
// rank sent, a span's (more than a block keeps inline) borrowed.
TEST(Collectives, MemberZeroOutOfMemoryInItsTreeFailsEveryMember) {
  spawn_on_every_rank(2, [](const std::vector<iso::thread_id>& ids) {
    std::vector<iso::thread_id> interleaved;
    for (std::size_t first : {0, 1}) {
      for (std::size_t j = first; j < ids.size(); j += 2) interleaved.push_back(ids[j]);
    }
    const iso::group g(interleaved);
    const int i = g.index_of(iso::this_thread::id());
    const int n = static_cast<int>(g.size());
    const std::vector<double> v(4, 1.0);
    for (unsigned long pass : {1ul, 2ul, 3ul}) {
      if (i == 0) iso::detail::fault::arm("collectives.combine_block", pass);
      expect_out_of_memory_of([&] { (void)iso::allreduce(g, std::span<const double>(v), iso::sum); }, 0, i,
                              " while it combined");
      EXPECT_EQ(iso::allreduce(g, std::span<const double>(v), iso::sum), std::vector<double>(4, n))
          << "after member 0 ran out of memory at block " << pass;
    }
  });
  rt->run();
}

// Member 0 out of memory as it puts aside a batch of the group's next collective (fault point
// collectives.stash): it frees what it holds for the one it combines, puts the batch aside, and
// fails that one for every member (root 2 on rank 1 waits for it); the next one gets the batch
// it put aside. Members 0 and 1 on rank 0, 2 on rank 1: member 1 (no result to wait for) makes
// both reduces and lets member 2 call only once its rank sent both batches, so that member 0
// takes in the second reduce's batch before the first is complete.
TEST(Collectives, MemberZeroOutOfMemoryForAnotherCollectivesBatchFailsTheOneItCombines) {
  spawn_on_every_rank(2, [](const std::vector<iso::thread_id>& ids) {
    const std::vector<iso::thread_id> three(ids.begin(), ids.begin() + 3);
    const iso::group g(three);
    const int i = g.index_of(iso::this_thread::id());
    if (i < 0) return;
    constexpr int tag_go = 5;
    if (i == 0) iso::detail::fault::arm("collectives.stash");
    if (i == 1) {
      EXPECT_EQ(iso::reduce(g, 10, iso::sum, 2), 0);
      EXPECT_EQ(iso::reduce(g, 20, iso::sum, 2), 0);
      while (iso::detail::engine::current()->combiner().unsent() != 0) iso::this_thread::yield();
      iso::send(g[2], nullptr, 0, tag_go);
    } else {
      if (i == 2) (void)iso::recv(g[1], tag_go);
      expect_out_of_memory_of([&] { (void)iso::reduce(g, 1, iso::sum, 2); }, 0, i, " while it combined");
      EXPECT_EQ(iso::reduce(g, 2, iso::sum, 2), i == 2 ? 24 : 0) << "the collective whose batch was put aside";
    }
    EXPECT_EQ(iso::allreduce(g, i, iso::sum), 3);
  });
  rt->run();
}

iso::detail::rank_combiner::counts_t combiner_counts() {
  return iso::detail::engine::current()->combiner().counts();
}

TEST(Collectives, AGroupOnOneRankSendsNothingBetweenRanks) {
  // Every member on the last rank; the other ranks hold none.
  const auto before = combiner_counts();
  if (rt->rank() == rt->size() - 1) {
    iso::spawn_group(9, [](int i, const iso::group& g) {
      for (int round = 0; round < 20; ++round) {
        EXPECT_EQ(iso::allreduce(g, i + round, iso::sum), 36 + 9 * round);
        const std::vector<int> all = {0, 1, 2, 3, 4, 5, 6, 7, 8};
        EXPECT_EQ(iso::gather(g, i, 4), i == 4 ? all : std::vector<int>());
        iso::barrier(g);
      }
    });
  }
  rt->run();
  const auto after = combiner_counts();
  EXPECT_EQ(after.batches, before.batches);
  EXPECT_EQ(after.results, before.results);
}

TEST(Collectives, ManyMembersPerRankCostAboutOneMessageBetweenRanksPerRankAndCall) {
  // 200 members per rank (rank-major indices, member 0 on rank 0), staying put, more than a
  // poll interval's thread switches: each rank sends member 0 its partial result once per call
  // (twice when a poll interval passes between two of its members' deposits), and member 0's
  // rank sends one result to each other rank. Per rank that is O(1) messages between ranks per
  // call where one message per member would be 200.
  constexpr int per_rank = 200, calls = 40;
  const auto before = combiner_counts();
  spawn_on_every_rank(per_rank, [](const std::vector<iso::thread_id>& ids) {
    const iso::group g(ids);
    const int i = g.index_of(iso::this_thread::id());
    const int n = static_cast<int>(g.size());
    for (int c = 0; c < calls / 2; ++c) {
      EXPECT_EQ(iso::allreduce(g, i, iso::sum), n * (n - 1) / 2);
      iso::barrier(g);
    }
  });
  rt->run();
  const auto after = combiner_counts();
  const std::uint64_t batches = after.batches - before.batches, results = after.results - before.results;
  if (rt->rank() == 0) {
    EXPECT_EQ(batches, 0u) << "member 0 is here";
    EXPECT_EQ(results, static_cast<std::uint64_t>(calls * (rt->size() - 1)));
  } else {
    EXPECT_GE(batches, static_cast<std::uint64_t>(calls));
    EXPECT_LE(batches, static_cast<std::uint64_t>(2 * calls));
    EXPECT_EQ(results, 0u);
  }
}

// Members waiting in a collective for one that never calls are a deadlock, reported on every rank
// (the rank's partial results neither hide it nor get lost); once that member calls, the
// collective completes in the next run.
TEST(Collectives, MembersWaitingForOneThatNeverCallsAreADeadlock) {
  constexpr int per_rank = 3, tag_go = 7;
  const std::vector<iso::thread_id> mine = spawn_on_every_rank(per_rank, [](const std::vector<iso::thread_id>& ids) {
    const iso::group g(ids);
    const int i = g.index_of(iso::this_thread::id());
    const int n = static_cast<int>(g.size());
    if (i == n - 1) (void)iso::recv(iso::thread_id(iso::rank(), 0), tag_go);  // holds the others up
    EXPECT_EQ(iso::allreduce(g, 1, iso::sum), n);
  });
  try {
    rt->run();
    ADD_FAILURE() << "run() returned while members wait in an allreduce";
  } catch (const iso::error& e) {
    EXPECT_EQ(e.code_value(), iso::errc::deadlock) << e.what();
  }
  if (rt->rank() == rt->size() - 1) iso::send(mine.back(), nullptr, 0, tag_go);  // the last member
  rt->run();
}

}  // namespace
