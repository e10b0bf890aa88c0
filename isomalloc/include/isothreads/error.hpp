// iso::error — what every misuse and failure of the C++ API throws.
//
// An iso::error is a std::system_error whose code belongs to iso::error_category() and whose
// what() names the problem with the offending value ("thread 0:17 is unknown on rank 2").
#pragma once

#include <string>
#include <system_error>

namespace iso {

enum class errc {
  ok = 0,
  invalid_argument = 1,     // a value out of its documented range (a size, a name, an option)
  invalid_rank,             // a rank outside [0, size())
  unknown_thread,           // a thread_id that names no live thread
  not_in_thread,            // a call that needs a migratable thread, made from outside one
  no_runtime,               // a call that needs iso::runtime, made before or after it
  region_exhausted,         // this rank's share of the isomalloc region has no room left
  bad_pointer,              // a pointer the allocator did not hand out, or one freed already
  corrupt_image,            // an image or checkpoint whose header or checksum does not verify
  layout_mismatch,          // ranks run different binaries or library layouts
  region_agreement,         // the ranks found no common free range of addresses
  stack_size,               // a stack size outside [min, max]
  already_joined,           // a thread joined twice, or a thread joining itself
  deadlock,                 // every remaining thread is blocked and nothing can wake them
  mpi_failure,              // an MPI call returned an error
  io_failure,               // a file could not be read or written
  system_failure,           // an OS call (mmap, madvise, exec, ...) failed
  thread_failed,            // the body of an iso::async thread threw: what() is the exception's what()
};

const std::error_category& error_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

class error : public std::system_error {
 public:
  error(errc code, const std::string& what) : std::system_error(make_error_code(code), what), what_(what) {}
  errc code_value() const noexcept { return static_cast<errc>(code().value()); }
  // The message alone: it names the problem already, so the category's text is not appended.
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  std::string what_;
};

}  // namespace iso

template <>
struct std::is_error_code_enum<iso::errc> : std::true_type {};
