"""
Hostile input against a live L{idetcd.dns._server.DNSServer}: a bounded batch of
generated packets over UDP and TCP, then checks that the server still
answers, that every reply it sent was well formed, that its caches stayed
bounded and that its log stayed rate-limited.
"""

import collections
import random
import select
import selectors
import socket
import struct
import threading
import time

import dns.flags
import dns.message
import dns.query
import dns.tsigkeyring
from twisted.internet import defer, reactor, task, threads
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from idetcd.dns import _server as server_module
from idetcd.dns._authority import ZoneAuthority
from idetcd.dns._server import LOG_INTERVAL, DNSServer
from tests.dnsclient import HOST, TIMEOUT, read_message, wait_closed
from tests.fakeregistry import FakeRegistry, sample_members
from tests.flood import pointer_chain
from tests.traffic import probe

SEED = 20240229
UDP_PACKETS = 20000
BATCH = 50
CACHE_SIZE = 500
KEYRING = dns.tsigkeyring.from_text({"key.example.": "c2VjcmV0"})


def valid_queries(rng):
    names = ["worker1.tf.local", "WORKER2.tf.local", "tf.local", "nobody.tf.local", "example.com"]
    types = ["A", "AAAA", "NS", "SOA", "ANY", "MX"]
    return [
        dns.message.make_query(name, type, use_edns=edns, id=rng.randrange(65536)).to_wire()
        for name in names
        for type in types
        for edns in (None, 0)
    ]


def header(rng, flags=None, qd=1, an=0, ns=0, ar=0):
    flags = rng.choice((0x0000, 0x0100)) if flags is None else flags
    return struct.pack("!6H", rng.randrange(65536), flags, qd, an, ns, ar)


def name(labels):
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def hostile_packets(rng, count):
    """
    C{count} packets of every hostile kind, from a seeded generator.
    """
    seeds = valid_queries(rng)

    def random_bytes():
        return rng.randbytes(rng.randrange(0, 80))

    def short_header():
        return rng.randbytes(rng.randrange(0, 12))

    def mutated():
        packet = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        return bytes(packet)

    def cut():
        packet = rng.choice(seeds)
        return packet[: rng.randrange(12, len(packet))]

    def appended():
        return rng.choice(seeds) + rng.randbytes(rng.randrange(1, 20))

    def pointer_loop():
        loops = [
            b"\xc0\x0c",
            b"\xc0\x0e\xc0\x0c",
            b"\x03abc\xc0\x0c",
            b"\x03abc\xc0\x10",
            bytes((0xC0 | rng.randrange(64), rng.randrange(256))),
        ]
        body = rng.choice(loops) + b"\x00\x01\x00\x01"
        if rng.random() < 0.3:
            # A record in the answer section that points at itself.
            body = name([b"x"]) + b"\x00\x01\x00\x01" + b"\xc0\x1b" + b"\x00" * 10
            return header(rng, an=1) + body
        return header(rng) + body

    def long_label():
        size = rng.randrange(64, 192)
        return header(rng) + bytes((size,)) + b"a" * size + b"\x00\x00\x01\x00\x01"

    def long_name():
        labels = [b"a" * 63] * rng.randrange(4, 9)
        return header(rng) + name(labels) + b"\x00\x01\x00\x01"

    def huge_counts():
        counts = [rng.randrange(65536) for _ in range(4)]
        return header(rng, qd=counts[0], an=counts[1], ns=counts[2], ar=counts[3]) + rng.choice(
            seeds
        )[12:]

    def response():
        packet = rng.choice(seeds)
        return packet[:2] + bytes((packet[2] | 0x80,)) + packet[3:]

    def opcode():
        packet = rng.choice(seeds)
        return packet[:2] + bytes((packet[2] | rng.randrange(1, 16) << 3,)) + packet[3:]

    def bad_opt():
        query = dns.message.make_query("worker1.tf.local", "A", use_edns=0).to_wire()
        opt = query[-11:]
        variants = [
            query[:10] + b"\x00\x02" + query[12:] + opt,
            query[:-11] + b"\x01a" + opt[1:],
            query[:-2] + b"\x00\x05\x00\x0a\x00",
            query[:-2] + b"\x00\x04\x00\x0a\x00\x08",
            query[:6] + b"\x00\x01" + query[8:10] + b"\x00\x00" + query[12:],
            query[:-9] + bytes((rng.randrange(1, 256),)) + query[-8:],
        ]
        return rng.choice(variants)

    def chained():
        # Records whose owners point at each other, in any section.
        return pointer_chain(rng.randrange(100, 3000), rng.choice(("answer", "additional")))

    def many_pointers():
        # A TSIG key name at the end of a long backward pointer chain.
        packet = bytearray(rng.choice(seeds))
        target = 12
        for _ in range(rng.randrange(10, 40)):
            packet += struct.pack("!H", 0xC000 | target)
            target = len(packet) - 2
        packet += b"\x00\xfa\x00\xff" + bytes(6)
        packet[10:12] = struct.pack("!H", struct.unpack_from("!H", packet, 10)[0] + 1)
        return bytes(packet)

    def signed():
        query = dns.message.make_query("worker1.tf.local", rng.choice(["A", "AAAA"]))
        query.use_tsig(KEYRING, "key.example.")
        return query.to_wire()

    def class_any():
        return dns.message.make_query("worker1.tf.local", "A", rdclass="ANY").to_wire()

    def unknown_name():
        label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10))
        return dns.message.make_query(f"{label}.tf.local", "A").to_wire()

    kinds = [
        random_bytes, short_header, mutated, cut, appended, pointer_loop, long_label,
        long_name, huge_counts, response, opcode, bad_opt, unknown_name, chained,
        many_pointers, signed, class_any,
    ]
    return [rng.choice(kinds)() for _ in range(count)]


def blast_udp(port, packets):
    """
    Send C{packets} in small batches, reading what comes back between them;
    all replies received.
    """
    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for start in range(0, len(packets), BATCH):
            for packet in packets[start : start + BATCH]:
                s.sendto(packet, (HOST, port))
            while select.select([s], [], [], 0.005)[0]:
                replies.append(s.recv(65535))
        while select.select([s], [], [], 0.5)[0]:
            replies.append(s.recv(65535))
    return replies


def tcp_hostile(port, packets, final):
    """
    Send every packet framed on one connection, then a valid query; the
    replies up to and including the one to that query.
    """
    replies = []
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as s:
        s.sendall(b"".join(struct.pack("!H", len(p)) + p for p in packets + [final]))
        while True:
            reply = read_message(s)
            replies.append(reply)
            # The id and the question of the final query: its reply.
            if reply[:2] == final[:2] and reply[12 : len(final)] == final[12:]:
                return replies


def crowd(port, count, sources=10):
    """
    Open C{count} idle connections in quick bursts, from C{sources} loopback
    addresses in turn; for each, the seconds from its connect until the
    server closed it, and how many it never closed.
    """
    opened = {}
    lifetimes = []
    with selectors.DefaultSelector() as selector:

        def reap(wait):
            for key, _ in selector.select(wait):
                s = key.fileobj
                try:
                    data = s.recv(1)
                except ConnectionResetError:
                    data = b""
                if not data:
                    lifetimes.append(time.monotonic() - opened.pop(s))
                    selector.unregister(s)
                    s.close()

        try:
            for index in range(count):
                if index % 50 == 0:
                    # Give the server's accept loop a turn, as clients coming
                    # from many hosts would.
                    reap(0.005)
                source = (f"127.0.1.{index % sources + 1}", 0)
                s = socket.create_connection((HOST, port), timeout=TIMEOUT, source_address=source)
                opened[s] = time.monotonic()
                selector.register(s, selectors.EVENT_READ)
            deadline = time.monotonic() + TIMEOUT
            while opened and time.monotonic() < deadline:
                reap(0.1)
            return lifetimes, len(opened)
        finally:
            for s in opened:
                s.close()


class FuzzTests(unittest.TestCase):
    def setUp(self):
        self.patch(server_module, "CACHE_SIZE", CACHE_SIZE)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.registry = FakeRegistry(sample_members(), revision=5)
        self.server = DNSServer(
            ZoneAuthority("tf.local.", self.registry, 30),
            0,
            tcp_idle_timeout=0.5,
            max_tcp_connections=100,
        )
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.started = time.monotonic()

    def assertWellFormed(self, replies):
        for reply in replies:
            message = dns.message.from_wire(reply, keyring=False)
            self.assertTrue(message.flags & dns.flags.QR)

    @defer.inlineCallbacks
    def assertAnswers(self):
        query = dns.message.make_query("worker1.tf.local", "A")
        port = self.server.port
        for exchange in (dns.query.udp, dns.query.tcp):
            response = yield threads.deferToThread(
                exchange, query, HOST, port=port, timeout=TIMEOUT
            )
            self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])

    def assertLogLimited(self):
        """
        At most one line per kind per interval came from the server.
        """
        ours = [
            e for e in self.events if e.get("log_namespace") == "idetcd.dns._server" and "kind" in e
        ]
        per_kind = collections.Counter(e["kind"] for e in ours)
        allowed = 1 + int((time.monotonic() - self.started) // LOG_INTERVAL)
        self.assertIn("malformed", per_kind)
        for kind, count in per_kind.items():
            self.assertLessEqual(count, allowed, kind)
        return ours

    @defer.inlineCallbacks
    def test_udp(self):
        """
        20,000 hostile datagrams: replies are well formed, a client asking
        meanwhile is answered, caches stay bounded, the log stays quiet.
        """
        packets = hostile_packets(random.Random(SEED), UDP_PACKETS)
        stop = threading.Event()
        outcomes = []
        prober = threads.deferToThread(probe, self.server.port, stop, outcomes)
        try:
            replies = yield threads.deferToThread(blast_udp, self.server.port, packets)
        finally:
            stop.set()
            yield prober
        self.assertGreater(len(replies), UDP_PACKETS // 3)
        self.assertWellFormed(replies)
        self.assertGreater(len(outcomes), 0)
        answered = [ok for ok, _ in outcomes]
        self.assertGreaterEqual(answered.count(True), 0.9 * len(answered))
        replies_table = self.server._replies
        prepared = len(replies_table._prepared) * len(server_module.PREPARED_FLAGS)
        self.assertLessEqual(len(replies_table.fast.table), prepared + CACHE_SIZE)
        self.assertLessEqual(
            len(replies_table._encoded.table), len(replies_table._prepared) + CACHE_SIZE
        )
        yield self.assertAnswers()
        ours = self.assertLogLimited()
        self.assertTrue(any(e["skipped"] == 0 for e in ours))

    @defer.inlineCallbacks
    def test_tcp(self):
        """
        Hostile messages on TCP streams, endless length prefixes, and more
        idle connections than the cap allows: replies stay well formed and
        in order, the cap and the idle timeout close what they should.
        """
        rng = random.Random(SEED + 1)
        final = dns.message.make_query("worker1.tf.local", "A", id=4321).to_wire()
        streams = [
            threads.deferToThread(tcp_hostile, self.server.port, hostile_packets(rng, 500), final)
            for _ in range(4)
        ]
        for replies in (yield defer.gatherResults(streams)):
            self.assertWellFormed(replies)

        def stuck(prefix):
            with socket.create_connection((HOST, self.server.port), timeout=TIMEOUT) as s:
                s.sendall(prefix)
                return wait_closed(s, TIMEOUT)

        for prefix in (b"\xff\xff", b"\xff\xff" + rng.randbytes(1000), rng.randbytes(3000)):
            closed = yield threads.deferToThread(stuck, prefix)
            self.assertIsNotNone(closed)
        for _ in range(100):
            if not self.server._tcp.connections:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        lifetimes, still_open = yield threads.deferToThread(crowd, self.server.port, 1000)
        self.assertEqual(still_open, 0)
        idle = [t for t in lifetimes if t >= 0.25]
        self.assertGreaterEqual(len(idle), 100)
        self.assertGreater(len(lifetimes) - len(idle), 0)
        yield self.assertAnswers()
        self.assertLogLimited()
