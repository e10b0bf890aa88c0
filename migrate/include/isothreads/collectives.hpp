// Collectives over an iso::group: barrier, broadcast, reduce, allreduce, gather, allgather.
//
// Every member of g calls the same collective with the same root and op, in the same order as the
// other members (like an MPI communicator), from a migratable thread; members may migrate
// before, during and after. Several groups, overlapping ones too, may run collectives at once.
// T: trivially copyable. Op: iso::sum, iso::min, iso::max, or an associative callable T(T, T),
// identical on every member; members are combined in index order (op need not commute).
//
// Cost, for a group of N members on P ranks: members on one rank combine there, without
// messages; each rank sends what it holds to member 0 as one message (one more each time a poll
// interval, 32 to 256 thread switches, passes between two of its members' calls), and member 0 sends
// the result to each other rank where members wait, one message per rank. So a rank sends and
// receives O(1) messages between ranks per call, member 0's rank O(P); the whole call waits for
// about two messages' latency. Payloads: a value (or span) per message for reduce and
// broadcast, the values of the sender's members for gather. The association is fixed by member
// indices (a binomial tree: member 0 takes in [1, 2), then [2, 4), [4, 8), ...), so a
// floating-point result is the same bits wherever the members run.
// A member waiting for a result (all members for barrier, broadcast and the all- variants, root
// for reduce and gather) stays on its rank until it has it: a migration asked meanwhile happens
// once it has read it, before the call returns, unless the call throws or the member holds an
// iso::mutex (then at its next suspension where it may move). The others return once their
// value is in.
// Errors: iso::error(invalid_argument) naming the call when the caller is not a member, root is
// out of range, or (element-wise allreduce) members pass different lengths, or op throws ("<call>:
// the operation threw: <what()>"; invalid_argument, as API.md gives for every collective's
// errors): these two are found by the member that combines the values, and every member that
// returns a result throws; (invalid_argument) in the call when the result and 64 bytes of headers
// exceed iso::max_message_bytes (gather: N values); (not_in_thread) outside a thread.
// Out of memory: a member whose value its rank cannot keep throws std::bad_alloc (member 0 once
// it has combined and answered the others); its value is then a failure, so every member that
// returns a result throws iso::error(invalid_argument) "<call>: member <i> ran out of memory for
// its value ...", and the group's later collectives pair up as usual. If even that failure
// cannot be kept, the process stops through the fatal-error path (no member is left waiting).
// Member 0 out of memory in its own heap while it combines the values (its tree, the batches it
// keeps, a batch of the group's next collective it puts aside) frees what it holds for the call
// and throws std::bad_alloc once it has answered the others, which throw
// iso::error(invalid_argument) "<call>: member 0 ran out of memory while it combined the values
// ..."; if it cannot put that batch aside even then, the process stops through the fatal-error
// path.
#pragma once

#include <cstddef>
#include <cstring>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "isothreads/group.hpp"

namespace iso {

struct sum_t {
  template <class T>
  T operator()(const T& a, const T& b) const { return a + b; }
};
struct min_t {
  template <class T>
  T operator()(const T& a, const T& b) const { return b < a ? b : a; }
};
struct max_t {
  template <class T>
  T operator()(const T& a, const T& b) const { return a < b ? b : a; }
};
inline constexpr sum_t sum{};
inline constexpr min_t min{};
inline constexpr max_t max{};

namespace detail {

enum class collective : std::uint32_t { barrier = 1, broadcast, reduce, allreduce, gather, allgather };

// fn: acc[i] = op(acc[i], in[i]) for `count` elements (acc: the lower member indices); fn_into:
// out[i] = op(a[i], b[i]) (a: the lower ones), the same bits, for a left block that must not be
// written (a waiting member's own values).
struct combiner {
  void (*fn)(const void* op, std::byte* acc, const std::byte* in, std::size_t count);
  const void* op;
  std::size_t elem;  // bytes per element
  void (*fn_into)(const void* op, std::byte* out, const std::byte* a, const std::byte* b, std::size_t count) = nullptr;
};
template <class T, class Op>
void combine_elements_into(const void* op, std::byte* out, const std::byte* left, const std::byte* right,
                           std::size_t count) {
  const Op& f = *static_cast<const Op*>(op);
  for (std::size_t i = 0; i < count; ++i) {
    T a, b;
    std::memcpy(&a, left + i * sizeof(T), sizeof(T));
    std::memcpy(&b, right + i * sizeof(T), sizeof(T));
    const T c = f(a, b);
    std::memcpy(out + i * sizeof(T), &c, sizeof(T));
  }
}
// In place: acc[i] = op(acc[i], in[i]) (each element is read before it is written).
template <class T, class Op>
void combine_elements(const void* op, std::byte* acc, const std::byte* in, std::size_t count) {
  combine_elements_into<T, Op>(op, acc, acc, in, count);
}

// A collective's result record where the call returns one: result_offset bytes of message
// header, then the result's bytes. Member 0 owns its record; the other members read the one their
// rank's waiters share, in place, and stay on their rank until this is destroyed (read it at once,
// with no yield in between).
inline constexpr std::size_t result_offset = 32;
struct result_header_bytes {  // combiner.hpp's result_header, as bytes
  std::byte bytes[result_offset];
};
class result_record {
 public:
  result_record() noexcept = default;
  // A copy of the record: header and result bytes. A scalar's record is kept in the object
  // itself (no allocation); a larger one in own_. Throws std::bad_alloc.
  result_record(const result_header_bytes& header, const std::byte* bytes, std::size_t n) {
    if (result_offset + n > sizeof small_) {
      own_.reserve(result_offset + n);  // filled by copies only
      own_.insert(own_.end(), header.bytes, header.bytes + result_offset);
      own_.insert(own_.end(), bytes, bytes + n);
      data_ = own_.data();
    } else {
      std::memcpy(small_, header.bytes, result_offset);
      if (n != 0) std::memcpy(small_ + result_offset, bytes, n);
      data_ = small_;
    }
    size_ = result_offset + n;
  }
  // A record shared by this rank's waiters (combiner.hpp's shared_result), read by `reader`.
  result_record(const void* shared, const std::byte* data, std::size_t size, void* reader) noexcept
      : data_(data), size_(size), shared_(shared), reader_(reader) {}
  result_record(result_record&& o) noexcept
      : own_(std::move(o.own_)), data_(o.data_), size_(o.size_), shared_(o.shared_), reader_(o.reader_) {
    if (o.data_ == o.small_) {
      std::memcpy(small_, o.small_, o.size_);
      data_ = small_;
    }
    o.data_ = nullptr;
    o.size_ = 0;
    o.shared_ = nullptr;
  }
  result_record& operator=(result_record&&) = delete;
  ~result_record();
  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }

 private:
  std::vector<std::byte> own_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  const void* shared_ = nullptr;  // let go of by the destructor
  void* reader_ = nullptr;
  alignas(std::max_align_t) std::byte small_[64];  // a small record of its own (data_ == small_)
};

// The byte-level collectives. Each returns the result record where the call gives one (root, or
// every member for the all- variants and broadcast); an empty one elsewhere. `call` names the
// public call.
result_record reduce_bytes(const group& g, collective kind, const void* data, std::size_t bytes, const combiner& c,
                           int root, bool all, const char* call);
result_record broadcast_bytes(const group& g, const void* data, std::size_t bytes, int root, const char* call);
result_record gather_bytes(const group& g, collective kind, const void* data, std::size_t bytes, int root, bool all,
                           const char* call);

template <class T>
T value_from(const result_record& b) {
  T v{};
  if (b.size() == result_offset + sizeof(T)) std::memcpy(&v, b.data() + result_offset, sizeof(T));
  return v;
}
template <class T>
std::vector<T> values_from(const result_record& b) {
  if (b.size() <= result_offset) return {};
  const std::size_t n = (b.size() - result_offset) / sizeof(T);
  if constexpr (alignof(T) <= alignof(std::max_align_t)) {
    // Filled by one copy, without zeroing the elements first (a large result is written once).
    // The payload is aligned for T: result_offset bytes into member 0's heap block or its
    // record's small_ (aligned as max_align_t), or into the record its rank's waiters share,
    // which starts a multiple of alignof(max_align_t) bytes into a system block (combiner.hpp's
    // shared_result). It holds T objects (implicitly created in
    // the block: T is trivially copyable).
    const auto* first = reinterpret_cast<const T*>(b.data() + result_offset);
    return std::vector<T>(first, first + n);
  }
  std::vector<T> v(n);
  std::memcpy(v.data(), b.data() + result_offset, n * sizeof(T));
  return v;
}
template <class T, class Op>
combiner combiner_for(const Op& op) {
  static_assert(std::is_trivially_copyable_v<T>, "iso collectives: T must be trivially copyable");
  static_assert(std::is_convertible_v<std::invoke_result_t<const Op&, const T&, const T&>, T>,
                "iso collectives: op must be a callable T(T, T)");
  return {&combine_elements<T, Op>, &op, sizeof(T), &combine_elements_into<T, Op>};
}

}  // namespace detail

// Returns once every member has called it.
inline void barrier(const group& g) {
  detail::reduce_bytes(g, detail::collective::barrier, nullptr, 0, {nullptr, nullptr, 1}, 0, true, "iso::barrier");
}

// root's value, at every member.
template <class T>
T broadcast(const group& g, const T& value, int root) {
  static_assert(std::is_trivially_copyable_v<T>, "iso::broadcast: T must be trivially copyable");
  return detail::value_from<T>(detail::broadcast_bytes(g, &value, sizeof(T), root, "iso::broadcast"));
}

// The combination of every member's value at root (in index order); T{} elsewhere.
template <class T, class Op>
T reduce(const group& g, const T& value, Op op, int root) {
  return detail::value_from<T>(detail::reduce_bytes(g, detail::collective::reduce, &value, sizeof(T),
                                                    detail::combiner_for<T>(op), root, false, "iso::reduce"));
}

// The combination of every member's value, at every member.
template <class T, class Op>
T allreduce(const group& g, const T& value, Op op) {
  return detail::value_from<T>(detail::reduce_bytes(g, detail::collective::allreduce, &value, sizeof(T),
                                                    detail::combiner_for<T>(op), 0, true, "iso::allreduce"));
}

// Element-wise: element i of the result combines element i of every member's values. Every member
// passes the same length.
template <class T, std::size_t Extent, class Op>
std::vector<std::remove_cv_t<T>> allreduce(const group& g, std::span<T, Extent> values, Op op) {
  using V = std::remove_cv_t<T>;
  return detail::values_from<V>(detail::reduce_bytes(g, detail::collective::allreduce, values.data(),
                                                     values.size_bytes(), detail::combiner_for<V>(op), 0, true,
                                                     "iso::allreduce"));
}
template <class T, class A, class Op>
std::vector<T> allreduce(const group& g, const std::vector<T, A>& values, Op op) {
  return allreduce(g, std::span<const T>(values), op);
}

// root: every member's value, in index order; elsewhere empty.
template <class T>
std::vector<T> gather(const group& g, const T& value, int root) {
  static_assert(std::is_trivially_copyable_v<T>, "iso::gather: T must be trivially copyable");
  return detail::values_from<T>(
      detail::gather_bytes(g, detail::collective::gather, &value, sizeof(T), root, false, "iso::gather"));
}

// Every member: every member's value, in index order.
template <class T>
std::vector<T> allgather(const group& g, const T& value) {
  static_assert(std::is_trivially_copyable_v<T>, "iso::allgather: T must be trivially copyable");
  return detail::values_from<T>(
      detail::gather_bytes(g, detail::collective::allgather, &value, sizeof(T), 0, true, "iso::allgather"));
}

}  // namespace iso
