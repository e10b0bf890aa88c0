// iso::thread_id — names a migratable thread for its whole life, wherever it runs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace iso {

// 8 bytes, trivially copyable (it can be sent in a message), comparable and hashable.
// Layout: bits 63..40 = home rank + 1 (0: no thread), bits 39..0 = serial number on the home rank.
// The home rank is the rank that spawned the thread; it keeps track of where the thread is.
class thread_id {
 public:
  constexpr thread_id() noexcept = default;
  constexpr thread_id(int home, std::uint64_t serial) noexcept
      : bits_((static_cast<std::uint64_t>(home) + 1) << serial_bits | (serial & serial_mask)) {}

  // Home rank, or -1 for the default-constructed id.
  constexpr int home() const noexcept { return static_cast<int>(bits_ >> serial_bits) - 1; }
  constexpr std::uint64_t serial() const noexcept { return bits_ & serial_mask; }
  constexpr std::uint64_t bits() const noexcept { return bits_; }
  constexpr explicit operator bool() const noexcept { return bits_ != 0; }
  static constexpr thread_id from_bits(std::uint64_t bits) noexcept {
    thread_id t;
    t.bits_ = bits;
    return t;
  }

  friend constexpr bool operator==(thread_id a, thread_id b) noexcept { return a.bits_ == b.bits_; }
  friend constexpr auto operator<=>(thread_id a, thread_id b) noexcept { return a.bits_ <=> b.bits_; }

  // "home:serial", e.g. "2:17"; "none" for the default id.
  std::string to_string() const;

 private:
  static constexpr unsigned serial_bits = 40;
  static constexpr std::uint64_t serial_mask = (std::uint64_t{1} << serial_bits) - 1;
  std::uint64_t bits_ = 0;
};

static_assert(sizeof(thread_id) == 8);

}  // namespace iso

template <>
struct std::hash<iso::thread_id> {
  std::size_t operator()(iso::thread_id t) const noexcept { return std::hash<std::uint64_t>{}(t.bits()); }
};
