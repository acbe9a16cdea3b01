"""
The prometheus endpoint and the counts behind it: nodes embedded in-process
against a real etcd, scraped over HTTP and parsed with prometheus_client's
own parser, real DNS clients; the counting parts on their own, with real
sockets or a fake clock.
"""

import socket
from collections import Counter
from types import SimpleNamespace

import dns.message
import dns.query
import treq
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, threads
from twisted.python.failure import Failure
from twisted.trial import unittest

from idetcd.dns import _tally as tally
from idetcd.dns._authority import ZoneAuthority
from idetcd.dns._server import DNSServer
from idetcd.etcd import EtcdClient, EtcdError, EtcdUnavailable, LeaseNotFound
from idetcd.node import _http as http
from idetcd.node._metrics import DnsCollector, EtcdCalls, NodeCollector, etcd_outcome
from tests.test_authority import FakeRegistry, sample_members
from tests.test_cluster import query
from tests.test_etcd import wait_for
from tests.test_http import NodeHttpTestCase
from tests.test_server import exchange_udp, header, question

ZONE = "tf.local."


def samples(text):
    """
    Every sample of a metrics page: {(name, sorted label pairs): value}.
    """
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(page, metric, /, **labels):
    """
    One sample of C{page} (from L{samples}); 0 when absent.
    """
    return page.get((metric, tuple(sorted(labels.items()))), 0)


def total(page, name):
    return sum(v for (n, _), v in page.items() if n == name)


def delta(before, after, metric, /, **labels):
    return value(after, metric, **labels) - value(before, metric, **labels)


class MetricsEndpointTests(NodeHttpTestCase):
    """
    Nodes with C{prometheus 127.0.0.1:0}, two of them in this one process.
    """

    def node(self, http="prometheus 127.0.0.1:0"):
        return NodeHttpTestCase.node(self, http)

    @defer.inlineCallbacks
    def scrape(self, node):
        code, body = yield self.http.get(self.url(node, "metrics"))
        self.assertEqual(code, 200, body)
        return samples(body.decode("utf-8"))

    @defer.inlineCallbacks
    def ask(self, node, name, rdtype="A", times=1, tcp=False):
        for _ in range(times):
            yield query(node.dns.port, name, rdtype, tcp=tcp)

    @defer.inlineCallbacks
    def test_dns_counters_move_with_queries(self):
        """
        Each query answered counts once in requests (by protocol, family
        and type), once in responses (by rcode) and once in the duration
        histogram.
        """
        node = self.node()
        yield node.when_claimed()
        before = yield self.scrape(node)
        yield self.ask(node, "worker1.tf.local", "A", times=20)
        yield self.ask(node, "WORKER1.tf.local", "AAAA", times=5)
        yield self.ask(node, "nobody.tf.local", "A", times=3)
        yield self.ask(node, "example.com", "A", times=2)
        yield self.ask(node, "worker1.tf.local", "TXT", times=1)
        yield self.ask(node, "worker1.tf.local", "A", times=4, tcp=True)
        after = yield self.scrape(node)

        requests = "idetcd_dns_requests_total"
        udp = dict(zone=ZONE, proto="udp", family="1")
        self.assertEqual(delta(before, after, requests, type="A", **udp), 25)
        self.assertEqual(delta(before, after, requests, type="AAAA", **udp), 5)
        self.assertEqual(delta(before, after, requests, type="TXT", **udp), 1)
        self.assertEqual(
            delta(before, after, requests, zone=ZONE, proto="tcp", family="1", type="A"), 4
        )
        self.assertEqual(total(after, requests) - total(before, requests), 35)
        responses = "idetcd_dns_responses_total"
        for rcode, count in (("NOERROR", 30), ("NXDOMAIN", 3), ("REFUSED", 2)):
            self.assertEqual(delta(before, after, responses, zone=ZONE, rcode=rcode), count, rcode)
        self.assertEqual(total(after, responses), total(after, requests))

        histogram = "idetcd_dns_request_duration_seconds"
        self.assertEqual(delta(before, after, histogram + "_count", zone=ZONE), 35)
        self.assertEqual(value(after, histogram + "_count", zone=ZONE), total(after, requests))
        self.assertGreater(delta(before, after, histogram + "_sum", zone=ZONE), 0)
        buckets = sorted(
            (float(dict(labels)["le"]), v) for (name, labels), v in after.items()
            if name == histogram + "_bucket"
        )
        self.assertEqual(len(buckets), tally.BUCKETS + 1)
        self.assertEqual(buckets[-1], (float("inf"), total(after, requests)))
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts))

    @defer.inlineCallbacks
    def test_two_nodes_report_their_own(self):
        """
        Each node's page has its own name, its registry's view, its lease's
        keepalives and its own etcd calls and DNS counts.
        """
        nodes = [self.node(), self.node()]
        names = yield defer.gatherResults([node.when_claimed() for node in nodes])
        self.assertEqual(sorted(names), ["worker1.tf.local.", "worker2.tf.local."])
        yield wait_for(lambda: all(len(node.members) == 2 for node in nodes))
        # Every node's first keepalive, 1 s after its grant with lease 3.
        for node in nodes:
            yield wait_for(lambda node=node: node.claimer.keepalives["ok"] > 0)
        yield self.ask(nodes[0], "worker2.tf.local", times=3)
        pages = []
        for node in nodes:
            pages.append((yield self.scrape(node)))

        for node, page, name, other in zip(nodes, pages, names, reversed(names)):
            self.assertEqual(value(page, "idetcd_members"), 2)
            self.assertEqual(value(page, "idetcd_registry_revision"), node.registry.revision)
            self.assertGreater(node.registry.revision, 0)
            self.assertEqual(value(page, "idetcd_claimed", name=name), 1)
            self.assertNotIn(("idetcd_claimed", (("name", other),)), page)
            keepalives = "idetcd_lease_keepalives_total"
            self.assertGreater(value(page, keepalives, outcome="ok"), 0)
            for outcome in ("failed", "gone"):
                self.assertIn((keepalives, (("outcome", outcome),)), page)
            etcd = "idetcd_etcd_requests_total"
            for method in ("Range", "LeaseGrant", "Txn", "LeaseKeepAlive"):
                self.assertGreater(value(page, etcd, method=method, outcome="ok"), 0, method)
            # Each keepalive that renewed was one call etcd answered.
            self.assertGreaterEqual(
                value(page, etcd, method="LeaseKeepAlive", outcome="ok"),
                value(page, keepalives, outcome="ok"),
            )
            self.assertGreater(value(page, "process_resident_memory_bytes"), 0)
        requests = "idetcd_dns_requests_total"
        self.assertEqual(total(pages[0], requests), 3)
        self.assertEqual(total(pages[1], requests), 0)

    @defer.inlineCallbacks
    def test_claim_again(self):
        """
        A node whose lease is revoked claims again on a new lease: its page
        shows the name held and the second grant.
        """
        node = self.node()
        name = yield node.when_claimed()
        lease = node.claimer.lease
        yield self.client.lease_revoke(lease)
        yield wait_for(lambda: node.claimer.lease not in (None, lease))
        page = yield self.scrape(node)
        self.assertEqual(value(page, "idetcd_claimed", name=name), 1)
        self.assertEqual(total(page, "idetcd_claimed"), 1)
        self.assertEqual(value(page, "idetcd_etcd_requests_total", method="LeaseGrant", outcome="ok"), 2)

    @defer.inlineCallbacks
    def test_endpoint(self):
        """
        Prometheus's text format on /metrics only; no endpoint and no DNS
        counting without the directive.
        """
        node = self.node()
        yield node.when_claimed()
        response = yield treq.get(self.url(node, "metrics"), pool=self.http.pool, timeout=5)
        yield treq.content(response)
        self.assertEqual(
            response.headers.getRawHeaders(b"Content-Type"), [http.PROMETHEUS_TEXT]
        )
        for path in ("", "metrics/x", "health", "ready"):
            code, _ = yield self.http.get(self.url(node, "metrics", path))
            self.assertEqual(code, 404, path)
        plain = self.node(http="")
        yield plain.when_claimed()
        self.assertNotIn("metrics", [service.name for service in plain])
        self.assertIsNone(plain.dns.tally)
        self.assertIsNone(plain.client.on_call)


class DnsTallyTests(unittest.TestCase):
    """
    A DNS server counting into a tally, asked by real clients over UDP and
    TCP on "::", so IPv4 clients arrive as mapped addresses.
    """

    def setUp(self):
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                s.bind(("::1", 0))
        except OSError:
            raise unittest.SkipTest("no IPv6 loopback")
        self.tally = tally.DnsTally(ZONE)
        authority = ZoneAuthority(ZONE, FakeRegistry(sample_members()), 30)
        self.server = DNSServer(authority, 0, interfaces=("::",), reactor=reactor, tally=self.tally)
        self.server.startService()
        self.addCleanup(self.server.stopService)

    def udp(self, host, payload):
        return threads.deferToThread(exchange_udp, self.server.port, payload, host=host)

    @defer.inlineCallbacks
    def test_counts_by_family_and_path(self):
        a = dns.message.make_query("worker1.tf.local", "A").to_wire()
        for _ in range(3):  # the first from the slow path, the others from the fast table
            yield self.udp("127.0.0.1", a)
        yield self.udp("::1", dns.message.make_query("worker3.tf.local", "AAAA").to_wire())
        yield self.udp("::1", dns.message.make_query("worker3.tf.local", "CAA").to_wire())
        yield self.udp("::1", header() + question()[:-2])  # cut short: FORMERR
        silence = yield self.udp("::1", header(flags=0x8000) + question())  # a response
        self.assertIsNone(silence)
        reply = yield threads.deferToThread(
            dns.query.tcp, dns.message.make_query("nobody.tf.local", "A"), "127.0.0.1",
            timeout=3, port=self.server.port,
        )
        self.assertEqual(reply.rcode(), 3)

        self.assertEqual(
            dict(self.tally.requests()),
            {
                ("udp", "1", "A"): 3,
                ("udp", "2", "AAAA"): 1,
                ("udp", "2", "other"): 2,
                ("tcp", "1", "A"): 1,
            },
        )
        self.assertEqual(
            dict(self.tally.responses()), {"NOERROR": 5, "FORMERR": 1, "NXDOMAIN": 1}
        )
        cumulative, count, seconds = self.tally.durations()
        self.assertEqual((count, cumulative[-1]), (7, 7))
        self.assertGreater(seconds, 0)


class TallyTests(unittest.TestCase):
    def test_labels(self):
        self.assertEqual(
            [(tally.type_label(k), tally.rcode_label(k)) for k in (
                tally.kind(1, 0), tally.kind(28, 3), tally.kind(99, 5),
                tally.kind(tally.NO_TYPE, 1), tally.kind(65, 16), tally.kind(255, 12),
            )],
            [("A", "NOERROR"), ("AAAA", "NXDOMAIN"), ("other", "REFUSED"),
             ("other", "FORMERR"), ("HTTPS", "BADVERS"), ("ANY", "RCODE12")],
        )

    def test_family(self):
        self.assertEqual(
            [tally.family(host) for host in ("127.0.0.1", "::1", "::ffff:10.0.0.1", "fd00::1")],
            ["1", "2", "1", "2"],
        )

    def test_durations(self):
        """
        Bucket bounds double from 1.024 µs; the answers of a batch count as
        taking their mean; one past the last bound counts only in the total.
        """
        self.assertEqual(tally.BOUNDS[:2], (1.024e-06, 2.048e-06))
        self.assertEqual(tally.BOUNDS[-1], 2 ** 33 / 1e9)
        owner = tally.DnsTally(ZONE)
        owner.timed(4, 4 * 1500)  # 1.5 µs each
        owner.timed(3, 3 * 1000)  # 1 µs each
        owner.timed(1, 20 * 10**9)
        cumulative, count, seconds = owner.durations()
        self.assertEqual(cumulative[:3], [3, 7, 7])
        self.assertEqual((cumulative[-1], count), (7, 8))
        self.assertEqual(seconds, (6000 + 3000 + 20 * 10**9) / 1e9)

    def test_lanes(self):
        owner = tally.DnsTally(ZONE)
        lane = owner.lane("udp", "1")
        self.assertIs(owner.lane("udp", "1"), lane)
        lane.answers[tally.kind(1, 0)] += 2
        owner.lane("tcp", "2").answers[tally.kind(1, 3)] += 1
        self.assertEqual(
            dict(owner.requests()), {("udp", "1", "A"): 2, ("tcp", "2", "A"): 1}
        )
        self.assertEqual(dict(owner.responses()), {"NOERROR": 2, "NXDOMAIN": 1})


class EtcdCallsTests(unittest.TestCase):
    def test_outcomes(self):
        self.assertEqual(
            [etcd_outcome(result) for result in (
                {"header": {}},
                Failure(defer.CancelledError()),
                Failure(EtcdUnavailable("no etcd endpoint answered")),
                Failure(EtcdError(9, "etcdserver: request is too large")),
                Failure(LeaseNotFound(5, "lease not found")),
            )],
            ["ok", "cancelled", "unavailable", "error", "error"],
        )

    @defer.inlineCallbacks
    def test_client_hook(self):
        """
        The client tells its hook of each call, by path, with the failure
        that its caller gets.
        """
        calls = EtcdCalls()
        client = EtcdClient(["http://127.0.0.1:9"], reactor, timeout=2, on_call=calls)
        self.addCleanup(client.close)
        with self.assertRaises(EtcdUnavailable):
            yield client.range(b"x")
        with self.assertRaises(EtcdUnavailable):
            yield client.call("/v3/maintenance/status", {})
        self.assertEqual(
            dict(calls.counts),
            {("Range", "unavailable"): 1, ("/v3/maintenance/status", "unavailable"): 1},
        )


def _node(held, members=(), revision=5):
    """
    The surface of a node that L{NodeCollector} reads.
    """
    return SimpleNamespace(
        held_name=held,
        registry=SimpleNamespace(members=dict.fromkeys(members), revision=revision),
        claimer=SimpleNamespace(keepalives=Counter(ok=4), nospace=False),
    )


class NodeCollectorTests(unittest.TestCase):
    """
    The collector over a fake node, through prometheus_client's exposition
    and parser.
    """

    def setUp(self):
        self.node = _node("worker1.tf.local.", members=["worker1.tf.local.", "worker2.tf.local."])
        self.dns = tally.DnsTally(ZONE)
        self.calls = EtcdCalls()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DnsCollector(self.dns))
        self.registry.register(NodeCollector(self.node, self.calls))

    def page(self):
        return samples(generate_latest(self.registry).decode("utf-8"))

    def test_claimed_names(self):
        """
        1 for the name held; a name held before stays at 0.
        """
        page = self.page()
        self.assertEqual(value(page, "idetcd_claimed", name="worker1.tf.local."), 1)
        self.node.held_name = None
        page = self.page()
        self.assertEqual(value(page, "idetcd_claimed", name="worker1.tf.local."), 0)
        self.assertIn(("idetcd_claimed", (("name", "worker1.tf.local."),)), page)
        self.node.held_name = "worker3.tf.local."
        page = self.page()
        self.assertEqual(
            {labels: v for (name, labels), v in page.items() if name == "idetcd_claimed"},
            {(("name", "worker1.tf.local."),): 0, (("name", "worker3.tf.local."),): 1},
        )

    def test_state_and_counts(self):
        self.calls("/v3/kv/txn", {})
        self.calls("/v3/kv/txn", Failure(EtcdError(3, "bad")))
        self.dns.lane("udp", "2").answers[tally.kind(28, 0)] += 1
        self.dns.timed(1, 2500)
        page = self.page()
        self.assertEqual(value(page, "idetcd_members"), 2)
        self.assertEqual(value(page, "idetcd_registry_revision"), 5)
        self.assertEqual(
            [value(page, "idetcd_lease_keepalives_total", outcome=o) for o in ("ok", "failed", "gone")],
            [4, 0, 0],
        )
        etcd = "idetcd_etcd_requests_total"
        self.assertEqual(value(page, etcd, method="Txn", outcome="ok"), 1)
        self.assertEqual(value(page, etcd, method="Txn", outcome="error"), 1)
        self.assertEqual(
            value(page, "idetcd_dns_requests_total", zone=ZONE, proto="udp", family="2", type="AAAA"), 1
        )
        self.assertEqual(value(page, "idetcd_dns_responses_total", zone=ZONE, rcode="NOERROR"), 1)
        histogram = "idetcd_dns_request_duration_seconds"
        self.assertEqual(value(page, histogram + "_count", zone=ZONE), 1)
        self.assertEqual(value(page, histogram + "_sum", zone=ZONE), 2.5e-06)
        self.assertEqual(value(page, histogram + "_bucket", zone=ZONE, le="2.048e-06"), 0)
        self.assertEqual(value(page, histogram + "_bucket", zone=ZONE, le="4.096e-06"), 1)

