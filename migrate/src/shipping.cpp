// Shipping: thread images out (depart) and in (arrivals); the memory of departed threads is
// isomalloc's (ownership.hpp). Part of the engine (engine.hpp).
#include <cstring>

#include "diag.hpp"
#include "engine.hpp"
#include "interpose.hpp"
#include "mailbox.hpp"
#include "ownership.hpp"
#include "region.hpp"
#include "stack.hpp"

namespace iso::detail {
namespace {

std::string id_text(std::uint64_t bits) { return thread_id::from_bits(bits).to_string(); }

}  // namespace

void engine::depart_hook(scheduler&, tcb* t) noexcept { current()->depart(t); }

void engine::depart(tcb* t) noexcept {
  const int dest = t->pending_dest;
  const bool steal = t->stolen;  // read now: the TCB is not read once shipped
  t->pending_dest = -1;
  sched_.detach(t);
  ++t->epoch;
  const thread_id id = t->id;
  try {
    directory_.departed(id.bits(), dest, t->epoch);
    const std::int64_t start_ns = observer_ != nullptr ? now_ns() : 0;
    // Before the image is built: from now on this rank refuses frees of the thread's memory.
    departures::get().leave(id.bits(), t->home_heap, t->stack.base, t->stack.bytes, stack_guard_bytes, dest,
                            id.to_string().c_str());
    sys_vector<unsigned char> image = build_image_header(t, layout_, true);
    const image_header* hp = reinterpret_cast<const image_header*>(image.data());
    ++stats_.departures;
    stats_.bytes_out += hp->data_bytes;
    if (hp->inline_data == 1 && inline_bytes(*hp) == hp->data_bytes) {
      const image_header& h = *hp;
      // Small: header and extents are copied into the batch to dest, each once, so this rank's
      // copy can go at once.
      sys_vector<batcher::piece> pieces;
      pieces.reserve(h.nextents + 1);
      pieces.push_back({image.data(), image.size()});
      for (std::uint32_t i = 0; i < h.nextents; ++i) {
        pieces.push_back({reinterpret_cast<const void*>(image_extents(h)[i].addr), image_extents(h)[i].bytes});
      }
      post_record(dest, record::image, pieces.data(), pieces.size());
      released(h, dest, t->epoch, start_ns, steal);
      return;
    }
    append_inline_data(image);  // the small extents ride with the header
    // Moving `image` into the departure keeps its buffer, so h stays valid.
    const image_header& h = *reinterpret_cast<const image_header*>(image.data());
    departure& d = departures_.emplace_back();
    d.dest = dest;
    d.epoch = t->epoch;
    d.stack = t->stack;
    // Only a departure still in flight needs its runs (settle finds what it still sends).
    t->home_heap->for_each_run([&](void* run, std::size_t chunks) { d.runs.emplace_back(run, chunks); });
    d.start_ns = start_ns;
    d.steal = steal;
    d.header = std::move(image);
    d.requests.emplace_back();
    // fatal() names the running thread; the one shipped is named here.
    const std::string what = format("MPI_Isend of thread %s", id.to_string().c_str());
    check_mpi_or_die(mpi_call("MPI_Isend", [&] {
                       return MPI_Isend(d.header.data(), static_cast<int>(d.header.size()), MPI_BYTE, dest, tag_image,
                                        comm_, &d.requests.back());
                     }),
                     what.c_str(), dest);
    ++images_sent_;
    for_each_piece(h, [&](void* addr, int bytes) {
      d.requests.emplace_back();
      check_mpi_or_die(mpi_call("MPI_Isend", [&] {
                         return MPI_Isend(addr, bytes, MPI_BYTE, dest, tag_image_data, comm_, &d.requests.back());
                       }),
                       what.c_str(), dest);
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
    if (MPI_Waitall(static_cast<int>(it->requests.size()), it->requests.data(), MPI_STATUSES_IGNORE) != MPI_SUCCESS) {
      fatal("MPI_Waitall of a departure to rank %d failed, while memory it sends was needed here", it->dest);
    }
    finish_departure(*it);
    it = departures_.erase(it);
  }
  return departures::get().settle(addr, bytes, arriving);
}

void engine::finish_departure(departure& d) noexcept {
  released(*reinterpret_cast<const image_header*>(d.header.data()), d.dest, d.epoch, d.start_ns, d.steal);
}

void engine::released(const image_header& h, int dest, std::uint32_t epoch, std::int64_t start_ns, bool steal) noexcept {
  const std::int64_t now = now_ns();
  if (observer_ != nullptr) {
    observer_->departed(thread_id::from_bits(h.thread), epoch, dest, h.data_bytes, start_ns, now, steal);
  }
  // The destination has every byte. This rank's copy is kept for a while (ownership.hpp), then
  // given back to the kernel.
  departures::get().sent(h.thread, now);
}

void engine::start_arrival(int source, const unsigned char* buffer, std::size_t bytes) noexcept {
  const image_header* h = nullptr;
  try {
    h = &validate_image_header(buffer, bytes, layout_);
  } catch (const iso::error& e) {
    fatal("a thread image from rank %d was rejected, nothing was mapped: %s", source, e.what());
  }
  // A thread that comes back (or any memory it now holds) before this rank saw a departure
  // holding that memory complete: that departure is over, so finish it now, before new data
  // lands on the pages it would release.
  // The whole stack run, not only its live top: its guard is installed at the bottom once the
  // thread is here (finish_arrival), so no memory kept here for another thread may still claim
  // any of it (a heap run of a thread that left, freed elsewhere and handed out again by its
  // owner as this stack), or giving that back later would write into the guard.
  bool guard_kept = settle(h->stack, h->stack_bytes, h->thread);
  for (std::uint32_t i = 0; i < h->nextents; ++i) {
    guard_kept = settle(image_extents(*h)[i].addr, image_extents(*h)[i].bytes, h->thread) || guard_kept;
  }
  // The small extents carried their bytes along: put them in place.
  const unsigned char* data = image_inline_data(*h);
  const image_extent* e = image_extents(*h);
  for (std::uint32_t i = 0; i < h->nextents; ++i) {
    if (!travels_inline(*h, e[i])) continue;
    std::memcpy(reinterpret_cast<void*>(e[i].addr), data, e[i].bytes);
    data += e[i].bytes;
  }
  if (inline_bytes(*h) == h->data_bytes) {  // nothing else comes: the thread is here
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
    const std::string what = format("MPI_Irecv of thread %s", id_text(h->thread).c_str());
    for_each_piece(*h, [&](void* addr, int bytes) {
      a.requests.emplace_back();
      check_mpi_or_die(mpi_call("MPI_Irecv", [&] {
                         return MPI_Irecv(addr, bytes, MPI_BYTE, source, tag_image_data, comm_, &a.requests.back());
                       }),
                       what.c_str(), source);
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
  const bool steal = t->stolen;
  note_stolen_arrival(t);
  if (observer_ != nullptr) observer_->arrived(id, t->epoch, a.source, a.bytes, now_ns(), steal);
  sched_.attach(t);
  try {
    if (directory_.arrived(id.bits())) send_ctrl(home_of(id), {ctrl_kind::location, rank_, id.bits(), t->epoch});
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while recording the arrival of thread %s", id.to_string().c_str());
  }
  if (t->state == thread_state::blocked && t->wait == wait_reason::recv && has_ready_message(t)) sched_.wake(t);
  release_held(id.bits());
}

void engine::release_held(std::uint64_t id) noexcept {
  for (const auto& wire : directory_.take_held(id)) on_data(wire.data(), wire.size(), false);
}

}  // namespace iso::detail
