#include "region.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "diag.hpp"
#include "ownership.hpp"

namespace iso::detail {
namespace {

// Set on the OS thread that agreed the region (region::on_mpi_thread).
constinit thread_local bool t_mpi_thread = false;
// Ranges whose pages the kernel refused to take back (release_pages), from any OS thread.
constinit std::atomic<std::size_t> g_failed_releases{0};

constexpr std::uintptr_t one_gib = std::uintptr_t{1} << 30;
// Below this the program, its brk heap and the kernel's low reservations live; never look there.
constexpr std::uintptr_t gap_floor = std::uintptr_t{1} << 32;
// Where the region goes when that range is free: at 16 TiB, far below where x86-64 Linux puts
// executables (about 85 TiB) and mmap areas (about 127 TiB), randomised or not.
constexpr std::uintptr_t preferred_base = std::uintptr_t{16} << 40;

std::uintptr_t align_up(std::uintptr_t v, std::uintptr_t a) { return (v + a - 1) & ~(a - 1); }
std::uintptr_t align_down(std::uintptr_t v, std::uintptr_t a) { return v & ~(a - 1); }

std::size_t requested_bytes(std::size_t requested) {
  if (requested != 0) return requested;
  if (const char* env = std::getenv("ISO_REGION_BYTES"); env != nullptr && *env != '\0') {
    if (std::size_t v = parse_bytes(env); v != 0) return v;
  }
  return default_region_bytes;
}

// Sorted, disjoint intervals; merges touching ones.
sys_vector<interval> normalise(sys_vector<interval> v) {
  std::sort(v.begin(), v.end(), [](const interval& a, const interval& b) { return a.lo < b.lo; });
  sys_vector<interval> out;
  for (const interval& i : v) {
    if (i.empty()) continue;
    if (!out.empty() && i.lo <= out.back().hi) {
      out.back().hi = std::max(out.back().hi, i.hi);
    } else {
      out.push_back(i);
    }
  }
  return out;
}

sys_vector<interval> intersect(const sys_vector<interval>& a, const sys_vector<interval>& b) {
  sys_vector<interval> out;
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const interval x{std::max(a[i].lo, b[j].lo), std::min(a[i].hi, b[j].hi)};
    if (!x.empty()) out.push_back(x);
    (a[i].hi < b[j].hi) ? ++i : ++j;
  }
  return out;
}

interval largest(const sys_vector<interval>& v) {
  interval best;
  for (const interval& i : v) {
    if (i.bytes() > best.bytes()) best = i;
  }
  return best;
}

// Where in a free interval `gap` to put a range of `bytes`: centred, 1 GiB-aligned, so that the
// brk heap growing up from below and mmap growing down from above keep room on both sides.
interval place_in(const interval& gap, std::size_t bytes) {
  const std::uintptr_t lo = align_up(gap.lo + (gap.bytes() - bytes) / 2, one_gib);
  if (lo + bytes > gap.hi) return {};
  return {lo, lo + bytes};
}

void unreserve_or_warn(std::uintptr_t addr, std::size_t bytes) noexcept {
  if (const int e = prim::unreserve(reinterpret_cast<void*>(addr), bytes); e != 0) {
    warn("could not unmap [%#zx, +%zu) of the provisional isomalloc range (%s): it stays reserved, unused", addr,
         bytes, std::strerror(e));
  }
}

// Free address space this process could give the region: its gaps plus its own provisional range.
// *failure: 0, or the errno of reading the gaps (then only the provisional range is known).
sys_vector<interval> available(std::uintptr_t early_base, std::size_t early_bytes, int* failure) {
  std::vector<interval> gaps;
  *failure = prim::free_gaps(gap_floor, gaps);
  if (*failure != 0) gaps.clear();
  sys_vector<interval> v(gaps.begin(), gaps.end());
  if (early_bytes != 0) v.push_back({early_base, early_base + early_bytes});
  return normalise(std::move(v));
}

}  // namespace

std::size_t parse_bytes(const char* text) noexcept {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text) return 0;
  unsigned shift = 0;
  switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; ++end; break;
    case 'm': case 'M': shift = 20; ++end; break;
    case 'g': case 'G': shift = 30; ++end; break;
    case 't': case 'T': shift = 40; ++end; break;
    default: return 0;
  }
  if (*end == 'i' || *end == 'I') ++end;
  if (*end == 'b' || *end == 'B') ++end;
  if (*end != '\0' || v > (~0ull >> shift)) return 0;
  return static_cast<std::size_t>(v << shift);
}

void region::reserve_early() noexcept {
  std::lock_guard<std::mutex> g(lock_);
  if (early_bytes_ != 0 || bytes_ != 0) return;
  int failure = 0;
  const sys_vector<interval> gaps = available(0, 0, &failure);  // none on failure: agree() reports it
  const interval gap = largest(gaps);
  std::size_t want = std::min(requested_bytes(0), align_down(gap.bytes() / 2, one_gib));
  for (; want >= min_share_bytes; want /= 2) {
    // The same address in every run if it is free, randomised layout or not, so that block
    // images and checkpoints find their addresses again; else centred in the largest gap.
    interval at{preferred_base, preferred_base + want};
    if (std::none_of(gaps.begin(), gaps.end(), [&](const interval& g) { return g.lo <= at.lo && at.hi <= g.hi; })) {
      at = place_in(gap, want);
    }
    if (!at.empty() && prim::reserve_at(reinterpret_cast<void*>(at.lo), want) == 0) {
      early_base_ = at.lo;
      early_bytes_ = want;
      return;
    }
  }
}

void region::set_layout(std::uintptr_t base, std::size_t bytes, int rank, int nranks) {
  base_ = base;
  share_bytes_ = align_down(bytes / static_cast<std::size_t>(nranks), chunk_bytes);
  bytes_ = share_bytes_ * static_cast<std::size_t>(nranks);
  rank_ = rank;
  nranks_ = nranks;
  set_diag_rank(rank);
  free_by_addr_.clear();
  free_by_size_.clear();
  for (auto& c : cache_) c.clear();
  stats_ = {};
  insert_free(share(rank).lo, share_bytes_ / chunk_bytes);
  region_lo = base_;
  region_bytes = bytes_;
  region_rank = rank;
  ready_.store(true, std::memory_order_release);
}

void region::init_single_rank() {
  if (ready()) return;
  reserve_early();
  std::lock_guard<std::mutex> g(lock_);
  if (early_bytes_ == 0) {
    raise(errc::region_agreement, "could not reserve an isomalloc region of at least %zu bytes",
          min_share_bytes);
  }
  set_layout(early_base_, early_bytes_, 0, 1);
}

void region::agree(region_peers& peers, std::size_t requested) {
  if (ready() && peers_ == &peers) return;
  reserve_early();
  std::lock_guard<std::mutex> g(lock_);
  const int me = peers.rank();
  const int n = peers.size();

  // Contribution: [requested, early_base, early_bytes, lo0, hi0, lo1, hi1, ...]
  // Collective from here on: a rank that cannot read its gaps offers its provisional range only
  // (raising alone would leave the others waiting in the allgather).
  int unread = 0;
  const sys_vector<interval> mine = available(early_base_, early_bytes_, &unread);
  if (unread != 0) warn("could not read /proc/self/maps (%s): only the provisional range is offered", std::strerror(unread));
  sys_vector<std::uint64_t> words{requested_bytes(requested), early_base_, early_bytes_};
  for (const interval& i : mine) {
    words.push_back(i.lo);
    words.push_back(i.hi);
  }
  const auto all = peers.allgather(words);

  std::size_t want = SIZE_MAX;
  sys_vector<interval> common;
  bool same_early = true;
  for (int r = 0; r < n; ++r) {
    const auto& w = all[static_cast<std::size_t>(r)];
    want = std::min<std::size_t>(want, w[0]);
    same_early = same_early && w[1] == all[0][1] && w[2] == all[0][2] && w[2] != 0;
    sys_vector<interval> theirs;
    for (std::size_t k = 3; k + 1 < w.size(); k += 2) theirs.push_back({w[k], w[k + 1]});
    common = (r == 0) ? theirs : intersect(common, theirs);
  }
  const std::size_t need = min_share_bytes * static_cast<std::size_t>(n);
  if (want < need) {
    throw error(errc::region_agreement,
                format("the requested isomalloc region of %zu MiB is too small for %d ranks: each rank's "
                       "share needs at least %zu MiB (set ISO_REGION_BYTES to %zu MiB or more)",
                       want >> 20, n, min_share_bytes >> 20, need >> 20));
  }

  // Keep the provisional range when every rank reserved the same one (identical layouts);
  // otherwise centre a new range in the largest common gap.
  interval chosen;
  if (same_early && all[0][2] >= need) {
    chosen = {all[0][1], all[0][1] + std::min<std::size_t>(all[0][2], want)};
  } else {
    const interval gap = largest(common);
    const std::size_t bytes = std::min(want, align_down(gap.bytes() / 2, one_gib));
    if (bytes >= need) chosen = place_in(gap, bytes);
  }
  if (chosen.empty() || chosen.bytes() < need) {
    std::string msg = format("no common free address range of %zu GiB for the isomalloc region "
                             "across %d ranks; largest free range per rank:", need >> 30, n);
    for (int r = 0; r < n; ++r) {
      const auto& w = all[static_cast<std::size_t>(r)];
      sys_vector<interval> theirs;
      for (std::size_t k = 3; k + 1 < w.size(); k += 2) theirs.push_back({w[k], w[k + 1]});
      const interval big = largest(theirs);
      msg += format("%s rank %d [%#zx, %#zx) %zu GiB", r == 0 ? "" : ";", r, big.lo, big.hi, big.bytes() >> 30);
    }
    throw error(errc::region_agreement, msg);
  }

  // Map it here: shrink the provisional range onto it, or replace the provisional range.
  int failure = 0;
  const std::uintptr_t early_hi = early_base_ + early_bytes_;
  if (early_bytes_ != 0 && early_base_ <= chosen.lo && chosen.hi <= early_hi) {
    // What cannot be unmapped stays reserved and unused: address space only, never memory.
    if (chosen.lo > early_base_) unreserve_or_warn(early_base_, chosen.lo - early_base_);
    if (early_hi > chosen.hi) unreserve_or_warn(chosen.hi, early_hi - chosen.hi);
  } else {
    if (early_bytes_ != 0) unreserve_or_warn(early_base_, early_bytes_);
    failure = prim::reserve_at(reinterpret_cast<void*>(chosen.lo), chosen.bytes());
  }
  early_base_ = failure == 0 ? chosen.lo : 0;
  early_bytes_ = failure == 0 ? chosen.bytes() : 0;

  const auto results = peers.allgather(sys_vector<std::uint64_t>{static_cast<std::uint64_t>(failure)});
  std::string failed;
  for (int r = 0; r < n; ++r) {
    if (const auto e = results[static_cast<std::size_t>(r)][0]; e != 0) {
      failed += format(" rank %d (%s)", r, std::strerror(static_cast<int>(e)));
    }
  }
  if (!failed.empty()) {
    throw error(errc::region_agreement,
                format("could not map the agreed isomalloc region [%#zx, %#zx) on:%s", chosen.lo,
                       chosen.hi, failed.c_str()));
  }
  peers_ = &peers;
  t_mpi_thread = true;
  set_layout(chosen.lo, chosen.bytes(), me, n);
}

int region::owner_of(const void* p) const noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  if (a - base_ >= bytes_) return -1;
  return static_cast<int>((a - base_) / share_bytes_);
}

void region::insert_free(std::uintptr_t addr, std::size_t n) noexcept {
  try {
    auto next = free_by_addr_.lower_bound(addr);
    auto erase_sized = [this](std::uintptr_t a, std::size_t len) {
      auto [lo, hi] = free_by_size_.equal_range(len);
      for (auto it = lo; it != hi; ++it) {
        if (it->second == a) {
          free_by_size_.erase(it);
          return;
        }
      }
    };
    if (next != free_by_addr_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second * chunk_bytes == addr) {  // coalesce with the run below
        addr = prev->first;
        n += prev->second;
        erase_sized(prev->first, prev->second);
        free_by_addr_.erase(prev);
      }
    }
    if (next != free_by_addr_.end() && addr + n * chunk_bytes == next->first) {  // and above
      n += next->second;
      erase_sized(next->first, next->second);
      free_by_addr_.erase(next);
    }
    free_by_addr_.emplace(addr, n);
    free_by_size_.emplace(n, addr);
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while recording a free run of the isomalloc region");
  }
}

bool region::take_free(std::uintptr_t addr, std::size_t n) noexcept {
  auto it = free_by_addr_.upper_bound(addr);
  if (it == free_by_addr_.begin()) return false;
  --it;
  const std::uintptr_t lo = it->first;
  const std::size_t len = it->second;
  const std::uintptr_t end = addr + n * chunk_bytes;
  if (end > lo + len * chunk_bytes) return false;
  auto [slo, shi] = free_by_size_.equal_range(len);
  for (auto s = slo; s != shi; ++s) {
    if (s->second == lo) {
      free_by_size_.erase(s);
      break;
    }
  }
  free_by_addr_.erase(it);
  try {
    if (addr > lo) {
      const std::size_t below = (addr - lo) / chunk_bytes;
      free_by_addr_.emplace(lo, below);
      free_by_size_.emplace(below, lo);
    }
    if (const std::uintptr_t run_end = lo + len * chunk_bytes; run_end > end) {
      const std::size_t above = (run_end - end) / chunk_bytes;
      free_by_addr_.emplace(end, above);
      free_by_size_.emplace(above, end);
    }
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while splitting a free run of the isomalloc region");
  }
  stats_.allocated_chunks += n;
  return true;
}

void region::flush_cache() noexcept {
  for (std::size_t n = 1; n <= max_cached_run_chunks; ++n) {
    for (std::uintptr_t a : cache_[n]) {
      release_pages(reinterpret_cast<void*>(a), n * chunk_bytes);
      insert_free(a, n);
    }
    stats_.cached_chunks -= cache_[n].size() * n;
    cache_[n].clear();
  }
  cached_by_addr_.clear();
}

void* region::alloc_chunks(std::size_t n) {
  if (!ready()) raise(errc::no_runtime, "the isomalloc region is not initialised (call iso_init or create iso::runtime first)");
  if (n == 0) raise(errc::invalid_argument, "a run of 0 chunks was requested");
  std::unique_lock<std::mutex> g(lock_);
  if (n <= max_cached_run_chunks && !cache_[n].empty()) {
    const std::uintptr_t a = cache_[n].back();
    cache_[n].pop_back();
    cached_by_addr_.erase(a);
    stats_.cached_chunks -= n;
    stats_.allocated_chunks += n;
    return reinterpret_cast<void*>(a);
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto it = free_by_size_.lower_bound(n);
    if (it != free_by_size_.end()) {
      const std::uintptr_t a = it->second;
      take_free(a, n);
      return reinterpret_cast<void*>(a);
    }
    flush_cache();
  }
  const interval s = share(rank_);
  const std::size_t allocated = stats_.allocated_chunks;
  // Unlocked first: raising allocates (the message, the exception), which may come back here.
  g.unlock();
  raise(errc::region_exhausted,
        "rank %d's share of the isomalloc region [%#zx, %#zx) (%zu MiB) has no free run of %zu "
        "chunks (%zu KiB) left; %zu chunks are allocated",
        rank_, s.lo, s.hi, share_bytes_ >> 20, n, n * chunk_bytes >> 10, allocated);
}

void region::free_chunks(void* p, std::size_t n) noexcept {
  const int owner = owner_of(p);
  ISO_ASSERT(owner >= 0 && reinterpret_cast<std::uintptr_t>(p) % chunk_bytes == 0 && n > 0);
  const std::size_t bytes = n * chunk_bytes;
  if (owner != rank_) {
    release_pages(p, bytes);
    const auto addr = reinterpret_cast<std::uintptr_t>(p);
    {
      std::lock_guard<std::mutex> g(lock_);
      ++stats_.remote_frees;
      if (peers_ == nullptr) return;
      if (!t_mpi_thread) {
        try {
          pending_returns_.push_back({owner, addr, bytes});
        } catch (const std::bad_alloc&) {
          fatal("out of system memory while queueing run [%#zx, +%zu) for its owner, rank %d", addr, bytes, owner);
        }
        return;
      }
    }
    // Outside the lock: the send may allocate, and MPI may call back into anything.
    flush_returns();
    peers_->remote_free(owner, addr, bytes);
    return;
  }
  std::lock_guard<std::mutex> g(lock_);
  stats_.allocated_chunks -= n;
  retire(reinterpret_cast<std::uintptr_t>(p), n);
}

void region::retire(std::uintptr_t addr, std::size_t n) noexcept {
  const std::size_t bytes = n * chunk_bytes;
  if (n <= max_cached_run_chunks && stats_.cached_chunks * chunk_bytes + bytes <= cache_bound_) {
    try {
      const auto [at, inserted] = cached_by_addr_.emplace(addr, n);
      ISO_ASSERT(inserted);  // nothing is retired twice: may_return and free_chunks' callers see to it
      try {
        cache_[n].push_back(addr);
      } catch (const std::bad_alloc&) {
        cached_by_addr_.erase(at);
        throw;
      }
      stats_.cached_chunks += n;
      return;
    } catch (const std::bad_alloc&) {
      // fall through: decommit and keep it in the free map instead
    }
  }
  release_pages(reinterpret_cast<void*>(addr), bytes);
  insert_free(addr, n);
}

bool region::on_mpi_thread() noexcept { return t_mpi_thread; }

void region::flush_returns() noexcept {
  if (!t_mpi_thread || peers_ == nullptr) return;
  sys_vector<pending_return> out;
  {
    std::lock_guard<std::mutex> g(lock_);
    out.swap(pending_returns_);
  }
  for (const pending_return& r : out) peers_->remote_free(r.owner, r.addr, r.bytes);
}

void region::poll() noexcept {
  if (!t_mpi_thread || peers_ == nullptr) return;
  flush_returns();
  peers_->poll();
}

bool region::take_failure(char* out, std::size_t cap) noexcept {
  return t_mpi_thread && peers_ != nullptr && peers_->take_failure(out, cap);
}

void region::accept_returned(std::uintptr_t addr, std::size_t bytes) noexcept {
  // Judged first: a malformed return must not make departures give kept memory back, nor park,
  // nor make the block interface forget a block.
  {
    std::lock_guard<std::mutex> g(lock_);
    if (!may_return(addr, bytes)) {
      ++stats_.bad_returns;
      return;
    }
  }
  if (departures::get().park_return(addr, bytes)) {
    std::lock_guard<std::mutex> g(lock_);
    ++stats_.parked_returns;
    return;
  }
  if (return_hook hook = return_hook_.load(std::memory_order_relaxed); hook != nullptr && !hook(addr, bytes)) {
    std::lock_guard<std::mutex> g(lock_);
    ++stats_.kept_returns;
    return;
  }
  std::lock_guard<std::mutex> g(lock_);
  // Still a run lent out: the lock was let go meanwhile (departures and the hook are asked
  // outside it), but only its one holder returns it, once, and nothing here frees or caches
  // chunks of a run lent out. Counted as bad here instead, the run would be owned by nobody,
  // since park_return may have taken it from kept memory already.
  ISO_ASSERT(may_return(addr, bytes));
  ++stats_.returned_runs;
  stats_.allocated_chunks -= bytes / chunk_bytes;
  retire(addr, bytes / chunk_bytes);
}

bool region::may_return(std::uintptr_t addr, std::size_t bytes) const noexcept {
  const interval s = share(rank_);
  if (addr % chunk_bytes != 0 || bytes % chunk_bytes != 0 || bytes == 0 || addr < s.lo || addr > s.hi ||
      bytes > s.hi - addr) {
    return false;
  }
  return !reaches_in(free_by_addr_, addr, bytes) && !reaches_in(cached_by_addr_, addr, bytes);
}

bool region::reaches_in(const sys_map<std::uintptr_t, std::size_t>& by_addr, std::uintptr_t addr,
                        std::size_t bytes) noexcept {
  // The runs are disjoint: only the last one starting below the end can reach in.
  auto it = by_addr.upper_bound(addr + bytes - 1);
  return it != by_addr.begin() && std::prev(it)->first + std::prev(it)->second * chunk_bytes > addr;
}

bool region::claim(void* p, std::size_t n) noexcept {
  if (owner_of(p) != rank_ || n == 0) return false;
  std::lock_guard<std::mutex> g(lock_);
  flush_cache();
  return take_free(reinterpret_cast<std::uintptr_t>(p), n);
}

void region::set_cache_bound(std::size_t bytes) noexcept {
  std::lock_guard<std::mutex> g(lock_);
  cache_bound_ = bytes;
  if (stats_.cached_chunks * chunk_bytes > bytes) flush_cache();
}

region::stats_t region::stats() const noexcept {
  std::lock_guard<std::mutex> g(lock_);
  stats_t s = stats_;
  s.failed_releases = g_failed_releases.load(std::memory_order_relaxed);
  return s;
}

int release_pages(void* p, std::size_t bytes, bool lazily) noexcept {
  const int e = lazily ? prim::release_lazily(p, bytes) : prim::decommit(p, bytes);
  if (e != 0 && g_failed_releases.fetch_add(1, std::memory_order_relaxed) == 0) {
    warn("the kernel refused to take back the pages of [%p, +%zu) (madvise: %s): they stay committed; "
         "further such failures are only counted", p, bytes, std::strerror(e));
  }
  return e;
}

bool region::is_valid() const noexcept {
  std::lock_guard<std::mutex> g(lock_);
  if (!ready()) return true;
  const interval s = share(rank_);
  std::size_t free_chunks = 0;
  std::uintptr_t last_end = 0;
  for (const auto& [a, n] : free_by_addr_) {
    if (n == 0 || a < s.lo || a + n * chunk_bytes > s.hi || a % chunk_bytes != 0) return false;
    if (last_end != 0 && a <= last_end) return false;  // overlapping or not coalesced
    last_end = a + n * chunk_bytes;
    free_chunks += n;
    auto [lo, hi] = free_by_size_.equal_range(n);
    if (std::none_of(lo, hi, [a = a](const auto& e) { return e.second == a; })) return false;
  }
  if (free_by_size_.size() != free_by_addr_.size()) return false;
  std::size_t cached = 0;
  std::size_t cached_runs = 0;
  for (std::size_t n = 1; n <= max_cached_run_chunks; ++n) {
    cached_runs += cache_[n].size();
    for (std::uintptr_t a : cache_[n]) {
      if (a < s.lo || a + n * chunk_bytes > s.hi) return false;
      if (const auto it = cached_by_addr_.find(a); it == cached_by_addr_.end() || it->second != n) return false;
      if (reaches_in(free_by_addr_, a, n * chunk_bytes)) return false;  // a cached run is also free
      cached += n;
    }
  }
  // Each cached run is in cached_by_addr_ under its start with its length, the counts agree (so
  // nothing else is there), and no two cached runs overlap.
  std::uintptr_t cached_end = 0;
  for (const auto& [a, n] : cached_by_addr_) {
    if (a < cached_end) return false;
    cached_end = a + n * chunk_bytes;
  }
  return cached == stats_.cached_chunks && cached_runs == cached_by_addr_.size() &&
         free_chunks + cached + stats_.allocated_chunks == share_bytes_ / chunk_bytes;
}

namespace {
// Runs before main(): reserve while the address space is still nearly empty (see reserve_early).
__attribute__((constructor)) void reserve_region_early() { region::get().reserve_early(); }
}  // namespace

}  // namespace iso::detail
