#include "trace.hpp"

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cstdarg>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "diag.hpp"
#include "interpose.hpp"
#include "isothreads/trace.hpp"
#include "prim.hpp"

namespace iso::detail {
namespace {

tracer* g_tracer = nullptr;

// A thread's lane (the trace's tid) is its id's bits: unique for every thread of the run, and
// exact in a JSON reader's doubles while homes stay below 2^13 (bits < 2^53). 0: the runtime lane.
std::uint64_t lane(std::uint64_t thread_bits) { return thread_bits; }
static_assert(thread_id(8190, (std::uint64_t{1} << 40) - 1).bits() < (std::uint64_t{1} << 53));

// JSON string contents: escapes what JSON requires.
std::string escaped(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += format("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out;
}

std::string numbers(const std::vector<double>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i) out += format("%s%.6g", i == 0 ? "" : ",", v[i]);
  return out + "]";
}

}  // namespace

tracer::tracer(MPI_Comm comm, scheduler& s, engine& e, const std::string& path)
    : sched_(s), engine_(e), comm_(comm), rank_(comm_.rank()), size_(comm_.size()) {
  // Time zero of the trace: every rank reads its clock right after one barrier, so the ranks'
  // times line up to within the barrier's skew, even across nodes whose clocks differ.
  check_mpi(MPI_Barrier(comm_), "MPI_Barrier (trace)");
  origin_ns_ = now_ns();
  g_tracer = this;
  if (!path.empty()) enable(path);
}

tracer::~tracer() {
  g_tracer = nullptr;
  sched_.set_run_hook(nullptr);
  engine_.set_observer(nullptr);
}

tracer* tracer::current() noexcept { return g_tracer; }

void tracer::enable(const std::string& path) {
  heap_scope system(nullptr);
  if (path.empty()) raise(errc::invalid_argument, "iso::trace::enable: the path is empty");
  path_ = path;
  events_.reserve(std::size_t{1} << 16);
  sched_.set_run_hook(&on_run);
  engine_.set_observer(this);
}

void tracer::push(const event& e) noexcept {
  if (events_.size() >= max_events) {
    ++dropped_;
    return;
  }
  try {
    events_.push_back(e);
  } catch (const std::bad_alloc&) {
    ++dropped_;
  }
}

void tracer::on_run(tcb* t, std::int64_t start_ns, std::int64_t end_ns) noexcept {
  tracer* self = g_tracer;
  const std::uint64_t id = t->id.bits();
  if (self->names_.find(id) == self->names_.end()) {
    try {
      self->names_.emplace(id, t->name[0] != '\0' ? format("%s '%s'", t->id.to_string().c_str(), t->name) : t->id.to_string());
    } catch (const std::bad_alloc&) {
      // the lane keeps its numeric name
    }
  }
  self->push({start_ns, end_ns - start_ns, id, 0, 0, 0, 0, kind::run});
}

void tracer::departed(thread_id t, std::uint32_t epoch, int to, std::uint64_t bytes, std::int64_t start_ns,
                      std::int64_t end_ns, bool steal) noexcept {
  push({start_ns, end_ns - start_ns, t.bits(), steal ? 1u : 0u, bytes, static_cast<std::int32_t>(epoch), to, kind::depart});
}

void tracer::arrived(thread_id t, std::uint32_t epoch, int from, std::uint64_t bytes, std::int64_t at_ns,
                     bool steal) noexcept {
  push({at_ns, 0, t.bits(), steal ? 1u : 0u, bytes, static_cast<std::int32_t>(epoch), from, kind::arrive});
}

void tracer::sent(thread_id from, thread_id to, int to_rank, std::uint64_t bytes, int tag, std::int64_t at_ns) noexcept {
  push({at_ns, 0, from.bits(), to.bits(), bytes, tag, to_rank, kind::send});
}

void tracer::balanced(const lb::step_report& r, std::int64_t start_ns, std::int64_t end_ns,
                      const std::vector<double>& before, const std::vector<double>& after) noexcept {
  try {
    steps_.push_back({r, before, after});
    push({start_ns, end_ns - start_ns, 0, steps_.size() - 1, 0, 0, 0, kind::lb});
  } catch (const std::bad_alloc&) {
    ++dropped_;
  }
}

namespace {

// Appends comma-separated JSON events to a string, formatting each into a stack buffer: a trace
// holds hundreds of thousands of events, and a temporary string apiece would dominate the cost.
class json_events {
 public:
  explicit json_events(std::string& out) : out_(out) {}
  void add(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    const int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!out_.empty()) out_ += ",\n";
    if (n >= 0 && static_cast<std::size_t>(n) < sizeof buf) {
      out_.append(buf, static_cast<std::size_t>(n));
    } else {  // a long one (a balancing step with many ranks): format it again, unbounded
      va_start(ap, fmt);
      out_ += vformat(fmt, ap);
      va_end(ap);
    }
  }

 private:
  std::string& out_;
};

// The two events a trace is mostly made of, appended piece by piece: printf's number formatting
// would triple the time it takes to write a trace.
class fast_json {
 public:
  explicit fast_json(std::string& out) : out_(out) {}
  fast_json& text(std::string_view s) {
    out_.append(s);
    return *this;
  }
  fast_json& integer(std::int64_t v) {
    char buf[24];
    out_.append(buf, static_cast<std::size_t>(std::to_chars(buf, buf + sizeof buf, v).ptr - buf));
    return *this;
  }
  fast_json& number(std::uint64_t v) {
    char buf[24];
    out_.append(buf, static_cast<std::size_t>(std::to_chars(buf, buf + sizeof buf, v).ptr - buf));
    return *this;
  }
  // Nanoseconds as microseconds with 3 decimals, in integer arithmetic (pre: ns >= 0).
  fast_json& micros(std::int64_t ns) {
    char buf[32];
    char* end = std::to_chars(buf, buf + sizeof buf, static_cast<std::uint64_t>(ns) / 1000).ptr;
    const auto frac = static_cast<unsigned>(static_cast<std::uint64_t>(ns) % 1000);
    *end++ = '.';
    *end++ = static_cast<char>('0' + frac / 100);
    *end++ = static_cast<char>('0' + frac / 10 % 10);
    *end++ = static_cast<char>('0' + frac % 10);
    out_.append(buf, static_cast<std::size_t>(end - buf));
    return *this;
  }

 private:
  std::string& out_;
};

// "home:serial" without allocating.
struct id_text {
  explicit id_text(std::uint64_t bits) {
    const thread_id t = thread_id::from_bits(bits);
    // At most 11 + 1 + 20 characters and the NUL: the buffer always has room.
    char* end = std::to_chars(text, text + 12, t.home()).ptr;
    *end++ = ':';
    end = std::to_chars(end, end + 20, t.serial()).ptr;
    *end = '\0';
  }
  char text[34];
};

}  // namespace

std::string tracer::to_json() const {
  std::string out;
  out.reserve(events_.size() * 160);
  json_events json(out);
  auto us = [&](std::int64_t ns) { return static_cast<double>(ns - origin_ns_) / 1000.0; };
  json.add(R"({"ph":"M","name":"process_name","pid":%d,"args":{"name":"rank %d"}})", rank_, rank_);
  json.add(R"({"ph":"M","name":"thread_name","pid":%d,"tid":0,"args":{"name":"runtime"}})", rank_);
  sys_unordered_map<std::uint64_t, std::string> lane_names;  // escaped once, used per event
  for (const auto& [id, name] : names_) {
    const std::string& e = lane_names.emplace(id, escaped(name)).first->second;
    json.add(R"({"ph":"M","name":"thread_name","pid":%d,"tid":%)" PRIu64 R"(,"args":{"name":"%s"}})", rank_, lane(id),
             e.c_str());
  }
  for (const event& e : events_) {
    const id_text thread(e.thread);
    switch (e.k) {
      case kind::run: {
        auto it = lane_names.find(e.thread);
        fast_json(out)
            .text(",\n{\"ph\":\"X\",\"cat\":\"run\",\"name\":\"")
            .text(it != lane_names.end() ? std::string_view(it->second) : std::string_view(thread.text))
            .text("\",\"pid\":")
            .number(static_cast<std::uint64_t>(rank_))
            .text(",\"tid\":")
            .number(lane(e.thread))
            .text(",\"ts\":")
            .micros(std::max<std::int64_t>(e.ts_ns - origin_ns_, 0))
            .text(",\"dur\":")
            .micros(e.dur_ns)
            .text(",\"args\":{\"thread\":\"")
            .text(thread.text)
            .text("\"}}");
        break;
      }
      case kind::depart:
        // A steal is a migration named so, with "steal":true.
        json.add(R"({"ph":"X","cat":"migrate","name":"%s %s -> %d","pid":%d,"tid":0,"ts":%.3f,"dur":%.3f,)"
                 R"("args":{"thread":"%s","to":%d,"bytes":%)" PRIu64 "%s}}",
                 e.a != 0 ? "steal" : "migrate", thread.text, e.peer, rank_, us(e.ts_ns),
                 static_cast<double>(e.dur_ns) / 1000.0, thread.text, e.peer, e.b, e.a != 0 ? R"(,"steal":true)" : "");
        // The arrow's id: the thread and its epoch, known on both ends.
        json.add(R"({"ph":"s","cat":"migrate","name":"migration","id":"%s/%d","pid":%d,"tid":0,"ts":%.3f})", thread.text,
                 e.c, rank_, us(e.ts_ns));
        break;
      case kind::arrive:
        json.add(R"({"ph":"i","s":"t","cat":"migrate","name":"%s %s","pid":%d,"tid":0,"ts":%.3f,)"
                 R"("args":{"thread":"%s","from":%d,"bytes":%)" PRIu64 "%s}}",
                 e.a != 0 ? "stolen" : "arrive", thread.text, rank_, us(e.ts_ns), thread.text, e.peer, e.b,
                 e.a != 0 ? R"(,"steal":true)" : "");
        json.add(R"({"ph":"f","bp":"e","cat":"migrate","name":"migration","id":"%s/%d","pid":%d,"tid":0,"ts":%.3f})",
                 thread.text, e.c, rank_, us(e.ts_ns));
        break;
      case kind::send:
        fast_json(out)
            .text(",\n{\"ph\":\"i\",\"s\":\"t\",\"cat\":\"message\",\"name\":\"send\",\"pid\":")
            .number(static_cast<std::uint64_t>(rank_))
            .text(",\"tid\":")
            .number(lane(e.thread))
            .text(",\"ts\":")
            .micros(std::max<std::int64_t>(e.ts_ns - origin_ns_, 0))
            .text(",\"args\":{\"to\":\"")
            .text(id_text(e.a).text)
            .text("\",\"to_rank\":")
            .number(static_cast<std::uint64_t>(e.peer))
            .text(",\"bytes\":")
            .number(e.b)
            .text(",\"tag\":")
            .integer(e.c)
            .text("}}");
        break;
      case kind::lb: {
        const step& st = steps_[e.a];
        std::string args = format(R"("step":%zu,"strategy":"%s","max_over_avg_before":%.4f,"max_over_avg_after":%.4f,)"
                                  R"("threads_moved":%zu,"bytes_moved":%zu)",
                                  st.report.step, escaped(st.report.strategy).c_str(), st.report.max_over_avg_before,
                                  st.report.max_over_avg_after, st.report.threads_moved, st.report.bytes_moved);
        if (!st.before.empty()) args += ",\"load_before\":" + numbers(st.before) + ",\"load_after\":" + numbers(st.after);
        json.add(R"J({"ph":"X","cat":"lb","name":"lb step %zu (%s)","pid":%d,"tid":0,"ts":%.3f,"dur":%.3f,"args":{%s}})J",
                 st.report.step, escaped(st.report.strategy).c_str(), rank_, us(e.ts_ns),
                 static_cast<double>(e.dur_ns) / 1000.0, args.c_str());
        break;
      }
    }
  }
  return out;
}

void tracer::write() {
  if (!enabled()) return;
  heap_scope system(nullptr);
  const std::string json = to_json();
  // Rank 0 gathers every rank's events and the threads each saw, and writes the file.
  std::uint64_t dropped = 0;
  check_mpi(MPI_Reduce(&dropped_, &dropped, 1, MPI_UINT64_T, MPI_SUM, 0, comm_), "MPI_Reduce (trace)");
  sys_vector<std::uint64_t> seen;
  for (const auto& [id, name] : names_) seen.push_back(id);
  const sys_vector<sys_vector<std::uint64_t>> all_seen = gather_all(comm_, seen.data(), seen.size());
  const sys_vector<sys_vector<char>> texts = gather_all(comm_, json.data(), json.size());
  if (rank_ != 0) return;
  // Threads: those that ran anywhere, each counted once.
  sys_vector<std::uint64_t> threads;
  for (const auto& ids : all_seen) threads.insert(threads.end(), ids.begin(), ids.end());
  std::sort(threads.begin(), threads.end());
  const auto all_threads = static_cast<std::uint64_t>(std::unique(threads.begin(), threads.end()) - threads.begin());
  // Written piece by piece: the file is megabytes, and this time counts in the traced run. No
  // fsync: a trace is for looking at, not for surviving a crash.
  const std::string head = format(R"({"displayTimeUnit":"ms","otherData":{"isothreads":1,"ranks":%d,"threads":%)" PRIu64
                                  R"(,"dropped_events":%)" PRIu64 "},\n\"traceEvents\":[\n",
                                  size_, all_threads, dropped);
  int fd = -1;
  int e = prim::file_create(path_.c_str(), &fd);
  if (e == 0) {
    e = prim::file_write(fd, head.data(), head.size());
    bool first = true;
    for (const auto& text : texts) {
      if (e != 0 || text.empty()) continue;
      if (!first) e = prim::file_write(fd, ",\n", 2);
      if (e == 0) e = prim::file_write(fd, text.data(), text.size());
      first = false;
    }
    if (e == 0) e = prim::file_write(fd, "\n]}\n", 4);
    prim::file_close(fd);
  }
  if (e != 0) raise(errc::io_failure, "iso::trace: cannot write %s: %s", path_.c_str(), std::strerror(e));
}

}  // namespace iso::detail

namespace iso::trace {

void enable(const std::string& path) {
  detail::tracer* t = detail::tracer::current();
  if (t == nullptr) detail::raise(errc::no_runtime, "iso::trace::enable: no isothreads runtime in this process");
  t->enable(path);
}

bool enabled() noexcept {
  detail::tracer* t = detail::tracer::current();
  return t != nullptr && t->enabled();
}

}  // namespace iso::trace
