// Checks made inside migratable threads. GoogleTest records a failure in its process-wide state;
// recorded from a thread, that record would be allocated in the thread's heap and dangle once the
// thread moved or ended (docs/user-guide.md), so these report from the system heap, and name the
// rank the thread is on.
#pragma once

#include <gtest/gtest.h>

#include <source_location>

#include "isothreads/isothreads.hpp"

namespace iso_test {

inline void check(bool ok, const char* what, std::source_location where = std::source_location::current()) {
  if (ok) return;
  iso::system_heap_scope system;
  ADD_FAILURE_AT(where.file_name(), static_cast<int>(where.line())) << what << " (on rank " << iso::rank() << ")";
}

template <class A, class B>
void check_eq(const A& got, const B& want, const char* what,
              std::source_location where = std::source_location::current()) {
  if (got == want) return;
  iso::system_heap_scope system;
  ADD_FAILURE_AT(where.file_name(), static_cast<int>(where.line()))
      << what << ": got " << testing::PrintToString(got) << ", expected " << testing::PrintToString(want)
      << " (on rank " << iso::rank() << ")";
}

}  // namespace iso_test
