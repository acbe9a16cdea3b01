"""
Legitimate clients beside a flood: idetcd's DNS front end driven by dnsperf
(known names, UDP, on loopback) alone, then while tests/flood.py runs
against it from a process of its own, and prints queries/s, lost queries
and 99th-percentile latency for each, with the ratio to the quiet run.

    python bench/flood_bench.py [--seconds 10] [--udp-rate 8000] [--tcp 200]

Not part of the test run.  Reuses the server process and dnsperf runner of
bench/dnsperf_bench.py; needs dnsperf.  On a 2-core machine the server,
dnsperf and the flood share the cores, so these figures show how the
server shares itself between clients, not its peak rate.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dnsperf_bench  # noqa: E402

SCENARIOS = ("none", "udp", "tcp", "udp+tcp")
FLOOD_MARGIN = 5


def flood_command(scenario, port, seconds, args):
    command = [sys.executable, "-m", "tests.flood", "--port", str(port), "--seconds", str(seconds)]
    if "udp" in scenario:
        command += ["--udp"] + (["--rate", str(args.udp_rate)] if args.udp_rate else [])
    if "tcp" in scenario:
        command += ["--tcp", str(args.tcp)]
    return command


def run(args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        datafile = os.path.join(workdir, "queries")
        dnsperf_bench.write_queries(datafile, args.members, 0)
        for scenario in args.scenarios:
            lifetime = 2 * args.seconds + args.warmup + dnsperf_bench.LIFETIME_MARGIN
            server = dnsperf_bench.Server.start("idetcd", args.members, lifetime, [], workdir)
            flood = None
            try:
                if scenario != "none":
                    seconds = 2 * args.seconds + args.warmup + FLOOD_MARGIN
                    flood = subprocess.Popen(
                        flood_command(scenario, server.port, seconds, args),
                        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    )
                result, latency = dnsperf_bench.measure(server.port, datafile, args, [])
            finally:
                if flood is not None:
                    flood.kill()
                    flood.wait(timeout=10)
                server.stop()
            rows.append((scenario, result, latency))
    quiet = rows[0][1] if rows[0][0] == "none" else None
    print(f"{'flood':<10} {'queries/s':>10} {'lost':>8} {'p99 ms':>8} {'vs none':>8}")
    for scenario, result, latency in rows:
        ratio = f"{result.qps / quiet.qps:.2f}" if quiet else "-"
        p99 = f"{latency.p99_ms:.2f}" if latency else "-"
        print(f"{scenario:<10} {result.qps:>10.0f} {result.lost:>8} {p99:>8} {ratio:>8}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--clients", type=int, default=20, help="dnsperf -c")
    parser.add_argument("--max-qps", type=int, default=0, help="dnsperf -Q (0: flat out)")
    parser.add_argument("--udp-rate", type=int, default=0, help="flood datagrams/s (0: flat out)")
    parser.add_argument("--tcp", type=int, default=200, help="pipelining flood connections")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
