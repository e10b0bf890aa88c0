#!/usr/bin/env python3
"""Checks a trace written by ISO_TRACE against docs/trace-format.md.

    check_trace.py TRACE.json RANKS

Every rank named, runs on several ranks, every migration arrow with both ends, balancing steps
with per-rank loads, times non-negative. Prints TRACE_OK or what is wrong, and exits nonzero then.
"""
import json
import sys


def main(path, ranks):
    with open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    other = trace["otherData"]
    problems = []
    if other.get("ranks") != ranks:
        problems.append(f"otherData.ranks is {other.get('ranks')}, expected {ranks}")
    names = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    if names != set(range(ranks)):
        problems.append(f"ranks named: {sorted(names)}")
    runs = [e for e in events if e["ph"] == "X" and e.get("cat") == "run"]
    if len({e["pid"] for e in runs}) < 2:
        problems.append("threads ran on fewer than two ranks")
    if any(e["ts"] < 0 or e["dur"] < 0 for e in runs):
        problems.append("a run slice has a negative time")
    starts = {e["id"] for e in events if e["ph"] == "s"}
    ends = {e["id"] for e in events if e["ph"] == "f"}
    if not starts:
        problems.append("no migration recorded")
    if starts != ends:
        problems.append(f"migration arrows without both ends: {sorted(starts ^ ends)[:5]}")
    departures = [e for e in events if e["ph"] == "X" and e.get("cat") == "migrate"]
    if any(e["args"]["bytes"] <= 0 for e in departures):
        problems.append("a migration of no bytes")
    steps = [e for e in events if e["ph"] == "X" and e.get("cat") == "lb"]
    if not steps:
        problems.append("no balancing step recorded")
    loads = [e for e in steps if "load_before" in e["args"]]
    if not loads or any(len(e["args"]["load_before"]) != ranks or len(e["args"]["load_after"]) != ranks for e in loads):
        problems.append("balancing steps without per-rank loads")
    if not any(e.get("cat") == "message" for e in events):
        problems.append("no message recorded")
    if problems:
        print("TRACE_BAD: " + "; ".join(problems))
        return 1
    print(f"TRACE_OK: {len(events)} events, {len(runs)} runs, {len(starts)} migrations, {len(steps)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
