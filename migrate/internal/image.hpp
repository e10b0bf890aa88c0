// The image of a suspended thread: what travels when it migrates.
//
// Layout on the wire: one header message (image_header, then nextents image_extent entries),
// then the extents' bytes, each sent straight from its address in pieces of at most
// max_piece_bytes (MPI counts are ints) and received straight into the same addresses. A small
// image (at most inline_image_bytes of data) travels whole, header and bytes, as one record of the
// batched stream to its destination instead, its bytes copied once from their addresses into the
// batch: one send beats a rendezvous per extent (and the receiver's round trip to post them),
// and copying a few tens of KiB costs less than that.
// Extents are byte ranges, only what is live: the stack from the saved stack pointer (rounded
// down to a cache line) to the top of the run, and the heap's live ranges
// (heap::for_each_live_range: its carved blocks and metadata, not whole pages), which contain the
// TCB. Bytes of those pages outside the extents are never read before they are written, so the
// receiver leaves whatever it has there.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "sysalloc.hpp"

namespace iso::detail {

struct tcb;

inline constexpr std::uint64_t image_magic = 0x474d49737268746full;  // "othrsIMG"
inline constexpr std::uint32_t image_version = 2;
inline constexpr std::size_t max_piece_bytes = std::size_t{1} << 30;
// A thread with 64 KiB of heap data (image about 70 KiB) still travels inline.
inline constexpr std::size_t inline_image_bytes = std::size_t{128} << 10;

struct image_extent {
  std::uint64_t addr;   // in the region
  std::uint64_t bytes;  // > 0
};

struct image_header {
  std::uint64_t magic;         // image_magic
  std::uint32_t version;       // image_version
  std::uint32_t nextents;      // image_extent entries after the header
  std::uint64_t layout;        // layout fingerprint of the sending binary (must equal ours)
  std::uint64_t thread;        // thread_id::bits()
  std::uint64_t tcb;           // address of the thread's control block (inside an extent)
  std::uint64_t data_bytes;    // sum of the extents' bytes
  std::uint64_t inline_data;   // 1: the extents' bytes follow the table in this message
  std::uint64_t checksum;      // checksum64 of header (this field 0) and extent table
};

// The header and extent table of t's image. With `allow_inline` and a small enough image, the
// header says that the extents' bytes follow it in the same message (inline_data): the caller
// appends them, in extent order (image_extents). Empty pages of t's heap forget their free lists
// first (heap::drop_empty_pages). pre: t is suspended and detached from the scheduler.
sys_vector<unsigned char> build_image_header(tcb* t, std::uint64_t layout, bool allow_inline = false);

// Checks a received header buffer (with its inline data, if any) before anything is written:
// size, magic, version, layout, checksum, and that every extent is non-empty, inside the region,
// sorted and disjoint, and the TCB lies inside one. Throws iso::error(corrupt_image) naming the
// first problem.
const image_header& validate_image_header(const void* buffer, std::size_t bytes, std::uint64_t layout);

inline const image_extent* image_extents(const image_header& h) {
  return reinterpret_cast<const image_extent*>(&h + 1);
}
// The inline data of a validated header: the extents' bytes, in extent order.
inline const unsigned char* image_inline_data(const image_header& h) {
  return reinterpret_cast<const unsigned char*>(image_extents(h) + h.nextents);
}

// The pieces a non-inline image's bytes travel in: f(void* addr, int bytes) for each, in extent
// order, each at most max_piece_bytes. Sender and receiver both split with this, so their
// messages match one for one.
template <class F>
void for_each_piece(const image_header& h, F&& f) {
  const image_extent* e = image_extents(h);
  for (std::uint32_t i = 0; i < h.nextents; ++i) {
    for (std::uint64_t off = 0; off < e[i].bytes; off += max_piece_bytes) {
      f(reinterpret_cast<void*>(e[i].addr + off),
        static_cast<int>(std::min<std::uint64_t>(max_piece_bytes, e[i].bytes - off)));
    }
  }
}

}  // namespace iso::detail
