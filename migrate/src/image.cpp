#include "image.hpp"

#include <algorithm>
#include <cstring>

#include "checksum.hpp"
#include "diag.hpp"
#include "region.hpp"
#include "tcb.hpp"

namespace iso::detail {

std::uint64_t header_checksum(const image_header& h) {
  image_header copy = h;
  copy.checksum = 0;
  const std::uint64_t seed = checksum64(&copy, sizeof copy);
  return checksum64(image_extents(h), h.nextents * sizeof(image_extent), seed);
}

sys_vector<unsigned char> build_image_header(tcb* t, std::uint64_t layout, bool allow_inline,
                                             sys_vector<unsigned char> buffer, bool split) {
  constexpr std::uintptr_t line = 64;  // the copies start on a cache line
  sys_vector<image_extent> extents;
  // Everything live on the stack is above the saved stack pointer.
  const std::uintptr_t stack_lo = reinterpret_cast<std::uintptr_t>(t->saved_sp()) & ~(line - 1);
  const std::uintptr_t stack_hi = reinterpret_cast<std::uintptr_t>(t->stack.top());
  extents.reserve(8);
  extents.push_back({stack_lo, stack_hi - stack_lo});
  t->home_heap->drop_empty_pages();  // their pages stay out of the image: so must their free lists
  t->home_heap->for_each_live_range([&](void* addr, std::size_t bytes) {
    extents.push_back({reinterpret_cast<std::uintptr_t>(addr), bytes});
  });
  std::sort(extents.begin(), extents.end(),
            [](const image_extent& a, const image_extent& b) { return a.addr < b.addr; });

  std::uint64_t data_bytes = 0, small_bytes = 0;
  for (const image_extent& e : extents) {
    data_bytes += e.bytes;
    small_bytes += small_extent(e.bytes) ? e.bytes : 0;
  }
  const bool inline_data = allow_inline && small_bytes <= inline_image_bytes;
  const std::size_t table_end = sizeof(image_header) + extents.size() * sizeof(image_extent);
  // A header message carries its inline data after the table (append_inline_data, then without a
  // reallocation); a batched image's bytes are copied from their addresses into the batch, so its
  // buffer holds only header and table.
  const bool batched = inline_data && small_bytes == data_bytes && !(split && split_sizes(table_end, small_bytes));
  buffer.clear();
  buffer.reserve(table_end + (inline_data && !batched ? small_bytes : 0));
  buffer.resize(table_end);
  image_header h{};
  h.magic = image_magic;
  h.version = image_version;
  h.nextents = static_cast<std::uint32_t>(extents.size());
  h.layout = layout;
  h.thread = t->id.bits();
  h.tcb = reinterpret_cast<std::uintptr_t>(t);
  h.stack = reinterpret_cast<std::uintptr_t>(t->stack.base);
  h.stack_bytes = t->stack.bytes;
  h.data_bytes = data_bytes;
  h.inline_data = inline_data ? 1 : 0;
  std::memcpy(buffer.data() + sizeof h, extents.data(), extents.size() * sizeof(image_extent));
  std::memcpy(buffer.data(), &h, sizeof h);
  const std::uint64_t sum = header_checksum(*reinterpret_cast<const image_header*>(buffer.data()));
  std::memcpy(buffer.data() + offsetof(image_header, checksum), &sum, sizeof sum);
  return buffer;
}

void append_inline_data(sys_vector<unsigned char>& image) {
  const std::size_t table_end = image.size();
  const auto& h = *reinterpret_cast<const image_header*>(image.data());
  const std::uint64_t n = inline_bytes(h);
  if (n == 0) return;
  image.resize(table_end + n);  // h moves with the buffer: read again below
  const auto& moved = *reinterpret_cast<const image_header*>(image.data());
  unsigned char* at = image.data() + table_end;
  for (std::uint32_t i = 0; i < moved.nextents; ++i) {
    const image_extent& e = image_extents(moved)[i];
    if (!travels_inline(moved, e)) continue;
    std::memcpy(at, reinterpret_cast<const void*>(e.addr), e.bytes);
    at += e.bytes;
  }
}

extent_check check_extents(const image_extent* extents, std::size_t n, std::uint64_t stack_lo, std::uint64_t stack_hi) {
  const region& r = region::get();
  extent_check c;
  std::uint64_t last_end = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const image_extent& e = extents[i];
    if (e.bytes == 0) {
      c.why = "is empty";
    } else if (e.addr + e.bytes < e.addr) {
      c.why = "runs past the end of the address space";
    } else if (!r.contains(reinterpret_cast<const void*>(e.addr)) ||
               !r.contains(reinterpret_cast<const void*>(e.addr + e.bytes - 1))) {
      c.why = "lies outside this job's region";
    } else if (e.addr < last_end) {
      c.why = "overlaps or precedes the extent before it";
    } else if (e.addr < stack_hi && stack_lo < e.addr + e.bytes && (e.addr < stack_lo || e.addr + e.bytes > stack_hi)) {
      c.why = "crosses the end of its stack run";
    }
    if (c.why != nullptr) {
      c.index = i;
      return c;
    }
    last_end = e.addr + e.bytes;
    c.stack_top = c.stack_top || last_end == stack_hi;
    c.total += e.bytes;  // no wrap: the extents are disjoint and inside the region
  }
  return c;
}

const image_header& validate_image_header(const void* buffer, std::size_t bytes, std::uint64_t layout,
                                          bool allow_split) {
  if (buffer == nullptr || bytes < sizeof(image_header)) {
    raise(errc::corrupt_image, "thread image rejected: %zu bytes is too short for a header", bytes);
  }
  const auto& h = *static_cast<const image_header*>(buffer);
  if (h.magic != image_magic) raise(errc::corrupt_image, "thread image rejected: bad magic (not a thread image)");
  if (h.version != image_version) {
    raise(errc::corrupt_image, "thread image rejected: format version %u, this build reads %u", h.version, image_version);
  }
  const std::size_t table_end = sizeof h + std::size_t{h.nextents} * sizeof(image_extent);
  if (h.inline_data > 1 || bytes < table_end || (h.inline_data == 0 && bytes != table_end)) {
    raise(errc::corrupt_image, "thread image rejected: %zu bytes for %u extents%s", bytes, h.nextents,
          h.inline_data == 1 ? " and their inline data" : "");
  }
  if (h.checksum != header_checksum(h)) raise(errc::corrupt_image, "thread image rejected: header checksum mismatch");
  // The table is intact: what it says travels inline must be exactly what follows it (or its
  // first part, in the first piece of a split image).
  const bool first_piece = allow_split && split_image(h) && bytes == eager_piece_bytes;
  if (const std::uint64_t n = inline_bytes(h); n > inline_image_bytes || (bytes != table_end + n && !first_piece)) {
    raise(errc::corrupt_image, "thread image rejected: %zu bytes for %u extents and their inline data", bytes,
          h.nextents);
  }
  if (h.layout != layout) {
    raise(errc::corrupt_image,
          "thread image rejected: it comes from a different binary or code layout (fingerprint %#llx, ours %#llx)",
          static_cast<unsigned long long>(h.layout), static_cast<unsigned long long>(layout));
  }
  const region& r = region::get();
  if (h.stack_bytes == 0 || h.stack + h.stack_bytes < h.stack || !r.contains(reinterpret_cast<const void*>(h.stack)) ||
      !r.contains(reinterpret_cast<const void*>(h.stack + h.stack_bytes - 1))) {
    raise(errc::corrupt_image, "thread image rejected: its stack run [%#llx, +%llu) lies outside the region",
          static_cast<unsigned long long>(h.stack), static_cast<unsigned long long>(h.stack_bytes));
  }
  const image_extent* e = image_extents(h);
  const std::uint64_t stack_end = h.stack + h.stack_bytes;
  const extent_check c = check_extents(e, h.nextents, h.stack, stack_end);
  if (c.why != nullptr) {
    raise(errc::corrupt_image, "thread image rejected: extent %zu [%#llx, +%llu) %s", c.index,
          static_cast<unsigned long long>(e[c.index].addr), static_cast<unsigned long long>(e[c.index].bytes), c.why);
  }
  bool tcb_inside = false;
  for (std::uint32_t i = 0; i < h.nextents; ++i) {
    // Without overflow: a TCB address near the top of the address space must not wrap inside
    // (the extents themselves do not wrap: check_extents).
    const std::uint64_t end = e[i].addr + e[i].bytes;
    tcb_inside = tcb_inside || (h.tcb >= e[i].addr && h.tcb <= end && end - h.tcb >= sizeof(tcb));
  }
  if (c.total != h.data_bytes) raise(errc::corrupt_image, "thread image rejected: extents sum to %llu bytes, header says %llu",
                                   static_cast<unsigned long long>(c.total), static_cast<unsigned long long>(h.data_bytes));
  if (!tcb_inside) raise(errc::corrupt_image, "thread image rejected: its control block lies in no extent");
  if (h.tcb % alignof(tcb) != 0) {
    raise(errc::corrupt_image, "thread image rejected: its control block at %#llx is not %zu-byte aligned",
          static_cast<unsigned long long>(h.tcb), alignof(tcb));
  }
  if (!c.stack_top) raise(errc::corrupt_image, "thread image rejected: no extent ends at its stack's top");
  return h;
}

}  // namespace iso::detail
