// iso::group: an ordered list of distinct migratable threads, the members of collectives
// (isothreads/collectives.hpp); iso::spawn_group spawns one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "isothreads/error.hpp"
#include "isothreads/thread.hpp"
#include "isothreads/thread_id.hpp"

namespace iso {

// A value: copyable, and its ids can be sent in messages (rebuild it with group(ids) on the other
// side). Two groups with the same members in the same order are the same group for collectives
// (they share a fingerprint, as two handles of one communicator would). Memory: 24 bytes per
// member, in the heap current where it is made (a copy in a thread lives in that thread's heap).
class group {
 public:
  group() = default;  // no members
  // Error: iso::error(invalid_argument) for the default id or an id that appears twice.
  explicit group(std::vector<thread_id> members);

  std::size_t size() const noexcept { return members_.size(); }
  // The i-th member. pre: i < size().
  thread_id operator[](std::size_t i) const noexcept { return members_[i]; }
  // id's index, or -1 if id is not a member. O(log size()).
  int index_of(thread_id id) const noexcept;
  const std::vector<thread_id>& members() const noexcept { return members_; }
  // A hash of the member list: tells apart the messages of different groups' collectives.
  std::uint64_t fingerprint() const noexcept { return fingerprint_; }

 private:
  std::vector<thread_id> members_;                       // in index order
  std::vector<std::pair<std::uint64_t, int>> by_id_;     // (id bits, index), sorted by id
  std::uint64_t fingerprint_ = 0;
};

namespace detail {
// A new member of spawn_group: waits for the member list (nullopt-like empty group when the
// spawn_group that made it failed, and the body must not run).
group receive_group(bool* cancelled);
// Sends g's member list to every member; `cancelled`: tell them not to run.
void hand_out_group(const std::vector<thread_id>& members, bool cancelled);
}  // namespace detail

// Spawns n threads on this rank (as iso::spawn, with opts) running body(i, g) for i in [0, n),
// g being the group of them, in index order, which it returns. body: a callable
// void(int, const iso::group&), copied into each thread. Each member's copy of the group costs it
// 24 n bytes, and handing the group out sends n messages of 8 n bytes.
// Errors: (invalid_argument) for n < 0; those of iso::spawn (threads spawned before a failing
// spawn end without running body).
template <class F>
group spawn_group(int n, F&& body, const spawn_options& opts = {}) {
  using B = std::decay_t<F>;
  static_assert(std::is_invocable_v<B&, int, const group&>, "iso::spawn_group needs a callable void(int, const iso::group&)");
  if (n < 0) throw error(errc::invalid_argument, "iso::spawn_group: n = " + std::to_string(n) + " is negative");
  std::vector<thread_id> ids;
  ids.reserve(static_cast<std::size_t>(n));
  try {
    for (int i = 0; i < n; ++i) {
      ids.push_back(spawn(
          [i, f = B(body)]() mutable {
            bool cancelled = false;
            const group g = detail::receive_group(&cancelled);
            if (!cancelled) std::invoke(f, i, g);
          },
          opts));
    }
  } catch (...) {
    detail::hand_out_group(ids, true);
    throw;
  }
  group g(ids);
  detail::hand_out_group(ids, false);
  return g;
}

}  // namespace iso
