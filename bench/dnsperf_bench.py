"""
idetcd's DNS front end against a stock twisted.names server holding the same
records, against itself counting its answers for the C{prometheus}
directive, and against itself with the C{log} directive (the query log,
rate-limited), all driven by dnsperf over UDP on loopback.

Not part of the test run.  Each server runs in a process of its own (pinned
to one core when there are two or more, dnsperf to the others), so neither
the harness nor dnsperf shares its interpreter.  For every query mix the
harness warms the server up, runs dnsperf for queries/s and mean latency,
then again with C{-v} for the 99th percentile, and takes the median of
C{--repeat} rounds; it prints those figures, every query lost, the ratios
idetcd/stock and metrics/idetcd, and whether the goals of issues #4 and
#10 are met:

    python bench/dnsperf_bench.py [--seconds 10] [--repeat 1]
    python bench/dnsperf_bench.py --servers idetcd,metrics --repeat 5 --no-latency

Needs dnsperf (Debian/Ubuntu: C{apt-get install -y dnsperf}) and the
project's dependencies plus dnspython.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import attr
from prometheus_client.parser import text_string_to_metric_families

# Run from a checkout: the project sits next to this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idetcd.dns import _server as idetcd_server  # noqa: E402
from idetcd.dns import _tally as tally  # noqa: E402
from idetcd.dns._authority import ZoneAuthority  # noqa: E402
from idetcd.members._record import Member  # noqa: E402

ZONE = "tf.local."
TTL = 30
HOST = "127.0.0.1"
GOAL_QPS = 50000
GOAL_RATIO = 3.0
# Issue #10: counting for /metrics costs known-name queries/s at most 10%.
GOAL_METRICS_RATIO = 0.9
# "metrics" is idetcd counting its answers, with /metrics on a port of its own.
# "log" is idetcd with the log directive (the query log, rate-limited).
SERVERS = ("idetcd", "metrics", "log", "stock")
MIXES = ("known", "90/10")
# Distinct unknown names in the 90/10 mix: by default more than idetcd
# caches, so every unknown query takes its slow path, as a stream of typos
# would; a few hundred show the cached case.
UNKNOWN_NAMES = 2 * idetcd_server.CACHE_SIZE
# How long a server waits for its first answer to be asked for, and the
# margin on its lifetime beyond the planned runs.
READY_TIMEOUT = 15.0
LIFETIME_MARGIN = 120.0
# dnsperf's own timeout for one query (s) and the grace it needs to drain.
QUERY_TIMEOUT = 2
DNSPERF_GRACE = 30


# The server side: one process per server, started by the harness.


@attr.s(eq=False)
class StaticRegistry:
    """
    The registry's surface over a fixed set of members: the benchmark
    measures the DNS front end, not etcd.
    """

    members = attr.ib()
    revision = attr.ib(default=1)
    ready = attr.ib(default=True)

    def subscribe_changes(self, callback):
        return lambda: None


def members(count):
    """
    C{count} members named like the claims of a cluster, each with one IPv4
    and one IPv6 address.
    """
    out = {}
    for i in range(1, count + 1):
        name = f"worker{i}.{ZONE}"
        out[name] = Member(
            name=name,
            ipv4=(f"10.0.{i // 256}.{i % 256}",),
            ipv6=(f"fd00::{i:x}",),
            node=f"node{i}",
        )
    return out


def _start(reactor, service):
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)


def _listen_idetcd(reactor, authority, counts=None, querylog=None):
    dns_server = idetcd_server.DNSServer(
        authority, 0, interfaces=(HOST,), reactor=reactor, tally=counts, querylog=querylog
    )
    _start(reactor, dns_server)
    return (dns_server.port,)


def _listen_metrics(reactor, authority):
    """
    idetcd with what the prometheus directive adds: its answers counted,
    and /metrics served from them.
    """
    from prometheus_client import CollectorRegistry

    from idetcd.node import HttpAddress
    from idetcd.node._http import HttpEndpoint, metrics_site
    from idetcd.node._metrics import DnsCollector

    counts = tally.DnsTally(ZONE)
    ports = _listen_idetcd(reactor, authority, counts)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DnsCollector(counts, lambda: f"dns://:{ports[0]}"))
    endpoint = HttpEndpoint("metrics", HttpAddress(HOST, 0), metrics_site(registry), reactor)
    _start(reactor, endpoint)
    return ports + (endpoint.port,)


def _listen_log(reactor, authority):
    """
    idetcd with the log directive: every query due a line, at most 100
    lines/s written (to the server's log file), the rest counted.
    """
    from idetcd.dns import query_log
    from idetcd.node import parse

    block = parse(f".:53 {{\n idetcd {{\n pattern w{{{{.ID}}}}.{ZONE}\n }}\n log\n}}\n")[0]
    return _listen_idetcd(reactor, authority, querylog=query_log(block, reactor))


def _listen_stock(reactor, authority):
    from twisted.names import dns, server

    factory = server.DNSServerFactory(authorities=[authority])
    return (reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface=HOST).getHost().port,)


LISTEN = {
    "idetcd": _listen_idetcd, "metrics": _listen_metrics, "log": _listen_log, "stock": _listen_stock,
}


def serve(kind, count, lifetime):
    """
    Serve the zone with C{kind} on a free UDP port of loopback, print the
    port (and that of /metrics, if any), and stop after C{lifetime} seconds or as soon as the harness is
    gone, whichever comes first.
    """
    from twisted.internet import reactor, task
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
            )
        ],
        redirectStandardIO=False,
    )
    parent = os.getppid()
    authority = ZoneAuthority(ZONE, StaticRegistry(members(count)), TTL)
    ports = LISTEN[kind](reactor, authority)
    print("PORT", *ports, flush=True)

    def orphaned():
        if os.getppid() != parent:
            reactor.stop()

    watch = task.LoopingCall(orphaned)
    watch.start(1.0, now=False)
    reactor.callLater(lifetime, reactor.stop)
    reactor.run()


# The harness side.


@attr.s(frozen=True, auto_attribs=True)
class Result:
    """
    One dnsperf run; C{p99_ms} is NaN unless it ran with C{-v}.
    """

    lost: int
    qps: float
    mean_ms: float
    p99_ms: float
    rcodes: str
    completed: int


@attr.s(frozen=True, auto_attribs=True)
class Row:
    """
    One server and query mix: queries/s and mean latency of the plain run
    with the median queries/s, the median p99 of the C{-v} runs, and every
    query lost in any of them.
    """

    qps: float
    lost: int
    mean_ms: float
    p99_ms: float
    rcodes: str

    @classmethod
    def of(cls, plain, verbose):
        ranked = sorted(plain, key=lambda r: r.qps)
        middle = ranked[(len(ranked) - 1) // 2]
        p99 = statistics.median(r.p99_ms for r in verbose) if verbose else float("nan")
        lost = sum(r.lost for r in plain + verbose)
        return cls(middle.qps, lost, middle.mean_ms, p99, middle.rcodes)


@attr.s(eq=False)
class Server:
    """
    One server process; C{stop} kills it by its id.  C{metrics_port}
    serves /metrics, for the kind that has it.
    """

    kind: str = attr.ib()
    process: subprocess.Popen = attr.ib()
    port: int = attr.ib()
    log: str = attr.ib()
    metrics_port: int = attr.ib(default=None)

    @classmethod
    def start(cls, kind, count, lifetime, pin, workdir):
        log = os.path.join(workdir, f"{kind}.log")
        command = [sys.executable, os.path.abspath(__file__), "serve", kind]
        command += ["--members", str(count), "--lifetime", str(int(lifetime))]
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                pin + command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
            )
        server = cls(kind, process, 0, log)
        try:
            server.port, *rest = server._read_ports()
            server.metrics_port = rest[0] if rest else None
            server._wait_answering()
        except BaseException:
            server.stop()
            raise
        return server

    def _read_ports(self):
        deadline = time.monotonic() + READY_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.process.stdout], [], [], left)[0]:
                raise RuntimeError(f"{self.kind} server gave no port; see {self.log}")
            chunk = os.read(self.process.stdout.fileno(), 100)
            if not chunk:
                raise RuntimeError(f"{self.kind} server exited; see {self.log}")
            line += chunk
        return [int(word) for word in line.split()[1:]]

    def _wait_answering(self):
        """
        dnsperf loses its first window against a server that does not
        answer yet, so wait for an answer first.
        """
        import dns.exception
        import dns.message
        import dns.query

        query = dns.message.make_query(f"worker1.{ZONE}", "A")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                dns.query.udp(query, HOST, port=self.port, timeout=0.5)
                return
            except dns.exception.Timeout:
                if self.process.poll() is not None:
                    break
        raise RuntimeError(f"{self.kind} server does not answer; see {self.log}")

    def answers(self, name, type):
        """
        (rcode, sorted answer records as text) for one question.
        """
        import dns.message
        import dns.query
        import dns.rcode

        response = dns.query.udp(
            dns.message.make_query(name, type), HOST, port=self.port, timeout=2
        )
        records = tuple(sorted(rr.to_text() for rrset in response.answer for rr in rrset))
        return dns.rcode.to_text(response.rcode()), records

    def counted(self):
        """
        From the server's /metrics: the answers it counted, and their mean
        time in microseconds.
        """
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode("utf-8")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        answers = sum(s.value for s in families["idetcd_dns_requests"].samples)
        # The histogram has a series per query type: sum them all.
        samples = families["idetcd_dns_request_duration_seconds"].samples
        count = sum(s.value for s in samples if s.name == "idetcd_dns_request_duration_seconds_count")
        seconds = sum(s.value for s in samples if s.name == "idetcd_dns_request_duration_seconds_sum")
        mean = seconds / count * 1e6 if count else 0.0
        return int(answers), mean

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.process.stdout.close()


def write_queries(path, count, unknown):
    """
    A dnsperf data file over the A and AAAA records of C{count} members;
    with C{unknown} > 0, every tenth line asks for one of that many
    distinct names that do not exist.  Returns the number of lines.
    """
    known = [f"worker{i}.{ZONE} {t}" for i in range(1, count + 1) for t in ("A", "AAAA")]
    if not unknown:
        lines = known
    else:
        lines = []
        for n in range(unknown):
            lines.extend(known[(n * 9 + k) % len(known)] for k in range(9))
            lines.append(f"absent{n}.{ZONE} {'A' if n % 2 else 'AAAA'}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return len(lines)


_FIELDS = {
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "mean": re.compile(r"Average Latency \(s\):\s+([\d.]+)"),
}
_RCODES = re.compile(r"Response codes:\s+(.*)")
# -v prints one line per answered query, ending in its latency in seconds.
_VERBOSE = re.compile(rb"^> \S+ .* ([\d.]+)$", re.M)


def percentile(values, share):
    """
    The nearest-rank percentile of sorted C{values}.
    """
    rank = max(1, -(-len(values) * share // 100))
    return values[int(rank) - 1]


def dnsperf(ports, datafile, seconds, args, pin, verbose):
    """
    Run dnsperf once against each of C{ports}, all at the same time; their
    L{Result}s, in that order.  With C{verbose}, also read every query's
    latency for the percentile (dnsperf 2.x has no latency histogram).
    Printing a line per query costs dnsperf about a fifth of its rate on a
    2-core machine, so queries/s come from runs without it.
    """
    running = []
    with contextlib.ExitStack() as files:
        try:
            for port in ports:
                command = pin + ["dnsperf", "-s", HOST, "-p", str(port), "-d", datafile]
                command += ["-l", str(seconds), "-c", str(args.clients), "-t", str(QUERY_TIMEOUT)]
                if args.max_qps:
                    command += ["-Q", str(args.max_qps)]
                if verbose:
                    command.append("-v")
                out = files.enter_context(tempfile.TemporaryFile())
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE)
                running.append((process, out))
            return [_result(process, out, seconds, verbose) for process, out in running]
        finally:
            for process, _ in running:
                if process.poll() is None:
                    process.kill()
                    process.communicate()


def _result(process, out, seconds, verbose):
    """
    The L{Result} of one dnsperf C{process} writing to the file C{out}.
    """
    _, stderr = process.communicate(timeout=seconds + DNSPERF_GRACE)
    out.seek(0)
    output = out.read()
    summary = output[output.rfind(b"Statistics:") :].decode("ascii", "replace")
    if process.returncode != 0 or "Queries per second" not in summary:
        raise RuntimeError(
            f"dnsperf failed ({process.returncode}): {stderr.decode(errors='replace')}"
            f"{summary[-2000:]}"
        )
    values = {key: float(pattern.search(summary).group(1)) for key, pattern in _FIELDS.items()}
    latencies = sorted(float(m) for m in _VERBOSE.findall(output)) if verbose else []
    rcodes = _RCODES.search(summary)
    return Result(
        lost=int(values["lost"]),
        qps=values["qps"],
        mean_ms=values["mean"] * 1000,
        p99_ms=percentile(latencies, 99) * 1000 if latencies else float("nan"),
        rcodes=rcodes.group(1).strip() if rcodes else "",
        completed=int(values["completed"]),
    )


def measure(ports, datafile, args, pin, latency=True):
    """
    A warm-up, the measured run, then (with C{latency}, unless
    C{--no-latency}) the run that times every query, each against all of
    C{ports} at once; for each port, its measured L{Result}, its timed one
    (or L{None}) and the queries all its runs completed.
    """
    completed = [0] * len(ports)
    runs = []
    if args.warmup:
        runs.append(dnsperf(ports, datafile, args.warmup, args, pin, verbose=False))
    results = dnsperf(ports, datafile, args.seconds, args, pin, verbose=False)
    runs.append(results)
    timed = [None] * len(ports)
    if latency and not args.no_latency:
        timed = dnsperf(ports, datafile, args.seconds, args, pin, verbose=True)
        runs.append(timed)
    for run in runs:
        completed = [done + result.completed for done, result in zip(completed, run)]
    return list(zip(results, timed, completed))


def check_same_records(servers, count):
    """
    All servers must give the same answers, or the comparison means
    nothing.
    """
    for name, type in (
        (f"worker1.{ZONE}", "A"),
        (f"worker{count}.{ZONE}", "AAAA"),
        (f"absent1.{ZONE}", "A"),
    ):
        seen = {server.kind: server.answers(name, type) for server in servers}
        if len(set(seen.values())) != 1:
            raise RuntimeError(f"servers disagree on {name} {type}: {seen}")


def pinning(args):
    """
    (server prefix, dnsperf prefix, description): the server on the last
    core, dnsperf on the rest.
    """
    cores = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cores) < 2 or not shutil.which("taskset"):
        return [], [], "none"
    server_core = str(cores[-1])
    others = ",".join(str(c) for c in cores[:-1])
    return (
        ["taskset", "-c", server_core],
        ["taskset", "-c", others],
        f"server on CPU {server_core}, dnsperf on CPU {others} (taskset)",
    )


def fmt_ms(value):
    return "n/a" if value != value else f"{value:.3f}"


def fmt_ratio(a, b):
    return "n/a" if a != a or b != b else f"x{a / b:.2f}"


def report(args, table, counted, together, pin_text):
    """
    Print the table, the ratios and the goals of the servers that ran;
    C{counted} is (answers counted, dnsperf queries completed, mean µs per
    answer) of the metrics server, or None; C{together} the ratios of the
    side-by-side runs by mix.  Whether every goal is met.
    """
    print()
    print(f"{'server':<8} {'mix':<7} {'queries/s':>10} {'lost':>6} {'mean ms':>8} "
          f"{'p99 ms':>8}  response codes")
    for mix in MIXES:
        for kind in args.servers:
            r = table[kind, mix]
            print(f"{kind:<8} {mix:<7} {r.qps:>10.0f} {r.lost:>6} {fmt_ms(r.mean_ms):>8} "
                  f"{fmt_ms(r.p99_ms):>8}  {r.rcodes}")
    print()
    ratios = {}
    for kind, base in (("idetcd", "stock"), ("metrics", "idetcd"), ("log", "idetcd")):
        if kind not in args.servers or base not in args.servers:
            continue
        for mix in MIXES:
            ours, theirs = table[kind, mix], table[base, mix]
            ratios[kind, mix] = ours.qps / theirs.qps
            print(f"ratio {kind}/{base}, {mix:<6}: queries/s x{ratios[kind, mix]:.2f}, "
                  f"mean latency {fmt_ratio(ours.mean_ms, theirs.mean_ms)}, "
                  f"p99 latency {fmt_ratio(ours.p99_ms, theirs.p99_ms)}")
    for mix, each in together.items():
        print(f"ratio metrics/idetcd side by side, {mix:<6}: queries/s "
              f"x{statistics.median(each):.3f} (median; rounds "
              f"{', '.join(f'x{r:.3f}' for r in each)})")
    goals = []
    if "idetcd" in args.servers:
        known = table["idetcd", "known"]
        goals += [
            (f"idetcd known names >= {GOAL_QPS} queries/s", known.qps >= GOAL_QPS,
             f"{known.qps:.0f}"),
            ("idetcd known names: no query lost", known.lost == 0, f"{known.lost} lost"),
        ]
    if ("idetcd", "known") in ratios:
        ratio = ratios["idetcd", "known"]
        goals.append(
            (f"idetcd >= {GOAL_RATIO:g}x stock, known names", ratio >= GOAL_RATIO, f"x{ratio:.2f}")
        )
    if together:
        ratio = statistics.median(together["known"])
        goals.append((
            f"counting for /metrics costs at most {1 - GOAL_METRICS_RATIO:.0%} of known-name "
            "queries/s (side by side)", ratio >= GOAL_METRICS_RATIO, f"x{ratio:.3f}",
        ))
    if counted is not None:
        answers, completed, mean_us = counted
        print(f"metrics server: /metrics counted {answers} answers, dnsperf completed "
              f"{completed} queries against it; mean time per answer {mean_us:.2f} µs")
        goals.append(("/metrics counts every query dnsperf completed", answers >= completed,
                      f"{answers} >= {completed}"))
    print()
    for text, met, figure in goals:
        print(f"goal {text}: {'MET' if met else 'NOT MET'} ({figure})")
    print(f"(pinning: {pin_text}; {args.seconds} s per run, median of {args.repeat}; "
          f"lost: all runs; p99 from separate dnsperf -v runs; "
          f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return all(met for _, met, _ in goals)


def bench(args):
    if not shutil.which("dnsperf"):
        sys.exit(
            "dnsperf is not installed.  On Debian/Ubuntu: sudo apt-get install -y dnsperf\n"
            "(elsewhere: https://www.dns-oarc.net/tools/dnsperf)"
        )
    server_pin, dnsperf_pin, pin_text = pinning(args)
    help_text = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True)
    version = re.search(r"Version (\S+)", help_text.stdout + help_text.stderr)
    import twisted

    print(f"dnsperf {version.group(1) if version else '?'}, "
          f"Python {platform.python_version()}, Twisted {twisted.__version__}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"pinning: {pin_text}; dnsperf -c {args.clients}"
          f"{f' -Q {args.max_qps}' if args.max_qps else ''}; {args.members} members in {ZONE}")
    side_by_side = "idetcd" in args.servers and "metrics" in args.servers
    runs = (len(args.servers) + side_by_side) * len(MIXES) * args.repeat
    latency_seconds = 0 if args.no_latency else args.seconds
    lifetime = (
        runs * (args.warmup + args.seconds + latency_seconds + 3 * QUERY_TIMEOUT + 5)
        + LIFETIME_MARGIN
    )
    with tempfile.TemporaryDirectory(prefix="idetcd-bench-") as workdir:
        files = {}
        for mix, unknown in zip(MIXES, (0, args.unknown_names)):
            files[mix] = os.path.join(workdir, mix.replace("/", "-") + ".queries")
            lines = write_queries(files[mix], args.members, unknown)
            print(f"query file {mix}: {lines} lines, {unknown} distinct unknown names")
        servers = []
        completed = dict.fromkeys(args.servers, 0)
        counted = None
        together = {}  # mix -> ratios metrics/idetcd of the side-by-side runs
        try:
            for kind in args.servers:
                servers.append(
                    Server.start(kind, args.members, lifetime, server_pin, workdir)
                )
            check_same_records(servers, args.members)
            plain, verbose = {}, {}
            for repeat in range(args.repeat):
                for mix in MIXES:
                    # Every other round in reverse, so no server always
                    # runs after the same one.
                    for server in servers if repeat % 2 == 0 else servers[::-1]:
                        key = (server.kind, mix)
                        ((result, timed, done),) = measure(
                            [server.port], files[mix], args, dnsperf_pin
                        )
                        completed[server.kind] += done
                        plain.setdefault(key, []).append(result)
                        line = (f"  run {repeat + 1}/{args.repeat} {server.kind:<7} {mix:<6} "
                                f"{result.qps:8.0f} q/s, {result.lost} lost, "
                                f"mean {fmt_ms(result.mean_ms)} ms")
                        if timed is not None:
                            verbose.setdefault(key, []).append(timed)
                            line += (f"; with -v {timed.qps:.0f} q/s, {timed.lost} lost, "
                                     f"p99 {fmt_ms(timed.p99_ms)} ms")
                        print(line, flush=True)
                    if side_by_side:
                        ratio = side_by_side_run(
                            servers, files[mix], args, dnsperf_pin, completed, repeat % 2
                        )
                        together.setdefault(mix, []).append(ratio)
                        print(f"  run {repeat + 1}/{args.repeat} side by side {mix:<6} "
                              f"metrics/idetcd x{ratio:.3f}", flush=True)
            for server in servers:
                if server.metrics_port is not None:
                    answers, mean_us = server.counted()
                    counted = (answers, completed[server.kind], mean_us)
        finally:
            for server in servers:
                server.stop()
    table = {key: Row.of(results, verbose.get(key, [])) for key, results in plain.items()}
    return 0 if report(args, table, counted, together, pin_text) else 1


def side_by_side_run(servers, datafile, args, pin, completed, flip):
    """
    dnsperf against idetcd and the metrics server at the same time (the
    metrics server's dnsperf started first when C{flip}): both servers are
    pinned to one core and get equal shares of it, so the ratio of their
    queries/s is the ratio of their costs per query, whatever else the
    machine does meanwhile (one after the other, another process on a
    shared machine moves each run by tens of percent).  Returns the ratio
    metrics/idetcd.
    """
    pair = {server.kind: server for server in servers}
    kinds = ("metrics", "idetcd") if flip else ("idetcd", "metrics")
    outcomes = measure([pair[kind].port for kind in kinds], datafile, args, pin, latency=False)
    qps = {}
    for kind, (result, _, done) in zip(kinds, outcomes):
        completed[kind] += done
        qps[kind] = result.qps
    return qps["metrics"] / qps["idetcd"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("serve", help="run one server (used by the harness)")
    server.add_argument("kind", choices=SERVERS)
    server.add_argument("--members", type=int, default=50)
    server.add_argument("--lifetime", type=float, required=True)
    parser.add_argument("--seconds", type=int, default=10, help="length of a measured run")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up before each run (s)")
    parser.add_argument("--repeat", type=int, default=1, help="take the median of N runs")
    parser.add_argument("--members", type=int, default=50, help="names in the zone")
    parser.add_argument("--clients", type=int, default=20, help="dnsperf -c")
    parser.add_argument("--max-qps", type=int, default=0, help="dnsperf -Q (0: no limit)")
    parser.add_argument(
        "--unknown-names", type=int, default=UNKNOWN_NAMES,
        help="distinct unknown names in the 90/10 mix (default: twice idetcd's cache)",
    )
    parser.add_argument(
        "--servers", default=",".join(SERVERS),
        help=f"which servers to run, comma-separated (default: {','.join(SERVERS)})",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--no-latency", action="store_true",
        help="skip the dnsperf -v runs that give the p99 latency",
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.kind, args.members, args.lifetime)
    for name in ("seconds", "repeat", "members", "clients", "unknown_names"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.max_qps < 0:
        parser.error("--warmup and --max-qps cannot be negative")
    if args.members > 65535:
        parser.error("--members must be at most 65535")
    chosen = args.servers.split(",")
    if not chosen or set(chosen) - set(SERVERS) or len(set(chosen)) != len(chosen):
        parser.error(f"--servers takes some of {', '.join(SERVERS)}, each once")
    args.servers = [kind for kind in SERVERS if kind in chosen]
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
