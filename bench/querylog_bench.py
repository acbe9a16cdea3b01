"""
What the query log (the C{log} and C{errors} directives) costs idetcd's
UDP reading and answering, measured in process like counting_bench.py:
ports over the same prepared replies read the same known-name queries
from a stand-in socket, in alternating rounds; the best round of each
counts.

- C{none}: no C{log}, no C{errors}: the plain protocol, the fast path as
  it is without them (the choice is made once, when the port is made);
- C{errors}: C{errors} only: every reply's rcode is looked at;
- C{log class error}: each query's name and class are looked at, no line;
- C{log}: every query is due a line; past C{limit} (100/s) they are only
  counted, so this is the cost under a flood (each round is a second of
  its own: 100 lines written, the rest counted);
- C{log limit 100000}: a line for every query (twisted.logger, with no
  observer writing it out), the cost of logging everything.

    python bench/querylog_bench.py [--rounds 20] [--queries 5000]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from counting_bench import HOST, MEMBERS, _Socket, known_queries, nanoseconds_per_query  # noqa: E402
from dnsperf_bench import ZONE, StaticRegistry, members  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402

from idetcd.dns import _server as idetcd_server  # noqa: E402
from idetcd.dns._authority import ZoneAuthority  # noqa: E402
from idetcd.dns._querylog import query_log  # noqa: E402
from idetcd.node import parse  # noqa: E402

SETTINGS = {
    "none": None,
    "errors": "errors",
    "log class error": "log {\n class error\n }",
    "log": "log",
    "log limit 100000": "log {\n limit 100000\n }",
}


def port(replies, queries, directives, clock):
    block = f".:53 {{\n idetcd {{\n pattern worker{{{{.ID}}}}.{ZONE}\n }}\n {directives or ''}\n}}\n"
    querylog = query_log(parse(block)[0], clock)
    if querylog is None:
        protocol = idetcd_server._UDP(replies)
    else:
        protocol = idetcd_server._LoggedUDP(replies, querylog)
    protocol._sendmsg = lambda buffers, ancillary, flags, address: None
    udp = idetcd_server._UDPPort(0, protocol, HOST, 65535, None)
    udp.socket = _Socket(queries)
    udp.wildcard = False
    return udp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds; the best counts")
    parser.add_argument("--queries", type=int, default=5000, help="queries per round")
    parser.add_argument("--batch", type=int, default=32, help="queries one read finds")
    args = parser.parse_args(argv)
    # Events go nowhere, as with no observer; without this twisted.logger
    # would keep the first ones for an observer to come.
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    authority = ZoneAuthority(ZONE, StaticRegistry(members(MEMBERS)), 30)
    replies = idetcd_server._Replies(authority, lambda *args, **fields: None)
    replies.rebuild()
    clock = task.Clock()  # moved on a second per round: the limits start afresh
    ports = {name: port(replies, known_queries(), text, clock) for name, text in SETTINGS.items()}
    best = dict.fromkeys(ports, float("inf"))
    for _ in range(args.rounds):
        clock.advance(1)
        for name, udp in ports.items():
            best[name] = min(best[name], nanoseconds_per_query(udp, args.batch, args.queries))
    print(f"Python {sys.version.split()[0]}, {args.rounds} rounds of {args.queries} known-name "
          f"queries, batches of {args.batch}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'directives':<20} {'ns/query':>9} {'queries/s (one core, handler only)':>36} {'vs none':>8}")
    for name, nanoseconds in best.items():
        print(f"{name:<20} {nanoseconds:>9.0f} {1e9 / nanoseconds:>36,.0f} {best['none'] / nanoseconds:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
