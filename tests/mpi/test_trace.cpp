// Tracing from the public API: iso::trace::enable, and the file run() writes.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"

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

}  // namespace
