// Tracing from the public API: iso::trace::enable, and the file run() writes.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"
#include "scheduler.hpp"

namespace {

using iso_test::rt;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(Trace, NamesOfThreadsThatYieldToEachOtherOutliveTheirHeaps) {
  // Lane names longer than a short string's inline buffer, first seen when their threads yield
  // straight to one another: the names must not live in the threads' heaps, which are gone by
  // the time run() writes the trace.
  const std::string path = "trace-names.json";  // the same on every rank; rank 0 writes it
  iso::trace::enable(path);
  for (int i = 0; i < 4; ++i) {
    iso::spawn([] { for (int k = 0; k < 50; ++k) iso::this_thread::yield(); },
               {.name = "a rather long thread name " + std::to_string(i)});
  }
  // Later, once those threads and their heaps are gone, a thread whose heap takes over their
  // memory and overwrites it.
  iso::spawn([] {
    iso::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::vector<std::string> filler;
    for (int k = 0; k < 2000; ++k) filler.emplace_back(1000, 'x');
  });
  rt->run();
  if (rt->rank() == 0) {
    const std::string text = slurp(path);
    for (int i = 0; i < 4; ++i) {
      EXPECT_NE(text.find("'a rather long thread name " + std::to_string(i) + "'"), std::string::npos) << "thread " << i;
    }
    std::remove(path.c_str());
  }
}

// The run events of the thread `thread` ("home:serial") in a trace's text.
int runs_of(const std::string& text, const std::string& thread) {
  int n = 0;
  const std::string key = "\"args\":{\"thread\":\"" + thread + "\"";
  for (std::size_t at = text.find("\"cat\":\"run\""); at != std::string::npos; at = text.find("\"cat\":\"run\"", at + 1)) {
    const std::size_t args = text.find(key, at);
    if (args != std::string::npos && args < text.find('\n', at)) ++n;
  }
  return n;
}

TEST(Trace, EveryRunOfThreadsThatEndStraightIntoTheirJoinerIsTraced) {
  // Each child runs once and ends, switching straight to its joiner (scheduler::finish_running):
  // that run is traced as the child's, and the joiner's runs between the joins as its own.
  const std::string path = "trace-ends.json";
  iso::trace::enable(path);
  constexpr int children = 50;
  std::vector<std::string> ids;
  std::string parent;
  if (rt->rank() == 0) {
    parent = iso::spawn([&ids] {
               for (int i = 0; i < children; ++i) {
                 const iso::thread_id t = iso::spawn([] {});
                 {
                   iso::system_heap_scope system;  // ids outlives this thread's heap
                   ids.push_back(t.to_string());
                 }
                 iso::join(t);
               }
             }).to_string();
  }
  rt->run();
  if (rt->rank() == 0) {
    const std::string text = slurp(path);
    ASSERT_EQ(ids.size(), static_cast<std::size_t>(children));
    for (const std::string& id : ids) EXPECT_EQ(runs_of(text, id), 1) << "thread " << id;
    // Its first run ends at the first join; each child's end starts the next.
    EXPECT_EQ(runs_of(text, parent), children + 1);
    std::remove(path.c_str());
  }
}

// The tid of the lane named `name` on rank `pid` (its thread_name event), or -1.
long long lane_of(const std::string& text, int pid, const std::string& name) {
  const std::string pid_key = "\"pid\":" + std::to_string(pid) + ",";
  for (std::size_t at = text.find("\"thread_name\""); at != std::string::npos; at = text.find("\"thread_name\"", at + 1)) {
    const std::size_t begin = text.rfind('{', at), end = text.find('\n', at);
    const std::string event = text.substr(begin, end - begin);
    if (event.find(pid_key) == std::string::npos || event.find(name) == std::string::npos) continue;
    const std::size_t tid = event.find("\"tid\":");
    return std::stoll(event.substr(tid + 6));
  }
  return -1;
}

TEST(Trace, LanesOfThreadsWithLargeSerialsDoNotCollide) {
  // Thread 1:s and thread 0:(10^6 + s) both run on rank 0: a lane numbered home * 10^6 + serial
  // would give both the same tid there.
  const std::string path = "trace-lanes.json";
  iso::trace::enable(path);
  std::uint64_t s = 0;
  if (rt->rank() == 1) {
    const iso::thread_id near = iso::spawn([] { iso::this_thread::migrate_to(0); }, {.name = "near serial"});
    s = near.serial();
  }
  MPI_Bcast(&s, 1, MPI_UINT64_T, 1, MPI_COMM_WORLD);
  if (rt->rank() == 0) {
    iso::detail::scheduler::current()->raise_next_serial(1000000 + s);
    const iso::thread_id far = iso::spawn([] { iso::this_thread::sleep_for(std::chrono::milliseconds(5)); },
                                          {.name = "far serial"});
    EXPECT_EQ(far, iso::thread_id(0, 1000000 + s));
  }
  rt->run();
  if (rt->rank() == 0) {
    const std::string text = slurp(path);
    const long long far = lane_of(text, 0, "'far serial'"), near = lane_of(text, 0, "'near serial'");
    EXPECT_GT(far, 0);
    EXPECT_GT(near, 0);
    EXPECT_NE(far, near);
    std::remove(path.c_str());
  }
}

}  // namespace
