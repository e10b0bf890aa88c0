#!/usr/bin/env python3
"""Writes a synthetic isothreads trace (docs/trace-format.md) for testing scripts/trace-report.

It simulates a bulk-synchronous run: every rank runs its resident threads round-robin for a
number of iterations per phase, threads send messages now and then, and between phases a
balancing step measures the per-rank load and migrates threads. The threads' costs follow a
hot spot that drifts from phase to phase, so every step has work to do. The run is
deterministic for a given --seed.

  make_sample_trace.py -o trace.json [--summary expected.json] [--iterations 6] ...

--summary writes the numbers the report must show (ranks, threads, migrations, ...) so a test
can check the renderer against what was generated rather than against hand-copied constants.
"""
import argparse
import json
import math
import random
import sys

CONTEXT_SWITCH_US = (2.0, 8.0)
MESSAGE_PROBABILITY = 0.25
BLOCKED_PROBABILITY = 0.05  # a thread waits for a message and its rank idles meanwhile
LINK_BYTES_PER_US = 2000.0  # ~2 GB/s between ranks
LINK_LATENCY_US = 15.0


class Thread:
    def __init__(self, home, serial, index):
        self.home = home
        self.serial = serial
        self.index = index
        self.rank = home
        self.name = f"block {index}"
        self.image_bytes = 0
        self.cost = 1.0  # relative cost of one iteration, set per phase
        self.measured_us = 0.0  # run time in the last phase

    @property
    def id(self):
        return f"{self.home}:{self.serial}"

    @property
    def tid(self):
        return ((self.home + 1) << 40) + self.serial


def greedy(threads, ranks):
    """Longest processing time first over all threads: balances well, moves many."""
    load = [0.0] * ranks
    placement = {}
    for t in sorted(threads, key=lambda t: (-t.measured_us, t.index)):
        r = min(range(ranks), key=lambda r: (load[r], r))
        placement[t] = r
        load[r] += t.measured_us
    return placement


def refine(threads, ranks, tolerance=0.05):
    """Moves threads off the most loaded rank while that lowers the maximum: moves few."""
    placement = {t: t.rank for t in threads}
    load = [0.0] * ranks
    for t in threads:
        load[t.rank] += t.measured_us
    average = sum(load) / ranks
    while True:
        src = max(range(ranks), key=lambda r: load[r])
        dst = min(range(ranks), key=lambda r: load[r])
        if load[src] <= average * (1 + tolerance):
            return placement
        movable = [t for t in threads if placement[t] == src and load[dst] + t.measured_us < load[src]]
        if not movable:
            return placement
        t = max(movable, key=lambda t: (t.measured_us, -t.index))
        placement[t] = dst
        load[src] -= t.measured_us
        load[dst] += t.measured_us


def simulate(args):
    rng = random.Random(args.seed)
    per_rank = args.threads // args.ranks
    threads = [Thread(i // per_rank, i % per_rank, i) for i in range(args.threads)]
    for t in threads:
        t.image_bytes = rng.choice([64, 128, 256, 512]) * 1024
    events = {r: [] for r in range(args.ranks)}
    seen = {r: set() for r in range(args.ranks)}  # threads that ran on each rank
    counts = {"migrations": 0, "messages": 0}
    flow_id = 0
    phase_start = [rng.uniform(50.0, 150.0) for _ in range(args.ranks)]

    for phase in range(args.steps + 1):
        # The hot spot drifts across the thread index space, so loads change between steps.
        centre = args.threads * (0.15 + 0.2 * phase)
        width = args.threads * 0.15
        for t in threads:
            t.cost = 0.4 + 2.0 * math.exp(-(((t.index - centre) / width) ** 2)) + rng.uniform(0, 0.2)
            t.measured_us = 0.0

        phase_end = []
        for r in range(args.ranks):
            now = phase_start[r]
            resident = [t for t in threads if t.rank == r]
            for _ in range(args.iterations):
                for t in resident:
                    dur = args.slice_us * t.cost * rng.uniform(0.8, 1.2)
                    events[r].append({"ph": "X", "cat": "run", "name": t.name, "pid": r, "tid": t.tid,
                                      "ts": round(now, 3), "dur": round(dur, 3),
                                      "args": {"thread": t.id}})
                    seen[r].add(t)
                    t.measured_us += dur
                    now += dur
                    if args.ranks > 1 and rng.random() < MESSAGE_PROBABILITY:
                        to = (r + rng.choice([1, -1])) % args.ranks
                        events[r].append({"ph": "i", "cat": "message", "name": "send", "s": "t",
                                          "pid": r, "tid": t.tid, "ts": round(now - 1.0, 3),
                                          "args": {"to": rng.choice(threads).id, "to_rank": to,
                                                   "bytes": rng.choice([64, 512, 4096, 65536]),
                                                   "tag": rng.randrange(8)}})
                        counts["messages"] += 1
                    now += rng.uniform(*CONTEXT_SWITCH_US)
                    if rng.random() < BLOCKED_PROBABILITY:
                        now += args.slice_us * rng.uniform(0.5, 2.0)
            phase_end.append(now)
        if phase == args.steps:
            break

        # The balancing step starts when the slowest rank reaches the barrier.
        step = phase + 1
        strategy = "greedy" if step == 1 else "refine"
        barrier = max(phase_end) + rng.uniform(5.0, 20.0)
        load_before = [0.0] * args.ranks
        for t in threads:
            load_before[t.rank] += t.measured_us / 1e6
        placement = (greedy if strategy == "greedy" else refine)(threads, args.ranks)
        load_after = [0.0] * args.ranks
        for t in threads:
            load_after[placement[t]] += t.measured_us / 1e6
        moving = [t for t in threads if placement[t] != t.rank]
        average = sum(load_before) / args.ranks
        lb_args = {"step": step, "strategy": strategy,
                   "max_over_avg_before": round(max(load_before) / average, 4),
                   "max_over_avg_after": round(max(load_after) / average, 4),
                   "threads_moved": len(moving), "bytes_moved": sum(t.image_bytes for t in moving)}
        lb_end = []
        for r in range(args.ranks):
            ts = barrier + rng.uniform(0.0, 10.0)
            dur = rng.uniform(200.0, 400.0) + (300.0 if r == 0 else 0.0)
            a = dict(lb_args)
            if r == 0:
                a["load_before"] = [round(x, 6) for x in load_before]
                a["load_after"] = [round(x, 6) for x in load_after]
            events[r].append({"ph": "X", "cat": "lb", "name": f"lb step {step} ({strategy})", "pid": r,
                              "tid": 0, "ts": round(ts, 3), "dur": round(dur, 3), "args": a})
            lb_end.append(ts + dur)

        # Each rank sends its leaving threads one after the other; a rank starts the next phase
        # once its last incoming thread has arrived.
        ready = list(lb_end)
        send_clock = list(lb_end)
        for t in moving:
            src, dst = t.rank, placement[t]
            depart = send_clock[src]
            packing = 20.0 + t.image_bytes / LINK_BYTES_PER_US
            arrive = depart + packing + LINK_LATENCY_US
            send_clock[src] = depart + packing
            flow_id += 1
            events[src].append({"ph": "X", "cat": "migrate", "name": f"migrate {t.id} -> {dst}",
                                "pid": src, "tid": 0, "ts": round(depart, 3), "dur": round(packing, 3),
                                "args": {"thread": t.id, "to": dst, "bytes": t.image_bytes}})
            events[src].append({"ph": "s", "cat": "migrate", "name": "migration", "id": flow_id,
                                "pid": src, "tid": 0, "ts": round(depart, 3)})
            events[dst].append({"ph": "f", "bp": "e", "cat": "migrate", "name": "migration",
                                "id": flow_id, "pid": dst, "tid": 0, "ts": round(arrive, 3)})
            events[dst].append({"ph": "i", "s": "t", "cat": "migrate", "name": f"arrive {t.id}",
                                "pid": dst, "tid": 0, "ts": round(arrive, 3),
                                "args": {"thread": t.id, "from": src, "bytes": t.image_bytes}})
            ready[dst] = max(ready[dst], arrive)
            ready[src] = max(ready[src], send_clock[src])
            t.rank = dst
            counts["migrations"] += 1
        phase_start = [x + rng.uniform(5.0, 15.0) for x in ready]

    # Rank 0 writes the ranks' buffers one after the other, metadata first, as the runtime does.
    trace_events = []
    for r in range(args.ranks):
        trace_events.append({"ph": "M", "name": "process_name", "pid": r, "tid": 0,
                             "args": {"name": f"rank {r}"}})
        for t in sorted(seen[r], key=lambda t: t.index):
            trace_events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": t.tid,
                                 "args": {"name": f"{t.id} '{t.name}'"}})
        trace_events.extend(events[r])
    trace = {"displayTimeUnit": "ms",
             "otherData": {"isothreads": 1, "ranks": args.ranks, "threads": args.threads,
                           "dropped_events": args.dropped},
             "traceEvents": trace_events}
    summary = {"ranks": args.ranks, "threads": args.threads, "migrations": counts["migrations"],
               "messages": counts["messages"], "lb_steps": args.steps, "dropped": args.dropped,
               "events": len(trace_events)}
    return trace, summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="trace file to write")
    p.add_argument("--summary", help="also write the expected report numbers to this JSON file")
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--threads", type=int, default=32, help="a multiple of --ranks")
    p.add_argument("--steps", type=int, default=3, help="balancing steps")
    p.add_argument("--iterations", type=int, default=6, help="run slices per thread and phase")
    p.add_argument("--slice-us", type=float, default=900.0, help="mean run slice of a unit-cost thread")
    p.add_argument("--dropped", type=int, default=0, help="value of otherData.dropped_events")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    if args.ranks < 1 or args.threads < args.ranks or args.threads % args.ranks:
        p.error("--threads must be a positive multiple of --ranks")
    trace, summary = simulate(args)
    with open(args.output, "w") as f:
        json.dump(trace, f, separators=(",", ":"))
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
