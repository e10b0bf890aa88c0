// The engine's wiring: set-up, the batched transport, poll(), and moving threads. Messages are
// in routing.cpp, shipping in shipping.cpp, joins in join.cpp (see engine.hpp).
#include "engine.hpp"

#include <cstddef>
#include <cstring>

#include "diag.hpp"
#include "interpose.hpp"
#include "ownership.hpp"
#include "region.hpp"
#include "reserved.hpp"

namespace iso::detail {
namespace {

engine* g_engine = nullptr;

// Messages handled per poll() and tag, so that a flood cannot starve the threads.
constexpr int max_receives_per_poll = 64;

}  // namespace

engine::engine(MPI_Comm comm, scheduler& s, std::uint64_t layout)
    : sched_(s),
      comm_(comm),
      steal_comm_(comm),
      rank_(comm_.rank()),
      size_(comm_.size()),
      layout_(layout),
      same_node_(ranks_on_this_node(comm_)),
      batches_(comm_, tag_data, size_, batch_window, batch_flush_bytes),
      directory_(rank_, size_) {
  if (g_engine != nullptr) raise(errc::invalid_argument, "a migration engine already exists in this process");
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

void engine::learn_location(thread_id id, int rank, std::uint32_t epoch) {
  directory_.restore_location(id.bits(), {rank, epoch});
}

sys_vector<std::pair<std::uint64_t, std::uint64_t>> engine::main_sequences() const {
  return {main_next_seq_.begin(), main_next_seq_.end()};
}

void engine::restore_main_sequence(std::uint64_t to, std::uint64_t next) {
  heap_scope system(nullptr);
  main_next_seq_[to] = next;
}

void engine::restore_finished(thread_id id, bool joined) { directory_.restore_finished(id.bits(), joined); }

// ---------------------------------------------------------------- transport

void engine::post_record(int dest, record kind, const batcher::piece* pieces, std::size_t count) noexcept {
  std::size_t n = 0;
  for (std::size_t i = 0; i < count; ++i) n += pieces[i].bytes;
  // A record is at most a header and max_message_bytes, or a small image: its length fits the
  // u32, and a batch (at most batch_flush_bytes and one record) an MPI count.
  ISO_ASSERT_INTERNAL(n <= sizeof(data_header) + max_message_bytes || kind == record::image);
  const std::uint32_t head[2] = {static_cast<std::uint32_t>(kind), static_cast<std::uint32_t>(n)};
  batches_.append_pieces(dest, head, sizeof head, pieces, count, kind != record::ctrl, record_align);
}

void engine::complete_sends() noexcept {
  batches_.flush_all();
  batches_.wait_all();
}

void engine::send_to_rank(int dest, const void* data, std::size_t bytes) noexcept {
  if (dest == rank_) {
    combiner_.deliver(static_cast<const unsigned char*>(data), bytes);
    return;
  }
  combiner_.count_result();
  heap_scope system(nullptr);
  post_record(dest, record::rank, static_cast<const unsigned char*>(data), bytes);
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
  // Steal requests first: a thief waits for each poll's work before them. Off and with no
  // request waiting, this rank does not look: a balanced program pays nothing.
  bool did = ((stealing_ && size_ > 1) || steal_outstanding_ || !steal_sends_.empty()) && poll_steals();
  // Collectives' deposits next, so that a batch made now leaves in this poll.
  did = combiner_.flush(*this, !sched_.policy().has_ready_threads()) || did;
  batches_.poll();
  if (departures::get().any_kept()) departures::get().tick(now_ns());
  did = complete(departures_, [](departure& d) -> auto& { return d.requests; }, [](departure& d) { return d.dest; },
                 [this](departure& d) { finish_departure(d); }) || did;
  did = complete_arrivals() || did;
  ready_arrival_ = false;
  collective_record_ = false;
  // Only a rank with nothing to run stops receiving for an arrival: one with threads ready runs
  // those first anyway, and stopping would take a poll per arriving thread of a burst.
  const bool nothing_ready = !sched_.policy().has_ready_threads();
  const int first = probe_first_;
  probe_first_ = tag_image;
  for (int tag : {first, first == tag_image ? tag_data : tag_image}) {
    for (int n = 0; n < max_receives_per_poll; ++n) {
      int flag = 0;
      MPI_Status st;
      check_mpi_or_die(mpi_call("MPI_Iprobe", [&] { return MPI_Iprobe(MPI_ANY_SOURCE, tag, comm_, &flag, &st); }),
                       "MPI_Iprobe", -1);
      if (!flag) break;
      int count = 0;
      check_mpi_or_die(mpi_call("MPI_Get_count", [&] { return MPI_Get_count(&st, MPI_BYTE, &count); }),
                       "MPI_Get_count", st.MPI_SOURCE);
      // A byte count is never MPI_UNDEFINED nor negative for a probed message of MPI_BYTE; one
      // that is would make a buffer of a wrapped size below.
      if (count < 0) fatal("MPI_Get_count gave %d bytes for a message from rank %d", count, st.MPI_SOURCE);
      // What arrives is read in place (records are copied out as they are kept), so one buffer
      // serves every receive, without an allocation and a clearing each.
      sys_vector<unsigned char>& buf = received_buffer_;
      try {
        if (buf.size() < static_cast<std::size_t>(count)) buf.resize(static_cast<std::size_t>(count));
      } catch (const std::bad_alloc&) {
        fatal("out of system memory for %d bytes from rank %d", count, st.MPI_SOURCE);
      }
      check_mpi_or_die(mpi_call("MPI_Recv", [&] {
                         return MPI_Recv(buf.data(), count, MPI_BYTE, st.MPI_SOURCE, tag, comm_, MPI_STATUS_IGNORE);
                       }),
                       "MPI_Recv", st.MPI_SOURCE);
      ++received_;
      did = true;
      if (tag == tag_image) {
        start_arrival(st.MPI_SOURCE, buf.data(), static_cast<std::size_t>(count), true);
      } else {
        on_batch(st.MPI_SOURCE, buf.data(), static_cast<std::size_t>(count));
      }
      // The thread runs before the rest is received: two probes less between its arrival and
      // its run (a migration's latency), the rest waiting for the next poll. Likewise a thread a
      // collective's message woke (collective_record_).
      if (nothing_ready && (ready_arrival_ || (collective_record_ && sched_.policy().has_ready_threads()))) {
        probe_first_ = tag == tag_image ? tag_data : tag_image;
        return true;
      }
    }
  }
  return did;
}

// A batch: records [u32 kind][u32 bytes][bytes][padding to record_align], in the order they were
// sent; each record's bytes start record_align-aligned, so they are read in place.
void engine::on_batch(int source, const unsigned char* buf, std::size_t bytes) noexcept {
  for (std::size_t at = 0; at + 2 * sizeof(std::uint32_t) <= bytes;) {
    std::uint32_t head[2];
    std::memcpy(head, buf + at, sizeof head);
    at += sizeof head;
    ISO_ASSERT(at + head[1] <= bytes);
    const unsigned char* rec = buf + at;
    at = (at + head[1] + record_align - 1) & ~(record_align - 1);
    switch (static_cast<record>(head[0])) {
      case record::data: {
        ISO_ASSERT(head[1] >= sizeof(data_header));
        std::int32_t tag = 0;
        std::memcpy(&tag, rec + offsetof(data_header, tag), sizeof tag);
        if (is_collective_tag(tag)) collective_record_ = true;  // a batch for a member 0
        try {
          on_data(rec, head[1], true);  // read in place: copied only if it must be held here
        } catch (const std::bad_alloc&) {
          fatal("out of system memory for a %u-byte message from rank %d", head[1], source);
        }
        break;
      }
      case record::ctrl: {
        ISO_ASSERT(head[1] == sizeof(ctrl_msg));
        ctrl_msg m;
        std::memcpy(&m, rec, sizeof m);
        on_ctrl(m);
        break;
      }
      case record::image:
        ISO_ASSERT(reinterpret_cast<std::uintptr_t>(rec) % alignof(image_header) == 0);
        start_arrival(source, rec, head[1], false);
        break;
      case record::rank:
        collective_record_ = true;
        combiner_.deliver(rec, head[1]);
        break;
    }
  }
}

// ---------------------------------------------------------------- moving threads

void engine::migrate_to_hook(scheduler& s, tcb* self, int dest) {
  if (dest < 0 || dest >= g_engine->size_) {
    raise(errc::invalid_rank, "iso::this_thread::migrate_to(%d): no such rank (there are %d)", dest, g_engine->size_);
  }
  if (self->locks_held != 0) {
    // locks_held also counts the pin of a waiter reading its collective's shared result (tcb.hpp).
    raise(errc::invalid_argument, "iso::this_thread::migrate_to(%d): thread %s holds %u iso::mutex lock(s) "
          "or collective result(s) of its rank; neither can travel", dest, self->id.to_string().c_str(),
          self->locks_held);
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

}  // namespace iso::detail
