#!/usr/bin/env python3
"""Tests scripts/trace-report end to end; one CTest test per mode.

  check_report.py browser --report SCRIPT --workdir DIR
      Renders a sample trace (make_sample_trace.py), loads the page in headless Chromium,
      checks that its script ran without errors and that it shows the generated numbers, and
      checks a screenshot (DIR/report.png) is not blank.
  check_report.py large --report SCRIPT --workdir DIR
      Renders a trace of about 200,000 events: quickly, into a small page that still loads.
  check_report.py errors --report SCRIPT --workdir DIR
      Missing, empty, truncated and non-trace files: a one-line message and exit status 1.

Chromium is the Debian package `chromium` (set CHROMIUM to use another binary); without it
the browser tests fail and say so, rather than pass without having looked at the page.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import png  # noqa: E402  (next to this file)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
MAX_PAGE_BYTES = 3 * 1024 * 1024


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def run(cmd, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def make_trace(workdir, name, *options):
    trace = os.path.join(workdir, name + ".json")
    summary = os.path.join(workdir, name + ".expected.json")
    p = run([sys.executable, os.path.join(HERE, "make_sample_trace.py"), "-o", trace,
             "--summary", summary, *options])
    check(p.returncode == 0, f"make_sample_trace.py failed:\n{p.stderr}")
    with open(summary) as f:
        return trace, json.load(f)


def render(report, trace, html):
    start = time.monotonic()
    p = run([report, trace, "-o", html])
    seconds = time.monotonic() - start
    check(p.returncode == 0, f"trace-report failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    with open(html, encoding="utf-8") as f:
        return f.read(), seconds


def check_self_contained(page):
    # Anything the page would fetch: external scripts, styles, images, fonts or frames.
    fetches = re.findall(r'<(?:script|link|img|iframe|object|embed)\b[^>]*\b(?:src|href)=|url\(\s*["\']?(?!#)'
                         r'|@import|https?://', page)
    check(not fetches, f"the page is not self-contained: {fetches[:5]}")
    check(len(page.encode()) <= MAX_PAGE_BYTES,
          f"the page is {len(page.encode())} bytes, more than {MAX_PAGE_BYTES}")


def chromium():
    binary = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        raise Failure("Chromium not found: install the Debian package 'chromium' "
                      "(apt-get install chromium), or set CHROMIUM to a Chromium binary")
    return binary


def browse(html, *flags):
    """Runs headless Chromium on the page with flags added; returns (stdout, stderr)."""
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags,
               "file://" + os.path.abspath(html)]
        try:
            p = run(cmd, timeout=40)
        except subprocess.TimeoutExpired:
            raise Failure(f"Chromium did not finish within 40 s: {' '.join(cmd)}") from None
    check(p.returncode == 0, f"Chromium failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout, p.stderr


def check_loads(html):
    """Loads the page; its script must have run to the end without an exception."""
    dom, log = browse(html, "--dump-dom")
    errors = [line for line in log.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    check(not errors, "JavaScript errors:\n" + "\n".join(errors))
    check('id="report-error"' not in dom, "the page shows a script error:\n" +
          "".join(re.findall(r'<pre id="report-error">(.*?)</pre>', dom, re.S)))
    check(re.search(r'<html[^>]*\bdata-report="ready"', dom),
          "the page's script did not finish (no data-report=\"ready\" on <html>)")
    return dom


def card(dom, key):
    m = re.search(rf'data-key="{key}" data-value="([^"]*)"', dom)
    check(m, f"no summary card {key!r} in the page")
    return float(m.group(1))


def check_summary(dom, expected):
    for key, field in (("ranks", "ranks"), ("threads", "threads"), ("migrations", "migrations"),
                       ("messages", "messages"), ("balancing-steps", "lb_steps"),
                       ("dropped-events", "dropped")):
        shown = card(dom, key)
        check(shown == expected[field], f"summary shows {key} = {shown:g}, expected {expected[field]}")


def check_screenshot(path):
    width, height, channels, rows = png.decode(path)
    colours = Counter()
    for row in rows:
        colours.update(row[i:i + 3] for i in range(0, len(row), channels))
    background = colours.most_common(1)[0][1] / (width * height)
    check(len(colours) >= 32, f"the screenshot {path} has only {len(colours)} colours: blank?")
    check(background < 0.9, f"{background:.0%} of the screenshot {path} is one colour: blank?")
    return len(colours), background


def browser_test(args):
    trace, expected = make_trace(args.workdir, "sample")
    html = os.path.join(args.workdir, "report.html")
    page, _ = render(args.report, trace, html)
    check_self_contained(page)
    dom = check_loads(html)
    check_summary(dom, expected)
    steps = len(re.findall(r'<section class="step"', dom))
    check(steps == expected["lb_steps"], f"{steps} balancing step sections, expected {expected['lb_steps']}")
    check(dom.count("data-t=") > 100, "the timeline has hardly any thread bars")
    check(dom.count('class="mig"') > 0, "no migration arrows")
    shot = os.path.join(args.workdir, "report.png")
    browse(html, f"--screenshot={shot}", "--window-size=1400,1000")
    colours, background = check_screenshot(shot)
    print(f"ok: {html} loads without errors; screenshot {shot}: {colours} colours, "
          f"{background:.0%} background")


def large_test(args):
    # 4 phases x 32 threads x 1200 slices, plus messages: about 190,000 events.
    trace, expected = make_trace(args.workdir, "large", "--iterations", "1200", "--slice-us", "100")
    check(expected["events"] >= 150000, f"the large trace has only {expected['events']} events")
    html = os.path.join(args.workdir, "large.html")
    page, seconds = render(args.report, trace, html)
    check(seconds < 20, f"rendering {expected['events']} events took {seconds:.1f} s")
    check_self_contained(page)
    check_summary(check_loads(html), expected)
    print(f"ok: {expected['events']} events rendered in {seconds:.1f} s into {len(page.encode())} bytes")


def errors_test(args):
    valid_json_not_trace = os.path.join(args.workdir, "not-a-trace.json")
    cases = {
        "missing": (os.path.join(args.workdir, "does-not-exist.json"), None, "cannot read"),
        "empty": (os.path.join(args.workdir, "empty.json"), "", "is empty"),
        "truncated": (os.path.join(args.workdir, "truncated.json"),
                      '{"traceEvents": [{"ph": "X", "ts": 1, "dur": 2, "pid": 0', "ends early"),
        "not json": (os.path.join(args.workdir, "garbage.json"), "not json at all", "not valid JSON"),
        "not a trace": (valid_json_not_trace, '{"events": []}', "not a trace"),
    }
    for what, (path, content, message) in cases.items():
        if content is not None:
            with open(path, "w") as f:
                f.write(content)
        html = os.path.join(args.workdir, f"{what.replace(' ', '-')}.html")
        if os.path.exists(html):
            os.remove(html)
        p = run([args.report, path, "-o", html])
        check(p.returncode == 1, f"{what} file: exit status {p.returncode}, expected 1")
        check(message in p.stderr and path in p.stderr and "Traceback" not in p.stderr,
              f"{what} file: unclear message: {p.stderr!r}")
        check(not os.path.exists(html), f"{what} file: a report was written anyway")
        print(f"ok: {what}: {p.stderr.strip()}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["browser", "large", "errors"])
    p.add_argument("--report", required=True, help="path of scripts/trace-report")
    p.add_argument("--workdir", required=True, help="directory for the traces, pages and screenshot")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    try:
        {"browser": browser_test, "large": large_test, "errors": errors_test}[args.mode](args)
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
