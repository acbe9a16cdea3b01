"""
What zone transfers (the C{transfer} directive) cost a node holding a large
zone, in process: the first catch-up of the transfer's copy (every record
read once), the catch-up after one member changes, the slowest message of
a whole-zone transfer, each set against the authority's own rebuild of the
zone, so the ratios hold still on a busy machine where milliseconds do not.

Not part of the test run:

    python bench/transfer_bench.py [--members 10000] [--rounds 5]
"""

import argparse
import ipaddress
import os
import sys
import time

import attr
import dns.message

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idetcd.dns._authority import ZoneAuthority  # noqa: E402
from idetcd.dns._transfer import ZoneTransfer  # noqa: E402
from idetcd.dns._wire import read_query  # noqa: E402
from idetcd.members._record import Member  # noqa: E402
from tests.fakeregistry import FakeRegistry  # noqa: E402


def member(index, address=None):
    return Member(
        f"worker{index}.tf.local.",
        (address or str(ipaddress.ip_address("10.100.0.0") + index),),
        role="worker", slot=index, srv=2222,
    )


def ms(start):
    return (time.perf_counter() - start) * 1e3


def round_(count, index):
    registry = FakeRegistry([member(i) for i in range(1, count + 1)], revision=100)
    authority = ZoneAuthority("tf.local.", registry, 30)
    start = time.perf_counter()
    authority.update(None)
    rebuild = ms(start)
    transfer = ZoneTransfer(authority, (None,))
    transfer.changed(None)
    start = time.perf_counter()
    transfer.catch_up()
    first = ms(start)
    registry.put(attr.evolve(member(5), ipv4=(f"10.9.9.{index % 250}",), srv=3000 + index))
    transfer.changed(authority.update({"worker5.tf.local."}))
    start = time.perf_counter()
    transfer.catch_up()
    change = ms(start)
    query = read_query(dns.message.make_query("tf.local", "AXFR").to_wire())
    _, messages = transfer.respond(query, tcp=True)
    sizes = [len(message) for message in messages]
    return rebuild, first, change, transfer.slowest_build / 1e6, sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    results = [round_(options.members, index) for index in range(options.rounds)]
    rebuild, first, change, slowest = (min(column) for column in list(zip(*results))[:4])
    sizes = results[0][4]
    print(f"{options.members} members, best of {options.rounds} rounds")
    print(f"authority rebuild          {rebuild:8.1f} ms")
    print(f"transfer first catch-up    {first:8.1f} ms  ({first / rebuild:.2f} of a rebuild)")
    print(f"catch-up after one change  {change:8.2f} ms  ({change / rebuild:.4f} of a rebuild)")
    print(f"slowest AXFR message       {slowest:8.1f} ms  ({slowest / rebuild:.3f} of a rebuild)")
    print(f"AXFR: {len(sizes)} messages, largest {max(sizes)} bytes")


if __name__ == "__main__":
    main()
