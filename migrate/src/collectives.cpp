// The collectives of isothreads/collectives.hpp: members combine on their rank first
// (rank_combiner, combiner.hpp), each rank sends what it holds to the group's member 0, which
// completes the fixed tree over member indices and sends the result back to the ranks where
// members wait.
//
// One call at member i (the seq-th collective of this member on the group with fingerprint fp,
// counted in its mailbox, so that the count travels with it):
//   1. i's value goes into the rank entry (fp, seq) of the rank it runs on as leaf i, merged at
//      once with the blocks there (with i's op: every member passes the same one). A member
//      that waits there for the result has its value read where it lies until the blocks go
//      (it stays blocked on the rank until then); the others' values are copied.
//   2. The engine's polls send each entry's blocks as one batch (a reserved message on tag
//      collective_tag(fp), from the rank, which follows member 0 wherever it runs): at once
//      when the rank has no other ready thread (by the deposit itself, or by the poll of an idle
//      rank), else at a poll with no deposit since the one before
//      (while members keep depositing, they are still arriving); and at once, by the member
//      that completes it, once the entry holds every leaf (all n members deposited here). A rank
//      cannot know how many members it holds (they migrate), so it never waits for its own to be
//      complete: it sends what it has, and later deposits go in a later batch.
//   3. Member 0 merges every batch of (fp, seq) into its own partial tree (in its heap: it may
//      migrate meanwhile) until the root is there, then sends the result record to every rank
//      whose batches carried a waiting member (itself included, without a message).
// Completion invariant: member 0's tree holds each leaf [0, n) exactly once, as part of one
// block, whichever batches brought it; the collective is complete exactly when the root block is
// there (partial_tree), whatever number of batches from however many ranks it took.
// Waiting members: those that return a result (every member for barrier, broadcast and the all-
// variants, root for reduce and gather) other than member 0. They block with
// wait_reason::collective, which keeps them on their rank until the result wakes them
// (scheduler::movable: a migration asked meanwhile happens after), and they are woken pinned
// there (tcb::locks_held) until each has read the one copy of the result its rank's waiters
// share (rank_combiner::deliver, result_record); the others return once their leaf is in.
// Termination: an entry with unsent blocks counts as work in flight (engine::in_flight), and
// batches and results are ordinary counted messages of the engine.
// Different groups (tags that collide too) and successive collectives of one group stay apart
// by (fp, seq): member 0 puts aside, in its mailbox's stash, batches of other collectives.
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstring>
#include <exception>
#include <iterator>
#include <optional>
#include <string>
#include <tuple>

#include "combiner.hpp"
#include "diag.hpp"
#include "engine.hpp"
#include "fault.hpp"
#include "interpose.hpp"
#include "mailbox.hpp"
#include "reserved.hpp"
#include "scheduler.hpp"

namespace iso::detail {
namespace {

const char* kind_name(collective k) {
  switch (k) {
    case collective::barrier: return "iso::barrier";
    case collective::broadcast: return "iso::broadcast";
    case collective::reduce: return "iso::reduce";
    case collective::allreduce: return "iso::allreduce";
    case collective::gather: return "iso::gather";
    case collective::allgather: return "iso::allgather";
  }
  return "an unknown collective";
}

std::string mismatch_text(const char* call, collective other) {
  return std::string(call) + ": members of the group called " + kind_name(other) +
         " as the same collective (every member calls the same collectives in the same order)";
}

engine& engine_for(const char* call) { return runtime_part_or_throw(engine::current(), call); }

// Whether a batch (header first) belongs to collective (fp, seq).
bool batch_of(const std::vector<std::byte>& d, std::uint64_t fp, std::uint64_t seq) {
  ISO_ASSERT(d.size() >= sizeof(batch_header));
  batch_header h;
  std::memcpy(&h, d.data(), sizeof h);
  return h.fingerprint == fp && h.seq == seq;
}

// Member 0's next batch of collective (fp, seq), put aside ones of others on the tag. Out of
// memory to put one aside (fault point "collectives.stash"): release() frees what member 0 holds
// for (fp, seq) and returns true, and the batch is put aside again (it is intact: push_back is
// all or nothing); once release() has nothing more to free (false), fatal, since the batch would
// be lost and its collective never complete.
template <class Release>
std::vector<std::byte> next_batch(tcb* self, int tag, std::uint64_t fp, std::uint64_t seq, const char* call,
                                  Release&& release) {
  // The thread may migrate in recv_reserved: its mailbox (in its heap) stays valid.
  mailbox& mb = mailbox_of(self);
  for (auto it = mb.stash.begin(); it != mb.stash.end(); ++it) {
    if (it->tag == tag && batch_of(it->data, fp, seq)) {
      std::vector<std::byte> d = std::move(it->data);
      mb.stash.erase(it);
      return d;
    }
  }
  for (;;) {
    message m = recv_reserved(any_thread, tag, call);
    if (batch_of(m.data, fp, seq)) return std::move(m.data);
    heap_scope own(self->home_heap);  // the stash is the thread's, like the rest of its mailbox
    for (;;) {
      try {
        if (fault::hit("collectives.stash")) throw std::bad_alloc();
        mb.stash.push_back(std::move(m));
        break;
      } catch (const std::bad_alloc&) {
        if (!release()) {
          // No text made here: the heap has no room for it.
          fatal("%s: member 0 of group %llx has no heap left to put aside a batch of another collective on its tag",
                call, static_cast<unsigned long long>(fp));
        }
      }
    }
  }
}

// The ranks where members wait, as member 0 learns them: a few without an allocation.
class rank_set {
 public:
  // Throws std::bad_alloc (beyond the few), the set unchanged.
  void add(int r) {
    if (has(r)) return;
    if (count_ < std::size(few_)) {
      few_[count_++] = r;
    } else {
      more_.push_back(r);
    }
  }
  bool has(int r) const noexcept {
    return std::find(few_, few_ + count_, r) != few_ + count_ || std::find(more_.begin(), more_.end(), r) != more_.end();
  }
  template <class F>
  void for_each(F&& f) const {
    std::for_each(few_, few_ + count_, f);
    std::for_each(more_.begin(), more_.end(), f);
  }

 private:
  int few_[4];
  std::size_t count_ = 0;
  std::vector<int> more_;
};

// Sends the result record (record_bytes bytes) to every rank in `ranks`: the other ranks first,
// since their waiters wait for a message's latency more, this rank's only for deliver(), which
// wakes them (one scheduler switch each) before the messages would leave.
void answer_ranks(const rank_set& ranks, const std::byte* record, std::size_t record_bytes, const char* call) {
  engine& e = engine_for(call);
  const int here = scheduler::current()->rank();
  ranks.for_each([&](int r) {
    if (r != here) e.send_to_rank(r, record, record_bytes);
  });
  if (ranks.has(here)) e.send_to_rank(here, record, record_bytes);
}

// Member 0: takes in batches until the tree is complete; sends the result to the ranks where
// members wait. Returns its own copy of the result record.
// Out of memory in its own heap while it combines (fault points "collectives.combine": the
// batches it keeps; "collectives.combine_block": the tree, a failure's text; "collectives.stash":
// a batch of another collective put aside): it frees at once the tree and the batches it keeps
// (the rest of the batches arrive in its heap too), takes in the rest without keeping them,
// answers every rank where members wait with a failure naming it, then throws std::bad_alloc,
// so that no member is left waiting.
result_record combine_at_member_0(tcb* self, const rank_combiner::key& k, collective kind, std::uint32_t n, int tag,
                                  const merge_rule& rule, const char* call) {
  // The batches whose blocks the tree reads where they lie (those larger than it keeps inline),
  // kept until the result is made. All in this thread's heap, which keeps its addresses wherever
  // the thread runs (it may migrate).
  std::vector<std::vector<std::byte>> batches;
  // Reset once memory ran out (partial_tree has no clear and no assignment): declared after
  // batches, so that it goes first, as its blocks may borrow bytes of theirs.
  std::optional<partial_tree<std::allocator<std::byte>>> tree(std::in_place);
  rank_set ranks;
  // Members whose leaves came so far (blocks are disjoint): the call is complete at n, which is
  // when the tree has its root unless memory ran out.
  std::uint64_t leaves = 0;
  bool out_of_memory = false;
  // The first bad_alloc: frees what is held (the tree first, since it borrows from the batches;
  // it never reads a borrowed block, so the current batch may go after it). False when it had
  // already run.
  const auto give_up = [&]() noexcept {
    if (out_of_memory) return false;
    out_of_memory = true;
    tree.reset();
    batches.clear();
    batches.shrink_to_fit();
    return true;
  };
  while (leaves < n) {
    std::vector<std::byte> b = next_batch(self, tag, k.first, k.second, call, give_up);
    batch_header h;
    std::memcpy(&h, b.data(), sizeof h);
    const bool other = h.kind != static_cast<std::uint32_t>(kind) || h.n != n;
    if (h.waiters != 0) {
      try {
        ranks.add(h.rank);
      } catch (const std::bad_alloc&) {
        fatal("%s: member 0 ran out of memory for the ranks it answers", call);
      }
    }
    bool read_in_place = false;
    std::size_t at = sizeof h;
    try {
      if (fault::hit("collectives.combine")) throw std::bad_alloc();
      // Room to keep b before the tree may borrow its bytes: a bad_alloc after that would free
      // bytes the tree points into.
      if (!out_of_memory) batches.reserve(batches.size() + 1);
    } catch (const std::bad_alloc&) {
      give_up();
    }
    for (std::uint32_t i = 0; i < h.blocks; ++i) {
      block_header bh;
      ISO_ASSERT(at + sizeof bh <= b.size());
      std::memcpy(&bh, b.data() + at, sizeof bh);
      at += sizeof bh;
      ISO_ASSERT(at + bh.bytes <= b.size() && bh.lo < n);
      leaves += std::min<std::uint64_t>(std::uint64_t{1} << bh.level, n - bh.lo);
      // Once memory ran out, the tree is gone (reset by give_up, before any batch it borrowed
      // from: its destructor frees only its own blocks).
      if (!out_of_memory) {
        try {
          if (fault::hit("collectives.combine_block")) throw std::bad_alloc();
          if (other) {
            const std::string text = mismatch_text(call, static_cast<collective>(h.kind));
            tree->put_bytes(bh.level, bh.lo, reinterpret_cast<const std::byte*>(text.data()), text.size(), true, n,
                            rule);
          } else {
            const bool borrow = bh.failed == 0 && bh.bytes > small_bytes<std::allocator<std::byte>>::inline_bytes;
            read_in_place = read_in_place || borrow;
            tree->put_bytes(bh.level, bh.lo, b.data() + at, bh.bytes, bh.failed != 0, n, rule, borrow);
          }
        } catch (const std::bad_alloc&) {
          give_up();
        }
      }
      at += bh.bytes;
    }
    if (read_in_place && !out_of_memory) batches.push_back(std::move(b));  // the bytes stay where they are
  }
  ISO_ASSERT_INTERNAL(leaves == n && (out_of_memory || tree->root()));
  if (out_of_memory) {
    // A failure record without an allocation: result_header, then the text.
    alignas(result_header) std::byte failure[sizeof(result_header) + 160];
    auto* text = reinterpret_cast<char*>(failure + sizeof(result_header));
    const std::size_t len =
        safe_format(text, sizeof failure - sizeof(result_header),
                    "%s: member 0 ran out of memory while it combined the values (std::bad_alloc on rank %d)", call,
                    scheduler::current()->rank());
    const result_header rh{k.first, k.second, 1u, 0, len};
    std::memcpy(failure, &rh, sizeof rh);
    answer_ranks(ranks, failure, sizeof rh + len, call);
    throw std::bad_alloc();
  }
  auto& root = *tree->root();
  const result_header rh{k.first, k.second, root.failed ? 1u : 0u, 0, root.data.size()};
  result_header_bytes head;
  std::memcpy(head.bytes, &rh, sizeof rh);
  // A root in a block of its own is sent as it lies, the header written in the room before its
  // bytes; member 0's own record is copied from it once the others have theirs. Else member 0's
  // record (a scalar's: no allocation) is the one sent.
  std::optional<result_record> own;
  const std::byte* record = nullptr;
  if (root.data.room_before() != nullptr) {
    record = root.data.data() - sizeof rh;
    std::memcpy(root.data.data() - sizeof rh, &rh, sizeof rh);
  } else {
    own.emplace(head, root.data.data(), root.data.size());
    record = own->data();
  }
  answer_ranks(ranks, record, sizeof rh + root.data.size(), call);
  if (!own) own.emplace(head, root.data.data(), root.data.size());
  return std::move(*own);
}

// The failure a result record carries, thrown (out of line: the common path only tests the flag).
[[noreturn, gnu::noinline]] void throw_failure(const result_record& result) {
  result_header h;
  std::memcpy(&h, result.data(), sizeof h);
  throw error(errc::invalid_argument, std::string(reinterpret_cast<const char*>(result.data()) + sizeof h, h.bytes));
}

void throw_if_failed(const result_record& result) {
  std::uint32_t failed = 0;
  std::memcpy(&failed, result.data() + offsetof(result_header, failed), sizeof failed);
  if (failed != 0) throw_failure(result);
}

// One collective at the calling member: `bytes` bytes at data are its leaf (broadcast: only
// root's is not empty); `all`: every member gets the result, else only root.
// Inlined into each byte-level collective: a waiter resumes here after a scheduler switch, and
// each return that crosses the switch is a mispredicted one (the return stack holds the other
// thread's calls), so one call level less is one mispredict less per member (~5 ns).
[[gnu::always_inline]] inline result_record run(const group& g, collective kind, const void* data, std::size_t bytes,
                                                const combiner& c, int root, bool all, const char* call) {
  tcb* self = running_or_throw(call);
  const std::uint64_t fp = g.fingerprint();
  const int n = static_cast<int>(g.size());
  // Peeked, not made: a refused call leaves the caller without a mailbox if it had none.
  const auto* kept = static_cast<const mailbox*>(self->mailbox);
  // The caller's index in the group of its last collective is kept with that group's count: a
  // run of collectives on one group searches the member list once. A fingerprint is a hash, so a
  // group that shares it need not hold the caller: the kept index is used only where g holds the
  // caller (members are distinct, so it is then the caller's index), else g is searched.
  const int cached = kept != nullptr && kept->last_count != nullptr && kept->last_group == fp ? kept->last_index : -1;
  const int me = cached >= 0 && cached < n && g[static_cast<std::size_t>(cached)] == self->id ? cached
                                                                                               : g.index_of(self->id);
  ISO_ASSERT_EXPENSIVE(me == g.index_of(self->id));
  if (me < 0) {
    raise(errc::invalid_argument, "%s: thread %s is not a member of the group (%zu members)", call,
          self->id.to_string().c_str(), g.size());
  }
  if (root < 0 || root >= n) raise(errc::invalid_argument, "%s: root %d is out of range (%d members)", call, root, n);
  // Every message of the call must fit one engine message (max_message_bytes): a batch carries
  // at least one block, at most the whole result, and flush() splits the rest over more
  // batches; a result record is smaller than that batch. Refused before the count moves, so the
  // group's later collectives still pair up.
  constexpr std::size_t block_limit = max_message_bytes - sizeof(batch_header) - sizeof(block_header);
  const bool gathers = kind == collective::gather || kind == collective::allgather;
  if (gathers ? bytes > block_limit / static_cast<std::size_t>(n) : bytes > block_limit) {
    raise(errc::invalid_argument, "%s: %zu bytes%s: a collective's result carries at most %zu bytes", call, bytes,
          gathers ? (" from each of " + std::to_string(n) + " members").c_str() : "", block_limit);
  }
  engine& e = engine_for(call);
  mailbox& mb = mailbox_of(self);
  rank_combiner::key k{fp, 0};
  {
    heap_scope own(self->home_heap);  // the count is the thread's: it travels with it
    if (mb.last_count == nullptr || mb.last_group != fp) {
      mb.last_count = &mb.collectives[fp];
      mb.last_group = fp;
      mb.last_index = me;
    }
    k.second = (*mb.last_count)++;
  }
  const int tag = collective_tag(fp);
  const merge_rule rule{c, call};
  // Broadcast: only root's leaf has bytes, so that the concatenation of all leaves is its value.
  if (kind == collective::broadcast && me != root) bytes = 0;
  const bool returns = all || me == root;
  const shared_result* shared = nullptr;  // a waiter's: set by deliver()
  const rank_combiner::waiter w{self, &shared};
  const bool waits = returns && me != 0;
  bool out_of_memory = false;  // the value is a failure naming this member (rank_combiner::deposit)
  try {
    e.combiner().deposit(k, kind, static_cast<std::uint32_t>(n), g[0], tag, static_cast<std::uint32_t>(me),
                         static_cast<const std::byte*>(data), bytes, rule, waits ? &w : nullptr);
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  if (me == 0) {  // combines and answers the waiters whatever its own value became
    result_record own = combine_at_member_0(self, k, kind, static_cast<std::uint32_t>(n), tag, rule, call);
    if (out_of_memory) throw std::bad_alloc();
    if (!returns) return {};
    throw_if_failed(own);
    return own;
  }
  if (out_of_memory) throw std::bad_alloc();
  if (!waits) return {};
  scheduler::current()->block_running(wait_reason::collective);
  result_record result(shared, shared->record(), shared->bytes, self);  // lets go of it, thrown or not
  throw_if_failed(result);
  return result;
}

constexpr combiner concatenate{nullptr, nullptr, 1};

}  // namespace

// ---------------------------------------------------------------- result_record

result_record::~result_record() {
  if (shared_ == nullptr) return;
  tcb* self = static_cast<tcb*>(reader_);
  rank_combiner::release(static_cast<const shared_result*>(shared_), self);
  // A migration asked while it waited happens now that it has read the result, as it would have
  // once woken: its next suspension where it could move may be far (the next collective's wait
  // is none). Not while an exception unwinds (the call throws): the move then waits for the
  // thread's next suspension where it may move, as the user guide says.
  if (self->pending_dest >= 0 && self->locks_held == 0 && std::uncaught_exceptions() == 0) {
    scheduler::current()->yield_running();
  }
}

// ---------------------------------------------------------------- rank_combiner

rank_combiner::~rank_combiner() {
  entries_.clear();
  trim();
  block_cache::get().trim();
}

void rank_combiner::deposit(const key& k, collective kind, std::uint32_t n, thread_id first, int tag,
                            std::uint32_t index, const std::byte* data, std::size_t bytes, const merge_rule& r,
                            const waiter* w) {
  heap_scope system(nullptr);
  try {
    put_leaf(k, kind, n, first, tag, index, data, bytes, false, r, w);
  } catch (const std::bad_alloc&) {
    // Whether the value got into the rank's tree or not (a merge after it was put may have
    // thrown), it becomes a failure: every member sees the same outcome, and the group's
    // later collectives still pair up.
    try {
      const std::string text = format("%s: member %u ran out of memory for its value (std::bad_alloc on rank %d)",
                                      r.call, index, scheduler::current()->rank());
      put_leaf(k, kind, n, first, tag, index, reinterpret_cast<const std::byte*>(text.data()), text.size(), true, r,
               nullptr);
    } catch (const std::bad_alloc&) {
      fatal("%s: member %u ran out of system memory for its value, and for the failure that tells the others",
            r.call, index);
    }
    throw;
  }
}

void rank_combiner::put_leaf(const key& k, collective kind, std::uint32_t n, thread_id first, int tag,
                             std::uint32_t index, const std::byte* data, std::size_t bytes, bool failed,
                             const merge_rule& r, const waiter* w) {
  bool fresh = false;
  const auto it = entry_of(k, fresh);
  entry& e = it->second;
  if (fresh) {
    e.kind = kind;
    e.n = n;
    e.first = first;
    e.tag = tag;
  }
  const bool was_empty = e.blocks.empty();
  try {
    // No allocation once the value is in; room for twice as many, so that waiters cost one
    // allocation for each doubling.
    if (w != nullptr && e.waiters.size() == e.waiters.capacity()) {
      e.waiters.reserve(std::max<std::size_t>(16, 2 * e.waiters.capacity()));
    }
    if (failed) {
      e.blocks.fail_leaf(index, std::string(reinterpret_cast<const char*>(data), bytes), e.n, r);
    } else if (e.kind != kind || e.n != n) {
      const std::string text = mismatch_text(r.call, e.kind);
      e.blocks.put_bytes(0, index, reinterpret_cast<const std::byte*>(text.data()), text.size(), true, e.n, r);
    } else {
      // A member that waits here stays blocked on this rank until the result, which comes only
      // after these blocks have gone: its bytes are read where they lie instead of copied.
      e.blocks.put_bytes(0, index, data, bytes, false, n, r, w != nullptr);
    }
  } catch (...) {  // bad_alloc (an op's exception is a failure block): no record left uncounted
    if (was_empty && !e.blocks.empty()) {
      ++unsent_;
    } else if (e.blocks.empty() && e.waiters.empty()) {
      retire(it);
    }
    throw;
  }
  if (was_empty) ++unsent_;  // counted once its blocks exist: flush() sends them and uncounts it
  e.aged = false;             // a busy rank sends once a poll interval passes without a deposit
  if (w != nullptr) {
    e.waiters.push_back(*w);
    e.waiters_unsent = true;
  }
  // Every member deposited here: nothing more can come, so the blocks (the root) go now rather
  // than at the rank's next poll (member 0, if it waits here, runs next). Likewise when no other
  // thread is ready: the poll the scheduler would make once this one blocks or yields would send
  // them as idle (flush), so they go now, without the switch and the poll's other work first
  // (the exchange's latency).
  if (e.blocks.root() || !scheduler::current()->policy().has_ready_threads()) send_blocks(*engine::current(), it);
}

bool rank_combiner::flush(engine& eng, bool idle) noexcept {
  bool sent = false;
  for (auto it = entries_.begin(); it != entries_.end();) {
    entry& e = it->second;
    if (e.blocks.empty() || !(idle || e.aged)) {
      e.aged = !e.blocks.empty();
      ++it;
      continue;
    }
    it = send_blocks(eng, it);
    sent = true;
  }
  return sent;
}

auto rank_combiner::send_blocks(engine& eng, entry_map::iterator it) noexcept -> entry_map::iterator {
  entry& e = it->second;
  batch_header h{it->first.first, it->first.second, static_cast<std::uint32_t>(e.kind), e.n,
                 scheduler::current()->rank(), e.waiters_unsent ? 1u : 0u, 0, 0};
  const bool remote = scheduler::current()->find(e.first) == nullptr;
  try {
    // One block (a rank's members all next to each other in the group, the common case) whose
    // bytes are in a block of their own goes as it lies: the headers are written in the room
    // before them, without copying the bytes into a batch first.
    bool sent_as_it_lies = false;
    const bool one = e.blocks.blocks() == 1;
    std::vector<unsigned char, cached_allocator<unsigned char>> buf;
    const auto send = [&](const void* batch, std::size_t bytes) {
      if (remote) ++counts_.batches;
      // Unsequenced: member 0 tells batches apart by (fingerprint, call) and merges them in any
      // order, so the rank's main keeps no counter for each member 0 it ever sent to.
      eng.send(e.first, batch, bytes, e.tag, sequencing::none);
    };
    // One batch per max_message_bytes: run() let no block be larger than one.
    const auto send_batch = [&] {
      std::memcpy(buf.data(), &h, sizeof h);
      send(buf.data(), buf.size());
      buf.resize(sizeof h);
      h.blocks = 0;
    };
    e.blocks.drain(e.n, [&](std::uint32_t level, std::uint32_t lo, auto&& p) {
      const block_header bh{lo, level, p.failed ? 1u : 0u, 0, p.data.size()};
      if (std::byte* room = one ? p.data.room_before() : nullptr) {
        h.blocks = 1;
        std::memcpy(room, &h, sizeof h);
        std::memcpy(room + sizeof h, &bh, sizeof bh);
        send(room, sizeof h + sizeof bh + p.data.size());
        sent_as_it_lies = true;
        return;
      }
      if (buf.empty()) {
        buf.reserve(256);  // a scalar's few blocks without growing; a large block grows it once
        buf.resize(sizeof h);
      }
      if (h.blocks != 0 && buf.size() + sizeof(block_header) + p.data.size() > max_message_bytes) send_batch();
      const auto* head = reinterpret_cast<const unsigned char*>(&bh);
      const auto* body = reinterpret_cast<const unsigned char*>(p.data.data());
      buf.insert(buf.end(), head, head + sizeof bh);
      buf.insert(buf.end(), body, body + p.data.size());
      ++h.blocks;
    });
    if (!sent_as_it_lies) send_batch();
  } catch (const std::exception& x) {
    fatal("collective of group %llx: its batch to member 0 (thread %s) could not be sent: %s",
          static_cast<unsigned long long>(it->first.first), e.first.to_string().c_str(), x.what());
  }
  --unsent_;
  // Members wait here (whichever batch carried them): the result may follow this batch, the last
  // member 0 needed, so the window starts again now, not at the batch that carried them.
  if (!remote || !e.waiters.empty()) answer_expected_ns_ = now_ns();
  e.waiters_unsent = false;
  e.aged = false;
  return e.waiters.empty() ? retire(it) : std::next(it);
}

void rank_combiner::deliver(const unsigned char* record, std::size_t bytes) noexcept {
  ISO_ASSERT(bytes >= sizeof(result_header));
  result_header h;
  std::memcpy(&h, record, sizeof h);
  const auto it = entries_.find({h.fingerprint, h.seq});
  // A result comes only to a rank whose batch carried a waiter, and only once every leaf was in.
  ISO_ASSERT_INTERNAL(it != entries_.end() && it->second.blocks.empty());
  const auto& waiters = it->second.waiters;
  ISO_ASSERT_INTERNAL(!waiters.empty());
  shared_result* r = nullptr;
  try {
    r = new (block_cache::get().take(sizeof(shared_result) + bytes)) shared_result{waiters.size(), bytes};
  } catch (const std::bad_alloc&) {
    fatal("out of system memory for the %zu bytes of a collective's result", bytes);
  }
  std::memcpy(r + 1, record, bytes);
  scheduler& s = *scheduler::current();
  for (const waiter& w : waiters) {
    *w.out = r;
    ++w.thread->locks_held;  // it reads r here: not movable until release()
    s.wake(w.thread);
  }
  retire(it);
}

auto rank_combiner::entry_of(const key& k, bool& fresh) -> entry_map::iterator {
  if (last_ != entries_.end() && last_->first == k) return last_;
  auto it = entries_.lower_bound(k);
  if (it == entries_.end() || it->first != k) {
    if (!spare_.empty()) {
      spare_.key() = k;
      it = entries_.insert(it, std::move(spare_));
    } else {
      it = entries_.emplace_hint(it, std::piecewise_construct, std::forward_as_tuple(k), std::forward_as_tuple());
    }
    fresh = true;
  }
  last_ = it;
  return it;
}

auto rank_combiner::retire(entry_map::iterator it) noexcept -> entry_map::iterator {
  ISO_ASSERT_INTERNAL(it->second.blocks.empty());
  if (last_ == it) last_ = entries_.end();
  const auto next = std::next(it);
  if (!spare_.empty()) {
    entries_.erase(it);
    return next;
  }
  entry& e = it->second;
  e.waiters.clear();
  e.waiters_unsent = false;
  e.aged = false;
  spare_ = entries_.extract(it);
  return next;
}

void rank_combiner::release(const shared_result* r, tcb* reader) noexcept {
  --reader->locks_held;
  auto* mine = const_cast<shared_result*>(r);
  if (--mine->readers == 0) {
    const std::size_t bytes = sizeof(shared_result) + mine->bytes;
    mine->~shared_result();
    block_cache::get().give(mine, bytes);
  }
}

// ---------------------------------------------------------------- block_cache

// Class c > 0 holds blocks of q << (b - 3) bytes, b = (c - 1) / 4 + 5, q = (c - 1) % 4 + 5: the
// sizes in (2^(b-1), 2^b] in steps of 2^(b-3). Class 0: 16 bytes (and less); above kept_limit,
// none (classes).
unsigned block_cache::class_of(std::size_t bytes) noexcept {
  if (bytes <= 16) return 0;
  if (bytes > kept_limit) return classes;
  const unsigned b = static_cast<unsigned>(std::bit_width(bytes - 1));  // 2^(b-1) < bytes <= 2^b
  const std::size_t q = (bytes + (std::size_t{1} << (b - 3)) - 1) >> (b - 3);  // 5 .. 8
  return (b - 5) * 4 + static_cast<unsigned>(q - 5) + 1;
}

std::size_t block_cache::class_bytes(unsigned c) noexcept {
  if (c == 0) return 16;
  return std::size_t{(c - 1) % 4 + 5} << ((c - 1) / 4 + 2);
}

std::size_t block_cache::block_bytes(std::size_t bytes) noexcept {
  const unsigned c = class_of(bytes);
  return c < classes ? class_bytes(c) : bytes;
}

block_cache& block_cache::get() noexcept {
  static block_cache cache;  // trivially destroyed: trim() has freed its blocks once the engine is gone
  return cache;
}

void* block_cache::take(std::size_t bytes) {
  ISO_ASSERT_INTERNAL(on_scheduler_thread());
  if (fault::hit("collectives.take")) throw std::bad_alloc();
  const unsigned c = class_of(bytes);
  if (c < classes && free_[c] != nullptr) {
    node* p = free_[c];
    free_[c] = p->next;
    kept_ -= class_bytes(c);
    return p;
  }
  void* p = __libc_malloc(block_bytes(bytes));
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void block_cache::give(void* p, std::size_t bytes) noexcept {
  ISO_ASSERT_INTERNAL(on_scheduler_thread());
  if (p == nullptr) return;
  const unsigned c = class_of(bytes);
  if (c >= classes || kept_ + class_bytes(c) > kept_limit) {
    __libc_free(p);
    return;
  }
  free_[c] = new (p) node{free_[c]};
  kept_ += class_bytes(c);
}

void block_cache::trim() noexcept {
  ISO_ASSERT_INTERNAL(on_scheduler_thread());
  for (node*& head : free_) {
    while (head != nullptr) {
      node* next = head->next;
      __libc_free(head);
      head = next;
    }
  }
  kept_ = 0;
}

// ---------------------------------------------------------------- the byte-level collectives

result_record reduce_bytes(const group& g, collective kind, const void* data, std::size_t bytes, const combiner& c,
                           int root, bool all, const char* call) {
  return run(g, kind, data, bytes, c.fn != nullptr ? c : concatenate, root, all, call);
}

result_record broadcast_bytes(const group& g, const void* data, std::size_t bytes, int root, const char* call) {
  return run(g, collective::broadcast, data, bytes, concatenate, root, true, call);
}

result_record gather_bytes(const group& g, collective kind, const void* data, std::size_t bytes, int root, bool all,
                           const char* call) {
  return run(g, kind, data, bytes, concatenate, root, all, call);
}

}  // namespace iso::detail
