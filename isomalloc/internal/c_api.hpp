// Shared by the C entry points of every module: the per-OS-thread last error of iso_last_error().
#pragma once

#include "isothreads/error.hpp"

namespace iso::detail {

// Records the message for iso_last_error() (truncated to 511 bytes). Does not allocate.
void set_last_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void clear_last_error() noexcept;

// Runs f and turns an iso::error / std::bad_alloc into a return code with the last error set.
template <class F>
int c_call(F&& f) noexcept {
  try {
    f();
    clear_last_error();
    return 0;
  } catch (const iso::error& e) {
    set_last_error("%s", e.what());
    return e.code().value();
  } catch (const std::bad_alloc&) {
    set_last_error("out of memory");
    return static_cast<int>(errc::system_failure);
  } catch (const std::exception& e) {
    set_last_error("%s", e.what());
    return static_cast<int>(errc::system_failure);
  }
}

}  // namespace iso::detail
