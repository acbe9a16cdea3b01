"""
The prometheus endpoint and the counts behind it: nodes embedded in-process
against a real etcd, scraped over HTTP and parsed with prometheus_client's
own parser, real DNS clients; the counting parts on their own, with real
sockets or a fake clock.
"""

import os
import platform
import socket
from collections import Counter
from types import SimpleNamespace

import dns.message
import dns.query
import treq
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString
from twisted.internet import defer, reactor, threads
from twisted.python.failure import Failure
from twisted.trial import unittest

import idetcd
import twisted
from idetcd import IdetcdService
from idetcd.dns import _tally as tally
from idetcd.dns._authority import ZoneAuthority
from idetcd.dns._server import DNSServer
from idetcd.etcd import EtcdClient, EtcdError, EtcdUnavailable, LeaseNotFound
from idetcd.node import _http as http
from idetcd.node._metrics import DnsCollector, EtcdCalls, NodeCollector, etcd_outcome
from tests.dnsclient import exchange_udp, header, query, question, tcp_session
from tests.fakeregistry import FakeRegistry, sample_members
from tests.httpendpoints import COREFILE as HTTP_COREFILE
from tests.httpendpoints import NodeHttpTestCase, samples, value
from tests.waiting import sleep, wait_for

ZONE = "tf.local."


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
        for type_label, count in (("A", 29), ("AAAA", 5), ("TXT", 1)):
            self.assertEqual(
                delta(before, after, histogram + "_count", zone=ZONE, type=type_label), count, type_label
            )
            self.assertGreater(delta(before, after, histogram + "_sum", zone=ZONE, type=type_label), 0)
        self.assertEqual(total(after, histogram + "_count"), total(after, requests))
        buckets = sorted(
            (float(dict(labels)["le"]), v) for (name, labels), v in after.items()
            if name == histogram + "_bucket" and dict(labels)["type"] == "A"
        )
        self.assertEqual(len(buckets), tally.BUCKETS + 1)
        self.assertEqual(buckets[-1], (float("inf"), value(after, histogram + "_count", zone=ZONE, type="A")))
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts))

    @defer.inlineCallbacks
    def test_sizes(self):
        """
        Requests and responses of known sizes, over UDP and TCP from real
        clients, count in the size histograms by protocol, with CoreDNS's
        buckets and their exact sums in bytes.
        """
        node = self.node()
        yield node.when_claimed()
        before = yield self.scrape(node)
        small = dns.message.make_query("worker1.tf.local", "A").to_wire()
        padded = dns.message.make_query("worker1.tf.local", "A", use_edns=0, pad=512).to_wire()
        sizes = {"udp": ([], []), "tcp": ([], [])}
        for payload in (small, small, padded):
            reply = yield threads.deferToThread(exchange_udp, node.dns.port, payload)
            sizes["udp"][0].append(len(payload))
            sizes["udp"][1].append(len(reply))
        for payload in (small, padded):
            (reply,) = yield threads.deferToThread(tcp_session, node.dns.port, [payload])
            sizes["tcp"][0].append(len(payload))
            sizes["tcp"][1].append(len(reply))
        after = yield self.scrape(node)
        self.assertEqual(len(padded), 512)  # in the 1023 bucket, past the 511 one
        server = f"dns://:{node.dns.port}"
        for histogram, index in (("idetcd_dns_request_size_bytes", 0), ("idetcd_dns_response_size_bytes", 1)):
            for proto, measured in sizes.items():
                labels = dict(server=server, zone=ZONE, proto=proto)
                seen = measured[index]
                self.assertEqual(delta(before, after, histogram + "_count", **labels), len(seen))
                self.assertEqual(delta(before, after, histogram + "_sum", **labels), sum(seen))
                for bound in tally.SIZE_BOUNDS:
                    self.assertEqual(
                        delta(before, after, histogram + "_bucket", le=floatToGoString(bound), **labels),
                        sum(1 for size in seen if size <= bound), (histogram, proto, bound),
                    )

    @defer.inlineCallbacks
    def test_etcd_requests_counted_while_stuck_in_the_check(self):
        """
        A node whose etcd does not answer stays in its start-up check; its
        page shows the check's requests (the GETs of etcd's /version) as
        they fail, from the first.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            nobody = s.getsockname()[1]  # nothing listens here once closed
        text = HTTP_COREFILE.format(http="prometheus 127.0.0.1:0", endpoint=f"http://127.0.0.1:{nobody}")
        node = IdetcdService.from_corefile(reactor, text=text, state_dir=os.path.abspath(self.mktemp()))
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        etcd = "idetcd_etcd_requests_total"
        for _ in range(100):
            page = yield self.scrape(node)
            if value(page, etcd, method="Version", outcome="unavailable") >= 2:
                break
            yield sleep(0.1)
        self.assertGreaterEqual(value(page, etcd, method="Version", outcome="unavailable"), 2)
        self.assertEqual(total(page, etcd), value(page, etcd, method="Version", outcome="unavailable"))
        self.assertIsNone(node.held_name)

    @defer.inlineCallbacks
    def test_build_info(self):
        node = self.node()
        page = yield self.scrape(node)
        self.assertEqual(
            value(
                page, "idetcd_build_info", version=idetcd.__version__,
                python=platform.python_version(), twisted=twisted.__version__,
            ),
            1,
        )

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
        registry = FakeRegistry(sample_members())
        authority = ZoneAuthority(ZONE, registry, 30)
        self.server = DNSServer(
            authority, 0, interfaces=("::",), reactor=reactor, tally=self.tally
        )
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
        durations = self.tally.durations()
        self.assertEqual(
            {label: (count, cumulative[-1]) for label, (cumulative, count, _) in durations.items()},
            {"A": (4, 4), "AAAA": (1, 1), "other": (2, 2)},
        )
        self.assertTrue(all(seconds > 0 for _, _, seconds in durations.values()))


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
        a, aaaa = tally.key(tally.kind(1, 0), 0, 40, 60), tally.key(tally.kind(28, 0), 0, 40, 72)
        owner.settle([a] * 4, 4 * 1500, "udp", 160, 240)  # 1.5 µs each
        owner.settle([a, a, aaaa], 3 * 1000, "udp", 120, 192)  # 1 µs each
        owner.settle([a], 20 * 10**9, "udp", 40, 60)
        durations = owner.durations()
        cumulative, count, seconds = durations["A"]
        self.assertEqual(cumulative[:3], [2, 6, 6])
        self.assertEqual((cumulative[-1], count), (6, 7))
        self.assertEqual(seconds, (6000 + 2000 + 20 * 10**9) / 1e9)
        self.assertEqual(durations["AAAA"][:2], ([1] * tally.BUCKETS, 1))

    def test_sizes(self):
        """
        CoreDNS's size buckets: each holds sizes up to its bound; the sums
        are the bytes given.
        """
        owner = tally.DnsTally(ZONE)
        answers = [tally.key(tally.kind(1, 0), tally.LANES["udp", "1"], q, r) for q, r in ((0, 100), (101, 511), (512, 65535))]
        owner.settle(answers, 3000, "udp", 613, 66146)
        owner.settle([tally.key(tally.kind(1, 0), tally.LANES["tcp", "2"], 64000, 64001)], 1000, "tcp", 64000, 64001)
        requests, responses = owner.sizes()
        bounds = tally.SIZE_BOUNDS
        self.assertEqual(requests["udp"][1:], (3, 613))
        self.assertEqual(
            dict(zip(bounds, requests["udp"][0])),
            {0: 1, 100: 1, 200: 2, 300: 2, 400: 2, 511: 2, 1023: 3, 2047: 3, 4095: 3, 8291: 3,
             16000: 3, 32000: 3, 48000: 3, 64000: 3},
        )
        self.assertEqual(dict(zip(bounds, responses["udp"][0]))[511], 2)
        self.assertEqual(responses["udp"][0][-1], 2)  # 65535 only in +Inf
        self.assertEqual(responses["udp"][1:], (3, 66146))
        self.assertEqual(requests["tcp"][0][-1], 1)
        self.assertEqual(responses["tcp"][0][-1], 0)

    def test_lanes(self):
        owner = tally.DnsTally(ZONE)
        owner.settle([tally.key(tally.kind(1, 0), tally.lane("udp", "127.0.0.1"), 40, 60)] * 2, 10, "udp", 80, 120)
        owner.settle([tally.key(tally.kind(1, 3), tally.lane("tcp", "::1"), 40, 60)], 10, "tcp", 40, 60)
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
        self.registry.register(DnsCollector(self.dns, lambda: "dns://:53"))
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
        self.dns.settle([tally.key(tally.kind(28, 0), tally.lane("udp", "::1"), 40, 80)], 2500, "udp", 40, 80)
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
        self.assertEqual(value(page, histogram + "_count", zone=ZONE, type="AAAA"), 1)
        self.assertEqual(value(page, histogram + "_sum", zone=ZONE, type="AAAA"), 2.5e-06)
        self.assertEqual(value(page, histogram + "_bucket", zone=ZONE, type="AAAA", le="2.048e-06"), 0)
        self.assertEqual(value(page, histogram + "_bucket", zone=ZONE, type="AAAA", le="4.096e-06"), 1)

