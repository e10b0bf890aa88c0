// The built-in load-balancing strategies. Pure functions of the problem: deterministic, so every
// rank computes the same moves.
#include <algorithm>
#include <numeric>
#include <queue>
#include <string>

#include "diag.hpp"
#include "isothreads/error.hpp"
#include "isothreads/lb.hpp"
#include "isothreads/thread.hpp"

namespace iso::lb {

std::vector<double> rank_loads(const problem& p) {
  std::vector<double> load(static_cast<std::size_t>(p.ranks), 0.0);
  for (int r = 0; r < p.ranks && r < static_cast<int>(p.background.size()); ++r) load[static_cast<std::size_t>(r)] = p.background[static_cast<std::size_t>(r)];
  for (const thread_load& t : p.threads) load[static_cast<std::size_t>(t.rank)] += t.load;
  return load;
}

namespace {

// Heaviest first; equal loads by id, so that the order is the same on every rank.
std::vector<const thread_load*> heaviest_first(const std::vector<thread_load>& threads) {
  std::vector<const thread_load*> order;
  order.reserve(threads.size());
  for (const thread_load& t : threads) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const thread_load* a, const thread_load* b) {
    return a->load != b->load ? a->load > b->load : a->id < b->id;
  });
  return order;
}

class greedy_strategy final : public strategy {
 public:
  const char* name() const noexcept override { return "greedy"; }
  std::vector<move> plan(const problem& p) override {
    std::vector<move> moves;
    if (p.ranks <= 0 || p.threads.empty()) return moves;
    double total = 0;
    for (const thread_load& t : p.threads) total += t.load;
    if (total <= 0) return moves;  // nothing measured: any placement is as good as the current one
    // Min-heap of (load, rank), starting from each rank's background and the threads that cannot
    // move (they stay where they are).
    std::vector<double> fixed(static_cast<std::size_t>(p.ranks), 0.0);
    for (int r = 0; r < p.ranks && r < static_cast<int>(p.background.size()); ++r) {
      fixed[static_cast<std::size_t>(r)] = p.background[static_cast<std::size_t>(r)];
    }
    for (const thread_load& t : p.threads) {
      if (!t.movable) fixed[static_cast<std::size_t>(t.rank)] += t.load;
    }
    using slot = std::pair<double, int>;
    std::priority_queue<slot, std::vector<slot>, std::greater<slot>> ranks;
    for (int r = 0; r < p.ranks; ++r) ranks.push({fixed[static_cast<std::size_t>(r)], r});
    for (const thread_load* t : heaviest_first(p.threads)) {
      if (!t->movable) continue;
      auto [load, r] = ranks.top();
      ranks.pop();
      if (r != t->rank) moves.push_back({t->id, t->rank, r});
      ranks.push({load + t->load, r});
    }
    return moves;
  }
};

class refine_strategy final : public strategy {
 public:
  explicit refine_strategy(double tolerance) : tolerance_(tolerance) {}
  const char* name() const noexcept override { return "refine"; }
  std::vector<move> plan(const problem& p) override {
    std::vector<move> moves;
    if (p.ranks <= 1 || p.threads.empty()) return moves;
    std::vector<double> load = rank_loads(p);
    const double avg = std::accumulate(load.begin(), load.end(), 0.0) / p.ranks;
    if (avg <= 0) return moves;
    const double bound = avg * (1 + tolerance_);
    // Candidates per rank, heaviest first; each thread moves at most once.
    std::vector<std::vector<const thread_load*>> on(static_cast<std::size_t>(p.ranks));
    for (const thread_load* t : heaviest_first(p.threads)) on[static_cast<std::size_t>(t->rank)].push_back(t);
    for (;;) {
      const auto donor = static_cast<int>(std::max_element(load.begin(), load.end()) - load.begin());
      if (load[static_cast<std::size_t>(donor)] <= bound) break;
      const auto taker = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
      // The heaviest thread that leaves the taker within the bound and helps the donor.
      auto& cands = on[static_cast<std::size_t>(donor)];
      auto it = std::find_if(cands.begin(), cands.end(), [&](const thread_load* t) {
        return t->movable && t->load > 0 && load[static_cast<std::size_t>(taker)] + t->load <= bound &&
               load[static_cast<std::size_t>(taker)] + t->load < load[static_cast<std::size_t>(donor)];
      });
      if (it == cands.end()) break;  // no single move improves things: stop, moving nothing more
      const thread_load* t = *it;
      cands.erase(it);
      load[static_cast<std::size_t>(donor)] -= t->load;
      load[static_cast<std::size_t>(taker)] += t->load;
      moves.push_back({t->id, donor, taker});
    }
    return moves;
  }

 private:
  double tolerance_;
};

class rotate_strategy final : public strategy {
 public:
  const char* name() const noexcept override { return "rotate"; }
  std::vector<move> plan(const problem& p) override {
    std::vector<move> moves;
    if (p.ranks <= 1) return moves;
    for (const thread_load& t : p.threads) moves.push_back({t.id, t.rank, (t.rank + 1) % p.ranks});
    return moves;
  }
};

class no_strategy final : public strategy {
 public:
  const char* name() const noexcept override { return "none"; }
  std::vector<move> plan(const problem&) override { return {}; }
};

// A strategy is rank-global state (set_strategy keeps it): it is allocated from the system heap
// even when a migratable thread asks for it, since a thread's heap moves and ends with it.
template <class S, class... Args>
std::unique_ptr<strategy> make_strategy(Args... args) {
  system_heap_scope system;
  return std::make_unique<S>(args...);
}

}  // namespace

std::unique_ptr<strategy> greedy() { return make_strategy<greedy_strategy>(); }
std::unique_ptr<strategy> refine(double tolerance) {
  if (!(tolerance >= 0)) detail::raise(errc::invalid_argument, "iso::lb::refine: tolerance %g is negative", tolerance);
  return make_strategy<refine_strategy>(tolerance);
}
std::unique_ptr<strategy> rotate() { return make_strategy<rotate_strategy>(); }

std::unique_ptr<strategy> by_name(const std::string& name) {
  if (name == "greedy") return greedy();
  if (name == "refine") return refine();
  if (name == "rotate") return rotate();
  if (name == "none") return make_strategy<no_strategy>();
  detail::raise(errc::invalid_argument, "iso::lb: unknown strategy '%s' (greedy, refine, rotate or none)", name.c_str());
}

}  // namespace iso::lb
