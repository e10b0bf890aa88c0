// A model-based stress test of ownership across ranks (isomalloc/internal/ownership.hpp).
//
// Agents (three per rank, spawned by main) run a random script: allocate heap blocks, free them,
// migrate (leaving a stale pointer behind in a rank-local global), allocate C blocks, carry one to
// another rank by iso_pack/iso_detach/iso_unpack, iso_free them, spawn a child that allocates,
// maybe migrates, frees part and exits with the rest live. A coordinator (rank 0) runs the steps:
// every agent does one operation, reports the ranges it holds in use and where it is (the model),
// the coordinator checks that no two of them overlap, and a checker on every rank compares its
// allocator's view with the model: every range the model puts here is in use here, every range
// it puts elsewhere is not; the stale pointers of agents that are elsewhere are freed and each
// such wrong-rank free must be refused. At the end every agent frees what it holds and ends; then
// every rank must have exactly the chunks it had before (nothing leaked), no departed memory left
// and a valid region.
//
// Seeded: the seed is printed ("replay: ISO_STRESS_SEED=..."), taken from ISO_STRESS_SEED if set;
// ISO_STRESS_STEPS sets the number of steps (default 25; scripts/ownership-stress runs many more).
// Run with ISO_DEBUG=2 the heap and region validators run inside it too.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "heap.hpp"
#include "interpose.hpp"
#include "isothreads/isomalloc.h"
#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"
#include "mpi_peers.hpp"
#include "ownership.hpp"
#include "region.hpp"
#include "stack.hpp"

namespace {

using iso_test::allgather_ids;
using iso_test::rt;
using iso::detail::heap;

constexpr int agents_per_rank = 3;
enum tag : int { tag_step = 1, tag_report = 2, tag_check = 3, tag_result = 4, tag_finish = 5 };
enum kind : std::uint32_t { heap_block = 0, c_block = 1 };

struct range {
  std::uint64_t addr;
  std::uint64_t bytes;
  std::uint32_t kind;
  std::int32_t agent;
  std::int32_t rank;   // where it is in use: its agent's rank (heap block), where it is held (C block)
  std::int32_t unused;
};
struct report_head {
  std::int32_t agent;
  std::int32_t rank;        // where it is now
  std::uint32_t failures;   // its own checks that failed (contents, heap validator, iso calls)
  std::uint32_t nranges;
};
struct check_result {
  std::uint32_t mismatches;      // ranges whose state here disagrees with the model
  std::uint32_t wrong_frees;     // stale pointers freed here
  std::uint32_t refused;         // of those, refused
};

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

// Rank-local, in static storage (never in a thread's heap): pointers agents left behind.
struct stale_pointer {
  std::int32_t agent;
  void* p;
};
stale_pointer g_stale[1024];
int g_nstale = 0;

// Totals the coordinator gathers (rank 0).
struct totals {
  std::uint64_t overlaps = 0, mismatches = 0, agent_failures = 0, wrong_frees = 0, refused = 0, steps = 0;
};
totals g_totals;

std::uint64_t fill_word(int agent, std::uint32_t serial) {
  return (static_cast<std::uint64_t>(agent) << 40) ^ (serial * 0x9E3779B97F4A7C15ull);
}
void fill(void* p, std::size_t bytes, int agent, std::uint32_t serial) {
  auto* w = static_cast<std::uint64_t*>(p);
  for (std::size_t i = 0; i < bytes / 8; ++i) w[i] = fill_word(agent, serial) + i;
}
bool intact(const void* p, std::size_t bytes, int agent, std::uint32_t serial, bool full) {
  const auto* w = static_cast<const std::uint64_t*>(p);
  const std::size_t n = bytes / 8;
  if (!full) return n == 0 || (w[0] == fill_word(agent, serial) && w[n - 1] == fill_word(agent, serial) + n - 1);
  for (std::size_t i = 0; i < n; ++i) {
    if (w[i] != fill_word(agent, serial) + i) return false;
  }
  return true;
}

struct held {
  void* p;
  std::size_t bytes;
  std::uint32_t serial;
  bool block;  // a C block (iso_malloc) rather than a heap block
  int rank;    // a C block: the rank where it is held (it stays there when the agent moves)
  bool here() const { return !block || rank == iso::rank(); }
};

std::size_t random_bytes(std::mt19937_64& rng) {
  switch (rng() % 8) {
    case 0: return 8192 + rng() % 20000;             // medium and small large
    case 1: return 100000 + rng() % 250000;          // large, a run of its own
    default: return 16 + (rng() % 2000) / 8 * 8;     // small
  }
}

void agent_body(int index, std::uint64_t seed, iso::thread_id coordinator) {
  std::mt19937_64 rng(seed ^ (0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(index + 1)));
  std::vector<held> mine;
  std::uint32_t serial = 0;
  for (;;) {
    const iso::message m = iso::recv();
    if (m.tag == tag_finish) break;
    std::uint32_t failures = 0;
    const auto pick = [&](bool block) -> std::ptrdiff_t {
      std::vector<std::size_t> candidates;
      for (std::size_t i = 0; i < mine.size(); ++i) {
        if (mine[i].block == block && mine[i].here()) candidates.push_back(i);
      }
      return candidates.empty() ? -1 : static_cast<std::ptrdiff_t>(candidates[rng() % candidates.size()]);
    };
    const int dest = static_cast<int>(rng() % static_cast<std::uint64_t>(iso::size()));
    switch (rng() % 9) {
      case 0:
      case 1: {  // allocate a heap block
        const std::size_t bytes = random_bytes(rng);
        void* p = std::malloc(bytes);
        if (p == nullptr) { ++failures; break; }
        fill(p, bytes, index, ++serial);
        mine.push_back({p, bytes, serial, false, -1});
        break;
      }
      case 2: {  // free one, on the rank where it is in use
        if (const auto i = pick(false); i >= 0) {
          std::free(mine[static_cast<std::size_t>(i)].p);
          mine.erase(mine.begin() + i);
        }
        break;
      }
      case 3: {  // migrate, leaving a pointer to a live heap block behind in a global
        if (const auto i = pick(false); i >= 0 && g_nstale < static_cast<int>(std::size(g_stale))) {
          g_stale[g_nstale++] = {index, mine[static_cast<std::size_t>(i)].p};
        }
        iso::this_thread::migrate_to(dest);
        break;
      }
      case 4: {  // a C block
        const std::size_t bytes = 4096 * (1 + rng() % 20);
        void* b = iso_malloc(bytes);
        if (b == nullptr) { ++failures; break; }
        fill(b, bytes, index, ++serial);
        mine.push_back({b, bytes, serial, true, iso::rank()});
        break;
      }
      case 5: {  // iso_free one, where it is held
        if (const auto i = pick(true); i >= 0) {
          iso_free(mine[static_cast<std::size_t>(i)].p);
          failures += iso_last_error()[0] != '\0';
          mine.erase(mine.begin() + i);
        }
        break;
      }
      case 6: {  // carry a C block to another rank by its image
        const auto i = pick(true);
        if (i < 0) break;
        held h = mine[static_cast<std::size_t>(i)];
        mine.erase(mine.begin() + i);
        std::vector<unsigned char> image(iso_pack_size(h.p));
        if (image.empty() || iso_pack(h.p, image.data(), image.size()) != image.size()) { ++failures; break; }
        iso_detach(h.p);
        iso::this_thread::migrate_to(dest);
        void* back = iso_unpack(image.data(), image.size());
        if (back != h.p) { ++failures; break; }
        h.rank = iso::rank();
        mine.push_back(h);
        break;
      }
      case 7: {  // a child that allocates, maybe moves, frees part and ends with the rest live
        const std::uint64_t child_seed = rng();
        iso::join(iso::spawn([child_seed] {
          std::mt19937_64 crng(child_seed);
          std::vector<void*> blocks;
          for (int k = 0; k < 6; ++k) blocks.push_back(std::malloc(random_bytes(crng)));
          if (crng() % 2 == 0) iso::this_thread::migrate_to(static_cast<int>(crng() % static_cast<std::uint64_t>(iso::size())));
          for (std::size_t k = 0; k < blocks.size(); k += 2) std::free(blocks[k]);
        }));
        break;
      }
      default: {  // check everything fully, validators included
        for (const held& h : mine) failures += h.here() && !intact(h.p, h.bytes, index, h.serial, true);
        failures += !iso::detail::current_heap->is_valid();
        break;
      }
    }
    for (const held& h : mine) failures += h.here() && !intact(h.p, h.bytes, index, h.serial, false);
    std::vector<unsigned char> out(sizeof(report_head) + mine.size() * sizeof(range));
    const report_head head{index, iso::rank(), failures, static_cast<std::uint32_t>(mine.size())};
    std::memcpy(out.data(), &head, sizeof head);
    for (std::size_t i = 0; i < mine.size(); ++i) {
      const range r{reinterpret_cast<std::uintptr_t>(mine[i].p), mine[i].bytes, mine[i].block ? c_block : heap_block,
                    index, mine[i].block ? mine[i].rank : iso::rank(), 0};
      std::memcpy(out.data() + sizeof head + i * sizeof r, &r, sizeof r);
    }
    iso::send(coordinator, out.data(), out.size(), tag_report);
  }
  for (const held& h : mine) {
    if (!h.block) std::free(h.p);
  }
  for (const held& h : mine) {  // each C block where it is held
    if (!h.block) continue;
    iso::this_thread::migrate_to(h.rank);
    iso_free(h.p);
  }
}

// Compares this rank's allocator with the model, and frees the stale pointers of agents that are
// elsewhere (each must be refused).
void checker_body(iso::thread_id coordinator) {
  for (;;) {
    const iso::message m = iso::recv();
    if (m.tag == tag_finish) return;
    const auto* bytes = reinterpret_cast<const unsigned char*>(m.data.data());
    std::uint32_t nagents = 0;
    std::memcpy(&nagents, bytes, sizeof nagents);
    std::vector<std::int32_t> where(nagents);
    std::memcpy(where.data(), bytes + sizeof nagents, nagents * sizeof(std::int32_t));
    const std::size_t at = sizeof nagents + nagents * sizeof(std::int32_t);
    std::vector<range> ranges((m.data.size() - at) / sizeof(range));
    std::memcpy(ranges.data(), bytes + at, ranges.size() * sizeof(range));
    const int me = iso::rank();
    check_result res{0, 0, 0};
    for (const range& r : ranges) {
      void* p = reinterpret_cast<void*>(r.addr);
      bool in_use_here;
      if (r.kind == heap_block) {
        const heap* h = heap::owner_of(p);
        in_use_here = h != nullptr && h->in_use_here();
      } else {
        in_use_here = iso_length(p) != 0;
      }
      res.mismatches += in_use_here != (r.rank == me);
    }
    int kept = 0;
    for (int i = 0; i < g_nstale; ++i) {
      const stale_pointer s = g_stale[i];
      const bool live = std::any_of(ranges.begin(), ranges.end(), [&](const range& r) {
        return r.kind == heap_block && r.agent == s.agent && r.addr == reinterpret_cast<std::uintptr_t>(s.p);
      });
      if (!live) continue;                                                  // freed since: forget it
      if (where[static_cast<std::size_t>(s.agent)] == me) {
        g_stale[kept++] = s;                                                // its agent is back here
        continue;
      }
      const std::size_t before = iso::detail::ownership_stats().refused_frees;
      std::free(s.p);                                                       // the wrong rank
      ++res.wrong_frees;
      res.refused += iso::detail::ownership_stats().refused_frees == before + 1;
    }
    g_nstale = kept;
    res.mismatches += !iso::detail::region::get().is_valid();
    iso::send(coordinator, &res, sizeof res, tag_result);
  }
}

void coordinator_body(std::vector<iso::thread_id> agents, std::vector<iso::thread_id> checkers, std::uint64_t steps) {
  for (std::uint64_t s = 0; s < steps; ++s) {
    for (iso::thread_id a : agents) iso::send(a, &s, sizeof s, tag_step);
    std::vector<std::int32_t> where(agents.size(), -1);
    std::vector<range> all;
    for (std::size_t k = 0; k < agents.size(); ++k) {
      const iso::message m = iso::recv();
      report_head head;
      std::memcpy(&head, m.data.data(), sizeof head);
      where[static_cast<std::size_t>(head.agent)] = head.rank;
      g_totals.agent_failures += head.failures;
      const std::size_t at = all.size();
      all.resize(at + head.nranges);
      std::memcpy(all.data() + at, m.data.data() + sizeof head, head.nranges * sizeof(range));
    }
    // No address held by two agents at once.
    std::sort(all.begin(), all.end(), [](const range& a, const range& b) { return a.addr < b.addr; });
    for (std::size_t i = 1; i < all.size(); ++i) g_totals.overlaps += all[i - 1].addr + all[i - 1].bytes > all[i].addr;
    std::vector<unsigned char> check(sizeof(std::uint32_t) + where.size() * sizeof(std::int32_t) + all.size() * sizeof(range));
    const auto nagents = static_cast<std::uint32_t>(where.size());
    std::memcpy(check.data(), &nagents, sizeof nagents);
    std::memcpy(check.data() + sizeof nagents, where.data(), where.size() * sizeof(std::int32_t));
    std::memcpy(check.data() + sizeof nagents + where.size() * sizeof(std::int32_t), all.data(), all.size() * sizeof(range));
    for (iso::thread_id c : checkers) iso::send(c, check.data(), check.size(), tag_check);
    for (std::size_t k = 0; k < checkers.size(); ++k) {
      const iso::message m = iso::recv();
      check_result r;
      std::memcpy(&r, m.data.data(), sizeof r);
      g_totals.mismatches += r.mismatches;
      g_totals.wrong_frees += r.wrong_frees;
      g_totals.refused += r.refused;
    }
    ++g_totals.steps;
  }
  for (iso::thread_id a : agents) iso::send(a, nullptr, 0, tag_finish);
  for (iso::thread_id c : checkers) iso::send(c, nullptr, 0, tag_finish);
}

// Chunks of this rank's share in use, beyond the stacks its pool keeps for reuse.
std::size_t chunks_in_use() {
  return iso::detail::region::get().stats().allocated_chunks -
         iso::detail::stack_pool::get().pooled_bytes() / iso::detail::chunk_bytes;
}

// Everything in flight has landed: returns reached their owners, kept copies were given back.
void settle_everything() {
  iso::detail::installed_peers_or_null()->drain();
  iso::detail::departures::get().tick(std::numeric_limits<std::int64_t>::max());
}

TEST(OwnershipStress, RandomOperationsOnEveryRankKeepOneOwnerPerAddressAndLeakNothing) {
  std::uint64_t seed = env_or("ISO_STRESS_SEED", static_cast<std::uint64_t>(
                                                     std::chrono::steady_clock::now().time_since_epoch().count()));
  std::uint64_t steps = env_or("ISO_STRESS_STEPS", 25);
  MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  MPI_Bcast(&steps, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  if (rt->rank() == 0) {
    std::printf("ownership stress: %d ranks, %llu steps, seed %llu (replay: ISO_STRESS_SEED=%llu)\n", rt->size(),
                static_cast<unsigned long long>(steps), static_cast<unsigned long long>(seed),
                static_cast<unsigned long long>(seed));
    std::fflush(stdout);
  }
  // Warm the stack pool as deeply as the test will use it, so that leaks show in chunks_in_use.
  for (int i = 0; i < 2 * agents_per_rank * rt->size(); ++i) iso::spawn([] { iso::this_thread::yield(); });
  rt->run();
  settle_everything();
  const std::size_t chunks_before = chunks_in_use();
  const std::size_t refused_before = iso::detail::ownership_stats().refused_frees;
  g_totals = {};
  g_nstale = 0;

  // The coordinator (rank 0) first, waiting for everyone's ids; then agents and a checker per rank.
  std::uint64_t coordinator = 0;
  if (rt->rank() == 0) {
    coordinator = iso::spawn([steps] {
      const iso::message ids = iso::recv();  // from main: the agents, then the checkers
      std::vector<iso::thread_id> all(ids.data.size() / sizeof(iso::thread_id));
      std::memcpy(all.data(), ids.data.data(), ids.data.size());
      const std::size_t nagents = all.size() - static_cast<std::size_t>(iso::size());
      coordinator_body({all.begin(), all.begin() + static_cast<std::ptrdiff_t>(nagents)},
                       {all.begin() + static_cast<std::ptrdiff_t>(nagents), all.end()}, steps);
    }).bits();
  }
  MPI_Bcast(&coordinator, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  const iso::thread_id coord = iso::thread_id::from_bits(coordinator);
  std::vector<iso::thread_id> local_agents;
  for (int a = 0; a < agents_per_rank; ++a) {
    const int index = rt->rank() * agents_per_rank + a;  // its place in the rank-ordered allgather
    local_agents.push_back(iso::spawn([index, seed, coord] { agent_body(index, seed, coord); }));
  }
  const iso::thread_id checker = iso::spawn([coord] { checker_body(coord); });
  std::vector<iso::thread_id> ids = allgather_ids(local_agents);
  const std::vector<iso::thread_id> checkers = allgather_ids({checker});
  ids.insert(ids.end(), checkers.begin(), checkers.end());
  if (rt->rank() == 0) iso::send(coord, ids.data(), ids.size() * sizeof(iso::thread_id));
  rt->run();
  settle_everything();

  if (rt->rank() == 0) {
    EXPECT_EQ(g_totals.steps, steps);
    EXPECT_EQ(g_totals.overlaps, 0u) << "two agents held the same address (seed " << seed << ")";
    EXPECT_EQ(g_totals.mismatches, 0u) << "a rank's allocator disagreed with the model (seed " << seed << ")";
    EXPECT_EQ(g_totals.agent_failures, 0u) << "an agent's block was damaged or a call failed (seed " << seed << ")";
    EXPECT_EQ(g_totals.refused, g_totals.wrong_frees) << "a wrong-rank free was accepted (seed " << seed << ")";
    std::printf("ownership stress: %llu wrong-rank frees, all refused: %s\n",
                static_cast<unsigned long long>(g_totals.wrong_frees), g_totals.refused == g_totals.wrong_frees ? "yes" : "no");
    std::fflush(stdout);
  }
  EXPECT_EQ(chunks_in_use(), chunks_before) << "rank " << rt->rank() << " leaked chunks (seed " << seed << ")";
  const auto left = iso::detail::departures::get().stats();
  EXPECT_EQ(left.departing + left.kept + left.parked, 0u);
  EXPECT_TRUE(iso::detail::region::get().is_valid());
  EXPECT_GE(iso::detail::ownership_stats().refused_frees, refused_before);
}

}  // namespace
