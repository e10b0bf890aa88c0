#include "fault.hpp"

#ifdef ISO_FAULT_INJECTION

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace iso::detail::fault {
namespace {

// The armed point, read from ISO_FAULT once. Passes come from any OS thread: `active` keeps the
// unarmed pass to one load, the lock orders the armed ones.
struct armed_point {
  std::atomic<bool> active{false};  // a point is armed and has passes left to fail
  std::mutex lock;                  // guards the fields below
  char name[64] = {};
  unsigned long countdown = 0;      // passes until the first failure
  unsigned long failures = 0;       // failures left, from that one on
  armed_point() {
    const char* env = std::getenv("ISO_FAULT");
    if (env == nullptr || *env == '\0') return;
    const std::size_t len = std::strcspn(env, "@*");
    if (len >= sizeof name) return;
    std::memcpy(name, env, len);
    const char* at = std::strchr(env + len, '@');
    const char* times = std::strchr(env + len, '*');
    countdown = at != nullptr ? std::strtoul(at + 1, nullptr, 10) : 1;
    failures = times != nullptr ? std::strtoul(times + 1, nullptr, 10) : 1;
    active.store(countdown != 0 && failures != 0, std::memory_order_release);
  }
};

armed_point& armed() {
  static armed_point p;
  return p;
}

}  // namespace

bool hit(const char* point) noexcept {
  armed_point& p = armed();
  if (!p.active.load(std::memory_order_acquire)) return false;
  std::lock_guard<std::mutex> g(p.lock);
  if (p.failures == 0 || std::strcmp(p.name, point) != 0) return false;
  if (p.countdown > 1) {
    --p.countdown;
    return false;
  }
  if (--p.failures == 0) p.active.store(false, std::memory_order_release);
  return true;
}

void arm(const char* point, unsigned long n, unsigned long times) noexcept {
  armed_point& p = armed();
  std::lock_guard<std::mutex> g(p.lock);
  std::strncpy(p.name, point, sizeof p.name - 1);
  p.countdown = n;
  p.failures = times;
  p.active.store(n != 0 && times != 0, std::memory_order_release);
}

void disarm() noexcept {
  armed_point& p = armed();
  std::lock_guard<std::mutex> g(p.lock);
  p.failures = 0;
  p.active.store(false, std::memory_order_release);
}

}  // namespace iso::detail::fault

#endif
