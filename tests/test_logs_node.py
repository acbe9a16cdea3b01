"""
The logs of real ``twistd -n idetcd`` processes against a real etcd, asked
by real DNS clients: journald priorities read from the raw stream, JSON
lines, the query log's fields and its rate limit, the error log.
"""

import json
import os
import re
import signal
import socket
import struct

import dns.message
import dns.rcode
from twisted.internet import defer, threads

from tests.nodes import COREFILE, SignalCase
from tests.upstreams import closed_port

# One line of the query log in CoreDNS's common format.
COMMON = re.compile(
    r'(?P<remote>[\d.]+):(?P<port>\d+) - (?P<id>\d+) "(?P<type>\S+) (?P<class>\S+) (?P<name>\S+)'
    r' (?P<proto>udp|tcp) (?P<size>\d+) (?P<do>true|false) (?P<bufsize>\d+)" (?P<rcode>\S+)'
    r" (?P<rflags>\S+) (?P<rsize>\d+) (?P<duration>[\d.]+)s$"
)
SUPPRESSED = re.compile(r"query log: (\d+) lines suppressed in the last second \(at most (\d+) lines/s\)")


def exchange(port, wire, tcp=False):
    """
    Send the query C{wire} to the node on C{port} and return (the reply's
    bytes, the client's port); blocking, for a thread.
    """
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        if tcp:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            (length,) = struct.unpack("!H", _read(s, 2))
            return _read(s, length), s.getsockname()[1]
        s.send(wire)
        return s.recv(65535), s.getsockname()[1]


def _read(s, count):
    data = b""
    while len(data) < count:
        chunk = s.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def flood(port, wire, count):
    """
    Ask C{count} times, one query at a time; how many replies came.
    """
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
        for _ in range(count):
            s.send(wire)
            try:
                s.recv(65535)
            except socket.timeout:
                continue
            answered += 1
    return answered


class _Logged:
    """
    A node whose standard output and error go to the file at C{path}:
    C{output} reads it.
    """

    def __init__(self, node, path):
        self.node = node
        self.path = path

    def __getattr__(self, name):
        return getattr(self.node, name)

    @property
    def output(self):
        with open(self.path, "rb") as f:
            return f.read()


class LogCase(SignalCase):
    COREFILE = COREFILE

    def corefile_with(self, logging):
        """
        The path of a Corefile like the test's whose server block also has
        C{logging}.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(COREFILE.replace("    bind 127.0.0.1\n", f"    bind 127.0.0.1\n{logging}\n"))
        return path

    def start_logging(self, logging, options=(), journal=False):
        """
        A node (a L{_Logged}) whose server block has C{logging} and whose
        standard output and error go to a file, which C{$JOURNAL_STREAM}
        names if C{journal}.
        """
        path = os.path.abspath(self.mktemp())
        out = open(path, "wb")
        self.addCleanup(out.close)
        status = os.fstat(out.fileno())
        node = self.start_node(
            options=options, corefile=self.corefile_with(logging),
            child_fds={0: "w", 1: out.fileno(), 2: out.fileno()},
            JOURNAL_STREAM=f"{status.st_dev}:{status.st_ino}" if journal else "1:1",
        )
        return _Logged(node, path)

    @defer.inlineCallbacks
    def stop(self, node):
        """
        Stop C{node} with SIGTERM; fire with all it wrote.
        """
        node.process.signalProcess(signal.SIGTERM)
        yield node.ended
        return node.output.decode("utf-8")


class JournalTests(LogCase):
    @defer.inlineCallbacks
    def test_every_line_carries_its_priority(self):
        """
        With C{$JOURNAL_STREAM} naming its standard output, every line of a
        node starts with one C{<N>}: info 6 for a claim, warn 4 for the
        query log's summary, error 3 for a SERVFAIL with C{errors}.
        """
        upstream = closed_port()
        node = self.start_logging(
            f"    forward . 127.0.0.1:{upstream}\n    log {{\n limit 1\n }}\n    errors", journal=True
        )
        yield self.wait_output(node, rb"answers DNS on port")
        known = dns.message.make_query("worker1.tf.local.", "A").to_wire()
        for _ in range(3):
            yield threads.deferToThread(exchange, node.port, known)
        servfail, _ = yield threads.deferToThread(exchange, node.port, dns.message.make_query("example.com.", "A").to_wire())
        self.assertEqual(dns.message.from_wire(servfail).rcode(), dns.rcode.SERVFAIL)
        yield self.wait_output(node, rb"lines suppressed")
        text = yield self.stop(node)
        lines = text.splitlines()
        self.assertTrue(all(re.match(r"<[2-7]>(?!<)", line) for line in lines), text)
        self.assertRegex(text, r"(?m)^<6>\S+ \[idetcd\.claim\._claimer#info\] claimed worker1\.tf\.local\.")
        self.assertRegex(text, r"(?m)^<4>\S+ \[idetcd\.dns\.querylog#warn\] query log: \d+ lines suppressed")
        self.assertRegex(text, r"(?m)^<3>\S+ \[idetcd\.dns\.errors#error\] 2 example\.com\. A: ")
        self.assertRegex(text, r"(?m)^<6>\S+ \[idetcd\.dns\.querylog#info\] 127\.0\.0\.1:\d+ - ")

    @defer.inlineCallbacks
    def test_without_the_journal_no_prefix(self):
        node = self.start_logging("")
        yield self.wait_output(node, rb"answers DNS on port")
        text = yield self.stop(node)
        self.assertNotIn("<6>", text)
        self.assertRegex(text, r"(?m)^\S+ \[idetcd\.claim\._claimer#info\] claimed worker1")

    @defer.inlineCallbacks
    def test_a_corefile_mistake_on_stderr_is_an_error(self):
        node = self.start_logging("    log {\n class nope\n }", journal=True)
        self.assertEqual((yield node.ended), 78)
        self.assertRegex(node.output, rb"^<3>twistd idetcd: \S+:5: class must be one of all, success, denial, error, got 'nope'\n$")


class JsonTests(LogCase):
    @defer.inlineCallbacks
    def test_every_line_is_a_json_object(self):
        node = self.start_logging("    log", options=("--log-format", "json"))
        yield self.wait_output(node, rb"answers DNS on port")
        query = dns.message.make_query("worker1.tf.local.", "A")
        reply, client_port = yield threads.deferToThread(exchange, node.port, query.to_wire())
        yield self.wait_output(node, rb'"namespace": "idetcd.dns.querylog"')
        text = yield self.stop(node)
        records = [json.loads(line) for line in text.splitlines()]
        self.assertTrue(all({"time", "level", "namespace", "text"} <= set(r) for r in records))
        (logged,) = [r for r in records if r["namespace"] == "idetcd.dns.querylog"]
        self.assertEqual(
            {key: logged[key] for key in ("level", "remote", "port", "id", "type", "name", "proto", "rcode", "rsize")},
            {
                "level": "info", "remote": "127.0.0.1", "port": client_port, "id": query.id, "type": "A",
                "name": "worker1.tf.local.", "proto": "udp", "rcode": "NOERROR", "rsize": len(reply),
            },
        )
        self.assertTrue(logged["text"].startswith(f"127.0.0.1:{client_port} - {query.id} "))
        (claimed,) = [r for r in records if r["text"].startswith("claimed ")]
        self.assertEqual((claimed["level"], claimed["namespace"]), ("info", "idetcd.claim._claimer"))


class QueryLogTests(LogCase):
    @defer.inlineCallbacks
    def test_fields_of_udp_and_tcp_queries(self):
        node = self.start_logging("    log")
        yield self.wait_output(node, rb"answers DNS on port")
        known = dns.message.make_query("Worker1.tf.local.", "A", use_edns=0, payload=1232, want_dnssec=True)
        unknown = dns.message.make_query("worker9.tf.local.", "AAAA")
        asked = []
        for query, tcp in ((known, False), (unknown, True)):
            reply, client_port = yield threads.deferToThread(exchange, node.port, query.to_wire(), tcp)
            asked.append((query, reply, client_port, tcp))
        yield self.wait_output(node, rb"worker9\.tf\.local\. tcp")
        text = node.output.decode("utf-8")
        logged = [COMMON.search(line) for line in text.splitlines() if "#info] 127.0.0.1:" in line]
        self.assertEqual(len(logged), 2, text)
        for match, (query, reply, client_port, tcp) in zip(logged, asked):
            edns = query.edns >= 0
            self.assertEqual(
                match.groupdict(),
                {
                    "remote": "127.0.0.1", "port": str(client_port), "id": str(query.id),
                    "type": "A" if edns else "AAAA", "class": "IN",
                    "name": "worker1.tf.local." if edns else "worker9.tf.local.",
                    "proto": "tcp" if tcp else "udp", "size": str(len(query.to_wire())),
                    "do": "true" if edns else "false", "bufsize": "1232" if edns else "512",
                    "rcode": dns.rcode.to_text(dns.message.from_wire(reply).rcode()),
                    "rflags": "qr,aa,rd", "rsize": str(len(reply)), "duration": match["duration"],
                },
            )
        self.assertEqual([m["rcode"] for m in logged], ["NOERROR", "NXDOMAIN"])

    @defer.inlineCallbacks
    def test_classes_choose_the_lines(self):
        node = self.start_logging("    log tf.local. {\n class denial\n }")
        yield self.wait_output(node, rb"answers DNS on port")
        for name in ("worker1.tf.local.", "worker7.tf.local.", "worker1.tf.local."):
            yield threads.deferToThread(exchange, node.port, dns.message.make_query(name, "A").to_wire())
        text = yield self.stop(node)
        logged = [m["name"] for m in map(COMMON.search, text.splitlines()) if m]
        self.assertEqual(logged, ["worker7.tf.local."])

    @defer.inlineCallbacks
    def test_a_flood_is_cut_to_the_limit_and_counted(self):
        """
        5,000 queries against C{limit 50}: at most 50 lines in each second,
        and the lines left out are counted, so lines and counts add up to
        every query answered.
        """
        node = self.start_logging("    log {\n limit 50\n }")
        yield self.wait_output(node, rb"answers DNS on port")
        wire = dns.message.make_query("worker1.tf.local.", "A").to_wire()
        from twisted.internet import reactor

        started = reactor.seconds()
        answered = yield threads.deferToThread(flood, node.port, wire, 5000)
        elapsed = reactor.seconds() - started
        # Stopping says what was held back.
        text = yield self.stop(node)
        lines = [line for line in text.splitlines() if COMMON.search(line)]
        held = [SUPPRESSED.search(line) for line in text.splitlines() if SUPPRESSED.search(line)]
        self.assertEqual(answered, 5000)
        self.assertEqual(len(lines) + sum(int(m[1]) for m in held), answered)
        self.assertEqual({m[2] for m in held}, {"50"})
        self.assertLessEqual(len(lines), 50 * (int(elapsed) + 2))
        self.assertGreater(sum(int(m[1]) for m in held), 0)


class ErrorLogTests(LogCase):
    @defer.inlineCallbacks
    def test_servfail_logged_and_consolidated(self):
        upstream = closed_port()
        node = self.start_logging(
            f"    forward . 127.0.0.1:{upstream}\n    errors {{\n consolidate 30s \"^2 consolidated\\.example\\. \"\n }}"
        )
        yield self.wait_output(node, rb"answers DNS on port")
        for name in ("example.com.", "consolidated.example.", "consolidated.example."):
            reply, _ = yield threads.deferToThread(exchange, node.port, dns.message.make_query(name, "A").to_wire())
            self.assertEqual(dns.message.from_wire(reply).rcode(), dns.rcode.SERVFAIL)
        text = yield self.stop(node)
        self.assertRegex(text, r"\[idetcd\.dns\.errors#error\] 2 example\.com\. A: server failure \(from 127\.0\.0\.1:\d+\)")
        self.assertNotRegex(text, r"#error\] 2 consolidated\.example")
        self.assertIn(r"#error] 2 errors like '^2 consolidated\.example\. ' occurred in last 30s", text)
