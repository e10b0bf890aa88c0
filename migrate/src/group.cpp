// iso::group and the member list spawn_group hands out (isothreads/group.hpp).
#include "isothreads/group.hpp"

#include <algorithm>
#include <cstring>

#include "diag.hpp"
#include "reserved.hpp"

namespace iso {

group::group(std::vector<thread_id> members) : members_(std::move(members)) {
  by_id_.reserve(members_.size());
  // FNV-1a over the member count and ids, in order.
  std::uint64_t h = 0xcbf29ce484222325ull;
  const auto mix = [&h](std::uint64_t v) {
    for (int b = 0; b < 8; ++b) {
      h ^= (v >> (8 * b)) & 0xff;
      h *= 0x100000001b3ull;
    }
  };
  mix(members_.size());
  for (std::size_t i = 0; i < members_.size(); ++i) {
    if (!members_[i]) detail::raise(errc::invalid_argument, "iso::group: member %zu is the default thread_id", i);
    by_id_.emplace_back(members_[i].bits(), static_cast<int>(i));
    mix(members_[i].bits());
  }
  fingerprint_ = h;
  std::sort(by_id_.begin(), by_id_.end());
  const auto twice = std::adjacent_find(by_id_.begin(), by_id_.end(),
                                        [](const auto& a, const auto& b) { return a.first == b.first; });
  if (twice != by_id_.end()) {
    detail::raise(errc::invalid_argument, "iso::group: thread %s is member %d and member %d",
                  thread_id::from_bits(twice->first).to_string().c_str(), twice->second, (twice + 1)->second);
  }
}

int group::index_of(thread_id id) const noexcept {
  const auto it = std::lower_bound(by_id_.begin(), by_id_.end(), std::make_pair(id.bits(), -1));
  return it != by_id_.end() && it->first == id.bits() ? it->second : -1;
}

}  // namespace iso

namespace iso::detail {

// The member list: [u8 cancelled][ids].
group receive_group(bool* cancelled) {
  const message m = recv_reserved(any_thread, group_members, "iso::spawn_group");
  ISO_ASSERT(!m.data.empty() && (m.data.size() - 1) % sizeof(thread_id) == 0);
  *cancelled = m.data[0] != std::byte{0};
  std::vector<thread_id> ids((m.data.size() - 1) / sizeof(thread_id));
  if (!ids.empty()) std::memcpy(ids.data(), m.data.data() + 1, m.data.size() - 1);
  return *cancelled ? group() : group(std::move(ids));
}

void hand_out_group(const std::vector<thread_id>& members, bool cancelled) {
  std::vector<unsigned char> list(1 + (cancelled ? 0 : members.size() * sizeof(thread_id)));
  list[0] = cancelled ? 1 : 0;
  if (!cancelled && !members.empty()) std::memcpy(list.data() + 1, members.data(), members.size() * sizeof(thread_id));
  // Unsequenced: the only message on its tag, so it needs no order; so it leaves no counter with
  // the spawner, and no stream_end comes back when the member ends.
  for (thread_id t : members) send_reserved(t, list.data(), list.size(), group_members, sequencing::none);
}

}  // namespace iso::detail
