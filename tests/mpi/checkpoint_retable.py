#!/usr/bin/env python3
"""Rewrites what a checkpoint's table says of one thread (an address, a length, an id), or rank 0's
file header, and redoes every checksum that covers it (the table's, the file header's, the
manifest's), as a defective or hostile writer would: the restart must refuse what it says, since
the checksums pass.

    checkpoint_retable.py DIR HOW

DIR is a copy of a checkpoint; rank 0's file is changed. HOW:
  other       the fifth thread's is the first thread's control block: a valid one, outside the
              fifth thread's data, that a restart on 2 or 4 ranks has restored on the same rank
              before it comes to the fifth (both are rank 0's: threads go to ranks in file order)
  misaligned  the first thread's is 8 bytes past its own control block
  wrap        the first thread's is 2^64 - 64: aligned, but the control block would run past the
              end of the address space
  extent      not the control block: an extent of the fifth thread (one without its control
              block, whose move keeps its extents in order) is moved onto the first thread's
              data, which a restart on 2 or 4 ranks has read and verified by then (the data
              checksum covers the bytes, not where they go: it still passes)
  run_misaligned  the first thread's first run starts 8 bytes past a chunk
  chunks      the first thread's first run has 2^64 / 64 KiB + 1 chunks: its length wraps to one chunk
  sum         the first thread's record says 16 data bytes more than its extents hold
  duplicate   the fifth thread's record carries the first thread's id
  stack       the first thread's extent that ends at its stack's top is moved 16 bytes up, past it
  hdr_wrap    the header says 2^63 bytes of table, and data bytes that bring the sum (modulo 2^64)
              back to the file's size

The layouts are runtime/src/checkpoint.cpp's (file_header, thread_record, run_record,
image_extent, manifest_header, manifest_entry) and checksum64 is isomalloc's checksum.hpp.
"""
import os
import struct
import sys

M = (1 << 64) - 1
K = 0x9E3779B97F4A7C15


def checksum64(data, seed=0):
    def mix(h, w):
        h ^= (w * 0xC2B2AE3D27D4EB4F) & M
        h = ((h << 31) | (h >> 33)) & M
        return (h * K) & M

    lane = [seed ^ K, (seed + 1) & M, seed ^ (K >> 1), (seed - 1) & M]
    i = 0
    n = len(data)
    while i + 32 <= n:
        for l in range(4):
            (w,) = struct.unpack_from("<Q", data, i + 8 * l)
            lane[l] = mix(lane[l], w)
        i += 32
    h = lane[0] ^ ((lane[1] * 3) & M) ^ ((lane[2] * 5) & M) ^ ((lane[3] * 7) & M) ^ n
    while i < n:
        h = mix(h, data[i])
        i += 1
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M
    h ^= h >> 33
    return h


HEADER = struct.Struct("<QIIIIQQQQQQQQ")  # file_header, 88 bytes
RECORD = struct.Struct("<QQIIIIQQ")       # thread_record, 48 bytes
PAIR = 16                                 # run_record and image_extent: two 64-bit words
CHUNK = 64 << 10                          # isomalloc/internal/region.hpp's chunk_bytes


def main():
    hows = ("other", "misaligned", "wrap", "extent", "run_misaligned", "chunks", "sum", "duplicate", "stack", "hdr_wrap")
    if len(sys.argv) != 3 or sys.argv[2] not in hows:
        sys.exit("usage: checkpoint_retable.py DIR HOW, HOW one of " + ", ".join(hows))
    directory, how = sys.argv[1], sys.argv[2]
    mpath = os.path.join(directory, "manifest")
    man = bytearray(open(mpath, "rb").read())
    (nranks,) = struct.unpack_from("<I", man, 12)
    (generation,) = struct.unpack_from("<Q", man, 40)  # after magic, version, nranks, layout, region
    path = os.path.join(directory, "ckpt.%d.rank0" % generation)
    blob = bytearray(open(path, "rb").read())
    h = list(HEADER.unpack_from(blob, 0))
    if how == "hdr_wrap":
        h[9], h[10] = 1 << 63, (len(blob) - HEADER.size - (1 << 63)) & M  # table_bytes, data_bytes
        h[12] = 0
        h[12] = checksum64(HEADER.pack(*h))
        HEADER.pack_into(blob, 0, *h)
        open(path, "wb").write(blob)
        return
    nthreads, table_bytes = h[4], h[9]
    table = bytearray(blob[HEADER.size:HEADER.size + table_bytes])
    at, records, tcbs, extents = 0, [], [], []
    for _ in range(nthreads):
        rec = RECORD.unpack_from(table, at)
        records.append(at)
        tcbs.append(at + 8)  # offset of the record's tcb field
        first_extent = at + RECORD.size + rec[3] * PAIR
        # per extent: its offset in the table, its address, its length
        offsets = range(first_extent, first_extent + rec[4] * PAIR, PAIR)
        extents.append([(o,) + struct.unpack_from("<QQ", table, o) for o in offsets])
        at += RECORD.size + (rec[3] + rec[4]) * PAIR
    if len(tcbs) < 5:
        sys.exit("checkpoint_retable.py: %s has %d threads, 5 needed" % (path, len(tcbs)))
    (first,) = struct.unpack_from("<Q", table, tcbs[0])
    if how == "extent":
        (tcb4,) = struct.unpack_from("<Q", table, tcbs[4])
        mine, theirs = extents[4], extents[0]
        # An extent of the fifth thread without its control block, moved to the start of one of
        # the first thread's where it still lies between its neighbours (the extents' order holds).
        for j, (offset, addr, length) in enumerate(mine):
            if addr <= tcb4 < addr + length:
                continue
            low = mine[j - 1][1] + mine[j - 1][2] if j > 0 else 0
            high = mine[j + 1][1] if j + 1 < len(mine) else 1 << 64
            to = next((t[1] for t in theirs if low <= t[1] and t[1] + length <= high), None)
            if to is not None:
                struct.pack_into("<Q", table, offset, to)
                break
        else:
            sys.exit("checkpoint_retable.py: no extent of the fifth thread fits onto the first thread's data")
    elif how in ("run_misaligned", "chunks"):
        run = records[0] + RECORD.size  # the first thread's first run: address, chunks
        if how == "run_misaligned":
            struct.pack_into("<Q", table, run, struct.unpack_from("<Q", table, run)[0] + 8)
        else:
            struct.pack_into("<Q", table, run + 8, (1 << 64) // CHUNK + 1)
    elif how == "sum":
        struct.pack_into("<Q", table, records[0] + 32, struct.unpack_from("<Q", table, records[0] + 32)[0] + 16)
    elif how == "stack":
        base, chunks = struct.unpack_from("<QQ", table, records[0] + RECORD.size)  # its stack run, recorded first
        top = base + chunks * CHUNK
        (offset, addr, length) = next(e for e in extents[0] if e[1] + e[2] == top)
        struct.pack_into("<Q", table, offset, addr + 16)
    elif how == "duplicate":
        struct.pack_into("<Q", table, records[4], struct.unpack_from("<Q", table, records[0])[0])
    else:
        which, new = {"other": (4, first), "misaligned": (0, first + 8), "wrap": (0, (1 << 64) - 64)}[how]
        struct.pack_into("<Q", table, tcbs[which], new)
    blob[HEADER.size:HEADER.size + table_bytes] = table
    h[11] = checksum64(bytes(table))  # table_checksum
    h[12] = 0
    h[12] = checksum64(HEADER.pack(*h))  # header_checksum, of the header with that field 0
    HEADER.pack_into(blob, 0, *h)
    open(path, "wb").write(blob)

    head = len(man) - nranks * PAIR  # manifest_header, its checksum the last word
    struct.pack_into("<Q", man, head + 8, h[11])  # rank 0's entry: file_bytes, table_checksum
    struct.pack_into("<Q", man, head - 8, 0)
    seed = checksum64(bytes(man[:head]))
    struct.pack_into("<Q", man, head - 8, checksum64(bytes(man[head:]), seed))
    open(mpath, "wb").write(man)


if __name__ == "__main__":
    main()
