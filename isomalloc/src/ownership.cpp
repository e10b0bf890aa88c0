#include "ownership.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>

#include "diag.hpp"
#include "heap.hpp"
#include "prim.hpp"
#include "region.hpp"

namespace iso::detail {

constinit thread_local bool t_heap_thread __attribute__((tls_model("initial-exec"))) = false;
constinit thread_local std::uint32_t t_heap_tag __attribute__((tls_model("initial-exec"))) = ~std::uint32_t{0};
constinit thread_local remote_ring* t_ring __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

// The heap thread's t_heap_thread, identifying it (TLS addresses differ between the OS threads
// of a process).
std::atomic<const bool*> g_heap_thread{nullptr};
std::atomic<std::size_t> g_refused{0};
std::atomic<std::size_t> g_delayed{0};
constexpr std::size_t max_reported = 16;

// Whether [lo, lo+n) and [addr, addr+bytes) share a byte (n == 0: lo strictly inside the other).
bool meet(std::uintptr_t lo, std::size_t n, std::uintptr_t addr, std::size_t bytes) noexcept {
  return lo < addr + bytes && addr < lo + n;
}

}  // namespace

void claim_first_heap_thread() noexcept {
  const bool* expected = nullptr;
  if (!g_heap_thread.compare_exchange_strong(expected, &t_heap_thread, std::memory_order_acq_rel)) {
    fatal("thread heaps are used from a second OS thread: only the OS thread that runs the scheduler may "
          "create or run migratable threads");
  }
  // Before the first heap exists, so that every OS thread that later frees into a heap (and a
  // heap's close) sees the same choice of barriers (heap::close_gate).
  prim::enable_asymmetric_barriers();
  t_heap_thread = true;
}

void count_delayed_frees(std::size_t n) noexcept { g_delayed.fetch_add(n, std::memory_order_relaxed); }

// ---- rings of frees from other OS threads ------------------------------------------------------

namespace {

std::atomic<remote_ring*> g_rings{nullptr};
pthread_key_t g_ring_key;
pthread_once_t g_ring_key_once = PTHREAD_ONCE_INIT;

// At the OS thread's exit: its ring may serve another thread (what it holds stays valid).
void release_ring(void* ring) { static_cast<remote_ring*>(ring)->owned.store(0, std::memory_order_release); }

remote_ring* my_ring() noexcept {
  if (remote_ring* r = t_ring) [[likely]] return r;
  pthread_once(&g_ring_key_once, [] { pthread_key_create(&g_ring_key, &release_ring); });
  remote_ring* r = g_rings.load(std::memory_order_acquire);
  for (; r != nullptr; r = r->next) {
    std::uint32_t free_ring = 0;
    if (r->owned.compare_exchange_strong(free_ring, 1, std::memory_order_acq_rel)) break;
  }
  if (r == nullptr) {
    void* mem = __libc_memalign(alignof(remote_ring), sizeof(remote_ring));
    if (mem == nullptr) return nullptr;
    r = new (mem) remote_ring;
    r->next = g_rings.load(std::memory_order_relaxed);
    while (!g_rings.compare_exchange_weak(r->next, r, std::memory_order_release, std::memory_order_relaxed)) {
    }
  }
  pthread_setspecific(g_ring_key, r);
  t_ring = r;
  return r;
}

}  // namespace

bool rings_exist() noexcept { return g_rings.load(std::memory_order_relaxed) != nullptr; }

bool ring_free(const heap* h, void* p, std::uint64_t id, bool* refused) noexcept {
  const auto word = reinterpret_cast<std::uint64_t>(p);
  // Bit 0 set: no block starts there, and the word would read as a mark; such a pointer takes the
  // thread_free_ path to heap::free, which judges it as it judges any pointer.
  if ((word & remote_ring::id_mark) != 0) return false;
  remote_ring* r = my_ring();
  if (r == nullptr) return false;
  std::uint64_t head = r->head.load(std::memory_order_relaxed);
  const std::uint64_t need = id == r->last_id ? 1 : 3;
  if (head + need - r->tail.load(std::memory_order_acquire) > remote_ring::slots) return false;
  if (!h->in_use_here_as(id)) {  // closed, or the chunk reused by a new heap since id was read
    *refused = true;
    return false;
  }
  if (need != 1) {
    // The identity first, published on its own: it applies to the pointers that come after it.
    r->word[head++ % remote_ring::slots] = remote_ring::id_mark;
    r->word[head++ % remote_ring::slots] = id;
    r->last_id = id;
    r->head.store(head, std::memory_order_release);
  }
  return ring_push(p, id);  // t_ring is r, id its last identity, and there is room: true
}

void drain_rings() noexcept {
  std::size_t taken = 0;
  for (remote_ring* r = g_rings.load(std::memory_order_acquire); r != nullptr; r = r->next) {
    const std::uint64_t tail = r->tail.load(std::memory_order_relaxed);
    const std::uint64_t head = r->head.load(std::memory_order_acquire);
    std::uint64_t id = r->cur_id;
    for (std::uint64_t i = tail; i < head; ++i) {
      // The words come from the producer's cache: ask for the lines ahead (a line every 8 words).
      if (i % 8 == 0) __builtin_prefetch(&r->word[(i + 32) % remote_ring::slots]);
      const std::uint64_t w = r->word[i % remote_ring::slots];
      if (w == remote_ring::id_mark) {
        id = r->word[++i % remote_ring::slots];  // written with its mark: i + 1 < head
        continue;
      }
      void* p = reinterpret_cast<void*>(w);
      heap* h = heap::owner_with_id(p, id);
      if (h != nullptr && h->in_use_here()) {
        h->free(p);
        ++taken;
      } else {
        refuse_foreign_free(p, h);  // its free raced with its heap leaving or ending
      }
    }
    r->cur_id = id;
    r->tail.store(head, std::memory_order_release);
  }
  if (taken != 0) count_delayed_frees(taken);
}

void refuse_foreign_free(const void* p, const heap* h, const char* call) noexcept {
  const std::size_t n = g_refused.fetch_add(1, std::memory_order_relaxed);
  if (n >= max_reported) return;
  // snprintf into a stack buffer and write(2): no allocation, whatever heap is current.
  char line[320];
  int len;
  const char* label = h != nullptr ? h->label() : "";
  if (h != nullptr && label[0] != '\0') {
    len = std::snprintf(line, sizeof line,
                        "isothreads: rank %d: %s(%p) refused: it is memory of thread %s, which left this rank "
                        "for rank %d (a pointer kept after its thread moved); ignored%s\n",
                        diag_rank(), call, p, label, h->left_for(),
                        n + 1 == max_reported ? " (further refusals are only counted)" : "");
  } else {
    len = std::snprintf(line, sizeof line,
                        "isothreads: rank %d: %s(%p) refused: no thread heap in use on this rank holds it (its "
                        "thread left or ended, or it is not a heap block); ignored%s\n",
                        diag_rank(), call, p, n + 1 == max_reported ? " (further refusals are only counted)" : "");
  }
  if (len > 0) {
    [[maybe_unused]] ssize_t w = ::write(STDERR_FILENO, line, std::min(static_cast<std::size_t>(len), sizeof line - 1));
  }
}

ownership_stats_t ownership_stats() noexcept {
  return {g_refused.load(std::memory_order_relaxed), g_delayed.load(std::memory_order_relaxed)};
}

// ---- departures --------------------------------------------------------------------------------

departures& departures::get() noexcept {
  static departures instance;
  return instance;
}

bool departures::overlaps(const record& r, std::uintptr_t addr, std::size_t bytes) noexcept {
  auto hit = [&](std::uintptr_t lo, std::size_t n) { return meet(lo, n, addr, bytes); };
  // An empty stack (none, or taken home) holds nothing: hit(lo, 0) would match every range
  // strictly containing lo.
  if (r.stack_bytes != 0 && hit(r.stack, r.stack_bytes)) return true;
  for (const span& s : r.runs) {
    if (hit(s.addr, s.bytes)) return true;
  }
  return false;
}

// The magic at the start of every chunk goes first: a lazily released page may keep its old
// contents, and a chunk header left there would make heap::owner_of trust a copy nobody uses.
void departures::forget(const span& s) noexcept {
  clear_headers(s);
  release_pages(reinterpret_cast<void*>(s.addr), s.bytes, true);
}

void departures::clear_headers(const span& s) noexcept {
  for (std::uintptr_t c = s.addr; c < s.addr + s.bytes; c += chunk_bytes) *reinterpret_cast<std::uint64_t*>(c) = 0;
}

void departures::give_back(const record& r) noexcept {
  // Whole chunk runs, free pages and all: fewer calls than one per extent. Lazily (MADV_FREE):
  // the kernel takes the pages when it needs memory.
  for (const span& s : r.runs) forget(s);
  if (r.stack_bytes != 0) {
    if (const int e = prim::guard_remove(reinterpret_cast<void*>(r.stack), r.guard_bytes); e != 0) {
      fatal("could not remove the guard of stack %#zx: %s", r.stack, std::strerror(e));
    }
    release_pages(reinterpret_cast<void*>(r.stack), r.stack_bytes, true);
  }
}

// Nothing released here for the run that came home: the region caches it committed or
// decommits it, so releasing it here too was an madvise (about 1.5 us) for nothing; and the
// rest of the record stays kept, since its thread (ended, a work-stealing victim's stolen
// thread mostly) sends the rest home right behind it. A work-stealing victim spent that time
// in the poll that its thief's next request waited for (bench_stealing).
void departures::take_home(record& r, span home) noexcept {
  const auto within = [&](std::uintptr_t lo, std::size_t n) { return home.addr <= lo && lo + n <= home.addr + home.bytes; };
  const auto hit = [&](std::uintptr_t lo, std::size_t n) { return meet(lo, n, home.addr, home.bytes); };
  std::size_t gone = 0;
  std::erase_if(r.runs, [&](const span& s) {
    if (!hit(s.addr, s.bytes)) return false;
    if (within(s.addr, s.bytes)) {
      clear_headers(s);
    } else {
      forget(s);
    }
    gone += s.bytes;
    return true;
  });
  if (r.stack_bytes != 0 && hit(r.stack, r.stack_bytes)) {
    // A returning record's thread is landing here on that stack: it cannot have ended elsewhere.
    ISO_ASSERT_INTERNAL(!r.returning);
    if (const int e = prim::guard_remove(reinterpret_cast<void*>(r.stack), r.guard_bytes); e != 0) {
      fatal("could not remove the guard of stack %#zx: %s", r.stack, std::strerror(e));
    }
    if (!within(r.stack, r.stack_bytes)) release_pages(reinterpret_cast<void*>(r.stack), r.stack_bytes, true);
    gone += r.stack_bytes;
    r.stack = 0;
    r.stack_bytes = 0;
  }
  r.bytes -= gone;
  ISO_ASSERT_INTERNAL(r.sent);  // park_return parks what comes home to a record not yet sent
  kept_bytes_ -= gone;
}

departures::list::iterator departures::erase_record(list::iterator it) noexcept {
  if (it->sent) {
    kept_bytes_ -= it->bytes;
    kept_records_.fetch_sub(1, std::memory_order_relaxed);
  }
  return records_.erase(it);
}

void departures::leave(std::uint64_t owner, heap* h, void* stack, std::size_t stack_bytes, std::size_t guard_bytes,
                       int dest, const char* label) noexcept {
  h->leave(dest, label);  // first: collecting delayed frees may give segments back
  try {
    record r;
    r.owner = owner;
    r.stack = reinterpret_cast<std::uintptr_t>(stack);
    r.stack_bytes = stack_bytes;
    r.guard_bytes = guard_bytes;
    r.bytes = stack_bytes;
    h->for_each_run([&](void* run, std::size_t chunks) {
      r.runs.push_back({reinterpret_cast<std::uintptr_t>(run), chunks * chunk_bytes});
      r.bytes += chunks * chunk_bytes;
    });
    std::lock_guard<std::mutex> g(lock_);
    records_.push_back(std::move(r));
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while recording that thread %s leaves for rank %d", label, dest);
  }
}

void departures::sent(std::uint64_t owner, std::int64_t now_ns) noexcept {
  sys_vector<span> parked;
  {
    std::lock_guard<std::mutex> g(lock_);
    auto it = records_.begin();
    while (it != records_.end() && (it->owner != owner || it->sent)) ++it;
    ISO_ASSERT_INTERNAL(it != records_.end());
    if (it == records_.end()) return;
    if (!it->parked.empty()) {
      // Part of it came home while it was being sent: none of it is worth keeping.
      give_back(*it);
      parked = std::move(it->parked);
      records_.erase(it);
    } else {
      it->sent = true;
      it->since_ns = now_ns;
      kept_bytes_ += it->bytes;
      kept_records_.fetch_add(1, std::memory_order_relaxed);
      // Oldest first: a sent record goes behind every other sent one.
      records_.splice(records_.end(), records_, it);
    }
  }
  // Outside the lock: the region asks park_return again, which now finds nothing.
  for (const span& s : parked) region::get().accept_returned(s.addr, s.bytes);
  tick(now_ns);
}

bool departures::settle(std::uintptr_t addr, std::size_t bytes, std::uint64_t arriving) noexcept {
  std::lock_guard<std::mutex> g(lock_);
  bool own = false;
  for (auto it = records_.begin(); it != records_.end();) {
    if (!overlaps(*it, addr, bytes)) {
      ++it;
      continue;
    }
    ISO_ASSERT_INTERNAL(it->sent);
    if (arriving != 0 && it->owner == arriving) {
      own = true;  // the thread is back: pages and guard are where it left them
      it->returning = true;
      ++it;
      continue;
    }
    if (it->returning) {
      // Its own thread is landing too, on the rest: this part is the newcomer's now, and must
      // be left out of what arrive() forgets.
      std::erase_if(it->runs, [&](const span& s) { return meet(s.addr, s.bytes, addr, bytes); });
      ++it;
      continue;
    }
    give_back(*it);  // something else lands on part of it
    it = erase_record(it);
  }
  return own;
}

void departures::arrive(std::uint64_t owner, heap* h) noexcept {
  {
    std::lock_guard<std::mutex> g(lock_);
    auto it = records_.begin();
    while (it != records_.end() && !(it->owner == owner && it->returning)) ++it;
    if (it != records_.end()) {
      try {
        sys_vector<span> now;  // h's runs, by address
        h->for_each_run([&](void* run, std::size_t chunks) {
          now.push_back({reinterpret_cast<std::uintptr_t>(run), chunks * chunk_bytes});
        });
        std::sort(now.begin(), now.end(), [](const span& a, const span& b) { return a.addr < b.addr; });
        auto held = [&](std::uintptr_t c) {
          auto at = std::upper_bound(now.begin(), now.end(), c, [](std::uintptr_t v, const span& s) { return v < s.addr; });
          return at != now.begin() && c < std::prev(at)->addr + std::prev(at)->bytes;
        };
        for (const span& s : it->runs) {
          for (std::uintptr_t c = s.addr; c < s.addr + s.bytes; c += chunk_bytes) {
            if (!held(c)) forget({c, chunk_bytes});
          }
        }
      } catch (const std::bad_alloc&) {
        fatal("out of system memory while settling the memory of thread %s, which came back", h->label());
      }
      erase_record(it);
    }
  }
  h->arrive();
}

void departures::tick(std::int64_t now_ns) noexcept {
  if (!any_kept()) return;
  std::lock_guard<std::mutex> g(lock_);
  for (auto it = records_.begin(); it != records_.end();) {
    if (it->sent && !it->returning && (now_ns - it->since_ns > keep_ns || kept_bytes_ > keep_bytes)) {
      give_back(*it);
      it = erase_record(it);
    } else {
      ++it;
    }
  }
}

bool departures::park_return(std::uintptr_t addr, std::size_t bytes) noexcept {
  std::lock_guard<std::mutex> g(lock_);
  for (auto it = records_.begin(); it != records_.end(); ++it) {
    if (!overlaps(*it, addr, bytes)) continue;
    if (!it->sent) {
      try {
        it->parked.push_back({addr, bytes});
      } catch (const std::bad_alloc&) {
        fatal("out of system memory while parking run [%#zx, +%zu), which came home during its departure", addr, bytes);
      }
      return true;
    }
    // Only the run that came home goes (its thread may be landing here, returning: arrive()
    // must not touch the run again once the region may have handed it out); a record left
    // with nothing goes too.
    take_home(*it, {addr, bytes});
    if (it->runs.empty() && it->stack_bytes == 0) erase_record(it);
    return false;
  }
  return false;
}

departures::stats_t departures::stats() const noexcept {
  std::lock_guard<std::mutex> g(lock_);
  stats_t s;
  for (const record& r : records_) {
    (r.sent ? s.kept : s.departing) += 1;
    s.parked += r.parked.size();
  }
  s.kept_bytes = kept_bytes_;
  return s;
}

bool departures::holds(std::uintptr_t addr, std::size_t bytes) const noexcept {
  std::lock_guard<std::mutex> g(lock_);
  for (const record& r : records_) {
    if (overlaps(r, addr, bytes)) return true;
  }
  return false;
}

}  // namespace iso::detail
