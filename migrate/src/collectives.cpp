// The collectives of isothreads/collectives.hpp over reserved messages (reserved.hpp).
//
// Every message of a collective: a header (the group's fingerprint, the collective, a status),
// then the payload, on the group's reserved tag collective_tag(fingerprint). Successive
// collectives of one group between two members stay apart by the per-(sender, tag) order of
// messages, since each collective sends a fixed sequence from one member to another. Another
// group whose tag collides has another fingerprint: its messages are put aside (the mailbox's
// stash) for the collective they belong to.
//
// Trees over member indices i in [0, n): reduce and gather combine toward member 0 in index order
// (round k: i with bit k set sends its subtree [i, i + 2^k) to i - 2^k and is done; i without it
// receives from i + 2^k); the result goes on to root (one message) or back down a binomial
// broadcast tree from 0. Broadcast: relative index r = (i - root) mod n receives from r minus its
// lowest set bit and sends to r + 2^j for every 2^j below that bit.
#include <cstring>
#include <string>

#include "diag.hpp"
#include "isothreads/collectives.hpp"
#include "interpose.hpp"
#include "mailbox.hpp"
#include "reserved.hpp"
#include "scheduler.hpp"

namespace iso::detail {
namespace {

struct header {
  std::uint64_t fingerprint;  // the group's
  std::uint32_t kind;         // collective
  std::uint32_t failed;       // 1: the payload is the text of an error every member throws
  std::uint64_t bytes;        // payload bytes
  std::uint64_t unused = 0;   // keeps the payload 16-byte aligned in a malloc'ed buffer
};
static_assert(sizeof(header) == result_offset);

const char* kind_name(std::uint32_t k) {
  switch (static_cast<collective>(k)) {
    case collective::barrier: return "iso::barrier";
    case collective::broadcast: return "iso::broadcast";
    case collective::reduce: return "iso::reduce";
    case collective::allreduce: return "iso::allreduce";
    case collective::gather: return "iso::gather";
    case collective::allgather: return "iso::allgather";
  }
  return "an unknown collective";
}

// One collective call at one member.
class call_state {
 public:
  call_state(const group& g, collective kind, const char* call) : g_(g), kind_(kind), call_(call) {
    self_ = running_or_throw(call);
    me_ = g.index_of(self_->id);
    if (me_ < 0) {
      raise(errc::invalid_argument, "%s: thread %s is not a member of the group (%zu members)", call,
            self_->id.to_string().c_str(), g.size());
    }
    tag_ = collective_tag(g.fingerprint());
  }
  int me() const noexcept { return me_; }
  int n() const noexcept { return static_cast<int>(g_.size()); }
  void check_root(int root) const {
    if (root < 0 || root >= n()) raise(errc::invalid_argument, "%s: root %d is out of range (%d members)", call_, root, n());
  }

  // A buffer: header + payload.
  std::vector<std::byte> make(const void* data, std::size_t bytes) const {
    const header h{g_.fingerprint(), static_cast<std::uint32_t>(kind_), 0, bytes};
    const auto* d = static_cast<const std::byte*>(data);
    std::vector<std::byte> b;
    b.reserve(sizeof h + bytes);  // filled by copies only: no zeroing first
    b.insert(b.end(), reinterpret_cast<const std::byte*>(&h), reinterpret_cast<const std::byte*>(&h) + sizeof h);
    if (bytes != 0) b.insert(b.end(), d, d + bytes);
    return b;
  }
  void send(int to, const std::vector<std::byte>& b) const { send_reserved(g_[static_cast<std::size_t>(to)], b.data(), b.size(), tag_); }

  // The next message of this group's collective from member `from`.
  std::vector<std::byte> receive(int from) const {
    const thread_id sender = g_[static_cast<std::size_t>(from)];
    // The thread may migrate in recv_reserved: its mailbox (in its heap) stays valid, this
    // rank's objects do not.
    mailbox& mb = mailbox_of(self_);
    for (auto it = mb.stash.begin(); it != mb.stash.end(); ++it) {
      if (it->from == sender && it->tag == tag_ && ours(it->data)) {
        std::vector<std::byte> d = std::move(it->data);
        mb.stash.erase(it);
        return checked(from, std::move(d));
      }
    }
    for (;;) {
      message m = recv_reserved(sender, tag_, call_);
      if (ours(m.data)) return checked(from, std::move(m.data));
      heap_scope own(self_->home_heap);  // the stash is the thread's, like the rest of its mailbox
      mb.stash.push_back(std::move(m));
    }
  }

  static const header& head(const std::vector<std::byte>& b) { return *reinterpret_cast<const header*>(b.data()); }
  static header& head(std::vector<std::byte>& b) { return *reinterpret_cast<header*>(b.data()); }
  // Turns b into a failure carrying `text`.
  void fail(std::vector<std::byte>& b, const std::string& text) const {
    b = make(text.data(), text.size());
    head(b).failed = 1;
  }
  // Throws the failure b carries, if it does.
  void throw_if_failed(const std::vector<std::byte>& b) const {
    if (head(b).failed != 0) {
      throw error(errc::invalid_argument, std::string(reinterpret_cast<const char*>(b.data()) + sizeof(header),
                                                      head(b).bytes));
    }
  }
  const char* call() const noexcept { return call_; }

 private:
  bool ours(const std::vector<std::byte>& d) const {
    ISO_ASSERT(d.size() >= sizeof(header));
    return head(d).fingerprint == g_.fingerprint();
  }
  std::vector<std::byte> checked(int from, std::vector<std::byte>&& d) const {
    if (head(d).kind != static_cast<std::uint32_t>(kind_)) {
      raise(errc::invalid_argument, "%s: member %d of the group called %s meanwhile (every member calls the same "
            "collectives in the same order)", call_, from, kind_name(head(d).kind));
    }
    return std::move(d);
  }

  const group& g_;
  collective kind_;
  const char* call_;
  tcb* self_;
  int me_;
  int tag_;
};

// Binomial broadcast of b (header + payload) from root; b is the result at every member.
void tree_broadcast(const call_state& s, int root, std::vector<std::byte>& b) {
  const int n = s.n(), r = (s.me() - root + n) % n;
  int top = 1;
  while (top < n) top <<= 1;
  if (r != 0) {
    top = r & -r;
    b = s.receive((r - top + root) % n);
  }
  for (int mask = top >> 1; mask >= 1; mask >>= 1) {
    if (r + mask < n) s.send((r + mask + root) % n, b);
  }
}

// Member 0's result goes to root (root != 0).
void to_root(const call_state& s, int root, std::vector<std::byte>& b) {
  if (root == 0) return;
  if (s.me() == 0) s.send(root, b);
  if (s.me() == root) b = s.receive(0);
}

// The binomial tree toward member 0: a member takes in what each of its children sends
// (merge(in, child), children in increasing index order), then sends acc to its parent; member 0
// ends with everything merged.
template <class Merge>
void toward_member_0(const call_state& s, std::vector<std::byte>& acc, Merge&& merge) {
  const int me = s.me(), n = s.n();
  for (int mask = 1; mask < n; mask <<= 1) {
    if ((me & mask) != 0) {
      s.send(me - mask, acc);
      return;
    }
    if (me + mask < n) merge(s.receive(me + mask), me + mask);
  }
}

}  // namespace

std::vector<std::byte> reduce_bytes(const group& g, collective kind, const void* data, std::size_t bytes,
                                    const combiner& c, int root, bool all, const char* call) {
  const call_state s(g, kind, call);
  s.check_root(root);
  std::vector<std::byte> acc = s.make(data, bytes);
  const int me = s.me();
  toward_member_0(s, acc, [&](std::vector<std::byte>&& in, int child) {
    if (call_state::head(acc).failed != 0) return;  // the first failure wins; the rest are read and dropped
    if (call_state::head(in).failed != 0) {
      acc = std::move(in);
    } else if (call_state::head(in).bytes != call_state::head(acc).bytes) {
      s.fail(acc, std::string(call) + ": members pass different lengths (member " + std::to_string(me) + ": " +
                      std::to_string(call_state::head(acc).bytes / c.elem) + " elements, member " +
                      std::to_string(child) + ": " + std::to_string(call_state::head(in).bytes / c.elem) + ")");
    } else if (c.fn != nullptr) {
      c.fn(c.op, acc.data() + sizeof(header), in.data() + sizeof(header), call_state::head(acc).bytes / c.elem);
    }
  });
  if (all) {
    tree_broadcast(s, 0, acc);
  } else {
    to_root(s, root, acc);
    if (me != root) return {};
  }
  s.throw_if_failed(acc);
  return acc;
}

std::vector<std::byte> broadcast_bytes(const group& g, const void* data, std::size_t bytes, int root, const char* call) {
  const call_state s(g, collective::broadcast, call);
  s.check_root(root);
  std::vector<std::byte> b = s.me() == root ? s.make(data, bytes) : std::vector<std::byte>();
  tree_broadcast(s, root, b);
  return b;
}

std::vector<std::byte> gather_bytes(const group& g, collective kind, const void* data, std::size_t bytes, int root,
                                    bool all, const char* call) {
  const call_state s(g, kind, call);
  s.check_root(root);
  std::vector<std::byte> acc = s.make(data, bytes);
  toward_member_0(s, acc, [&](std::vector<std::byte>&& in, int) {
    // acc holds members [me, child); in holds [child, ...): appended, index order holds.
    const std::size_t more = call_state::head(in).bytes;
    acc.insert(acc.end(), in.begin() + sizeof(header), in.end());
    call_state::head(acc).bytes += more;
  });
  if (all) {
    tree_broadcast(s, 0, acc);
  } else {
    to_root(s, root, acc);
    if (s.me() != root) return {};
  }
  return acc;
}

}  // namespace iso::detail
