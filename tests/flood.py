"""
Hostile DNS load for tests and benchmarks, bounded in time and count and
aimed at loopback only.  Run it as a process of its own, so the server's
reactor, not this load, is what gets measured:

    python -m tests.flood --port PORT --seconds 9 --tcp 200 --udp
    python -m tests.flood --port PORT --chain udp --count 2000

It prints one JSON object of counts when done.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import select
import socket
import struct
import sys
import time

import dns.message

from tests.dnsclient import read_message

HOST = "127.0.0.1"
# Pipelining clients come from this many loopback addresses, each within
# the server's per-client limit.
SOURCES = 20
_RR = struct.Struct("!HHIH")


def pointer_chain(size, section):
    """
    A query of about C{size} bytes whose records, in C{section} ("answer"
    or "additional"), each own a name that points at the one before: a
    reader that follows every owner does work quadratic in C{size}.
    """
    query = dns.message.make_query("worker1.tf.local", "A", id=0x1234).to_wire()
    records = b"\x01a\x00" + _RR.pack(1, 1, 0, 0)
    previous, offset = len(query), len(query) + len(records)
    while len(query) + len(records) + 12 <= size:
        records += struct.pack("!H", 0xC000 | previous) + _RR.pack(1, 1, 0, 0)
        previous, offset = offset, offset + 12
    count = 1 + (len(records) - 13) // 12
    counts = (count, 0, 0) if section == "answer" else (0, 0, count)
    return query[:4] + struct.pack("!4H", 1, *counts) + query[12:] + records


def udp_mix(rng, count, zone="tf.local"):
    """
    C{count} datagrams: known names, unknown ones in C{zone} (each a cache
    miss) and malformed queries.
    """
    known = [
        dns.message.make_query(f"worker{i}.tf.local", "A").to_wire() for i in range(1, 6)
    ]
    packets = []
    for index in range(count):
        kind = index % 4
        if kind < 2:
            packets.append(rng.choice(known))
        elif kind == 2:
            label = "".join(rng.choice("abcdefghij") for _ in range(12))
            packets.append(dns.message.make_query(f"{label}.{zone}", "A").to_wire())
        else:
            packets.append(pointer_chain(rng.choice((200, 1000)), "additional"))
    return packets


def _pipeliners(port, count):
    """
    C{count} non-blocking TCP connections, from L{SOURCES} loopback
    addresses in turn.
    """
    sockets = []
    for index in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.0.1.{index % SOURCES + 1}", 0))
        s.settimeout(5.0)
        s.connect((HOST, port))
        s.setblocking(False)
        sockets.append(s)
    return sockets


def flood(port, seconds, tcp=0, udp=False, rate=None, limit=10_000_000, seed=9, zone="tf.local"):
    """
    For C{seconds}: C{tcp} connections pipelining queries for 1.3 KB
    answers without ever reading one, and, with C{udp}, a stream of
    datagrams, C{rate} a second or as fast as the socket takes them (at
    most C{limit}), whose unknown names lie in C{zone}.
    """
    counts = collections.Counter()
    query = dns.message.make_query("huge.tf.local", "A").to_wire()
    chunk = (struct.pack("!H", len(query)) + query) * 64
    packets = udp_mix(random.Random(seed), 4096, zone)
    pipeliners = _pipeliners(port, tcp)
    counts["tcp connections"] = len(pipeliners)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    start = time.monotonic()
    deadline = start + seconds
    try:
        while time.monotonic() < deadline and counts["udp sent"] < limit:
            due = 64 if rate is None else int((time.monotonic() - start) * rate) - counts["udp sent"]
            if udp:
                for _ in range(min(due, 64)):
                    try:
                        sender.sendto(packets[counts["udp sent"] % len(packets)], (HOST, port))
                    except BlockingIOError:
                        break
                    counts["udp sent"] += 1
                while True:
                    try:
                        sender.recv(65535)
                    except BlockingIOError:
                        break
                    counts["udp replies"] += 1
            wait = 0.001 if udp else 0.05
            _, writable, _ = select.select([], pipeliners, [], wait) if pipeliners else ((), (), ())
            for s in writable:
                try:
                    counts["tcp bytes sent"] += s.send(chunk)
                except (BlockingIOError, ConnectionError):
                    pass
    finally:
        for s in pipeliners:
            s.close()
        sender.close()
    return counts


def chain(port, transport, count, seconds=30.0):
    """
    Send C{count} pointer-chain queries (8 KB over UDP, 64 KB over TCP, in
    both sections) and count the FORMERR replies.
    """
    counts = collections.Counter()
    size = 8192 if transport == "udp" else 65535
    packets = [pointer_chain(size, section) for section in ("answer", "additional")]
    deadline = time.monotonic() + seconds
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for index in range(count):
                try:
                    s.sendto(packets[index % 2], (HOST, port))
                    counts["sent"] += 1
                except BlockingIOError:
                    select.select([], [s], [], 0.01)
                while select.select([s], [], [], 0)[0]:
                    counts[_rcode(s.recv(65535))] += 1
            while time.monotonic() < deadline and select.select([s], [], [], 0.5)[0]:
                counts[_rcode(s.recv(65535))] += 1
        return counts
    with socket.create_connection((HOST, port), timeout=5.0) as s:
        for index in range(count):
            s.sendall(struct.pack("!H", len(packets[index % 2])) + packets[index % 2])
            counts["sent"] += 1
            counts[_rcode(read_message(s))] += 1
    return counts


def _rcode(reply):
    return f"rcode {reply[3] & 0xF}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=9.0)
    parser.add_argument("--tcp", type=int, default=0, help="pipelining connections")
    parser.add_argument("--udp", action="store_true", help="a UDP stream as fast as it goes")
    parser.add_argument("--rate", type=float, help="UDP datagrams a second (default: flat out)")
    parser.add_argument("--limit", type=int, default=10_000_000, help="UDP datagrams at most")
    parser.add_argument("--chain", choices=("udp", "tcp"), help="pointer-chain queries instead")
    parser.add_argument("--count", type=int, default=100, help="pointer-chain queries to send")
    parser.add_argument("--zone", default="tf.local", help="the zone of the unknown UDP names")
    args = parser.parse_args(argv)
    if args.chain:
        counts = chain(args.port, args.chain, args.count, args.seconds)
    else:
        counts = flood(
            args.port, args.seconds, args.tcp, args.udp, args.rate, args.limit, zone=args.zone
        )
    json.dump(dict(counts), sys.stdout)
    print()


if __name__ == "__main__":
    main()
