#include "directory.hpp"

namespace iso::detail {

place directory::first_hop(std::uint64_t to) const noexcept {
  place target{home_of(to), 0};
  if (auto it = cache_.find(to); it != cache_.end()) target = it->second;
  if (auto it = departed_.find(to); it != departed_.end() && it->second.epoch >= target.epoch) target = it->second;
  if (auto it = location_.find(to); it != location_.end() && it->second.epoch >= target.epoch) target = it->second;
  return target;
}

route directory::route_in(std::uint64_t to, std::uint32_t min_epoch, std::uint64_t next_serial) const noexcept {
  // Follow a pointer newer than any this message has followed.
  place next{-1, min_epoch};
  if (auto it = departed_.find(to); it != departed_.end() && it->second.epoch > next.epoch) next = it->second;
  if (auto it = location_.find(to); it != location_.end() && it->second.epoch > next.epoch && it->second.rank != rank_) {
    next = it->second;
  }
  if (next.rank >= 0 && next.rank != rank_) return {route::action::forward, next};
  if (home_of(to) == rank_) {
    if (finished_record(to, next_serial, nullptr)) return {route::action::finished, {rank_, min_epoch}};
    if (thread_id::from_bits(to).serial() >= next_serial) return {route::action::never_spawned, {rank_, min_epoch}};
  }
  return {route::action::hold, {rank_, min_epoch}};
}

void directory::collect() noexcept {
  departed_.clear();
  cache_.clear();
}

void directory::departed(std::uint64_t id, int dest, std::uint32_t epoch) {
  departed_[id] = {dest, epoch};
  if (home_of(id) == rank_) location_[id] = {dest, epoch};
  cache_.erase(id);
}

bool directory::arrived(std::uint64_t id) {
  departed_.erase(id);
  cache_.erase(id);
  if (home_of(id) == rank_) {
    location_.erase(id);
    return false;
  }
  return true;
}

bool directory::finished_here(std::uint64_t id, std::uint32_t epoch, bool joined) {
  if (home_of(id) == rank_) {
    if (!joined) note_unjoined(id);
    // Looked up only when not empty: an erase hashes and divides even in an empty table, and a
    // run whose threads never leave their rank (each thread's end comes here) has nothing there.
    if (!location_.empty()) location_.erase(id);
    if (!departed_.empty()) departed_.erase(id);
    return false;
  }
  // A tombstone: whatever still comes here for the thread goes to its home, which answers.
  departed_[id] = {home_of(id), epoch + 1};
  return true;
}

bool directory::on_location(std::uint64_t id, place at) {
  // Only an entry that exists is updated: a live thread homed here that is elsewhere has one
  // (from its departure from here), so a location that finds none is stale: the thread is back
  // here, or finished (the finished record of its last rank can overtake the location sent by a
  // rank it passed through). Recreating the entry would send messages after it forever.
  auto it = location_.find(id);
  if (it == location_.end()) return false;
  if (at.epoch >= it->second.epoch) it->second = at;
  return held_.count(id) != 0;  // held at the home for a newer location
}

void directory::on_hint(std::uint64_t id, place at) {
  place& p = cache_[id];
  if (at.epoch >= p.epoch) p = at;
}

bool directory::on_finished(std::uint64_t id, bool joined) {
  if (!joined) note_unjoined(id);
  location_.erase(id);
  return true;  // messages held here while the location was unknown now get their answer
}

void directory::restore_location(std::uint64_t id, place at) {
  if (at.rank == rank_) return;
  cache_[id] = at;
  if (home_of(id) == rank_) location_[id] = at;
}

bool directory::finished_record(std::uint64_t id, std::uint64_t next_serial, bool* joined) const noexcept {
  if (finished_.contains(id)) {
    if (joined != nullptr) *joined = false;
    return true;
  }
  // Spawned, not here, not elsewhere: finished, and joined (see finished_ in the header).
  if (thread_id::from_bits(id).serial() >= next_serial || location_.count(id) != 0) return false;
  if (joined != nullptr) *joined = true;
  return true;
}

sys_vector<std::pair<std::uint64_t, bool>> directory::finished_records() const {
  sys_vector<std::pair<std::uint64_t, bool>> out;
  out.reserve(finished_.size());
  finished_.for_each_key([&out](std::uint64_t id) { out.emplace_back(id, false); });
  return out;
}

void directory::hold(std::uint64_t id, wire&& w) { held_[id].push_back(std::move(w)); }

sys_vector<directory::wire> directory::take_held(std::uint64_t id) {
  sys_vector<wire> out;
  if (auto it = held_.find(id); it != held_.end()) {
    out = std::move(it->second);
    held_.erase(it);
  }
  return out;
}

std::size_t directory::held_messages() const noexcept {
  std::size_t n = 0;
  for (const auto& [id, list] : held_) n += list.size();
  return n;
}

}  // namespace iso::detail
