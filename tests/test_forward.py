"""
Tests for L{idetcd.dns._forward}: a live server on loopback relaying to real
upstream DNS servers (a small twisted.names authority, and raw sockets
for the misbehaving ones), asked by real clients.
"""

import errno
import ipaddress
import os
import socket
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from twisted.internet import defer, reactor, task, threads, utils
from twisted.trial import unittest

from idetcd import IdetcdService
from idetcd.config import CorefileError
from idetcd.dns import ForwardSettings, Upstream
from idetcd.dns import _wire as wire
from idetcd.dns._forward import VERDICTS, Forwarder, reaches_itself, resolv_conf
from idetcd.dns._tally import DnsTally
from idetcd.node._metrics import ForwardCollector
from tests.dnsclient import HOST, exchange_udp, tcp_session
from tests.etcdserver import start_etcd
from tests.httpendpoints import HttpGetter, samples, value
from tests.inprocess import COREFILE
from tests.traffic import NodeTraffic
from tests.upstreams import CLIENT_WAIT, ForwardTestCase, closed_port, start_authority
from tests.waiting import wait_for


def dead_upstream(case):
    """
    A loopback port whose UDP socket never answers and whose TCP listener
    never accepts: its number.
    """
    # The UDP port the kernel picks may be a local TCP port in use (a busy
    # box has thousands, many in TIME_WAIT): pick again.
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((HOST, 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # The TCP port of that number may be someone else's already.
            tcp.bind((HOST, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            udp.close()
            tcp.close()
            continue
        case.addCleanup(udp.close)
        case.addCleanup(tcp.close)
        tcp.listen(100)
        return port
    raise RuntimeError("no free port for both UDP and TCP")


def answer(query, address):
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", address))
    return response


class RelayTests(ForwardTestCase):
    @defer.inlineCallbacks
    def test_udp_with_and_without_edns(self):
        """
        An allowed client gets the upstream's answer with its own id; an
        OPT goes upstream and comes back only when the client sent one.
        """
        self.serve()
        query = dns.message.make_query("Example.COM", "A", use_edns=0, payload=1232)
        response = yield self.udp(query)
        self.assertForwarded(response, query)
        self.assertEqual(response.edns, 0)
        self.assertEqual(str(response.question[0].name), "Example.COM.")
        plain = dns.message.make_query("example.com", "A")
        response = yield self.udp(plain)
        self.assertForwarded(response, plain)
        self.assertEqual(response.edns, -1)
        self.assertEqual([(edns, how) for _, edns, how in self.authority.received], [(True, "udp"), (False, "udp")])
        yield self.wait_idle()

    @defer.inlineCallbacks
    def test_tcp_goes_upstream_over_tcp(self):
        self.serve()
        query = dns.message.make_query("www.example.org", "A", use_edns=0)
        response = yield self.tcp(query)
        self.assertForwarded(response, query, "192.0.2.20")
        self.assertEqual(response.edns, 0)
        self.assertEqual([how for _, _, how in self.authority.received], ["tcp"])

    @defer.inlineCallbacks
    def test_upstream_negative_answer_passed_back(self):
        self.serve()
        query = dns.message.make_query("nothing.example.com", "A")
        response = yield self.udp(query)
        self.assertEqual((response.id, response.rcode()), (query.id, dns.rcode.NXDOMAIN))

    @defer.inlineCallbacks
    def test_zone_names_answered_here(self):
        """
        Names in the served zone, known or not, never go upstream.
        """
        self.serve()
        response = yield self.udp(dns.message.make_query("worker1.tf.local", "A"))
        self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])
        self.assertTrue(response.flags & dns.flags.AA)
        response = yield self.tcp(dns.message.make_query("nobody.tf.local", "A"))
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        response = yield self.udp(dns.message.make_query("tf.local", "SOA"))
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(self.authority.received, [])

    @defer.inlineCallbacks
    def test_clients_outside_the_allowed_set_refused(self):
        """
        A client outside C{allowed} gets REFUSED, as without forward, and
        nothing goes upstream; that REFUSED is not kept for the allowed
        client asking the same, nor the allowed answer for the other.
        """
        self.serve(allowed=(ipaddress.ip_network("127.0.0.2/32"),))
        query = dns.message.make_query("example.com", "A")
        for _ in range(2):
            response = yield self.udp(query)
            self.assertEqual(response.rcode(), dns.rcode.REFUSED)
            self.assertFalse(response.flags & dns.flags.RA)
        response = yield self.tcp(query)
        self.assertEqual(response.rcode(), dns.rcode.REFUSED)
        self.assertEqual(self.authority.received, [])
        response = yield self.udp(query, source="127.0.0.2")
        self.assertForwarded(response, query)
        response = yield self.udp(query)
        self.assertEqual(response.rcode(), dns.rcode.REFUSED)
        self.assertEqual(len(self.authority.received), 1)

    @defer.inlineCallbacks
    def test_pipelined_tcp(self):
        """
        Forwarded and local queries pipelined on one connection each get
        their reply, the forwarded ones when they come (RFC 7766).
        """
        self.serve()
        names = ["example.com", "worker1.tf.local", "www.example.org", "nobody.example.com"]
        queries = [dns.message.make_query(name, "A", id=100 + index) for index, name in enumerate(names)]
        replies = yield threads.deferToThread(
            tcp_session, self.server.port, [query.to_wire() for query in queries]
        )
        rcodes = {}
        for reply in replies:
            response = dns.message.from_wire(reply)
            rcodes[response.id] = (str(response.question[0].name), dns.rcode.to_text(response.rcode()))
        self.assertEqual(
            rcodes,
            {
                100: ("example.com.", "NOERROR"), 101: ("worker1.tf.local.", "NOERROR"),
                102: ("www.example.org.", "NOERROR"), 103: ("nobody.example.com.", "NXDOMAIN"),
            },
        )
        self.assertEqual(len(self.authority.received), 3)

    @defer.inlineCallbacks
    def test_client_gone_before_the_reply(self):
        """
        A TCP client that leaves before its forwarded reply comes costs
        nothing more: the reply is dropped, nothing is left in flight.
        """
        self.serve(Upstream(HOST, dead_upstream(self)), timeout=0.5)
        query = dns.message.make_query("example.com", "A").to_wire()
        with socket.create_connection((HOST, self.server.port), timeout=CLIENT_WAIT) as sock:
            sock.sendall(len(query).to_bytes(2, "big") + query)
            yield wait_for(lambda: self.forwarder.in_flight)
        yield self.wait_idle()
        self.assertEqual(self.server._tcp.connections, set())

    @defer.inlineCallbacks
    def test_zone_transfers_outside_not_forwarded(self):
        self.serve()
        response = yield self.tcp(dns.message.make_query("example.com", "AXFR"))
        self.assertEqual(response.rcode(), dns.rcode.REFUSED)
        self.assertEqual(self.authority.received, [])

    @defer.inlineCallbacks
    def test_only_names_in_the_blocks_zones(self):
        """
        A server block for example.com. and tf.local. forwards names under
        example.com. only, as CoreDNS matches a block's zones first.
        """
        self.serve(zones=("tf.local.", "example.com."))
        query = dns.message.make_query("example.com", "A")
        response = yield self.udp(query)
        self.assertForwarded(response, query)
        response = yield self.udp(dns.message.make_query("www.example.org", "A"))
        self.assertEqual(response.rcode(), dns.rcode.REFUSED)
        self.assertEqual(len(self.authority.received), 1)


class FailureTests(ForwardTestCase):
    """
    Upstreams that fail, lie or never answer.
    """

    @defer.inlineCallbacks
    def test_dead_upstream_servfail_in_time(self):
        """
        An upstream that never answers gives SERVFAIL (recursion on offer,
        OPT kept) once the timeout is spent, over UDP and TCP, and leaves
        nothing in flight.
        """
        self.serve(Upstream(HOST, dead_upstream(self)), timeout=1.0)
        query = dns.message.make_query("example.com", "A", use_edns=0)
        for ask in (self.udp, self.tcp):
            start = time.monotonic()
            response = yield ask(query)
            self.assertLess(time.monotonic() - start, CLIENT_WAIT / 2)
            self.assertEqual((response.id, response.rcode()), (query.id, dns.rcode.SERVFAIL))
            self.assertTrue(response.flags & dns.flags.RA)
            self.assertEqual(response.edns, 0)
            self.assertEqual(str(response.question[0].name), "example.com.")
        self.assertEqual(self.forwarder.in_flight, set())

    @defer.inlineCallbacks
    def test_next_upstream_after_a_failure(self):
        """
        A refused port is passed over at once; a silent one after its try
        (2 s), within the timeout; either way the next one answers.
        """
        live = Upstream(HOST, self.upstream_port)
        self.serve(
            Upstream(HOST, closed_port()), Upstream(HOST, dead_upstream(self)), live,
            policy="sequential", timeout=4.0,
        )
        for ask in (self.udp, self.tcp):
            query = dns.message.make_query("example.com", "A")
            response = yield ask(query)
            self.assertForwarded(response, query)
        self.assertEqual(len(self.authority.received), 2)

    @defer.inlineCallbacks
    def test_servfail_upstream_then_the_next(self):
        """
        An upstream's SERVFAIL sends the query to the next upstream; from
        the last one it is passed back as it is.
        """
        failing, address = self.scripted(lambda q: [_servfail(q)])
        self.serve(address, Upstream(HOST, self.upstream_port), policy="sequential")
        query = dns.message.make_query("example.com", "A")
        response = yield self.udp(query)
        self.assertForwarded(response, query)
        self.assertEqual(failing.received, 1)
        yield self.server.stopService()
        self.serve(address)
        response = yield self.udp(query)
        self.assertEqual((response.id, response.rcode()), (query.id, dns.rcode.SERVFAIL))
        self.assertEqual(failing.received, 2)

    @defer.inlineCallbacks
    def test_truncated_answer_passed_back(self):
        """
        A TC answer over UDP comes back as it is, for the client to ask
        again over TCP.
        """
        _, address = self.scripted(lambda q: [_truncated(q)])
        self.serve(address)
        query = dns.message.make_query("example.com", "TXT")
        response = yield self.udp(query)
        self.assertEqual(response.id, query.id)
        self.assertTrue(response.flags & dns.flags.TC)
        self.assertEqual(response.answer, [])

    @defer.inlineCallbacks
    def test_only_the_matching_reply_is_taken(self):
        """
        Datagrams with another id or another question are ignored; the
        reply that matches both is passed back.
        """

        def script(q):
            other_id = answer(q, "192.0.2.66")
            other_id.id = q.id ^ 0x5555
            other_question = answer(dns.message.make_query("evil.example", "A", id=q.id), "192.0.2.67")
            return [other_id, other_question, answer(q, "192.0.2.68")]

        _, address = self.scripted(script)
        self.serve(address)
        query = dns.message.make_query("example.com", "A")
        response = yield self.udp(query)
        self.assertForwarded(response, query, "192.0.2.68")


class CountTests(ForwardTestCase):
    """
    What forwarding tells Prometheus: the answers relayed count with the
    server's own, and each upstream's tries and replies on their own.
    """

    @defer.inlineCallbacks
    def test_counts(self):
        failing, first = self.scripted(lambda q: [_servfail(q)])
        live = Upstream(HOST, self.upstream_port)
        dead = Upstream(HOST, dead_upstream(self))
        counts = DnsTally("tf.local.")
        # A timeout long enough that no try times out, even on a slow box:
        # the dead upstream is never reached.
        self.serve(first, live, dead, policy="sequential", timeout=5.0, tally=counts)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ForwardCollector(self.forwarder, lambda: "dns://:53"))
        for ask in (self.udp, self.udp, self.tcp):
            response = yield ask(dns.message.make_query("example.com", "A"))
            self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        response = yield self.udp(dns.message.make_query("worker1.tf.local", "A"))  # answered here
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(
            dict(counts.requests()), {("udp", "1", "A"): 3, ("tcp", "1", "A"): 1}
        )
        self.assertEqual(dict(counts.responses()), {"NOERROR": 4})
        self.assertEqual(counts.durations()["A"][1], 4)
        # Over TCP the scripted (UDP only) upstream refuses the connection.
        self.assertEqual(failing.received, 2)
        page = samples(generate_latest(registry).decode("ascii"))
        self.assertEqual(
            {key: v for key, v in page.items() if key[0] == "idetcd_forward_requests_total"},
            {
                ("idetcd_forward_requests_total", (("to", str(first)),)): 3,
                ("idetcd_forward_requests_total", (("to", str(live)),)): 3,
                ("idetcd_forward_requests_total", (("to", str(dead)),)): 0,
            },
        )
        self.assertEqual(
            {key: v for key, v in page.items() if key[0] == "idetcd_forward_responses_total"},
            {
                ("idetcd_forward_responses_total", (("rcode", "SERVFAIL"), ("to", str(first)))): 2,
                ("idetcd_forward_responses_total", (("rcode", "NOERROR"), ("to", str(live)))): 3,
            },
        )

        # Only the dead upstream left: the client gets SERVFAIL, counted.
        yield self.server.stopService()
        counts = DnsTally("tf.local.")
        self.serve(dead, timeout=1.0, tally=counts)
        response = yield self.udp(dns.message.make_query("example.com", "A"))
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(dict(counts.responses()), {"SERVFAIL": 1})
        self.assertEqual(self.forwarder.tries, {str(dead): 1})
        self.assertEqual(self.forwarder.replies, {})

    def test_rejects(self):
        self.serve()
        self.forwarder.dropped = 7
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ForwardCollector(self.forwarder, lambda: "dns://:53"))
        page = samples(generate_latest(registry).decode("ascii"))
        self.assertEqual(page["idetcd_forward_max_concurrent_rejects_total", ()], 7)


def _servfail(query):
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.SERVFAIL)
    return response


def _truncated(query):
    response = dns.message.make_response(query)
    response.flags |= dns.flags.TC
    return response


class BoundsTests(ForwardTestCase):
    """
    What forwarding may hold: a bounded number of queries, each with its
    sockets and timers, all given back.
    """

    def send_raw(self, count, name="example.com"):
        """
        Send C{count} queries at once, each from its own socket; the
        replies (None for none) after C{CLIENT_WAIT / 2}.
        """
        queries = [dns.message.make_query(name, "A").to_wire() for _ in range(count)]
        return defer.gatherResults(
            [
                threads.deferToThread(exchange_udp, self.server.port, query, CLIENT_WAIT / 2)
                for query in queries
            ]
        )

    @defer.inlineCallbacks
    def test_in_flight_cap(self):
        """
        With C{max_concurrent} queries in flight, more are dropped, not
        queued; once those end, queries go upstream again.
        """
        self.serve(Upstream(HOST, dead_upstream(self)), max_concurrent=2, timeout=2.0)
        replies = yield self.send_raw(3)
        rcodes = sorted(None if reply is None else reply[3] & 0xF for reply in replies if reply)
        self.assertEqual(rcodes, [dns.rcode.SERVFAIL] * 2)
        self.assertEqual(replies.count(None), 1)
        self.assertEqual(self.forwarder.dropped, 1)
        self.assertEqual(self.forwarder.in_flight, set())
        (reply,) = yield self.send_raw(1)
        self.assertEqual(reply[3] & 0xF, dns.rcode.SERVFAIL)
        self.assertEqual(self.forwarder.dropped, 1)

    @defer.inlineCallbacks
    def test_stop_gives_everything_back(self):
        """
        Stopping the server with queries in flight over UDP and TCP closes
        their sockets and cancels their timers (trial fails a test that
        leaves any in the reactor), and answers none of them.
        """
        self.serve(Upstream(HOST, dead_upstream(self)), timeout=10.0)
        asked = self.send_raw(3)
        sock = socket.create_connection((HOST, self.server.port), timeout=CLIENT_WAIT)
        self.addCleanup(sock.close)
        query = dns.message.make_query("example.org", "A").to_wire()
        sock.sendall(len(query).to_bytes(2, "big") + query)
        for _ in range(100):
            if len(self.forwarder.in_flight) == 4:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.forwarder.in_flight), 4)
        attempts = [exchange._attempt for exchange in self.forwarder.in_flight]
        yield self.server.stopService()
        self.assertEqual(self.forwarder.in_flight, set())
        self.assertEqual([getattr(a, "socket", None) for a in attempts], [None] * 4)
        replies = yield asked
        self.assertEqual(replies, [None] * 3)

    @defer.inlineCallbacks
    def test_flood_from_a_client_stays_bounded(self):
        """
        1,000 queries for distinct names at once, upstream dead: at most
        C{max_concurrent} go upstream, each answered SERVFAIL, the rest
        are dropped, and the server answers its zone meanwhile.
        """
        self.serve(Upstream(HOST, dead_upstream(self)), max_concurrent=50, timeout=1.0)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        client.settimeout(0.5)
        queries = [dns.message.make_query(f"n{i}.example.com", "A").to_wire() for i in range(1000)]
        sent = threads.deferToThread(
            lambda: [client.sendto(query, (HOST, self.server.port)) for query in queries]
        )
        highest = 0
        for _ in range(20):
            highest = max(highest, len(self.forwarder.in_flight))
            yield task.deferLater(reactor, 0.05, lambda: None)
        yield sent
        response = yield self.udp(dns.message.make_query("worker1.tf.local", "A"))
        self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])
        yield self.wait_idle()
        self.assertLessEqual(highest, 50)

        def drain():
            rcodes = []
            try:
                while True:
                    rcodes.append(client.recv(65535)[3] & 0xF)
            except socket.timeout:
                return rcodes

        rcodes = yield threads.deferToThread(drain)
        self.assertEqual(set(rcodes), {dns.rcode.SERVFAIL})
        self.assertGreaterEqual(len(rcodes), 50)
        self.assertGreaterEqual(self.forwarder.dropped, 500)
        self.assertLessEqual(len(rcodes) + self.forwarder.dropped, 1000)


class ResolvConfTests(unittest.TestCase):
    """
    Upstreams from resolv.conf files, without this server itself.
    """

    TEXT = (
        "# written by hand\n"
        "; another comment\n"
        "search tf.local example.com\n"
        "nameserver 127.0.0.1\n"
        "nameserver   192.0.2.53  # trailing words are ignored\n"
        "nameserver resolver.example\n"
        "nameserver fe80::1%lo\n"
        "nameserver 2001:DB8::53\n"
        "#nameserver 192.0.2.1\n"
        "options edns0 trust-ad\n"
    )

    def test_parse(self):
        upstreams, bad = resolv_conf(self.TEXT)
        self.assertEqual(
            upstreams,
            [Upstream("127.0.0.1"), Upstream("192.0.2.53"), Upstream("fe80::1%lo"), Upstream("2001:db8::53")],
        )
        self.assertEqual(bad, ["resolver.example"])

    def test_reaches_itself(self):
        """
        Only this server's own port and addresses: its bind addresses, or
        with a wildcard every address of the machine (loopback included).
        """
        wildcard = ("0.0.0.0",)
        self.assertTrue(reaches_itself(Upstream("127.0.0.1"), 53, wildcard))
        self.assertTrue(reaches_itself(Upstream("127.0.0.53"), 53, wildcard))
        self.assertTrue(reaches_itself(Upstream("127.0.0.1"), 53, ("::",)))
        self.assertTrue(reaches_itself(Upstream("::1"), 53, ("::",)))
        self.assertTrue(reaches_itself(Upstream("10.9.8.7"), 53, ("127.0.0.1", "10.9.8.7")))
        self.assertFalse(reaches_itself(Upstream("127.0.0.1"), 1053, wildcard))
        self.assertFalse(reaches_itself(Upstream("127.0.0.53"), 53, ("127.0.0.1",)))
        self.assertFalse(reaches_itself(Upstream("192.0.2.53"), 53, wildcard))
        self.assertFalse(reaches_itself(Upstream("::1"), 53, wildcard))
        self.assertTrue(reaches_itself(Upstream("127.0.0.1", 1053), 1053, ("127.0.0.1",)))

    def forwarder(self, *upstreams):
        return Forwarder(
            ForwardSettings(upstreams, filename="Corefile", line=7), "tf.local.", (".",), reactor
        )

    def path(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_start_reads_the_file_and_skips_itself(self):
        forwarder = self.forwarder(Upstream("192.0.2.1", 5353), self.path(self.TEXT), Upstream("192.0.2.53"))
        forwarder.start(53, ("0.0.0.0",), None)
        self.assertEqual(
            forwarder.upstreams,
            (Upstream("192.0.2.1", 5353), Upstream("192.0.2.53"), Upstream("fe80::1%lo"), Upstream("2001:db8::53")),
        )
        forwarder = self.forwarder(self.path(self.TEXT))
        forwarder.start(1053, ("0.0.0.0",), None)
        self.assertEqual(forwarder.upstreams[0], Upstream("127.0.0.1"))

    def test_start_errors(self):
        """
        No upstream but itself, an upstream that is itself, or a file it
        cannot read: a clear error at the forward directive's line.
        """
        only_self = self.path("nameserver 127.0.0.1\nnameserver ::1\n")
        missing = os.path.abspath(self.mktemp())
        cases = [
            ((only_self,), 53, ("::",), f"forward has no upstream: {only_self} lists no name server but this one"),
            ((Upstream("127.0.0.1", 1053),), 1053, ("0.0.0.0",), "forward to 127.0.0.1:1053 would reach this server itself"),
            ((missing,), 53, ("0.0.0.0",), f"forward cannot read {missing}: No such file or directory"),
        ]
        for upstreams, port, interfaces, message in cases:
            with self.assertRaises(CorefileError) as caught:
                self.forwarder(*upstreams).start(port, interfaces, None)
            self.assertEqual((caught.exception.filename, caught.exception.line), ("Corefile", 7))
            self.assertIn(message, caught.exception.message)


class ChoiceTests(unittest.TestCase):
    """
    Which queries are forwarded, and for whom.
    """

    def test_allowed_by_default(self):
        forwarder = Forwarder(ForwardSettings((Upstream("192.0.2.1"),)), "tf.local.", (".",), reactor)
        allowed = [
            "127.0.0.1", "127.255.0.9", "::1", "10.1.2.3", "172.16.0.1", "172.31.255.255",
            "192.168.1.1", "100.64.0.1", "fc00::1", "fd12::5", "fe80::1%eth0", "::ffff:10.0.0.1",
        ]
        refused = ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:db8::1", "::ffff:8.8.8.8", "nonsense"]
        self.assertEqual([a for a in allowed if not forwarder.allows(a)], [])
        self.assertEqual([a for a in refused if forwarder.allows(a)], [])

    def test_verdicts_remembered_within_a_bound(self):
        """
        Verdicts are remembered per client address, but never more than
        L{VERDICTS}: a client with many addresses cannot grow them.
        """
        forwarder = Forwarder(ForwardSettings((Upstream("192.0.2.1"),)), "tf.local.", (".",), reactor)
        sizes = set()
        for index in range(3 * VERDICTS):
            address = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
            self.assertTrue(forwarder.allows(address))
            sizes.add(len(forwarder._verdicts))
        self.assertEqual(max(sizes), VERDICTS)
        self.assertFalse(forwarder.allows("192.0.2.9"))
        self.assertFalse(forwarder.allows("192.0.2.9"))

    def test_covers(self):
        forwarder = Forwarder(
            ForwardSettings((Upstream("192.0.2.1"),)), "tf.local.", ("tf.local.", "example.com."), reactor
        )

        def covers(name, type=dns.rdatatype.A):
            return forwarder.covers(wire.read_query(dns.message.make_query(name, type).to_wire()))

        self.assertTrue(covers("www.Example.COM"))
        self.assertTrue(covers("example.com", dns.rdatatype.TXT))
        self.assertFalse(covers("example.com", dns.rdatatype.AXFR))
        self.assertFalse(covers("example.com", dns.rdatatype.IXFR))
        self.assertFalse(covers("worker1.TF.local"))
        self.assertFalse(covers("tf.local"))
        self.assertFalse(covers("example.org"))


class NodeTests(NodeTraffic, unittest.TestCase):
    """
    A node with a real etcd, configured by its Corefile, asked by real
    clients: dnspython, dig and kdig.
    """

    timeout = 120
    LEASE = 3

    @defer.inlineCallbacks
    def setUp(self):
        self.etcd = yield start_etcd(self)
        self.authority, self.upstream_port = start_authority(self)

    @defer.inlineCallbacks
    def start_node(self, forward):
        """
        A node whose server block holds C{forward}; once it has its name.
        """
        text = COREFILE.format(endpoints=self.etcd.client_url, lease=self.LEASE, address=1)
        text = text.replace("    idetcd {", forward + "\n    idetcd {", 1)
        self.node = IdetcdService.from_corefile(
            reactor, text=text, state_dir=os.path.abspath(self.mktemp())
        )
        self.node.startService()
        self.addCleanup(lambda: self.node.stopService() if self.node.running else None)
        self.name = yield self.node.when_claimed()

    def ask(self, name, tcp=False, **kwargs):
        query = dns.message.make_query(name, "A", **kwargs)
        send = dns.query.tcp if tcp else dns.query.udp
        d = threads.deferToThread(send, query, HOST, port=self.node.dns.port, timeout=CLIENT_WAIT)
        return d.addCallback(lambda response: (query, response))

    @defer.inlineCallbacks
    def tool(self, tool, *args):
        out, err, code = yield utils.getProcessOutputAndValue(
            tool, ("@" + HOST, "-p", str(self.node.dns.port)) + args, env=os.environ
        )
        self.assertEqual(code, 0, (out + err).decode())
        return out.decode()

    @defer.inlineCallbacks
    def test_forwards_for_allowed_clients(self):
        """
        Names outside the zone get the upstream's answer over UDP (with
        EDNS) and TCP, with the client's id; the node's own name is
        answered here.
        """
        yield self.start_node(f"    forward . dns://127.0.0.1:{self.upstream_port}")
        for tcp in (False, True):
            query, response = yield self.ask("example.com", tcp=tcp, use_edns=0)
            self.assertEqual((response.id, response.rcode(), response.edns), (query.id, dns.rcode.NOERROR, 0))
            self.assertEqual([r.address for r in response.answer[0]], ["192.0.2.10"])
        _, response = yield self.ask(self.name)
        self.assertEqual([r.address for r in response.answer[0]], ["127.0.0.1"])
        self.assertEqual([(edns, how) for _, edns, how in self.authority.received], [(True, "udp"), (True, "tcp")])
        text = yield self.tool("dig", "www.example.org", "A", "+tries=1", "+time=5")
        self.assertIn("status: NOERROR", text)
        self.assertRegex(text, r"www\.example\.org\.\s+60\s+IN\s+A\s+192\.0\.2\.20")
        text = yield self.tool("kdig", "example.com", "A", "+tcp", "+retry=0", "+time=5")
        self.assertIn("status: NOERROR", text)
        self.assertIn("TCP", text)
        self.assertRegex(text, r"example\.com\.\s+60\s+IN\s+A\s+192\.0\.2\.10")

    @defer.inlineCallbacks
    def test_forwarded_answers_in_the_metrics(self):
        """
        The node's metrics count the answers it relayed with its own, and
        the upstream's tries and replies.
        """
        upstream = f"127.0.0.1:{self.upstream_port}"
        yield self.start_node(f"    prometheus 127.0.0.1:0\n    forward . dns://{upstream}")
        for tcp in (False, True):
            yield self.ask("example.com", tcp=tcp)
        yield self.ask(self.name)
        http = HttpGetter(timeout=5)
        self.addCleanup(http.close)
        code, body = yield http.get(f"http://127.0.0.1:{self.node.getServiceNamed('metrics').port}/metrics")
        self.assertEqual(code, 200)
        page = samples(body.decode("utf-8"))
        zone = {"zone": "tf.local.", "family": "1", "type": "A"}
        self.assertEqual(value(page, "idetcd_dns_requests_total", proto="udp", **zone), 2)
        self.assertEqual(value(page, "idetcd_dns_requests_total", proto="tcp", **zone), 1)
        self.assertEqual(value(page, "idetcd_dns_responses_total", zone="tf.local.", rcode="NOERROR"), 3)
        self.assertEqual(value(page, "idetcd_forward_requests_total", to=upstream), 2)
        self.assertEqual(value(page, "idetcd_forward_responses_total", to=upstream, rcode="NOERROR"), 2)
        self.assertEqual(value(page, "idetcd_forward_max_concurrent_rejects_total"), 0)
        # The server label is CoreDNS's, with the port the node listens on.
        server = f"dns://:{self.node.dns.port}"
        self.assertEqual(
            value(page, "idetcd_dns_request_size_bytes_count", server=server, zone="tf.local.", proto="udp"), 2
        )

    @defer.inlineCallbacks
    def test_refused_outside_the_allowed_set(self):
        yield self.start_node(
            f"    forward . 127.0.0.1:{self.upstream_port} {{\n"
            "        allow_recursion 127.0.0.2/32\n"
            "    }"
        )
        for tcp in (False, True):
            _, response = yield self.ask("example.com", tcp=tcp)
            self.assertEqual(response.rcode(), dns.rcode.REFUSED)
        _, response = yield self.ask(self.name)
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(self.authority.received, [])

    @defer.inlineCallbacks
    def test_flood_to_a_dead_upstream_keeps_the_name(self):
        """
        A UDP stream of 8,000 queries a second, a quarter of them for
        distinct names to forward to an upstream that never answers, for
        three lease periods: the node keeps its key on the same lease,
        holds no more than C{max_concurrent} queries upstream, and a
        client asking for a member meanwhile is answered.
        """
        yield self.start_node(
            f"    forward . 127.0.0.1:{dead_upstream(self)} {{\n"
            "        max_concurrent 100\n"
            "        timeout 2\n"
            "    }"
        )
        forwarder = self.node.dns.forwarder
        key = self.node.claimer._key(self.name)
        (before,), _ = yield self.node.client.range(key)
        highest = []
        sample = task.LoopingCall(lambda: highest.append(len(forwarder.in_flight)))
        sample.start(0.1)
        stop = self.probing()
        try:
            counts = yield self.flood(
                "--seconds", 3 * self.LEASE, "--udp", "--rate", 8000, "--zone", "example.com"
            )
        finally:
            outcomes = yield stop()
            sample.stop()
        self.assertGreater(counts["udp sent"], 0.5 * 3 * self.LEASE * 8000)
        self.assertLessEqual(max(highest), 100)
        self.assertGreater(forwarder.dropped, 1000)
        (after,), _ = yield self.node.client.range(key)
        self.assertEqual((after.lease, after.create_revision), (before.lease, before.create_revision))
        self.assertEqual(self.node.held_name, self.name)
        answered = [ok for ok, _ in outcomes]
        self.assertGreater(len(answered), 10)
        self.assertGreaterEqual(answered.count(True), 0.9 * len(answered))
        yield wait_for(lambda: not forwarder.in_flight)


class NodeMetricsTests(unittest.TestCase):
    """
    A node with C{forward} and C{prometheus}: its page counts from its first
    request, and the answers it relays with those it gives itself.
    """

    timeout = 120
    LEASE = NodeTests.LEASE
    # Borrowed: they need only what setUp makes.
    setUp = NodeTests.setUp
    start_node = NodeTests.start_node
    ask = NodeTests.ask

    @defer.inlineCallbacks
    def test_counted_from_the_first_request(self):
        yield self.start_node(
            f"    forward . dns://127.0.0.1:{self.upstream_port}\n    prometheus 127.0.0.1:0"
        )
        for name in ("example.com", "www.example.org", self.name):
            _, response = yield self.ask(name)
            self.assertEqual(response.rcode(), dns.rcode.NOERROR, name)
        http = HttpGetter(timeout=CLIENT_WAIT)
        self.addCleanup(http.close)
        code, body = yield http.get(f"http://127.0.0.1:{self.node.getServiceNamed('metrics').port}/metrics")
        self.assertEqual(code, 200)
        page = samples(body.decode("utf-8"))
        (upstream,) = self.node.dns.forwarder.upstreams
        self.assertEqual(value(page, "idetcd_forward_responses_total", to=str(upstream), rcode="NOERROR"), 2)
        self.assertEqual(
            {key: v for key, v in page.items() if key[0] == "idetcd_dns_responses_total"},
            {("idetcd_dns_responses_total", (("rcode", "NOERROR"), ("zone", "tf.local."))): 3},
        )
        # The start-up check's GET of /version is the node's first call to etcd.
        self.assertEqual(value(page, "idetcd_etcd_requests_total", method="Version", outcome="ok"), 1)
