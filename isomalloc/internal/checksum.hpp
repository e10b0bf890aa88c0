// A fast non-cryptographic 64-bit checksum for images and checkpoints: four independent lanes of
// multiply-xorshift over 8-byte words, so it runs near memory bandwidth. Detects flipped bytes and
// truncation; it is not a defence against deliberate tampering. And splitmix64, for identities
// and random choices that must not repeat or correlate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace iso::detail {

inline std::uint64_t checksum64(const void* data, std::size_t bytes, std::uint64_t seed = 0) noexcept {
  constexpr std::uint64_t k = 0x9E3779B97F4A7C15ull;
  auto mix = [](std::uint64_t h, std::uint64_t w) {
    h ^= w * 0xC2B2AE3D27D4EB4Full;
    h = (h << 31) | (h >> 33);
    return h * k;
  };
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint64_t lane[4] = {seed ^ k, seed + 1, seed ^ (k >> 1), seed - 1};
  std::size_t i = 0;
  for (; i + 32 <= bytes; i += 32) {
    for (int l = 0; l < 4; ++l) {
      std::uint64_t w;
      std::memcpy(&w, p + i + 8 * l, 8);
      lane[l] = mix(lane[l], w);
    }
  }
  std::uint64_t h = lane[0] ^ (lane[1] * 3) ^ (lane[2] * 5) ^ (lane[3] * 7) ^ bytes;
  for (; i < bytes; ++i) h = mix(h, p[i]);
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  return h;
}

// splitmix64: the generator's state advances by splitmix64_step, and splitmix64_mix of the new
// state is the output (a bijection, so distinct states give distinct outputs).
inline constexpr std::uint64_t splitmix64_step = 0x9E3779B97F4A7C15ull;
inline constexpr std::uint64_t splitmix64_mix(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace iso::detail
