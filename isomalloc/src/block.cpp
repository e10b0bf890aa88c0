// The C block interface (isothreads/isomalloc.h), except iso_init, which comm/ implements over MPI.
//
// Blocks held on this rank are recorded in `blocks` (address -> state), so that iso_free and
// iso_length can refuse pointers that are not blocks. A detached block stays recorded on its
// owner until its range comes home (region return hook), so that neither a new allocation nor a
// stale image can land on it meanwhile.
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "c_api.hpp"
#include "checksum.hpp"
#include "diag.hpp"
#include "isothreads/isomalloc.h"
#include "ownership.hpp"
#include "region.hpp"

namespace iso::detail {
namespace {

thread_local char t_last_error[512];

struct block_entry {
  std::size_t length;  // usable bytes, a multiple of the page size
  bool held;           // true: the data is here; false: detached, the data lives elsewhere
};

// Image layout: block_header, then `length` bytes of data.
struct block_header {
  std::uint64_t magic;            // image_magic
  std::uint32_t version;          // image_version
  std::uint32_t header_bytes;     // sizeof(block_header)
  std::uint64_t address;          // where the block lives, on every rank
  std::uint64_t length;           // data bytes that follow
  std::uint64_t region_base;      // the region it was allocated in, to refuse images of
  std::uint64_t region_bytes;     //   another layout
  std::uint64_t data_checksum;    // checksum64 of the data
  std::uint64_t header_checksum;  // checksum64 of the fields above
};
constexpr std::uint64_t image_magic = 0x4b4c426f73690a01ull;  // "\x01\nisoBLK"
constexpr std::uint32_t image_version = 1;

class block_table {
 public:
  static block_table& get() {
    static block_table t;
    return t;
  }
  std::mutex lock;
  sys_unordered_map<std::uintptr_t, block_entry> entries;
};

std::size_t page_round(std::size_t bytes) {
  const std::size_t page = prim::page_size();
  return (bytes + page - 1) / page * page;
}

std::size_t chunks_for(std::size_t length) { return (length + chunk_bytes - 1) / chunk_bytes; }

std::uint64_t header_sum(const block_header& h) {
  return checksum64(&h, offsetof(block_header, header_checksum), image_magic);
}

// A run comes home from the rank that freed its copy. If this rank, its owner, still holds the
// block (the image left before iso_detach), the run stays this block's: refuse the return.
// A detached block's record goes with its range.
bool accept_return(std::uintptr_t addr, std::size_t) noexcept {
  block_table& t = block_table::get();
  std::lock_guard<std::mutex> g(t.lock);
  auto it = t.entries.find(addr);
  if (it == t.entries.end()) return true;
  if (it->second.held) return false;
  t.entries.erase(it);
  return true;
}

region& ready_region() {
  region& r = region::get();
  if (!r.ready()) {
    raise(iso::errc::no_runtime, "the isomalloc region is not initialised: call iso_init(comm) after MPI_Init");
  }
  r.set_return_hook(&accept_return);
  // MPI only on the MPI thread: from other OS threads a no-op. A failure of the return path is
  // not this call's: it is tried again at the next poll, and iso_progress reports it.
  r.poll();
  return r;
}

// The entry for a block held here; throws iso::error(bad_pointer) naming the pointer otherwise.
const block_entry& held_entry(block_table& t, const void* block, const char* call) {
  auto it = t.entries.find(reinterpret_cast<std::uintptr_t>(block));
  if (it == t.entries.end() || !it->second.held) {
    raise(iso::errc::bad_pointer, "%s(%p): not a block held on this rank%s", call, block,
          it != t.entries.end() ? " (it was detached)"
          : region::get().contains(block) ? " (never allocated here, or freed already)"
                                          : " (outside the isomalloc region)");
  }
  return it->second;
}

}  // namespace

void set_last_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(t_last_error, sizeof t_last_error, fmt, ap);
  va_end(ap);
}

void clear_last_error() noexcept { t_last_error[0] = '\0'; }

}  // namespace iso::detail

using namespace iso::detail;

extern "C" {

void* iso_malloc(size_t bytes) {
  void* block = nullptr;
  c_call([&] {
    region& r = ready_region();
    const std::size_t length = page_round(bytes == 0 ? 1 : bytes);
    void* run = r.alloc_chunks(chunks_for(length));
    block_table& t = block_table::get();
    try {
      std::lock_guard<std::mutex> g(t.lock);
      t.entries[reinterpret_cast<std::uintptr_t>(run)] = {length, true};
    } catch (...) {
      r.free_chunks(run, chunks_for(length));  // untracked, it could never be freed: NULL instead
      throw;
    }
    block = run;  // only a block the table tracks is returned
  });
  return block;
}

void iso_free(void* block) {
  const int rc = c_call([&] {
    region& r = ready_region();
    block_table& t = block_table::get();
    std::size_t length = 0;
    {
      std::lock_guard<std::mutex> g(t.lock);
      length = held_entry(t, block, "iso_free").length;
      t.entries.erase(reinterpret_cast<std::uintptr_t>(block));
    }
    r.free_chunks(block, chunks_for(length));
  });
  if (rc != 0) std::fprintf(stderr, "isothreads: rank %d: %s\n", diag_rank(), iso_last_error());
}

size_t iso_length(const void* block) {
  std::size_t length = 0;
  c_call([&] {
    block_table& t = block_table::get();
    std::lock_guard<std::mutex> g(t.lock);
    length = held_entry(t, block, "iso_length").length;
  });
  return length;
}

int iso_in_range(const void* p) { return region::get().contains(p) ? 1 : 0; }

size_t iso_pack_size(const void* block) {
  const std::size_t length = iso_length(block);
  return length == 0 ? 0 : sizeof(block_header) + length;
}

size_t iso_pack(const void* block, void* buffer, size_t capacity) {
  const std::size_t length = iso_length(block);
  if (length == 0) return 0;
  if (buffer == nullptr || capacity < sizeof(block_header) + length) {
    set_last_error("iso_pack(%p): the buffer holds %zu bytes, the image needs %zu", block, capacity,
                   sizeof(block_header) + length);
    return 0;
  }
  const region& r = region::get();
  block_header h{image_magic,
                 image_version,
                 sizeof(block_header),
                 reinterpret_cast<std::uintptr_t>(block),
                 length,
                 r.base(),
                 r.bytes(),
                 checksum64(block, length),
                 0};
  h.header_checksum = header_sum(h);
  std::memcpy(buffer, &h, sizeof h);
  std::memcpy(static_cast<char*>(buffer) + sizeof h, block, length);
  return sizeof h + length;
}

void* iso_unpack(const void* image, size_t bytes) {
  void* result = nullptr;
  c_call([&] {
    region& r = ready_region();
    block_header h;
    if (image == nullptr || bytes < sizeof h) {
      raise(iso::errc::corrupt_image, "iso_unpack: the image is truncated (%zu bytes, a header alone is %zu)",
            bytes, sizeof h);
    }
    std::memcpy(&h, image, sizeof h);
    if (h.magic != image_magic) raise(iso::errc::corrupt_image, "iso_unpack: not a block image (bad magic)");
    if (h.version != image_version || h.header_bytes != sizeof h) {
      raise(iso::errc::corrupt_image, "iso_unpack: image format version %u, this build reads version %u",
            h.version, image_version);
    }
    if (h.header_checksum != header_sum(h)) raise(iso::errc::corrupt_image, "iso_unpack: the image header is corrupt (checksum mismatch)");
    if (h.length == 0 || h.length > r.bytes() || h.length % prim::page_size() != 0) {
      raise(iso::errc::corrupt_image, "iso_unpack: the image claims a block of %llu bytes",
            static_cast<unsigned long long>(h.length));
    }
    if (bytes != sizeof h + h.length) {
      raise(iso::errc::corrupt_image, "iso_unpack: the image of block %#llx has %zu bytes, its header says %llu",
            static_cast<unsigned long long>(h.address), bytes,
            static_cast<unsigned long long>(sizeof h + h.length));
    }
    const auto* data = static_cast<const unsigned char*>(image) + sizeof h;
    if (checksum64(data, h.length) != h.data_checksum) {
      raise(iso::errc::corrupt_image, "iso_unpack: the data of block %#llx is corrupt (checksum mismatch)",
            static_cast<unsigned long long>(h.address));
    }
    void* block = reinterpret_cast<void*>(h.address);
    if (h.region_base != r.base() || h.region_bytes != r.bytes() || h.address % chunk_bytes != 0 ||
        !r.contains(block) || !r.contains(static_cast<char*>(block) + h.length - 1)) {
      raise(iso::errc::corrupt_image,
            "iso_unpack: block %#llx comes from a region [%#llx, +%llu) that is not this run's "
            "[%#zx, +%zu)",
            static_cast<unsigned long long>(h.address), static_cast<unsigned long long>(h.region_base),
            static_cast<unsigned long long>(h.region_bytes), r.base(), r.bytes());
    }
    block_table& t = block_table::get();
    std::lock_guard<std::mutex> g(t.lock);
    auto it = t.entries.find(h.address);
    if (it != t.entries.end() && it->second.held) {
      raise(iso::errc::bad_pointer, "iso_unpack: block %p is already present on this rank", block);
    }
    if (it != t.entries.end() && it->second.length != h.length) {
      raise(iso::errc::corrupt_image, "iso_unpack: block %p was detached with %zu bytes, the image has %llu",
            block, it->second.length, static_cast<unsigned long long>(h.length));
    }
    // On its owner the range must be a detached block of this run, or free (an image from an
    // earlier run); elsewhere the owner keeps it reserved until it is freed.
    if (it == t.entries.end() && r.owner_of(block) == r.rank() && !r.claim(block, chunks_for(h.length))) {
      raise(iso::errc::bad_pointer, "iso_unpack: the range of block %p is in use on its owner, rank %d",
            block, r.rank());
    }
    // Kept memory of a departed thread on this range is given back before the write, not after
    // (a later MADV_FREE would discard the block).
    departures::get().settle(h.address, h.length, 0);
    std::memcpy(block, data, h.length);
    t.entries[h.address] = {static_cast<std::size_t>(h.length), true};
    result = block;
  });
  return result;
}

void iso_detach(void* block) {
  c_call([&] {
    region& r = ready_region();
    block_table& t = block_table::get();
    std::lock_guard<std::mutex> g(t.lock);
    const block_entry& e = held_entry(t, block, "iso_detach");
    // The copy's pages go first: if the kernel refuses them, the block stays held, unchanged.
    if (const int err = release_pages(block, chunks_for(e.length) * chunk_bytes); err != 0) {
      raise(iso::errc::system_failure,
            "iso_detach(%p): the kernel refused to drop this rank's copy (madvise: %s); the block is still held here",
            block, std::strerror(err));
    }
    if (r.owner_of(block) == r.rank()) {
      t.entries[reinterpret_cast<std::uintptr_t>(block)].held = false;
    } else {
      t.entries.erase(reinterpret_cast<std::uintptr_t>(block));
    }
  });
}

const char* iso_last_error(void) { return t_last_error; }

void iso_progress(void) {
  region& r = region::get();
  clear_last_error();
  if (r.ready()) {
    r.set_return_hook(&accept_return);
    r.poll();
    if (char failure[failure_text_bytes]; r.take_failure(failure, sizeof failure)) {
      set_last_error("iso_progress: %s; what it was to send or receive is tried again at every poll", failure);
    }
  }
}

}  // extern "C"
