// The migration engine of a rank: ships suspended threads over MPI, locates threads, and routes
// messages to them wherever they are. It wires parts that each hold one concept:
//   transport.hpp  batches of records to each rank (the windowed batcher)
//   directory.hpp  where threads are and where a message goes next (pure logic, unit-tested over
//                  a simulated network)
//   mailbox.hpp    a thread's mailbox: exactly once, in per-sender order
//   shipping.cpp   images out and in (the departed memory kept for a while is isomalloc's)
//   join.cpp       the join protocol and the end of threads
//   routing.cpp    iso::send, routing through the directory, delivery, control messages
//   stealing.cpp   work stealing: steal requests and "none" replies, handing threads to thieves
//   engine.cpp     the wiring: set-up, the batched transport, poll, moving threads
// All MPI traffic is non-blocking, driven by poll() from the scheduler's progress engine; a
// thread that waits yields.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <list>

#include "combiner.hpp"
#include "comm.hpp"
#include "directory.hpp"
#include "image.hpp"
#include "isothreads/messaging.hpp"
#include "scheduler.hpp"
#include "sysalloc.hpp"
#include "transport.hpp"

namespace iso::detail {

// Messages that can create work elsewhere, for termination detection (sent == received).
struct work_counters {
  std::uint64_t sent = 0;
  std::uint64_t received = 0;
};

enum class msg_kind : std::uint32_t { user = 0, join_request = 1, join_done = 2 };

// How a user message is numbered (data_header::status of a user message; mailbox.hpp's in_order):
// next: the sender's next number to that receiver; last: that too, and the sender promises it
// sends that receiver nothing more (both sides then drop their counters, keeping the tables
// bounded: a future's value, the stream_end of a thread that ends to a thread it sent to); none:
// number 0, not ordered with the sender's other messages (a future's ask, the only one of its
// kind, taken after the producer's body has returned; spawn_group's member list, the only one on
// its tag; the stream_end of a thread that ends to a thread it only got messages from,
// reserved.hpp).
enum class sequencing : std::uint32_t { next = 0, last = 1, none = 2 };

// A routed message: this header, then `bytes` payload bytes.
struct data_header {
  std::uint64_t to;          // receiving thread (thread_id bits)
  std::uint64_t from;        // sending thread; thread_id(rank, 0) for a rank's main
  std::uint64_t seq;         // user messages: 1, 2, ... per (from, to); system messages: 0
  std::uint64_t bytes;       // payload bytes that follow
  std::int32_t tag;          // user tag
  msg_kind kind;
  std::uint32_t min_epoch;   // newest location epoch followed so far
  std::int32_t origin;       // rank that first sent it: told the location if it was forwarded
  std::uint32_t hops;        // times forwarded
  std::uint32_t status;      // join_done: the errc the join ends with; user: its sequencing
};

enum class ctrl_kind : std::uint32_t { location = 1, hint = 2, finished = 3 };
struct ctrl_msg {
  ctrl_kind kind;
  std::int32_t rank;         // location / hint: where the thread is
  std::uint64_t id;          // thread_id bits
  std::uint64_t epoch;       // location / hint: its epoch there; finished: 1 if it was joined
};

// Told what the engine does, for tracing (runtime/src/trace.cpp). Times are now_ns().
class engine_observer {
 public:
  virtual ~engine_observer() = default;
  // `epoch` numbers a thread's migrations: a departure and its arrival carry the same one.
  // `steal`: the migration is a thief taking the thread (stealing.cpp).
  virtual void departed(thread_id t, std::uint32_t epoch, int to, std::uint64_t bytes, std::int64_t start_ns,
                        std::int64_t end_ns, bool steal) noexcept = 0;
  virtual void arrived(thread_id t, std::uint32_t epoch, int from, std::uint64_t bytes, std::int64_t at_ns,
                       bool steal) noexcept = 0;
  // to_rank: where the message went first (this rank when delivered here, or held here).
  virtual void sent(thread_id from, thread_id to, int to_rank, std::uint64_t bytes, int tag, std::int64_t at_ns) noexcept = 0;
};

class engine {
 public:
  // Collective over comm (MPI_Comm_dup). Installs itself in the scheduler (depart/finish hooks)
  // and as the implementation of migrate_to and join. `layout`: this binary's layout fingerprint,
  // stamped on and checked in every image.
  engine(MPI_Comm comm, scheduler& s, std::uint64_t layout);
  ~engine();
  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;

  static engine* current() noexcept;

  // Completes sends and arrivals, receives and dispatches what arrived. True if it did anything.
  bool poll() noexcept;
  // At shutdown, after termination (everything sent has been received): completes the sends.
  void complete_sends() noexcept;

  void send(thread_id to, const void* data, std::size_t bytes, int tag, sequencing how = sequencing::next);
  // A collective's result record to rank `dest` (this one: handled now), for its rank_combiner;
  // counted for termination as every batch is.
  void send_to_rank(int dest, const void* data, std::size_t bytes) noexcept;
  // This rank's collectives in progress (combiner.hpp); polled by poll().
  rank_combiner& combiner() noexcept { return combiner_; }
  message recv();
  void migrate(thread_id t, int dest);

  work_counters counters() const noexcept { return {batches_.batches_sent() + images_sent_, received_}; }
  void set_observer(engine_observer* o) noexcept { observer_ = o; }
  // Threads in transit from or to this rank, and batches of messages not handed to MPI yet:
  // work that termination detection must count as live. A thread inside a batch already handed
  // to MPI is in none of these: termination rounds see it through counters() (sent != received),
  // see progress.hpp.
  // Collectives whose deposits here are not sent yet count too: they go at the next poll.
  std::size_t in_flight() const noexcept {
    return departures_.size() + arrivals_.size() + batches_.waiting() + combiner_.unsent();
  }
  // Messages held for threads that have not arrived.
  std::size_t held_messages() const noexcept { return directory_.held_messages(); }
  const directory& locations() const noexcept { return directory_; }
  // directory::collect on this rank. pre: as there (the balancer and checkpointer call it at the
  // start of their steps, on every rank, when nothing is in flight and every thread waits).
  void collect_locations() noexcept { directory_.collect(); }

  // The rank where t's location is kept (directory::home_of).
  int home_of(thread_id t) const noexcept { return directory_.home_of(t.bits()); }

  // Restart from a checkpoint (runtime/src/checkpoint.cpp): ids of the checkpointed run name
  // `ranks` home ranks; where each restored thread now is; sequence numbers of messages from this
  // rank's main; threads that had finished, kept at their (folded) home.
  void restore_id_ranks(int ranks) noexcept { directory_.restore_id_ranks(ranks); }
  void learn_location(thread_id id, int rank, std::uint32_t epoch);
  sys_vector<std::pair<std::uint64_t, std::uint64_t>> main_sequences() const;
  void restore_main_sequence(std::uint64_t to, std::uint64_t next);
  sys_vector<std::pair<std::uint64_t, bool>> finished_records() const { return directory_.finished_records(); }
  void restore_finished(thread_id id, bool joined);

  // --- work stealing (stealing.cpp) ---
  // Protocol: an idle thief sends a request to one victim and sends no other until it is
  // answered. The victim answers once: with its oldest ready stealable thread
  // (scheduler::oldest_stealable), migrated to the thief by depart() with tcb::stolen set, so
  // that the arrival is the answer; or with a "none" reply. Requests and "none" replies travel on
  // a communicator of their own and are not counted for termination: they carry no thread and
  // wake none, and the thread a victim gives is counted as any migration is. Off, a rank neither
  // asks nor gives, and answers requests "none" while it is idle (answer_steals_while_off), while
  // it waits for its own answer, and when a run ends (quiesce_steals).
  void set_stealing(bool on) noexcept;
  bool stealing() const noexcept { return stealing_; }
  // Stealing on, more than one rank, and no request of this rank waiting for its answer.
  bool can_request_steal() const noexcept { return stealing_ && size_ > 1 && !steal_outstanding_; }
  // Sends a steal request to rank `victim`. pre: can_request_steal(), victim another rank.
  void request_steal(int victim) noexcept;
  // With stealing off on this rank (and more than one rank): answers "none" to the requests that
  // have reached it, so that a thief whose victim turned stealing off mid-run does not wait for
  // its answer until the run ends. For the idle path: off, the switches never look (poll()).
  void answer_steals_while_off() noexcept;
  struct steal_stats_t {
    std::uint64_t requests = 0;         // steal requests this rank sent
    std::uint64_t stolen = 0;           // threads that arrived here as the answer to one
    std::uint64_t refused = 0;          // "none" answers this rank received
    std::uint64_t given = 0;            // threads this rank gave to thieves
    std::int64_t last_request_ns = 0;   // now_ns() when this rank's last request left (awaiting_answer, bench_stealing)
  };
  steal_stats_t steal_stats() const noexcept { return steal_stats_; }
  // Collective, when a run ends (termination or deadlock, decided alike on every rank): answers
  // "none" to every request until this rank's own has its answer and every rank is there, then
  // completes the steal sends, so that no steal message outlives the run.
  void quiesce_steals() noexcept;
  int ranks() const noexcept { return size_; }
  // Whether an image of split sizes going to `dest` is split (image.hpp, batched_image).
  bool split_to(int dest) const noexcept { return same_node_[static_cast<std::size_t>(dest)] != 0; }

  struct stats_t {
    std::uint64_t departures = 0;       // threads shipped from this rank
    std::uint64_t arrivals = 0;         // threads received
    std::uint64_t bytes_out = 0;        // image bytes shipped
    std::uint64_t split = 0;            // departures shipped as a split image (image.hpp)
    std::uint64_t split_later = 0;      // split arrivals not whole at their header message (a
                                        // later poll finished them)
    std::uint64_t forwarded = 0;        // messages forwarded to a newer location
    std::uint64_t dropped = 0;          // messages to finished or unknown threads
  };
  stats_t stats() const noexcept { return stats_; }

 private:
  // MPI tags on the engine's private communicator.
  static constexpr int tag_data = 1;        // a batch of records (post_record)
  static constexpr int tag_image = 3;       // header message: header, extent table, inline data
                                            // (of a split image, its first eager_piece_bytes)
  // The rest of a split header message, then extent pieces, in extent order; never probed for.
  static constexpr int tag_image_data = 4;
  static constexpr std::uint32_t batch_window = 4;
  static constexpr std::size_t batch_flush_bytes = std::size_t{1} << 20;  // sent even if the window is full
  struct departure {                    // a thread being shipped; its memory stays until done
    int dest;
    std::uint64_t id;                   // the thread's id bits (this rank's own, not read back
                                        // from the header it sent)
    std::uint32_t epoch;                // the thread's epoch on arrival there
    stack_run stack;                    // the thread's stack
    sys_vector<std::pair<void*, std::size_t>> runs;  // its heap's chunk runs (addr, chunks): the
                                                      // TCB is not read once shipped, since its
                                                      // runs may come home and be reused meanwhile
    std::int64_t start_ns;              // when it left (tracing)
    bool steal;                         // a thief took it
    sys_vector<MPI_Request> requests;
    sys_vector<unsigned char> header;   // header, extent table and inline data (what the
                                        // header message's one or two Isends read)
  };
  struct arrival {                      // a thread being received straight into its addresses
    int source;
    tcb* thread;
    std::uint64_t bytes;                // its image's data bytes (tracing)
    bool guard_kept;                    // its stack's guard is still installed here (it came back)
    std::uint64_t id;                   // what the header says of the thread (its id bits and its
    stack_run stack;                    //   stack run, settled here): its arrived TCB must agree
    sys_vector<MPI_Request> requests;
    sys_vector<unsigned char> image;    // a split image (image.hpp): header, table and inline data,
                                        // placed once its second piece is in; else empty
  };
  // Memory [addr, addr+bytes) is about to be written by the arrival of `arriving` (its thread's id
  // bits): finish the departures still sending it, then settle kept memory (departures::settle).
  // True if `arriving` finds its own stack guard still installed.
  bool settle(std::uintptr_t addr, std::size_t bytes, std::uint64_t arriving) noexcept;
  void depart(tcb* t) noexcept;
  void finish_departure(departure& d) noexcept;
  // Thread `id`'s image (header h) has left (its bytes are all sent or copied): release this
  // rank's copy. The id is the sender's own: the header's is what the receiver is told.
  void released(std::uint64_t id, const image_header& h, int dest, std::uint32_t epoch, std::int64_t start_ns,
                bool steal) noexcept;
  // A header message, or an image record of a batch (read in place: nothing of it is kept,
  // except the first piece of a split image, copied into its arrival's image).
  // allow_split: `header` came as a header message, so it may be the first piece of a split image.
  void start_arrival(int source, const unsigned char* header, std::size_t bytes, bool allow_split) noexcept;
  // Copies the bytes of h's extents that travel inline to their addresses.
  static void place_inline_data(const image_header& h) noexcept;
  void finish_arrival(arrival& a) noexcept;
  // Whether all of a's receives are in (tested now); a split image's second piece is tested with
  // its status, and one of another length than its first piece leaves is fatal (shipping.cpp).
  bool arrival_in(arrival& a) noexcept;
  // Finishes and takes out of arrivals_ every arrival whose receives are all in (arrival_in);
  // true if any was.
  bool complete_arrivals() noexcept;
  // Messages held for thread `id` (bits) while its location was unknown: routed again, now.
  void release_held(std::uint64_t id) noexcept;
  void finished(tcb* t) noexcept;
  void join(tcb* self, thread_id t);

  // Sends a data message (h, then h.bytes bytes at payload) toward its thread; returns the rank
  // it went to (this one: held here).
  int route_out(data_header h, const void* payload);
  // A user message (or a reserved one) numbered `seq`, delivered here or routed; returns the
  // rank it went to first.
  int post_user(thread_id to, thread_id from, std::uint64_t seq, sequencing how, int tag, const void* data,
                std::size_t bytes);
  // t ends: tells the threads it exchanged numbered messages with to drop their counters for it.
  void close_streams(tcb* t) noexcept;
  // A data message (header, then payload: `bytes` bytes at wire) for a thread, from the network
  // or from this rank: delivered, forwarded, answered, dropped or held (the one case that copies
  // it: a batch's records are read in place).
  void on_data(const unsigned char* wire, std::size_t bytes, bool from_network);
  void deliver(tcb* t, const data_header& h, const unsigned char* payload) noexcept;
  void deliver_user(tcb* t, thread_id from, std::uint64_t seq, sequencing how, int tag, const void* data,
                    std::size_t bytes) noexcept;
  void deliver_join_request(tcb* t, thread_id from) noexcept;
  void deliver_join_done(tcb* t, thread_id from, errc status) noexcept;
  void answer_finished(const data_header& h, bool joined) noexcept;
  void receive(int tag) noexcept;
  void on_batch(int source, const unsigned char* buf, std::size_t bytes) noexcept;
  void drop(const data_header& h, const char* why) noexcept;
  void send_system(thread_id to, thread_id from, msg_kind kind, errc status);
  // Records of a batch (transport.hpp): [u32 kind][u32 bytes][bytes], padded to record_align:
  // thread messages, control messages and small thread images. The head is 8 bytes, so every
  // record's bytes start 8-aligned in the batch and an image header is read in place. Control
  // records wait for the next poll (or ride along with the next message or image to that rank):
  // a location update right after an arrival would otherwise cost a send of its own.
  // rank: a collective's result for the rank itself (send_to_rank).
  enum class record : std::uint32_t { data = 0, ctrl = 1, image = 2, rank = 3 };
  static constexpr std::size_t record_align = 8;
  void post_record(int dest, record kind, const unsigned char* bytes, std::size_t n) noexcept {
    const batcher::piece piece{bytes, n};
    post_record(dest, kind, &piece, 1);
  }
  // A record whose bytes are the pieces, in order (a small image: its header and its extents).
  void post_record(int dest, record kind, const batcher::piece* pieces, std::size_t n) noexcept;
  // A data record to dest: h, then `bytes` bytes at payload, each copied once into the batch.
  void post_data(int dest, const data_header& h, const void* payload, std::size_t bytes) noexcept {
    const batcher::piece pieces[2] = {{&h, sizeof h}, {payload, bytes}};
    post_record(dest, record::data, pieces, bytes != 0 ? 2 : 1);
  }
  void send_ctrl(int dest, const ctrl_msg& m) noexcept;
  void on_ctrl(const ctrl_msg& m) noexcept;

  // Stealing (stealing.cpp), on steal_comm_: a request, and the answer that gives no thread.
  static constexpr int tag_steal_request = 1;
  static constexpr int tag_steal_none = 2;
  struct steal_send {                   // an Isend of the steal protocol (no payload)
    MPI_Request request[1];
    int dest;
  };
  // Handles what arrived on steal_comm_ and completes steal sends. True if a thread left.
  bool poll_steals() noexcept;
  // A request from `thief`: give it a thread, or answer "none".
  bool answer_steal(int thief) noexcept;
  void post_steal(int dest, int tag) noexcept;
  // t arrived (finish_arrival): if it was stolen, this rank's request has its answer.
  void note_stolen_arrival(tcb* t) noexcept;

  static void depart_hook(scheduler& s, tcb* t) noexcept;
  static void finish_hook(scheduler& s, tcb* t) noexcept;
  static void migrate_to_hook(scheduler& s, tcb* self, int dest);
  static void join_hook(scheduler& s, tcb* self, thread_id t);

  scheduler& sched_;
  private_comm comm_;
  private_comm steal_comm_;             // steal requests and "none" replies (see request_steal)
  int rank_;
  int size_;
  std::uint64_t layout_;
  // Per rank: 1 if it is on this rank's node (ranks_on_this_node), the destinations for which a
  // small image is split in two eager messages (image.hpp, eager_piece_bytes).
  sys_vector<unsigned char> same_node_;
  std::uint64_t images_sent_ = 0;       // image headers sent on their own (for work_counters)
  std::uint64_t received_ = 0;          // batches and image headers received (for work_counters)
  stats_t stats_;
  engine_observer* observer_ = nullptr;

  batcher batches_;
  sys_vector<unsigned char> received_buffer_;  // poll()'s receives, reused (only grows)
  // A thread arrived ready to run in this poll's receives (finish_arrival): if none was ready
  // when the poll's receives began, poll() receives no more, and the next poll probes first the other tag
  // than the one it stopped on (so the tags alternate), so that arrivals delay neither tag by
  // more than a poll.
  bool ready_arrival_ = false;
  // This poll's receives brought a collective's message (a result for this rank's waiters, a
  // batch for a member 0 here): if no thread was ready when they began and one is now (it woke
  // one), poll() receives no more either, as for an arrival. Each probe drives MPI's progress, a
  // few hundred ns on the collective's path; other messages (halos, replies) are received on,
  // so that a burst of them costs one poll, not one poll and one switch each.
  bool collective_record_ = false;
  // The buffer of a departed image or of an arrived split one, kept for the next (a migration's
  // path then allocates no image buffer); at most max_spare_image_bytes of capacity.
  sys_vector<unsigned char> spare_image_;
  static constexpr std::size_t max_spare_image_bytes = std::size_t{64} << 10;
  void recycle_image(sys_vector<unsigned char>&& buffer) noexcept {
    if (buffer.capacity() <= max_spare_image_bytes && buffer.capacity() > spare_image_.capacity()) {
      spare_image_ = std::move(buffer);
    }
  }
  int probe_first_ = tag_image;
  directory directory_;
  rank_combiner combiner_;
  std::list<departure, sys_allocator<departure>> departures_;
  std::list<arrival, sys_allocator<arrival>> arrivals_;

  sys_unordered_map<std::uint64_t, std::uint64_t> main_next_seq_;  // sends from main, per receiver

  bool stealing_ = false;               // see set_stealing
  bool steal_outstanding_ = false;      // this rank's request waits for its answer
  bool quiescing_ = false;              // quiesce_steals runs: every request gets "none"
  // Stealing on: until this now_ns(), polls come at the short interval, since a steal request
  // reached this rank (stealing.cpp, near_thief_poll_interval_ns); 0: at the usual one.
  std::int64_t thief_near_until_ns_ = 0;
  steal_stats_t steal_stats_;
  std::list<steal_send, sys_allocator<steal_send>> steal_sends_;  // a list: a request never moves
};

}  // namespace iso::detail
