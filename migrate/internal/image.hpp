// The image of a suspended thread: what travels when it migrates.
//
// Extents are byte ranges, only what is live: the stack from the saved stack pointer (rounded
// down to a cache line) to the top of the run, and the heap's live ranges
// (heap::for_each_live_range: its carved blocks and metadata, not whole pages), which contain the
// TCB. Bytes of those pages outside the extents are never read before they are written, so the
// receiver leaves whatever it has there.
// Layout on the wire: a header message (image_header, then nextents image_extent entries, then
// the bytes of the extents that travel inline, in extent order), then each other extent sent
// straight from its address in pieces of at most max_piece_bytes (MPI counts are ints) and
// received straight into the same address. An extent travels inline when it is smaller than
// direct_extent_bytes (and the header says inline_data): copying it twice costs less than a
// rendezvous of its own. An image whose extents all travel inline (at most inline_image_bytes) is
// one record of the batched stream to its destination instead of a header message, its bytes
// copied once from their addresses into the batch; unless it is split (split_image): then its
// header message holds the first eager_piece_bytes of header, table and inline data, and one
// tag_image_data message the rest, so that both go eagerly instead of as one rendezvous.
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
// At most this many bytes travel inline (the extents below direct_extent_bytes), else none do.
inline constexpr std::size_t inline_image_bytes = std::size_t{128} << 10;
inline constexpr std::size_t direct_extent_bytes = std::size_t{16} << 10;
// The largest MPI message that Open MPI's shared-memory transport sends eagerly (copied through
// its 4096-byte fragments, headers included; measured: 4040 bytes go eagerly, 4056 do not). One
// larger takes a rendezvous: one way for a 6 KiB message about 2.8 us here, against 2.0-2.1 us for
// it as two eager messages (4000 and 2300 bytes). Three eager messages cost about what one
// rendezvous does, hence at most two pieces.
// Right for ranks that talk through the shared-memory BTL (vader) only: tcp sends eagerly up to
// 64 KiB (btl_tcp_eager_limit), so there a split image is two messages where one eager batched
// record would do. Measured (a 4 KiB buffer's thread, 6192 image bytes; `mpirun -n 2 --mca btl
// tcp,self bench_migration latency/4KiB`, Release, 2 cores at load 5): one way 48-91 us split
// against 25-59 us with splitting off, three runs each (noisy). So images are split only for a
// destination on the sender's node (engine::split_to: MPI_COMM_TYPE_SHARED), which Open MPI
// reaches through shared memory unless told otherwise (`--mca btl tcp,self` on one node still
// splits).
inline constexpr std::size_t eager_piece_bytes = 4032;
inline constexpr std::size_t split_image_bytes = 2 * eager_piece_bytes;

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
  std::uint64_t stack;         // the thread's whole stack run (its guard at the bottom), which
  std::uint64_t stack_bytes;   //   the receiver settles before anything lands (shipping.cpp)
  std::uint64_t data_bytes;    // sum of the extents' bytes
  std::uint64_t inline_data;   // 1: the small extents' bytes follow the table (travels_inline)
  std::uint64_t checksum;      // checksum64 of header (this field 0) and extent table
};

// The header and extent table of t's image. With `allow_inline`, and if its small extents hold at
// most inline_image_bytes, the header says that their bytes follow the table in the same message
// (inline_data): the caller appends them (append_inline_data, or straight into a batch). Empty
// pages of t's heap forget their free lists first (heap::drop_empty_pages). `buffer`: storage to
// reuse (its contents are dropped, its capacity kept). `split`: an image of split sizes goes as a
// split header message (batched_image), so the buffer has room for its inline data. pre: t is
// suspended and detached from the scheduler.
sys_vector<unsigned char> build_image_header(tcb* t, std::uint64_t layout, bool allow_inline = false,
                                             sys_vector<unsigned char> buffer = {}, bool split = false);
// Appends to `image` (build_image_header's) the bytes of its extents that travel inline.
void append_inline_data(sys_vector<unsigned char>& image);

// Checks a received header buffer (with its inline data, if any) before anything is written:
// size, magic, version, layout, checksum, and that every extent is non-empty, inside the region,
// sorted and disjoint, and the TCB lies inside one. With `allow_split`, the buffer may be the
// first piece of a split image (split_image: eager_piece_bytes of its packed_bytes). Throws
// iso::error(corrupt_image) naming the first problem.
const image_header& validate_image_header(const void* buffer, std::size_t bytes, std::uint64_t layout,
                                          bool allow_split = false);
// The rules every extent table of a thread obeys, wherever it comes from (a migration's image
// header, a checkpoint file's table), since its bytes are written where it says: each extent
// non-empty, not wrapping past 2^64, inside the region, after the one before it (sorted,
// disjoint), and none reaching past either end of the stack run [stack_lo, stack_hi) (the
// stack's extent, its live top, is written into the stack run only). The first broken rule:
// `index` the extent, `why` the rule as a phrase ("is empty"); why is null when all hold, and
// then `total` is the extents' bytes and `stack_top` whether one ends at stack_hi.
struct extent_check {
  const char* why = nullptr;
  std::size_t index = 0;
  std::uint64_t total = 0;
  bool stack_top = false;
};
extent_check check_extents(const image_extent* extents, std::size_t n, std::uint64_t stack_lo, std::uint64_t stack_hi);
// The checksum of h and its extent table (h.checksum itself counted as 0), as the header carries it.
std::uint64_t header_checksum(const image_header& h);

inline const image_extent* image_extents(const image_header& h) {
  return reinterpret_cast<const image_extent*>(&h + 1);
}
// An extent small enough to travel inline, if its image's header says inline_data.
inline bool small_extent(std::uint64_t bytes) { return bytes < direct_extent_bytes; }
// Whether extent e of h travels in the header message.
inline bool travels_inline(const image_header& h, const image_extent& e) {
  return h.inline_data == 1 && small_extent(e.bytes);
}
// The bytes that follow the table: those of the extents that travel inline.
inline std::uint64_t inline_bytes(const image_header& h) {
  std::uint64_t n = 0;
  for (std::uint32_t i = 0; i < h.nextents; ++i) n += travels_inline(h, image_extents(h)[i]) ? image_extents(h)[i].bytes : 0;
  return n;
}
// Header, extent table and inline data: the bytes of h's header message, unless it is split.
inline std::uint64_t packed_bytes(const image_header& h) {
  return sizeof h + std::uint64_t{h.nextents} * sizeof(image_extent) + inline_bytes(h);
}
// Whether an image whose every extent travels inline, its header and table `table_end` bytes and
// its inline data `inline_n`, has its header message split in two eager pieces: the whole is more
// than one eager message and at most two, and the first piece holds header and table.
inline bool split_sizes(std::uint64_t table_end, std::uint64_t inline_n) {
  const std::uint64_t packed = table_end + inline_n;
  return packed > eager_piece_bytes && packed <= split_image_bytes && table_end <= eager_piece_bytes;
}
// Whether every extent of h travels inline (inline_data, and none is direct).
inline bool all_inline(const image_header& h) { return h.inline_data == 1 && inline_bytes(h) == h.data_bytes; }
// Whether h's header message is split in two eager pieces (split_sizes).
inline bool split_image(const image_header& h) {
  return all_inline(h) && split_sizes(sizeof h + std::uint64_t{h.nextents} * sizeof(image_extent), inline_bytes(h));
}
// Whether h travels as one record of the batched stream to its destination, not as a header
// message: every extent travels inline and it is not split (`split`: images of split sizes are
// split for this destination, engine::split_to). The receiver needs no word of it: a header
// message of all-inline extents is only ever the first piece of a split image.
inline bool batched_image(const image_header& h, bool split) { return all_inline(h) && !(split && split_image(h)); }
// The inline data of a validated header, in extent order.
inline const unsigned char* image_inline_data(const image_header& h) {
  return reinterpret_cast<const unsigned char*>(image_extents(h) + h.nextents);
}

// The pieces the extents that do not travel inline are sent in: f(void* addr, int bytes) for
// each, in extent order, each at most max_piece_bytes. Sender and receiver both split with this,
// so their messages match one for one.
template <class F>
void for_each_piece(const image_header& h, F&& f) {
  const image_extent* e = image_extents(h);
  for (std::uint32_t i = 0; i < h.nextents; ++i) {
    if (travels_inline(h, e[i])) continue;
    for (std::uint64_t off = 0; off < e[i].bytes; off += max_piece_bytes) {
      f(reinterpret_cast<void*>(e[i].addr + off),
        static_cast<int>(std::min<std::uint64_t>(max_piece_bytes, e[i].bytes - off)));
    }
  }
}

}  // namespace iso::detail
