#include "engine.hpp"

#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <unordered_map>

#include "diag.hpp"
#include "interpose.hpp"
#include "ownership.hpp"
#include "region.hpp"
#include "stack.hpp"

namespace iso::detail {
namespace {

engine* g_engine = nullptr;

// MPI tags on the engine's private communicator.
constexpr int tag_data = 1;          // a batch of records (outbox)
constexpr int tag_image = 3;        // image header + extent table
constexpr int tag_image_data = 4;   // extent pieces, in extent order; never probed for
// Messages handled per poll() and tag, so that a flood cannot starve the threads.
constexpr int max_receives_per_poll = 64;

// A thread's messaging state. Lives in the thread's heap (every allocation below is made with
// that heap current), so undelivered messages and sequence counters migrate with the thread.
// Invariant: `ready` holds, per sender, exactly the messages with seq < next_in[sender], in
// order; `early` holds those with seq > next_in[sender].
struct mailbox {
  std::deque<message> ready;                                   // for recv(), in arrival order
  std::map<std::pair<std::uint64_t, std::uint64_t>, message> early;  // (from, seq) ahead of a gap
  std::unordered_map<std::uint64_t, std::uint64_t> next_in;    // from -> next seq to release
  std::unordered_map<std::uint64_t, std::uint64_t> next_out;   // to -> next seq to send
};

// pre: t's heap is current.
mailbox& mailbox_of(tcb* t) {
  if (t->mailbox == nullptr) t->mailbox = new mailbox();
  return *static_cast<mailbox*>(t->mailbox);
}

std::string id_text(std::uint64_t bits) { return thread_id::from_bits(bits).to_string(); }

}  // namespace

engine::engine(MPI_Comm comm, scheduler& s, std::uint64_t layout)
    : sched_(s), comm_(comm), rank_(comm_.rank()), size_(comm_.size()), id_ranks_(size_), layout_(layout) {
  if (g_engine != nullptr) raise(errc::invalid_argument, "a migration engine already exists in this process");
  outboxes_.resize(static_cast<std::size_t>(size_));
  s.set_depart_hook(&depart_hook);
  s.set_finish_hook(&finish_hook);
  migrate_to_impl = &migrate_to_hook;
  join_impl = &join_hook;
  g_engine = this;
}

engine::~engine() {
  g_engine = nullptr;
  migrate_to_impl = nullptr;
  join_impl = nullptr;
  sched_.set_depart_hook(nullptr);
  sched_.set_finish_hook(nullptr);
}

engine* engine::current() noexcept { return g_engine; }

void engine::restore_id_ranks(int ranks) noexcept { id_ranks_ = std::max(size_, ranks); }

void engine::learn_location(thread_id id, int rank, std::uint32_t epoch) {
  heap_scope system(nullptr);
  if (rank == rank_) return;
  cache_[id.bits()] = {rank, epoch};
  if (home_of(id) == rank_) location_[id.bits()] = {rank, epoch};
}

sys_vector<std::pair<std::uint64_t, std::uint64_t>> engine::main_sequences() const {
  return {main_next_seq_.begin(), main_next_seq_.end()};
}

void engine::restore_main_sequence(std::uint64_t to, std::uint64_t next) {
  heap_scope system(nullptr);
  main_next_seq_[to] = next;
}

sys_vector<std::pair<std::uint64_t, bool>> engine::finished_records() const {
  return {finished_.begin(), finished_.end()};
}

void engine::restore_finished(thread_id id, bool joined) {
  heap_scope system(nullptr);
  finished_[id.bits()] = joined;
}

std::size_t engine::held_messages() const noexcept {
  std::size_t n = 0;
  for (const auto& [id, list] : held_) n += list.size();
  return n;
}

// ---------------------------------------------------------------- transport

void engine::post(int dest, int tag, sys_vector<unsigned char>&& buffer, int batch_dest) noexcept {
  try {
    outgoing& o = sends_.emplace_back();
    o.buffer = std::move(buffer);
    o.batch_dest = batch_dest;
    if (MPI_Isend(o.buffer.data(), static_cast<int>(o.buffer.size()), MPI_BYTE, dest, tag, comm_, o.request) != MPI_SUCCESS) {
      fatal("MPI_Isend of %zu bytes to rank %d failed", o.buffer.size(), dest);
    }
    ++counters_.sent;
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while sending to rank %d", dest);
  }
}

void engine::post_record(int dest, record kind, const unsigned char* bytes, std::size_t n) noexcept {
  outbox& box = outboxes_[static_cast<std::size_t>(dest)];
  try {
    const std::uint32_t head[2] = {static_cast<std::uint32_t>(kind), static_cast<std::uint32_t>(n)};
    if (box.batch.empty()) ++unsent_batches_;
    const auto* h = reinterpret_cast<const unsigned char*>(head);
    box.batch.insert(box.batch.end(), h, h + sizeof head);
    box.batch.insert(box.batch.end(), bytes, bytes + n);
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while queueing a message for rank %d", dest);
  }
  // Control records wait for the next poll (or ride along with the next message or image to
  // that rank): a location update right after an arrival would otherwise cost a send of its own.
  if ((kind != record::ctrl && box.in_flight < batch_window) || box.batch.size() >= batch_flush_bytes) flush(dest);
}

void engine::flush(int dest) noexcept {
  outbox& box = outboxes_[static_cast<std::size_t>(dest)];
  if (box.batch.empty()) return;
  --unsent_batches_;
  ++box.in_flight;
  post(dest, tag_data, std::move(box.batch), dest);
  box.batch = {};
}

void engine::complete_sends() noexcept {
  for (std::size_t dest = 0; dest < outboxes_.size(); ++dest) flush(static_cast<int>(dest));
  for (outgoing& o : sends_) MPI_Wait(o.request, MPI_STATUS_IGNORE);
  sends_.clear();
}

void engine::send_ctrl(int dest, const ctrl_msg& m) noexcept {
  if (dest == rank_) {
    on_ctrl(m);
    return;
  }
  post_record(dest, record::ctrl, reinterpret_cast<const unsigned char*>(&m), sizeof m);
}

bool engine::poll() noexcept {
  heap_scope system(nullptr);
  bool did = false;
  complete(sends_, [](outgoing& o) -> auto& { return o.request; }, [this](outgoing& o) {
    if (o.batch_dest >= 0) --outboxes_[static_cast<std::size_t>(o.batch_dest)].in_flight;
  });
  // Batches that waited for room in their window.
  for (std::size_t dest = 0; unsent_batches_ != 0 && dest < outboxes_.size(); ++dest) {
    if (outboxes_[dest].in_flight < batch_window) flush(static_cast<int>(dest));
  }
  if (departures::get().any_kept()) departures::get().tick(now_ns());
  did = complete(departures_, [](departure& d) -> auto& { return d.requests; },
                 [this](departure& d) { finish_departure(d); }) || did;
  did = complete(arrivals_, [](arrival& a) -> auto& { return a.requests; },
                 [this](arrival& a) { finish_arrival(a); }) || did;
  for (int tag : {tag_image, tag_data}) {
    for (int n = 0; n < max_receives_per_poll; ++n) {
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, tag, comm_, &flag, &st);
      if (!flag) break;
      int count = 0;
      MPI_Get_count(&st, MPI_BYTE, &count);
      sys_vector<unsigned char> buf(static_cast<std::size_t>(count));
      MPI_Recv(buf.data(), count, MPI_BYTE, st.MPI_SOURCE, tag, comm_, MPI_STATUS_IGNORE);
      ++counters_.received;
      did = true;
      if (tag == tag_image) {
        start_arrival(st.MPI_SOURCE, std::move(buf));
        continue;
      }
      // A batch: records [u32 kind][u32 bytes][bytes], in the order they were sent.
      for (std::size_t at = 0; at + 2 * sizeof(std::uint32_t) <= buf.size();) {
        std::uint32_t head[2];
        std::memcpy(head, buf.data() + at, sizeof head);
        at += sizeof head;
        ISO_ASSERT(at + head[1] <= buf.size());
        sys_vector<unsigned char> rec(buf.begin() + static_cast<std::ptrdiff_t>(at),
                                      buf.begin() + static_cast<std::ptrdiff_t>(at + head[1]));
        at += head[1];
        switch (static_cast<record>(head[0])) {
          case record::data:
            ISO_ASSERT(rec.size() >= sizeof(data_header));
            on_data(std::move(rec), true);
            break;
          case record::ctrl: {
            ISO_ASSERT(rec.size() == sizeof(ctrl_msg));
            ctrl_msg m;
            std::memcpy(&m, rec.data(), sizeof m);
            on_ctrl(m);
            break;
          }
          case record::image:
            start_arrival(st.MPI_SOURCE, std::move(rec));
            break;
        }
      }
    }
  }
  return did;
}

// ---------------------------------------------------------------- migration

void engine::depart_hook(scheduler&, tcb* t) noexcept { g_engine->depart(t); }

void engine::depart(tcb* t) noexcept {
  const int dest = t->pending_dest;
  t->pending_dest = -1;
  sched_.detach(t);
  ++t->epoch;
  const thread_id id = t->id;
  try {
    departed_[id.bits()] = {dest, t->epoch};
    if (home_of(id) == rank_) location_[id.bits()] = {dest, t->epoch};
    cache_.erase(id.bits());
    const std::int64_t start_ns = observer_ != nullptr ? now_ns() : 0;
    // Before the image is built: from now on this rank refuses frees of the thread's memory.
    departures::get().leave(id.bits(), t->home_heap, t->stack.base, t->stack.bytes, stack_guard_bytes, dest,
                            id.to_string().c_str());
    sys_vector<unsigned char> image = build_image_header(t, layout_, true);
    sys_vector<std::pair<void*, std::size_t>> runs;
    t->home_heap->for_each_run([&](void* run, std::size_t chunks) { runs.emplace_back(run, chunks); });
    // Moving `image` into a departure below keeps its buffer, so h stays valid.
    const auto& h = *reinterpret_cast<const image_header*>(image.data());
    ++stats_.departures;
    stats_.bytes_out += h.data_bytes;
    if (h.inline_data == 1) {
      // Small: the image is copied into the message, so this rank's copy can go at once.
      released(h, dest, t->epoch, start_ns);
      post_record(dest, record::image, image.data(), image.size());
      return;
    }
    departure& d = departures_.emplace_back();
    d.dest = dest;
    d.epoch = t->epoch;
    d.stack = t->stack;
    d.runs = std::move(runs);
    d.start_ns = start_ns;
    d.header = std::move(image);
    d.requests.emplace_back();
    if (MPI_Isend(d.header.data(), static_cast<int>(d.header.size()), MPI_BYTE, dest, tag_image, comm_,
                  &d.requests.back()) != MPI_SUCCESS) {
      fatal("could not ship thread %s to rank %d (MPI_Isend failed)", id.to_string().c_str(), dest);
    }
    ++counters_.sent;
    for_each_piece(h, [&](void* addr, int bytes) {
      d.requests.emplace_back();
      if (MPI_Isend(addr, bytes, MPI_BYTE, dest, tag_image_data, comm_, &d.requests.back()) != MPI_SUCCESS) {
        fatal("could not ship thread %s to rank %d (MPI_Isend failed)", id.to_string().c_str(), dest);
      }
    });
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while shipping thread %s to rank %d", id.to_string().c_str(), dest);
  }
}

bool engine::settle(std::uintptr_t addr, std::size_t bytes, std::uint64_t arriving) noexcept {
  auto overlaps = [&](const void* run, std::size_t run_bytes) {
    const auto lo = reinterpret_cast<std::uintptr_t>(run);
    return lo < addr + bytes && addr < lo + run_bytes;
  };
  auto holds = [&](const stack_run& stack, const sys_vector<std::pair<void*, std::size_t>>& runs) {
    bool any = overlaps(stack.base, stack.bytes);
    for (const auto& [run, chunks] : runs) any = any || overlaps(run, chunks * chunk_bytes);
    return any;
  };
  for (auto it = departures_.begin(); it != departures_.end();) {
    if (!holds(it->stack, it->runs)) {
      ++it;
      continue;
    }
    MPI_Waitall(static_cast<int>(it->requests.size()), it->requests.data(), MPI_STATUSES_IGNORE);
    finish_departure(*it);
    it = departures_.erase(it);
  }
  return departures::get().settle(addr, bytes, arriving);
}

void engine::finish_departure(departure& d) noexcept {
  released(*reinterpret_cast<const image_header*>(d.header.data()), d.dest, d.epoch, d.start_ns);
}

void engine::released(const image_header& h, int dest, std::uint32_t epoch, std::int64_t start_ns) noexcept {
  const std::int64_t now = now_ns();
  if (observer_ != nullptr) observer_->departed(thread_id::from_bits(h.thread), epoch, dest, h.data_bytes, start_ns, now);
  // The destination has every byte. This rank's copy is kept for a while (ownership.hpp), then
  // given back to the kernel.
  departures::get().sent(h.thread, now);
}

void engine::start_arrival(int source, sys_vector<unsigned char>&& buffer) noexcept {
  const image_header* h = nullptr;
  try {
    h = &validate_image_header(buffer.data(), buffer.size(), layout_);
  } catch (const iso::error& e) {
    fatal("a thread image from rank %d was rejected, nothing was mapped: %s", source, e.what());
  }
  // A thread that comes back (or any memory it now holds) before this rank saw a departure
  // holding that memory complete: that departure is over, so finish it now, before new data
  // lands on the pages it would release.
  bool guard_kept = false;
  for (std::uint32_t i = 0; i < h->nextents; ++i) {
    guard_kept = settle(image_extents(*h)[i].addr, image_extents(*h)[i].bytes, h->thread) || guard_kept;
  }
  if (h->inline_data == 1) {
    // A small image carried its bytes along: put them in place and the thread is here.
    const unsigned char* data = image_inline_data(*h);
    const image_extent* e = image_extents(*h);
    for (std::uint32_t i = 0; i < h->nextents; ++i) {
      std::memcpy(reinterpret_cast<void*>(e[i].addr), data, e[i].bytes);
      data += e[i].bytes;
    }
    arrival a{source, reinterpret_cast<tcb*>(h->tcb), h->data_bytes, guard_kept, {}};
    finish_arrival(a);
    return;
  }
  try {
    arrival& a = arrivals_.emplace_back();
    a.source = source;
    a.thread = reinterpret_cast<tcb*>(h->tcb);
    a.bytes = h->data_bytes;
    a.guard_kept = guard_kept;
    for_each_piece(*h, [&](void* addr, int bytes) {
      a.requests.emplace_back();
      MPI_Irecv(addr, bytes, MPI_BYTE, source, tag_image_data, comm_, &a.requests.back());
    });
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while receiving a thread from rank %d", source);
  }
}

void engine::finish_arrival(arrival& a) noexcept {
  tcb* t = a.thread;
  if (t->magic != tcb::magic_value) {
    fatal("a thread image from rank %d arrived without a valid control block at %p", a.source, static_cast<void*>(t));
  }
  departures::get().arrive(t->id.bits(), t->home_heap);  // its memory is in use here now
  try {
    if (!a.guard_kept) stack_pool::arm(t->stack);
  } catch (const iso::error& e) {
    fatal("thread %s arrived but its stack guard could not be installed: %s", t->id.to_string().c_str(), e.what());
  }
  const thread_id id = t->id;
  ++stats_.arrivals;
  if (observer_ != nullptr) observer_->arrived(id, t->epoch, a.source, a.bytes, now_ns());
  departed_.erase(id.bits());
  cache_.erase(id.bits());
  sched_.attach(t);
  if (home_of(id) == rank_) {
    location_.erase(id.bits());
  } else {
    send_ctrl(home_of(id), {ctrl_kind::location, rank_, id.bits(), t->epoch});
  }
  if (t->state == thread_state::blocked && t->wait == wait_reason::recv && t->mailbox != nullptr &&
      !static_cast<mailbox*>(t->mailbox)->ready.empty()) {
    sched_.wake(t);
  }
  release_held(id.bits());
}

void engine::release_held(std::uint64_t id) noexcept {
  if (auto it = held_.find(id); it != held_.end()) {
    auto waiting = std::move(it->second);
    held_.erase(it);
    for (auto& wire : waiting) on_data(std::move(wire), false);
  }
}

void engine::migrate_to_hook(scheduler& s, tcb* self, int dest) {
  if (dest < 0 || dest >= g_engine->size_) {
    raise(errc::invalid_rank, "iso::this_thread::migrate_to(%d): no such rank (there are %d)", dest, g_engine->size_);
  }
  if (self->locks_held != 0) {
    raise(errc::invalid_argument, "iso::this_thread::migrate_to(%d): thread %s holds %u iso::mutex lock(s); "
          "a lock cannot travel", dest, self->id.to_string().c_str(), self->locks_held);
  }
  self->pending_dest = dest;
  s.yield_running();  // the scheduler ships it once it is suspended; it resumes on dest
}

void engine::migrate(thread_id t, int dest) {
  heap_scope system(nullptr);
  if (dest < 0 || dest >= size_) {
    raise(errc::invalid_rank, "iso::migrate(%s, %d): no such rank (there are %d)", t.to_string().c_str(), dest, size_);
  }
  tcb* target = sched_.find(t);
  if (target == nullptr) {
    raise(errc::unknown_thread, "iso::migrate(%s, %d): no such thread lives on rank %d", t.to_string().c_str(), dest, rank_);
  }
  if (dest == rank_) {
    target->pending_dest = -1;
    return;
  }
  target->pending_dest = dest;
  if (target != sched_.running() && scheduler::movable(target)) depart(target);
}

// ---------------------------------------------------------------- termination of threads

void engine::finish_hook(scheduler&, tcb* t) noexcept { g_engine->finished(t); }

void engine::finished(tcb* t) noexcept {
  heap_scope system(nullptr);
  const thread_id id = t->id;
  const bool joined = static_cast<bool>(t->joiner);
  try {
    if (joined) send_system(t->joiner, id, msg_kind::join_done, errc::ok);
    if (home_of(id) == rank_) {
      finished_[id.bits()] = joined;
      location_.erase(id.bits());
      departed_.erase(id.bits());
    } else {
      // A tombstone: whatever still comes here for the thread goes to its home, which answers.
      departed_[id.bits()] = {home_of(id), t->epoch + 1};
      send_ctrl(home_of(id), {ctrl_kind::finished, rank_, id.bits(), joined ? 1u : 0u});
    }
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while recording that thread %s finished", id.to_string().c_str());
  }
}

bool engine::finished_record(thread_id id, bool* joined) const noexcept {
  auto it = finished_.find(id.bits());
  if (it == finished_.end()) return false;
  if (joined != nullptr) *joined = it->second;
  return true;
}

void engine::join_hook(scheduler&, tcb* self, thread_id t) { g_engine->join(self, t); }

void engine::join(tcb* self, thread_id t) {
  if (t.home() < 0 || t.home() >= id_ranks_) {
    raise(errc::unknown_thread, "iso::join(%s): no such thread (home rank %d does not exist)", t.to_string().c_str(), t.home());
  }
  if (tcb* target = sched_.find(t)) {
    if (target->joiner) {
      raise(errc::already_joined, "iso::join(%s): already joined by thread %s", t.to_string().c_str(),
            target->joiner.to_string().c_str());
    }
    target->joiner = self->id;
    // Cleared by the join_done that finished() sends, which wakes self below.
    self->join_status = errc::ok;
    self->waiting_for = t;
  } else if (bool joined = false; home_of(t) == rank_ && finished_record(t, &joined)) {
    if (joined) raise(errc::already_joined, "iso::join(%s): the thread was joined already", t.to_string().c_str());
    finished_[t.bits()] = true;
    return;
  } else {
    // The answer may come at once (t's home is this rank): it sets join_status and clears
    // waiting_for.
    self->join_status = errc::ok;
    self->waiting_for = t;
    send_system(t, self->id, msg_kind::join_request, errc::ok);
  }
  // Resumed perhaps on another rank: `this` and sched_ are the old rank's objects. Only the
  // TCB (in the thread's slots) and scheduler::current() are valid after a suspension.
  while (self->waiting_for) scheduler::current()->block_running(wait_reason::join);
  if (self->join_status != errc::ok) {
    raise(self->join_status, "iso::join(%s): %s", t.to_string().c_str(),
          self->join_status == errc::already_joined ? "the thread was joined already" : "no such thread");
  }
}

// ---------------------------------------------------------------- messages

void engine::send(thread_id to, const void* data, std::size_t bytes, int tag) {
  if (!to || to.home() >= id_ranks_) {
    raise(errc::unknown_thread, "iso::send: thread %s does not exist (home rank out of range, %d ranks)",
          to.to_string().c_str(), id_ranks_);
  }
  if (bytes != 0 && data == nullptr) raise(errc::invalid_argument, "iso::send: null data for %zu bytes", bytes);
  tcb* self = sched_.running();
  const thread_id from = self != nullptr ? self->id : thread_id(rank_, 0);
  std::uint64_t seq;
  if (self != nullptr) {
    heap_scope own(self->home_heap);  // the counter travels with the sender
    seq = mailbox_of(self).next_out[to.bits()]++ + 1;
  } else {
    heap_scope system(nullptr);
    seq = main_next_seq_[to.bits()]++ + 1;
  }
  heap_scope system(nullptr);
  const std::int64_t at = observer_ != nullptr ? now_ns() : 0;
  int went = rank_;
  if (tcb* t = sched_.find(to)) {
    deliver_user(t, from, seq, tag, data, bytes);
  } else {
    sys_vector<unsigned char> wire(sizeof(data_header) + bytes);
    data_header h{to.bits(), from.bits(), seq, bytes, tag, msg_kind::user, 0, rank_, 0, 0};
    std::memcpy(wire.data(), &h, sizeof h);
    if (bytes != 0) std::memcpy(wire.data() + sizeof h, data, bytes);
    went = route_out(std::move(wire));
  }
  if (observer_ != nullptr) observer_->sent(from, to, went, bytes, tag, at);
}

void engine::send_system(thread_id to, thread_id from, msg_kind kind, errc status) {
  sys_vector<unsigned char> wire(sizeof(data_header));
  data_header h{to.bits(), from.bits(), 0, 0, 0, kind, 0, rank_, 0, static_cast<std::uint32_t>(status)};
  std::memcpy(wire.data(), &h, sizeof h);
  if (tcb* t = sched_.find(to)) {
    deliver(t, h, nullptr);
    return;
  }
  route_out(std::move(wire));
}

// Sends a message toward its thread from this rank: to the newest location known here, or its
// home; handled here (held) when every pointer leads back here.
int engine::route_out(sys_vector<unsigned char>&& wire) {
  data_header h;
  std::memcpy(&h, wire.data(), sizeof h);
  const thread_id to = thread_id::from_bits(h.to);
  place target{home_of(to), 0};
  if (auto it = cache_.find(h.to); it != cache_.end()) target = it->second;
  if (auto it = departed_.find(h.to); it != departed_.end() && it->second.epoch >= target.epoch) target = it->second;
  if (auto it = location_.find(h.to); it != location_.end() && it->second.epoch >= target.epoch) target = it->second;
  if (target.rank == rank_) {
    on_data(std::move(wire), false);
    return rank_;
  }
  h.min_epoch = std::max(h.min_epoch, target.epoch);
  std::memcpy(wire.data(), &h, sizeof h);
  post_record(target.rank, record::data, wire.data(), wire.size());
  return target.rank;
}

void engine::on_data(sys_vector<unsigned char>&& wire, bool from_network) {
  data_header h;
  std::memcpy(&h, wire.data(), sizeof h);
  const thread_id to = thread_id::from_bits(h.to);
  if (tcb* t = sched_.find(to)) {
    if (from_network && h.hops > 0 && h.origin != rank_) {
      send_ctrl(h.origin, {ctrl_kind::hint, rank_, h.to, t->epoch});  // so the sender goes direct
    }
    deliver(t, h, wire.data() + sizeof h);
    return;
  }
  // Not here: follow a pointer newer than any this message has followed.
  place next{-1, h.min_epoch};
  if (auto it = departed_.find(h.to); it != departed_.end() && it->second.epoch > next.epoch) next = it->second;
  if (auto it = location_.find(h.to); it != location_.end() && it->second.epoch > next.epoch && it->second.rank != rank_) {
    next = it->second;
  }
  if (next.rank >= 0 && next.rank != rank_) {
    ++h.hops;
    h.min_epoch = next.epoch;
    std::memcpy(wire.data(), &h, sizeof h);
    ++stats_.forwarded;
    post_record(next.rank, record::data, wire.data(), wire.size());
    return;
  }
  if (bool joined = false; home_of(to) == rank_ && finished_record(to, &joined)) {
    const thread_id from = thread_id::from_bits(h.from);
    switch (h.kind) {
      case msg_kind::join_request:
        if (!joined) finished_[h.to] = true;
        send_system(from, to, msg_kind::join_done, joined ? errc::already_joined : errc::ok);
        return;
      case msg_kind::user: drop(h, "the thread has finished"); return;
      case msg_kind::join_done: drop(h, "the joining thread has finished"); return;
    }
  }
  if (home_of(to) == rank_ && to.serial() >= sched_.next_serial()) {
    if (h.kind == msg_kind::join_request) {
      send_system(thread_id::from_bits(h.from), to, msg_kind::join_done, errc::unknown_thread);
    } else {
      drop(h, "no such thread was ever spawned");
    }
    return;
  }
  // The thread is on its way here (or, at its home, its location is not known yet): hold it.
  try {
    held_[h.to].push_back(std::move(wire));
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while holding a message for thread %s", to.to_string().c_str());
  }
}

void engine::deliver(tcb* t, const data_header& h, const unsigned char* payload) noexcept {
  const thread_id from = thread_id::from_bits(h.from);
  switch (h.kind) {
    case msg_kind::user:
      deliver_user(t, from, h.seq, h.tag, payload, h.bytes);
      return;
    case msg_kind::join_request:
      if (t->joiner) {
        send_system(from, t->id, msg_kind::join_done, errc::already_joined);
      } else {
        t->joiner = from;
      }
      return;
    case msg_kind::join_done:
      // t is blocked in join, or still running the join call that asked (a local answer).
      if (t->waiting_for == from) {
        t->join_status = static_cast<errc>(h.status);
        t->waiting_for = thread_id{};
        if (t->state == thread_state::blocked && t->wait == wait_reason::join) sched_.wake(t);
      }
      return;
  }
}

void engine::deliver_user(tcb* t, thread_id from, std::uint64_t seq, int tag, const void* data,
                          std::size_t bytes) noexcept {
  try {
    heap_scope receiver(t->home_heap);  // the payload and the queues live in the receiver's heap
    mailbox& mb = mailbox_of(t);
    std::uint64_t& next = mb.next_in.try_emplace(from.bits(), 1).first->second;
    message m{from, tag, std::vector<std::byte>(static_cast<const std::byte*>(data),
                                                 static_cast<const std::byte*>(data) + bytes)};
    ISO_ASSERT(seq >= next);  // every message is delivered once: no sequence number twice
    if (seq > next) {
      mb.early.emplace(std::make_pair(from.bits(), seq), std::move(m));
      return;
    }
    mb.ready.push_back(std::move(m));
    ++next;
    for (auto it = mb.early.find({from.bits(), next}); it != mb.early.end(); it = mb.early.find({from.bits(), next})) {
      mb.ready.push_back(std::move(it->second));
      mb.early.erase(it);
      ++next;
    }
  } catch (const std::bad_alloc&) {
    fatal("thread %s has no heap left for a message of %zu bytes from %s", t->id.to_string().c_str(), bytes,
          from.to_string().c_str());
  }
  if (t->state == thread_state::blocked && t->wait == wait_reason::recv) sched_.wake(t);
}

void engine::drop(const data_header& h, const char* why) noexcept {
  ++stats_.dropped;
  std::fprintf(stderr, "isothreads: rank %d: message from thread %s to thread %s (tag %d, %llu bytes) dropped: %s\n",
               rank_, id_text(h.from).c_str(), id_text(h.to).c_str(), h.tag,
               static_cast<unsigned long long>(h.bytes), why);
}

message engine::recv() {
  tcb* self = running_or_throw("iso::recv");
  mailbox& mb = mailbox_of(self);
  // As in join(): after a suspension only the mailbox (in the thread's heap) and
  // scheduler::current() may be used, never `this`.
  while (mb.ready.empty()) scheduler::current()->block_running(wait_reason::recv);
  message m = std::move(mb.ready.front());
  mb.ready.pop_front();
  return m;
}

void engine::on_ctrl(const ctrl_msg& m) noexcept {
  try {
    switch (m.kind) {
      case ctrl_kind::location: {
        place& p = location_[m.id];
        if (m.epoch >= p.epoch) p = {m.rank, static_cast<std::uint32_t>(m.epoch)};
        break;
      }
      case ctrl_kind::hint: {
        place& p = cache_[m.id];
        if (m.epoch >= p.epoch) p = {m.rank, static_cast<std::uint32_t>(m.epoch)};
        break;
      }
      case ctrl_kind::finished: {
        finished_[m.id] = m.epoch != 0;
        location_.erase(m.id);
        // Messages held here while the location was unknown now get their answer.
        release_held(m.id);
        break;
      }
    }
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while updating the location of thread %s", id_text(m.id).c_str());
  }
}

}  // namespace iso::detail

// ---------------------------------------------------------------- public API

namespace iso {

namespace {
detail::engine& engine_or_throw(const char* call) { return detail::runtime_part_or_throw(detail::engine::current(), call); }
}  // namespace

void send(thread_id to, const void* data, std::size_t bytes, int tag) {
  engine_or_throw("iso::send").send(to, data, bytes, tag);
}

message recv() { return engine_or_throw("iso::recv").recv(); }

void migrate(thread_id t, int dest) { engine_or_throw("iso::migrate").migrate(t, dest); }

}  // namespace iso
