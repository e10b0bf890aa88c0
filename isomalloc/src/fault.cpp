#include "fault.hpp"

#ifdef ISO_FAULT_INJECTION

#include <cstdlib>
#include <cstring>

namespace iso::detail::fault {
namespace {

// The armed point, read from ISO_FAULT once. Used from the scheduler's OS thread only.
struct armed_point {
  char name[64] = {};
  unsigned long countdown = 0;  // passes until it fires; 0: fired already, or nothing armed
  armed_point() {
    const char* env = std::getenv("ISO_FAULT");
    if (env == nullptr || *env == '\0') return;
    const char* at = std::strchr(env, '@');
    const std::size_t len = at != nullptr ? static_cast<std::size_t>(at - env) : std::strlen(env);
    if (len >= sizeof name) return;
    std::memcpy(name, env, len);
    countdown = at != nullptr ? std::strtoul(at + 1, nullptr, 10) : 1;
  }
};

armed_point& armed() {
  static armed_point p;
  return p;
}

}  // namespace

bool hit(const char* point) noexcept {
  armed_point& p = armed();
  if (p.countdown == 0 || std::strcmp(p.name, point) != 0) return false;
  return --p.countdown == 0;
}

}  // namespace iso::detail::fault

#endif
