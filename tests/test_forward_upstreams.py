"""
C{forward}'s upstream handling and C{cache}, against real upstreams: small
DNS servers on loopback (dnspython messages on Twisted sockets) that count
every query they get by transport, name and type.  A real node process
(``twistd idetcd`` with a real etcd) for the cache and the health checks,
asked with dnspython and scraped on /metrics; the node's DNS server in this
process for the transports, the policies and connection reuse.
"""

import os
from collections import Counter

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.trial import unittest

from idetcd.config import CorefileError
from idetcd.dns import CacheSettings, Upstream
from idetcd.dns._answer_cache import AnswerCache, ttl_fields
from idetcd.dns._wire import read_query
from idetcd.node import parse
from idetcd.node._embedded import free_port
from tests.dnsclient import HOST
from tests.fakeregistry import FakeRegistry, sample_members
from tests.httpendpoints import HttpGetter, samples, value
from tests.nodes import NodeProcessCase
from tests.upstreams import ForwardTestCase
from tests.waiting import sleep, wait_for

CLIENT_WAIT = 10.0
#: A name whose answer does not fit 512 bytes: 40 addresses.
BIG = "big.example."
#: The SOA of denials: its MINIMUM (60) is below its TTL (300).
SOA = "ns.example. admin.example. 1 7200 900 1209600 60"


class _Responder:
    """
    A DNS server's answers: A records of C{records} (name -> (TTL,
    addresses)), 40 addresses for L{BIG}, NXDOMAIN for names starting with
    "nx" and NODATA for "nodata", both with L{SOA}; the root's NS for
    health probes.  Counts every query in C{received} by (transport, name,
    type).
    """

    def __init__(self, records):
        self.records = records
        self.received = Counter()
        self.tcp = []  # the TCP connections accepted
        self.closed = 0  # how many of them closed

    def count(self, transport=None, name=None, rdtype=None):
        return sum(
            n for (t, q, r), n in self.received.items()
            if transport in (None, t) and name in (None, q) and rdtype in (None, r)
        )

    def answer(self, data, transport):
        query = dns.message.from_wire(data)
        question = query.question[0]
        name, rdtype = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        self.received[transport, name, rdtype] += 1
        response = dns.message.make_response(query)
        label = name.split(".")[0]
        if name == "." and rdtype == "NS":
            response.answer.append(dns.rrset.from_text(".", 518400, "IN", "NS", "a.root-servers.net."))
        elif name == BIG:
            addresses = [f"192.0.2.{n}" for n in range(1, 41)]
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", *addresses))
        elif name in self.records and rdtype == "A":
            ttl, addresses = self.records[name]
            response.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", *addresses))
        elif label.startswith("nx") or label.startswith("nodata"):
            if label.startswith("nx"):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text("example.", 300, "IN", "SOA", SOA))
        else:
            response.set_rcode(dns.rcode.REFUSED)
        limit = 65535 if transport == "tcp" else max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer = []
            response.flags |= dns.flags.TC
            return response.to_wire()


class _UDP(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, responder):
        self.responder = responder

    def datagramReceived(self, data, address):
        self.transport.write(self.responder.answer(data, "udp"), address)


class _TCP(protocol.Protocol):
    def __init__(self, responder):
        self.responder = responder
        self.buffer = b""

    def connectionMade(self):
        self.responder.tcp.append(self)

    def dataReceived(self, data):
        self.buffer += data
        while len(self.buffer) >= 2:
            length = int.from_bytes(self.buffer[:2], "big")
            if len(self.buffer) < 2 + length:
                return
            message, self.buffer = self.buffer[2 : 2 + length], self.buffer[2 + length :]
            reply = self.responder.answer(message, "tcp")
            self.transport.write(len(reply).to_bytes(2, "big") + reply)

    def connectionLost(self, reason):
        self.responder.closed += 1


def serve_upstream(case, records=None, port=0):
    """
    A counting upstream on loopback, UDP and TCP on one port (C{port}, or
    a free one): (its L{_Responder}, its L{Upstream}).
    """
    responder = _Responder(records if records is not None else {"example.com.": (60, ["192.0.2.10"])})
    factory = protocol.Factory.forProtocol(lambda: _TCP(responder))
    factory.noisy = False
    for _ in range(20):
        udp = reactor.listenUDP(port, _UDP(responder), interface=HOST)
        chosen = udp.getHost().port
        try:
            tcp = reactor.listenTCP(chosen, factory, interface=HOST)
        except CannotListenError:
            udp.stopListening()
            if port:
                raise
            continue
        case.addCleanup(udp.stopListening)
        case.addCleanup(tcp.stopListening)
        return responder, Upstream(HOST, chosen)
    raise RuntimeError("no free port for both UDP and TCP")


def ask(port, name, tcp=False, rdtype="A", **kwargs):
    query = dns.message.make_query(name, rdtype, **kwargs)
    send = dns.query.tcp if tcp else dns.query.udp
    return threads.deferToThread(send, query, HOST, port=port, timeout=CLIENT_WAIT)


class TransportTests(ForwardTestCase):
    """
    The node's DNS server in this process, forwarding to counting upstreams.
    """

    def setUp(self):
        self.registry = FakeRegistry(sample_members(), revision=100)

    @defer.inlineCallbacks
    def test_force_tcp(self):
        """
        With force_tcp, UDP clients' queries reach the upstream over TCP only.
        """
        upstream, address = serve_upstream(self)
        self.serve(address, force_tcp=True)
        for _ in range(3):
            response = yield ask(self.server.port, "example.com")
            self.assertEqual([r.address for r in response.answer[0]], ["192.0.2.10"])
        self.assertEqual((upstream.count("tcp"), upstream.count("udp")), (3, 0))

    @defer.inlineCallbacks
    def test_tcp_client_over_tcp_unless_prefer_udp(self):
        upstream, address = serve_upstream(self)
        self.serve(address)
        yield ask(self.server.port, "example.com", tcp=True)
        self.assertEqual((upstream.count("tcp"), upstream.count("udp")), (1, 0))

    @defer.inlineCallbacks
    def test_prefer_udp(self):
        """
        With prefer_udp, a TCP client's query goes upstream over UDP; a
        truncated reply is asked again of the same upstream over TCP, and
        the client gets the whole answer.
        """
        upstream, address = serve_upstream(self)
        self.serve(address, prefer_udp=True)
        response = yield ask(self.server.port, "example.com", tcp=True)
        self.assertEqual([r.address for r in response.answer[0]], ["192.0.2.10"])
        self.assertEqual((upstream.count("tcp"), upstream.count("udp")), (0, 1))
        response = yield ask(self.server.port, BIG, tcp=True)
        self.assertEqual(len(response.answer[0]), 40)
        self.assertFalse(response.flags & dns.flags.TC)
        self.assertEqual((upstream.count("udp", BIG), upstream.count("tcp", BIG)), (1, 1))
        # A UDP client gets the truncated reply, to ask again over TCP itself.
        response = yield ask(self.server.port, BIG)
        self.assertTrue(response.flags & dns.flags.TC)
        self.assertEqual((upstream.count("udp", BIG), upstream.count("tcp", BIG)), (2, 1))

    @defer.inlineCallbacks
    def test_force_tcp_wins_over_prefer_udp(self):
        upstream, address = serve_upstream(self)
        self.serve(address, force_tcp=True, prefer_udp=True)
        yield ask(self.server.port, "example.com", tcp=True)
        yield ask(self.server.port, "example.com")
        self.assertEqual((upstream.count("tcp"), upstream.count("udp")), (2, 0))

    @defer.inlineCallbacks
    def test_tcp_connection_reused_until_it_expires(self):
        """
        Queries over TCP to one upstream share a connection; once it has
        been idle for expire, it is closed, and the next query opens one.
        """
        upstream, address = serve_upstream(self)
        self.serve(address, force_tcp=True, expire=2.0)
        pool = self.forwarder.pool
        for _ in range(3):
            yield ask(self.server.port, "example.com")
        self.assertEqual((len(upstream.tcp), pool.opened, pool.reused), (1, 1, 2))
        yield wait_for(lambda: upstream.closed == 1, timeout=20)
        yield ask(self.server.port, "example.com")
        self.assertEqual((len(upstream.tcp), pool.opened, pool.reused), (2, 2, 2))
        self.assertEqual(upstream.count("tcp"), 4)

    @defer.inlineCallbacks
    def test_expire_zero_keeps_no_connection(self):
        upstream, address = serve_upstream(self)
        self.serve(address, force_tcp=True, expire=0.0)
        for _ in range(2):
            yield ask(self.server.port, "example.com")
        self.assertEqual((len(upstream.tcp), self.forwarder.pool.reused), (2, 0))

    @defer.inlineCallbacks
    def test_idle_connection_closed_by_the_upstream(self):
        """
        An idle connection the upstream closed is forgotten, not a
        failure: the next query goes on a new one.
        """
        upstream, address = serve_upstream(self)
        self.serve(address, force_tcp=True, expire=30.0)
        yield ask(self.server.port, "example.com")
        upstream.tcp[0].transport.loseConnection()
        yield wait_for(lambda: not self.forwarder.pool._idle[address])
        response = yield ask(self.server.port, "example.com")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual((len(upstream.tcp), upstream.count("tcp")), (2, 2))
        self.assertEqual(self.forwarder.health[address].fails, 0)


class PolicyTests(ForwardTestCase):
    def setUp(self):
        self.registry = FakeRegistry(sample_members(), revision=100)
        self.upstreams = [serve_upstream(self) for _ in range(3)]

    @defer.inlineCallbacks
    def spread(self, policy, queries):
        self.serve(*(address for _, address in self.upstreams), policy=policy)
        for n in range(queries):
            response = yield ask(self.server.port, "example.com")
            self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        return [upstream.count("udp", "example.com.") for upstream, _ in self.upstreams]

    @defer.inlineCallbacks
    def test_sequential(self):
        counts = yield self.spread("sequential", 9)
        self.assertEqual(counts, [9, 0, 0])

    @defer.inlineCallbacks
    def test_round_robin(self):
        counts = yield self.spread("round_robin", 9)
        self.assertEqual(counts, [3, 3, 3])

    @defer.inlineCallbacks
    def test_random(self):
        counts = yield self.spread("random", 9)
        self.assertEqual(sum(counts), 9)

    @defer.inlineCallbacks
    def test_sequential_skips_a_down_upstream(self):
        """
        The first upstream refuses every datagram (nobody listens): after
        max_fails failures it is down, and the second takes every query.
        """
        dead = Upstream(HOST, free_port())
        live, address = self.upstreams[0]
        self.serve(dead, address, policy="sequential", max_fails=2, health_check=30.0)
        for _ in range(6):
            yield ask(self.server.port, "example.com")
        self.assertEqual(self.forwarder.tries[str(dead)], 2)
        self.assertTrue(self.forwarder.health[dead].down)
        self.assertEqual(live.count("udp", "example.com."), 6)


FORWARD_COREFILE = """\
.:{{$NODE_PORT}} {{
    bind 127.0.0.1
    prometheus 127.0.0.1:{metrics}
{forward}
    idetcd {{
        endpoint {{$ETCD_URL}}
        limit 3
        pattern worker{{{{.ID}}}}.tf.local.
        lease 3
        address 127.0.0.1
    }}
}}
"""


class NodeProcessTests(NodeProcessCase):
    """
    A real node process forwarding to counting upstreams in this process.
    """

    @defer.inlineCallbacks
    def start(self, forward):
        self.metrics = free_port()
        corefile = os.path.abspath(self.mktemp())
        with open(corefile, "w") as f:
            f.write(FORWARD_COREFILE.format(metrics=self.metrics, forward=forward))
        self.node = self.start_node(corefile=corefile)
        yield self.wait_claimed(self.node)
        self.http = HttpGetter(timeout=5)
        self.addCleanup(self.http.close)

    @defer.inlineCallbacks
    def scrape(self):
        code, body = yield self.http.get(f"http://127.0.0.1:{self.metrics}/metrics")
        self.assertEqual(code, 200)
        return samples(body.decode("utf-8"))

    def ask(self, name, **kwargs):
        return ask(self.node.port, name, **kwargs)

    @defer.inlineCallbacks
    def test_cache(self):
        """
        A repeated forwarded name is answered from the cache: the upstream
        is asked once; its TTL is capped by success's TTL and counts down.
        Denials are kept apart, in a capacity of their own: a second
        denial pushes the first out, and the kept success stays.
        """
        upstream, address = serve_upstream(self, {"example.com.": (7200, ["192.0.2.10"])})
        yield self.start(
            f"    forward . {address}\n"
            "    cache {\n"
            "        success 100 60\n"
            "        denial 1\n"
            "    }"
        )
        ttls = []
        for _ in range(5):
            response = yield self.ask("example.com")
            self.assertEqual([r.address for r in response.answer[0]], ["192.0.2.10"])
            ttls.append(response.answer[0].ttl)
        self.assertEqual(upstream.count(name="example.com."), 1)
        self.assertEqual(ttls[0], 60)  # capped from 7200
        self.assertTrue(all(58 <= ttl <= 60 for ttl in ttls), ttls)
        yield sleep(2.1)
        response = yield self.ask("example.com")
        self.assertLessEqual(response.answer[0].ttl, 58)
        self.assertEqual(upstream.count(name="example.com."), 1)

        # A denial: its TTL is the SOA's MINIMUM (60, below the SOA's 300).
        for _ in range(3):
            response = yield self.ask("nx1.example.org")
            self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(upstream.count(name="nx1.example.org."), 1)
        self.assertLessEqual(response.authority[0].ttl, 60)
        # Capacity 1: the second denial drops the first.
        yield self.ask("nodata.example.org")
        yield self.ask("nx1.example.org")
        self.assertEqual(upstream.count(name="nx1.example.org."), 2)
        yield self.ask("example.com")
        self.assertEqual(upstream.count(name="example.com."), 1)

        page = yield self.scrape()
        server = f"dns://:{self.node.port}"
        self.assertEqual(value(page, "idetcd_cache_hits_total", server=server, type="success"), 6)
        self.assertEqual(value(page, "idetcd_cache_hits_total", server=server, type="denial"), 2)
        self.assertEqual(value(page, "idetcd_cache_misses_total", server=server), 4)
        self.assertEqual(value(page, "idetcd_cache_evictions_total", server=server, type="denial"), 2)
        self.assertEqual(value(page, "idetcd_cache_entries", server=server, type="success"), 1)
        self.assertEqual(value(page, "idetcd_cache_entries", server=server, type="denial"), 1)
        self.assertEqual(value(page, "idetcd_forward_requests_total", to=str(address)), 4)

    @defer.inlineCallbacks
    def test_down_upstream_left_aside_until_it_answers_a_probe(self):
        """
        The first upstream is dead (nothing listens on its port): after
        max_fails failed tries it is down and the second takes every
        query.  Once a server listens on its port, a health probe (". IN
        NS") is answered, it is up again, and sequential sends it the
        next query.
        """
        live, live_address = serve_upstream(self)
        dead_port = free_port()
        dead = Upstream(HOST, dead_port)
        yield self.start(
            f"    forward . {dead} {live_address} {{\n"
            "        policy sequential\n"
            "        max_fails 2\n"
            "        health_check 0.2s\n"
            "    }"
        )
        for _ in range(10):
            response = yield self.ask("example.com")
            self.assertEqual([r.address for r in response.answer[0]], ["192.0.2.10"])
        self.assertEqual(live.count("udp", "example.com."), 10)
        page = yield self.scrape()
        tries = value(page, "idetcd_forward_requests_total", to=str(dead))
        self.assertIn(tries, (1, 2))  # a failed probe may count before the second try
        self.assertEqual(value(page, "idetcd_forward_up", to=str(dead)), 0)
        self.assertEqual(value(page, "idetcd_forward_up", to=str(live_address)), 1)
        for _ in range(5):
            yield self.ask("example.com")
        page = yield self.scrape()
        self.assertEqual(value(page, "idetcd_forward_requests_total", to=str(dead)), tries)
        self.assertEqual(live.count("udp", "example.com."), 15)
        # Probed all along, every 0.2 s, in vain.
        probes = "idetcd_forward_healthcheck_failures_total"
        for _ in range(200):
            page = yield self.scrape()
            if value(page, probes, to=str(dead)) >= 2:
                break
            yield sleep(0.05)
        self.assertGreaterEqual(value(page, probes, to=str(dead)), 2)
        self.assertEqual(value(page, "idetcd_forward_up", to=str(dead)), 0)

        revived, _ = serve_upstream(self, port=dead_port)
        for _ in range(200):
            page = yield self.scrape()
            if value(page, "idetcd_forward_up", to=str(dead)) == 1:
                break
            yield sleep(0.05)
        self.assertEqual(value(page, "idetcd_forward_up", to=str(dead)), 1)
        self.assertGreaterEqual(revived.count("udp", ".", "NS"), 1)
        response = yield self.ask("example.com")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(revived.count(name="example.com."), 1)
        self.assertEqual(live.count("udp", "example.com."), 15)

    @defer.inlineCallbacks
    def test_force_tcp_and_round_robin(self):
        """
        force_tcp: the upstreams see TCP only; round_robin: each gets the
        same share; the latency of each is in the metrics.
        """
        upstreams = [serve_upstream(self) for _ in range(2)]
        yield self.start(
            f"    forward . {upstreams[0][1]} {upstreams[1][1]} {{\n"
            "        force_tcp\n"
            "        policy round_robin\n"
            "    }"
        )
        for n in range(8):
            response = yield self.ask("example.com")
            self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual([(u.count("tcp"), u.count("udp")) for u, _ in upstreams], [(4, 0), (4, 0)])
        self.assertEqual([len(u.tcp) for u, _ in upstreams], [1, 1])  # reused: expire is 10s
        page = yield self.scrape()
        for _, address in upstreams:
            self.assertEqual(
                value(page, "idetcd_forward_request_duration_seconds_count", to=str(address)), 4
            )
            self.assertGreater(value(page, "idetcd_forward_request_duration_seconds_sum", to=str(address)), 0)


class PrefetchTests(ForwardTestCase):
    def setUp(self):
        self.registry = FakeRegistry(sample_members(), revision=100)

    @defer.inlineCallbacks
    def test_popular_answer_asked_again_before_it_expires(self):
        """
        prefetch 2 1m 90%: an entry asked for twice, with 90% or less of its
        TTL left, is asked upstream again once while the client is answered
        from the cache.
        """
        upstream, address = serve_upstream(self, {"example.com.": (10, ["192.0.2.10"])})
        settings = CacheSettings(prefetch=(2, 60.0, 0.9))
        self.serve(address, cache=settings)
        yield ask(self.server.port, "example.com")  # kept, TTL 10
        yield ask(self.server.port, "example.com")  # a hit, 10 s left: not yet
        self.assertEqual(upstream.count(name="example.com."), 1)
        yield sleep(1.1)
        response = yield ask(self.server.port, "example.com")  # 9 s left
        self.assertLessEqual(response.answer[0].ttl, 9)
        yield wait_for(lambda: upstream.count(name="example.com.") == 2)
        yield self.wait_idle()
        self.assertEqual(self.forwarder.cache.prefetches, 1)
        response = yield ask(self.server.port, "example.com")  # the new entry
        self.assertEqual(response.answer[0].ttl, 10)
        self.assertEqual(upstream.count(name="example.com."), 2)


def _reply(name="example.com.", rcode=dns.rcode.NOERROR, ttl=60, soa=False, tc=False, use_edns=None):
    query = dns.message.make_query(name, "A", use_edns=use_edns)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if rcode == dns.rcode.NOERROR and not soa:
        response.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", "192.0.2.1", "192.0.2.2"))
    if soa:
        response.authority.append(dns.rrset.from_text("example.", ttl, "IN", "SOA", SOA))
    if tc:
        response.flags |= dns.flags.TC
    return query.to_wire(), response.to_wire()


class AnswerCacheTests(unittest.TestCase):
    """
    The cache's rules on a fake clock.
    """

    def cache(self, **settings):
        self.clock = Clock()
        return AnswerCache(CacheSettings(**settings), self.clock)

    def keep(self, cache, data, reply):
        return cache.keep(read_query(data), reply)

    def answer(self, cache, data, limit=65535):
        reply = cache.answer(data, read_query(data), limit)
        return None if reply is None else dns.message.from_wire(reply)

    def test_ttl_fields(self):
        _, reply = _reply(use_edns=0)
        offsets, smallest, minimum = ttl_fields(reply)
        self.assertEqual((len(offsets), smallest, minimum), (2, 60, None))  # the OPT left out
        _, reply = _reply(rcode=dns.rcode.NXDOMAIN, soa=True, ttl=300)
        self.assertEqual(ttl_fields(reply)[1:], (300, 60))
        with self.assertRaises(ValueError):
            ttl_fields(reply[:-3])

    def test_kept_and_counted_down(self):
        cache = self.cache()
        data, reply = _reply(ttl=100)
        sent = dns.message.from_wire(self.keep(cache, data, reply))
        self.assertEqual(sent.answer[0].ttl, 100)
        self.clock.advance(30.5)
        again = dns.message.make_query("EXAMPLE.com.", "A")
        got = self.answer(cache, again.to_wire())
        self.assertEqual((got.id, got.question[0].name.to_text(), got.answer[0].ttl), (again.id, "EXAMPLE.com.", 70))
        self.clock.advance(70)
        self.assertIsNone(self.answer(cache, data))
        self.assertEqual((cache.hits, cache.misses), ({"success": 1, "denial": 0}, 1))

    def test_caps_and_minimums(self):
        cache = self.cache(success_ttl=60, success_min_ttl=10, denial_ttl=20)
        data, reply = _reply(ttl=7200)
        self.assertEqual(dns.message.from_wire(self.keep(cache, data, reply)).answer[0].ttl, 60)
        data, reply = _reply("b.example.", ttl=1)
        self.assertEqual(dns.message.from_wire(self.keep(cache, data, reply)).answer[0].ttl, 10)
        data, reply = _reply("nx.example.", rcode=dns.rcode.NXDOMAIN, soa=True, ttl=300)
        self.assertEqual(dns.message.from_wire(self.keep(cache, data, reply)).authority[0].ttl, 20)
        self.assertEqual(cache.sizes(), {"success": 2, "denial": 1})

    def test_not_kept(self):
        cache = self.cache()
        for data, reply in (
            _reply(rcode=dns.rcode.SERVFAIL),
            _reply(rcode=dns.rcode.REFUSED),
            _reply(tc=True),
        ):
            self.assertEqual(self.keep(cache, data, reply), reply)
        self.assertEqual(cache.sizes(), {"success": 0, "denial": 0})
        outside = self.cache(zones=("example.org.",))
        data, reply = _reply()
        self.keep(outside, data, reply)
        self.assertEqual(outside.sizes(), {"success": 0, "denial": 0})
        self.assertIsNone(self.answer(outside, data))
        self.assertEqual(outside.misses, 0)  # not the cache's to answer

    def test_capacity_drops_the_oldest(self):
        cache = self.cache(success=2)
        for name in ("a.example.", "b.example.", "c.example."):
            self.keep(cache, *_reply(name))
        self.assertIsNone(self.answer(cache, _reply("a.example.")[0]))
        self.assertIsNotNone(self.answer(cache, _reply("c.example.")[0]))
        self.assertEqual(cache.evictions, {"success": 1, "denial": 0})

    def test_edns_and_size(self):
        """
        An answer to a query without EDNS is not given to one with it; one
        longer than the client's limit is not given at all.
        """
        cache = self.cache()
        data, reply = _reply()
        self.keep(cache, data, reply)
        self.assertIsNone(self.answer(cache, _reply(use_edns=0)[0]))
        self.assertIsNone(self.answer(cache, data, limit=len(reply) - 1))
        self.assertIsNotNone(self.answer(cache, data, limit=len(reply)))


class CorefileTests(unittest.TestCase):
    """
    Every mistake in forward's new settings and in cache is a Corefile
    error at its line, when the Corefile is read: before anything binds.
    """

    BLOCK = """\
.:53 {{
    idetcd {{
        pattern w{{{{.ID}}}}.tf.local.
    }}
    forward . 10.0.0.1 {{
{forward}
    }}
{cache}
}}
"""

    def parse(self, forward="", cache=""):
        return parse(self.BLOCK.format(forward=forward, cache=cache), "Corefile")[0]

    def test_settings(self):
        block = self.parse(
            "        max_fails 3\n        health_check 250ms\n        force_tcp\n        prefer_udp\n        expire 1m",
            "    cache 300 example.org {\n        success 100 60 10\n        denial 50\n        prefetch 3 30s 20%\n    }",
        )
        forward, cache = block.forward, block.cache
        self.assertEqual(
            (forward.max_fails, forward.health_check, forward.force_tcp, forward.prefer_udp, forward.expire),
            (3, 0.25, True, True, 60.0),
        )
        self.assertEqual(
            (cache.zones, cache.success, cache.success_ttl, cache.success_min_ttl, cache.denial,
             cache.denial_ttl, cache.denial_min_ttl, cache.prefetch),
            (("example.org.",), 100, 60, 10, 50, 300, 5, (3, 30.0, 0.2)),
        )

    def test_defaults(self):
        block = self.parse(cache="    cache")
        forward, cache = block.forward, block.cache
        self.assertEqual(
            (forward.max_fails, forward.health_check, forward.force_tcp, forward.prefer_udp, forward.expire,
             forward.policy),
            (2, 0.5, False, False, 10.0, "random"),
        )
        self.assertEqual(
            (cache.success, cache.success_ttl, cache.denial, cache.denial_ttl, cache.prefetch),
            (9984, 3600, 9984, 1800, None),
        )

    def test_mistakes(self):
        for forward, cache, message in (
            ("        max_fails x", "", "Corefile:6: max_fails must be a whole number from 0 to 1000, got 'x'"),
            ("        health_check 0", "", "Corefile:6: health_check must be a duration such as 30s"),
            ("        health_check 0s", "", "Corefile:6: health_check must be from 0.01s to 3600s, got '0s'"),
            ("        expire 10", "", "Corefile:6: expire must be a duration such as 30s"),
            ("        force_tcp yes", "", "Corefile:6: 'force_tcp' takes no arguments, got 1"),
            ("        prefer_udp\n        prefer_udp", "", "Corefile:7: duplicate 'prefer_udp' in forward"),
            ("        max_fails 0\n        health_check 1s", "", "Corefile:7: health_check probes failed upstreams"),
            ("", "    cache {\n        serve_stale\n    }", "Corefile:9: cache's serve_stale is not supported"),
            ("", "    cache {\n        success\n    }", "Corefile:9: 'success' takes 1 to 3 arguments, got 0"),
            ("", "    cache {\n        success 10 5 6\n    }", "Corefile:9: cache's success minimum TTL 6 is above"),
            ("", "    cache {\n        denial 0\n    }", "Corefile:9: denial's capacity must be a whole number"),
            ("", "    cache {\n        prefetch 2 1m 5%\n    }", "Corefile:9: prefetch's percentage must be from 10% to 90%"),
            ("", "    cache {\n        prefetch 0\n    }", "Corefile:9: prefetch's amount must be a whole number"),
            ("", "    cache {\n        shared\n    }", "Corefile:9: unknown directive 'shared' in cache"),
            ("", "    cache 0", "Corefile:8: cache's TTL must be a whole number of seconds from 1 to 86400"),
            ("", "    cache foo..bar", "Corefile:8: cache takes zones, and 'foo..bar' is not one"),
            ("", "    cache\n    cache", "Corefile:9: duplicate 'cache' in this server block"),
        ):
            with self.assertRaises(CorefileError) as caught:
                self.parse(forward, cache)
            self.assertTrue(str(caught.exception).startswith(message), (str(caught.exception), message))

    def test_cache_needs_forward(self):
        text = ".:53 {\n    idetcd {\n        pattern w{{.ID}}.tf.local.\n    }\n    cache\n}\n"
        with self.assertRaises(CorefileError) as caught:
            parse(text, "Corefile")
        self.assertEqual(
            str(caught.exception),
            "Corefile:5: 'cache' keeps forwarded answers: this server block has no forward directive",
        )
