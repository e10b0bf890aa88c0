#!/usr/bin/env bash
# Checkpoint and restart end to end, with jacobi2d (CTest runs this; see tests/mpi/CMakeLists.txt).
#   checkpoint_restart.sh MPIEXEC JACOBI2D OTHER_BINARY WORKDIR
# 1. A checkpoint taken mid-run on 4 ranks, restarted on 2 and on 4 ranks: the final checksum
#    equals the uninterrupted run's, bit for bit.
# 2. A flipped byte (in a thread's data, the manifest, a file's header or its table), a truncated
#    file, a missing file, a thread's control block placed outside its data, misaligned or at the
#    top of the address space, one of its extents placed on another thread's data, a run off the
#    chunks or whose length wraps, a record whose extents do not sum to it, a thread recorded twice,
#    an extent past its stack's top, a header whose sizes wrap (each in a table or header whose
#    checksums were redone), and a different binary are each refused with a message naming it, on
#    2 and on 4 ranks.
# 3. A crash while a later checkpoint is being written leaves the earlier one usable.
set -euo pipefail
mpiexec=$1 jacobi=$2 other=$3 work=$4
run() { "$mpiexec" --oversubscribe -n "$@"; }
args=(--n 512 --blocks 8 --iters 40 --mode plain)
checksum() { grep -o 'checksum [0-9.e+-]*' <<<"$1" | tail -n 1; }
fail() { echo "FAIL: $*"; exit 1; }

rm -rf "$work" && mkdir -p "$work"
reference=$(checksum "$(run 4 "$jacobi" "${args[@]}")")
[[ -n $reference ]] || fail "the reference run printed no checksum"
echo "uninterrupted: $reference"

out=$(run 4 "$jacobi" "${args[@]}" --checkpoint-at 20 --checkpoint-dir "$work/ck")
[[ $(checksum "$out") == "$reference" ]] || fail "the checkpointing run changed the result"
[[ -f $work/ck/manifest ]] || fail "no manifest written"

for ranks in 2 4; do
  out=$(run "$ranks" "$jacobi" "${args[@]}" --checkpoint-dir "$work/ck" --iso-restart "$work/ck")
  grep -q "restarted 64 threads" <<<"$out" || fail "restart on $ranks ranks did not restore the 64 blocks: $out"
  got=$(checksum "$out")
  [[ $got == "$reference" ]] || fail "restart on $ranks ranks gave $got, expected $reference"
  echo "restarted on $ranks ranks: $got"
done

expect_refusal() {  # expect_refusal WHAT PATTERN COMMAND...
  local what=$1 pattern=$2
  shift 2
  local out
  if out=$("$@" 2>&1); then fail "$what was accepted"; fi
  grep -q -- "$pattern" <<<"$out" || fail "$what: no message matching '$pattern' in: $out"
  grep -q "ms/iteration" <<<"$out" && fail "$what: threads ran"
  echo "refused $what"
}
flip() {  # flip NAME FILE_GLOB OFFSET (negative: from the end): a copy of the checkpoint with one byte changed
  local name=$1 glob=$2 at=$3 file
  cp -r "$work/ck" "$work/$name"
  # shellcheck disable=SC2086 # the glob names one file of the copy
  file=$(ls "$work/$name"/$glob)
  ((at >= 0)) || at=$(($(stat -c %s "$file") + at))
  printf '\x5a' | dd of="$file" bs=1 seek="$at" conv=notrunc status=none
}
flip flipped 'ckpt.*.rank1' -100                        # in a thread's data
flip flipped_manifest manifest -1                       # in the last rank's entry
flip flipped_header 'ckpt.*.rank3' 24                   # the layout field of a file's header
flip flipped_table 'ckpt.*.rank0' 92                    # in the first thread's record
cp -r "$work/ck" "$work/truncated"
file=$(ls "$work"/truncated/ckpt.*.rank2)
truncate -s $(($(stat -c %s "$file") / 2)) "$file"
cp -r "$work/ck" "$work/missing"
rm "$work"/missing/ckpt.*.rank3
retable() {  # retable HOW: a copy of the checkpoint with an address rewritten (checkpoint_retable.py)
  cp -r "$work/ck" "$work/retabled_$1"
  python3 "$(dirname "$0")/checkpoint_retable.py" "$work/retabled_$1" "$1" || fail "checkpoint_retable.py $1 failed"
}
retable other
retable misaligned
retable wrap
retable extent
retable run_misaligned
retable chunks
retable sum
retable duplicate
retable stack
retable hdr_wrap
# Each refused on as many ranks as wrote it and on fewer, the refusal naming the problem.
refused_restart() {  # refused_restart RANKS WHAT PATTERN DIR: jacobi2d restarted from $work/DIR
  expect_refusal "$2 ($1 ranks)" "$3" run "$1" "$jacobi" "${args[@]}" --iso-restart "$work/$4"
}
for ranks in 2 4; do
  refused_restart "$ranks" "a flipped data byte" "the data of thread [0-9:]* is corrupt" flipped
  refused_restart "$ranks" "a flipped manifest byte" "manifest .* is corrupt" flipped_manifest
  refused_restart "$ranks" "a flipped file header byte" "rank3 is corrupt (bad header)" flipped_header
  refused_restart "$ranks" "a flipped table byte" "rank0 is corrupt (table checksum mismatch)" flipped_table
  refused_restart "$ranks" "a truncated file" "has [0-9]* bytes, the manifest says" truncated
  refused_restart "$ranks" "a missing file" "cannot open checkpoint file .*rank3" missing
  refused_restart "$ranks" "a control block outside its thread's data" \
    "rank0: thread [0-9:]*'s control block .* lies outside its restored data" retabled_other
  refused_restart "$ranks" "a misaligned control block" "rank0: thread [0-9:]*'s control block at 0x[0-9a-f]* is not [0-9]*-byte aligned" retabled_misaligned
  refused_restart "$ranks" "a control block at the top of the address space" \
    "rank0: thread [0-9:]*'s control block at 0xffffffffffffffc0 runs past the end of the address space" retabled_wrap
  refused_restart "$ranks" "an extent on another thread's data" \
    "rank0: thread [0-9:]*'s extent [0-9]* .* lies outside the runs it owns" retabled_extent
  refused_restart "$ranks" "a run off the chunks" "rank0: thread [0-9:]*'s run .* does not start on a chunk" \
    retabled_run_misaligned
  refused_restart "$ranks" "a run whose length wraps" "rank0: thread [0-9:]*'s run .* lies outside this job's region" \
    retabled_chunks
  refused_restart "$ranks" "a record whose extents do not sum to it" "rank0: thread [0-9:]*'s extents sum to" retabled_sum
  refused_restart "$ranks" "a thread recorded twice" "thread [0-9:]* is recorded twice (in .*rank0 and .*rank0)" \
    retabled_duplicate
  refused_restart "$ranks" "an extent past the stack's top" "rank0: thread [0-9:]*'s extent [0-9]* .* crosses the end of its stack run" \
    retabled_stack
  refused_restart "$ranks" "a header whose sizes wrap" "rank0: its header's table ([0-9]*) and data ([0-9]*) bytes do not make" \
    retabled_hdr_wrap
  expect_refusal "a different binary ($ranks ranks)" "different binary" run "$ranks" "$other" --iso-restart "$work/ck"
done

# A crash after the next generation's files are written but before the manifest switches.
if ISO_FAULT=checkpoint-before-commit run 4 "$jacobi" "${args[@]}" --checkpoint-at 30 --checkpoint-dir "$work/ck" >/dev/null 2>&1; then
  fail "the injected crash did not happen"
fi
ls "$work"/ck/ckpt.2.rank0 >/dev/null || fail "the crashed checkpoint wrote no files"
out=$(run 2 "$jacobi" "${args[@]}" --checkpoint-dir "$work/ck" --iso-restart "$work/ck")
grep -q "generation 1" <<<"$out" || fail "the restart after the crash did not use generation 1: $out"
[[ $(checksum "$out") == "$reference" ]] || fail "the checkpoint before the crash gave a different result"
echo "a crash during a checkpoint left the previous one usable"
echo "checkpoint/restart: all checks passed"
