"""
What counting answers for /metrics (the C{prometheus} directive) costs
idetcd's UDP reading and answering, measured in process without the kernel
or dnsperf, so the figure holds still on a busy machine where queries/s do
not.

Not part of the test run.  Two UDP ports over the same prepared replies,
one counting into a tally and one not, read the same queries for known
names (the fast path) from a stand-in socket (their replies go nowhere) in
alternating rounds; the best round of each counts.  A port times each
batch it reads, so the cost per query depends on how many queries one read
finds: C{--batches} sets those sizes (a saturated server finds dozens; 1 is
the worst case).  The extra nanoseconds are set against the time one query
takes at C{--qps} queries/s, the rate dnsperf measures:

    python bench/counting_bench.py [--rounds 30] [--queries 5000] [--qps 66400]
"""

import argparse
import errno
import os
import sys
import time

import dns.message

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnsperf_bench import ZONE, StaticRegistry, members  # noqa: E402

from idetcd.dns import _server as idetcd_server  # noqa: E402
from idetcd.dns import _tally as tally  # noqa: E402
from idetcd.dns._authority import ZoneAuthority  # noqa: E402

HOST = "127.0.0.1"
CLIENT = (HOST, 5353)
MEMBERS = 50
GOAL = 0.10


class _Socket:
    """
    Stands in for a UDP socket: each read hands out the next query until
    C{pending} of them went out, then says there is nothing more.
    """

    def __init__(self, queries):
        self.queries = queries
        self.next = 0
        self.pending = 0

    def recvmsg(self, size, space):
        if not self.pending:
            raise BlockingIOError(errno.EAGAIN, "no datagram waiting")
        self.pending -= 1
        self.next = (self.next + 1) % len(self.queries)
        return self.queries[self.next], [], 0, CLIENT


def port(replies, queries, counting):
    """
    A UDP port over C{replies} reading C{queries}, counting or not, whose
    replies go nowhere.
    """
    protocol = idetcd_server._UDP(replies)
    protocol._sendmsg = lambda buffers, ancillary, flags, address: None
    counts = tally.DnsTally(ZONE) if counting else None
    udp = idetcd_server._UDPPort(0, protocol, HOST, 65535, None, counts)
    udp.socket = _Socket(queries)
    udp.wildcard = False
    return udp


def known_queries():
    return [
        dns.message.make_query(f"worker{i}.{ZONE}", type).to_wire()
        for i in range(1, MEMBERS + 1)
        for type in ("A", "AAAA")
    ]


def nanoseconds_per_query(udp, batch, count):
    reads = max(1, count // batch)
    started = time.perf_counter_ns()
    for _ in range(reads):
        udp.socket.pending = batch
        udp.doRead()
    return (time.perf_counter_ns() - started) / (reads * batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=30, help="alternating rounds; the best counts"
    )
    parser.add_argument("--queries", type=int, default=5000, help="queries per round")
    parser.add_argument("--batches", default="1,32", help="queries one read finds, comma-separated")
    parser.add_argument(
        "--qps", type=float, default=66400,
        help="queries/s the extra time is set against (default: README's dnsperf figure)",
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.rounds < 1 or args.queries < 1 or args.qps <= 0 or min(batches) < 1:
        parser.error("--rounds, --queries, --batches and --qps must be positive")
    per_query = 1e9 / args.qps
    print(f"Python {sys.version.split()[0]}, {args.rounds} rounds of {args.queries} queries, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; one query at "
          f"{args.qps:,.0f}/s takes {per_query:,.0f} ns")
    print(f"{'batch':>5} {'plain ns':>9} {'counting ns':>12} {'extra ns':>9} {'of a query':>11}")
    authority = ZoneAuthority(ZONE, StaticRegistry(members(MEMBERS)), 30)
    replies = idetcd_server._Replies(authority, lambda *args, **fields: None)
    replies.rebuild()
    worst = 0.0
    for batch in batches:
        ports = {counting: port(replies, known_queries(), counting) for counting in (False, True)}
        best = dict.fromkeys(ports, float("inf"))
        for _ in range(args.rounds):
            for counting, udp in ports.items():
                best[counting] = min(best[counting], nanoseconds_per_query(udp, batch, args.queries))
        extra = best[True] - best[False]
        worst = max(worst, extra / per_query)
        print(f"{batch:>5} {best[False]:>9.0f} {best[True]:>12.0f} {extra:>+9.0f} "
              f"{extra / per_query:>11.1%}")
    met = worst <= GOAL
    print(f"goal counting costs known-name queries/s at most {GOAL:.0%}: "
          f"{'MET' if met else 'NOT MET'} (at most {worst:.1%} of a query)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
