// Shipping: thread images out (depart) and in (arrivals); the memory of departed threads is
// isomalloc's (ownership.hpp). Part of the engine (engine.hpp).
#include <cstring>

#include "diag.hpp"
#include "engine.hpp"
#include "fault.hpp"
#include "interpose.hpp"
#include "mailbox.hpp"
#include "ownership.hpp"
#include "region.hpp"
#include "stack.hpp"

namespace iso::detail {
namespace {

std::string id_text(std::uint64_t bits) { return thread_id::from_bits(bits).to_string(); }

// The second piece of thread `thread`'s split image from `source` completed with rc and status st
// (`expected`: the bytes its first piece leaves): fatal unless it held exactly those, before any
// of the image is placed. A longer one is MPI's truncation (the receive was posted for expected).
void check_split_piece(int rc, const MPI_Status& st, std::size_t expected, std::uint64_t thread, int source) noexcept {
  if (int cls = MPI_SUCCESS; rc != MPI_SUCCESS && MPI_Error_class(rc, &cls) == MPI_SUCCESS && cls == MPI_ERR_TRUNCATE) {
    fatal("the second piece of thread %s's split image from rank %d is longer than the %zu bytes its first piece "
          "leaves; nothing of the image was placed",
          id_text(thread).c_str(), source, expected);
  }
  if (rc != MPI_SUCCESS) check_mpi_or_die(rc, format("MPI_Test of thread %s's split image", id_text(thread).c_str()).c_str(), source);
  int count = 0;
  check_mpi_or_die(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count (split image)", source);
  if (count < 0 || static_cast<std::size_t>(count) != expected) {
    fatal("the second piece of thread %s's split image from rank %d has %d bytes, its first piece leaves %zu; nothing "
          "of the image was placed",
          id_text(thread).c_str(), source, count, expected);
  }
}

// The stack run a validated header names.
stack_run header_stack(const image_header& h) {
  return {reinterpret_cast<void*>(h.stack), static_cast<std::size_t>(h.stack_bytes)};
}

}  // namespace

void engine::depart_hook(scheduler&, tcb* t) noexcept { current()->depart(t); }

void engine::depart(tcb* t) noexcept {
  const int dest = t->pending_dest;
  const bool steal = t->stolen;  // read now: the TCB is not read once depart returns
  t->pending_dest = -1;
  sched_.detach(t);
  const std::uint32_t epoch = ++t->epoch;
  const thread_id id = t->id;
  const stack_run stack = t->stack;
  try {
    const std::int64_t start_ns = observer_ != nullptr ? now_ns() : 0;
    // Before the image is built: from now on this rank refuses frees of the thread's memory.
    departures::get().leave(id.bits(), t->home_heap, t->stack.base, t->stack.bytes, stack_guard_bytes, dest,
                            id.to_string().c_str());
    const bool split_here = split_to(dest);
    sys_vector<unsigned char> image = build_image_header(t, layout_, true, std::move(spare_image_), split_here);
    if (fault::hit("image.other_thread")) {
      // Fault point (tests): the header names another thread than its TCB, checksum made good
      // (this rank keeps its own record by id, so only the receiver can notice).
      auto& wrong = *reinterpret_cast<image_header*>(image.data());
      wrong.thread ^= 1;
      wrong.checksum = header_checksum(wrong);
    }
    const image_header* hp = reinterpret_cast<const image_header*>(image.data());
    ++stats_.departures;
    stats_.bytes_out += hp->data_bytes;
    if (batched_image(*hp, split_here)) {
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
      directory_.departed(id.bits(), dest, epoch);
      released(id.bits(), h, dest, epoch, start_ns, steal);
      recycle_image(std::move(image));
      return;
    }
    const bool split = split_here && split_image(*hp);
    append_inline_data(image);  // the small extents ride with the header (a split image: all of them)
    // The rest of a split header message (fault points split_piece.short, split_piece.long, for
    // tests: a byte short or long, as a defective sender would send it).
    std::size_t rest = split ? image.size() - eager_piece_bytes : 0;
    if (split && fault::hit("split_piece.short")) --rest;
    if (split && fault::hit("split_piece.long")) {
      image.push_back(0);
      ++rest;
    }
    // Moving `image` into the departure keeps its buffer, so h stays valid and the buffer the
    // header message's Isends read lives until the departure is finished.
    const image_header& h = *reinterpret_cast<const image_header*>(image.data());
    sys_vector<MPI_Request> requests;
    requests.reserve(h.nextents + 2);  // the header message, the rest of a split one, about a piece an extent
    auto send = [&](const void* addr, std::size_t bytes, int tag) {
      requests.emplace_back();
      const int rc = mpi_call("MPI_Isend", [&] {
        return MPI_Isend(addr, static_cast<int>(bytes), MPI_BYTE, dest, tag, comm_, &requests.back());
      });
      // fatal() names the running thread; the one shipped is named here.
      if (rc != MPI_SUCCESS) {
        check_mpi_or_die(rc, format("MPI_Isend of thread %s", id.to_string().c_str()).c_str(), dest);
      }
    };
    stats_.split += split ? 1 : 0;
    const std::size_t first = split ? eager_piece_bytes : image.size();
    send(image.data(), first, tag_image);
    ++images_sent_;
    // The rest of a split header message first: the receiver posts its receive first.
    if (split) send(image.data() + first, rest, tag_image_data);
    for_each_piece(h, [&](void* addr, int bytes) { send(addr, static_cast<std::size_t>(bytes), tag_image_data); });
    // The rest once the image is on its way (MPI only reads what it sends, and so does this).
    departure& d = departures_.emplace_back();
    d.dest = dest;
    d.id = id.bits();
    d.epoch = epoch;
    d.stack = stack;
    // Only a departure still in flight needs its runs (settle finds what it still sends).
    t->home_heap->for_each_run([&](void* run, std::size_t chunks) { d.runs.emplace_back(run, chunks); });
    d.start_ns = start_ns;
    d.steal = steal;
    d.header = std::move(image);
    d.requests = std::move(requests);
    directory_.departed(id.bits(), dest, epoch);
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
  released(d.id, *reinterpret_cast<const image_header*>(d.header.data()), d.dest, d.epoch, d.start_ns, d.steal);
  recycle_image(std::move(d.header));
}

void engine::released(std::uint64_t id, const image_header& h, int dest, std::uint32_t epoch, std::int64_t start_ns,
                      bool steal) noexcept {
  const std::int64_t now = now_ns();
  if (observer_ != nullptr) {
    observer_->departed(thread_id::from_bits(id), epoch, dest, h.data_bytes, start_ns, now, steal);
  }
  // The destination has every byte. This rank's copy is kept for a while (ownership.hpp), then
  // given back to the kernel.
  departures::get().sent(id, now);
}

void engine::start_arrival(int source, const unsigned char* buffer, std::size_t bytes, bool allow_split) noexcept {
  const image_header* h = nullptr;
  try {
    h = &validate_image_header(buffer, bytes, layout_, allow_split);
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
  // The first piece of a split image (validated as such): its inline data is whole once the
  // second piece is in.
  const bool split = bytes < packed_bytes(*h);
  if (!split) place_inline_data(*h);
  if (!split && inline_bytes(*h) == h->data_bytes) {  // nothing else comes: the thread is here
    arrival a{source, reinterpret_cast<tcb*>(h->tcb), h->data_bytes, guard_kept, h->thread, header_stack(*h), {}, {}};
    finish_arrival(a);
    return;
  }
  try {
    const auto it = arrivals_.emplace(arrivals_.end());
    arrival& a = *it;
    a.source = source;
    a.thread = reinterpret_cast<tcb*>(h->tcb);
    a.bytes = h->data_bytes;
    a.guard_kept = guard_kept;
    a.id = h->thread;
    a.stack = header_stack(*h);
    a.requests.reserve(h->nextents + 1);
    auto receive = [&](void* addr, int n) {
      a.requests.emplace_back();
      const int rc = mpi_call("MPI_Irecv", [&] {
        return MPI_Irecv(addr, n, MPI_BYTE, source, tag_image_data, comm_, &a.requests.back());
      });
      if (rc != MPI_SUCCESS) {
        check_mpi_or_die(rc, format("MPI_Irecv of thread %s", id_text(h->thread).c_str()).c_str(), source);
      }
    };
    if (split) {
      a.image = std::move(spare_image_);
      a.image.assign(buffer, buffer + bytes);
      a.image.resize(packed_bytes(*h));
      receive(a.image.data() + bytes, static_cast<int>(a.image.size() - bytes));
    }
    for_each_piece(*h, receive);
    // Pieces sent eagerly are often here already: then the thread is too, without a poll more.
    // (Fault point arrival.later: as if they were not, so that a later poll finishes it.)
    const bool done = !fault::hit("arrival.later") && arrival_in(a);
    if (done) {
      finish_arrival(a);
      arrivals_.erase(it);
    } else if (split) {
      ++stats_.split_later;
    }
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while receiving a thread from rank %d", source);
  }
}

bool engine::arrival_in(arrival& a) noexcept {
  if (!a.image.empty()) {
    // A split image: its one request is the second piece (its extents all travel inline), after
    // a first piece of exactly eager_piece_bytes (validate_image_header).
    ISO_ASSERT_INTERNAL(a.requests.size() == 1 && a.image.size() > eager_piece_bytes);
    int done = 0;
    MPI_Status st;
    const int rc = mpi_call("MPI_Test", [&] { return MPI_Test(&a.requests[0], &done, &st); });
    if (done || rc != MPI_SUCCESS) check_split_piece(rc, st, a.image.size() - eager_piece_bytes, a.id, a.source);
    return done != 0;
  }
  return all_done(a.requests, a.source);
}

bool engine::complete_arrivals() noexcept {
  return take_completed(arrivals_, [this](arrival& a) { return arrival_in(a); },
                        [this](arrival& a) { finish_arrival(a); });
}

void engine::place_inline_data(const image_header& h) noexcept {
  const unsigned char* data = image_inline_data(h);
  const image_extent* e = image_extents(h);
  for (std::uint32_t i = 0; i < h.nextents; ++i) {
    if (!travels_inline(h, e[i])) continue;
    std::memcpy(reinterpret_cast<void*>(e[i].addr), data, e[i].bytes);
    data += e[i].bytes;
  }
}

void engine::finish_arrival(arrival& a) noexcept {
  if (!a.image.empty()) {
    place_inline_data(*reinterpret_cast<const image_header*>(a.image.data()));
    recycle_image(std::move(a.image));
  }
  tcb* t = a.thread;
  if (t->magic != tcb::magic_value) {
    fatal("a thread image from rank %d arrived without a valid control block at %p", a.source, static_cast<void*>(t));
  }
  // Its memory was settled for the header's thread and stack run, and the guard goes on the TCB's.
  if (t->id.bits() != a.id || t->stack.base != a.stack.base || t->stack.bytes != a.stack.bytes) {
    fatal("a thread image from rank %d for thread %s (stack run %p, %zu bytes) holds the control block of thread %s "
          "(stack run %p, %zu bytes)",
          a.source, id_text(a.id).c_str(), a.stack.base, a.stack.bytes, t->id.to_string().c_str(), t->stack.base,
          t->stack.bytes);
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
  ready_arrival_ = ready_arrival_ || t->state == thread_state::ready;
}

void engine::release_held(std::uint64_t id) noexcept {
  for (const auto& wire : directory_.take_held(id)) on_data(wire.data(), wire.size(), false);
}

}  // namespace iso::detail
