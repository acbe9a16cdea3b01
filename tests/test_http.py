"""
The health and ready endpoints of a node embedded in-process, against a real
etcd reached through a fault proxy, checked with a real HTTP client.
"""

import json
import os

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest

from idetcd import IdetcdService
from idetcd.etcd import prefix_range_end
from idetcd.node._http import HttpEndpoint
from tests.dnsclient import query
from tests.etcdserver import start_etcd_cluster
from tests.faultproxy import FaultProxy
from tests.httpendpoints import COREFILE, HttpGetter, NodeHttpTestCase
from tests.peerproxy import PeerNetwork
from tests.waiting import sleep

PREFIX = b"/idetcd/"


class _Idle(protocol.Protocol):
    """
    A client connection that sends nothing and reports when it is closed.
    """

    def __init__(self):
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        self.lost.callback(None)


class HttpEndpointTests(NodeHttpTestCase):
    @defer.inlineCallbacks
    def ready(self, node):
        code, body = yield self.http.get(self.url(node, "ready"))
        return code, json.loads(body)

    @defer.inlineCallbacks
    def wait_ready(self, node, ready, timeout=30):
        """
        Poll /ready until its "ready" is C{ready}; fire with the last body.
        """
        for _ in range(int(timeout / 0.1)):
            code, body = yield self.ready(node)
            self.assertEqual(code, 200 if body["ready"] else 503, body)
            if body["ready"] == ready:
                return body
            yield sleep(0.1)
        self.fail(f"/ready did not become {ready} in {timeout}s: {body}")

    @defer.inlineCallbacks
    def held_lease(self, name):
        kvs, _ = yield self.client.range(PREFIX, prefix_range_end(PREFIX))
        leases = {kv.key.decode(): kv.lease for kv in kvs}
        return leases.get(PREFIX.decode() + name)

    @defer.inlineCallbacks
    def test_ready_follows_the_claim(self):
        """
        /health is 200 throughout; /ready is 503 saying why until the node
        has read etcd and claimed, 200 with the name, slot and lease etcd
        holds after, and 503 again once the lease is gone.
        """
        self.proxy.cut()
        node = self.node("health 127.0.0.1:0\n    ready 127.0.0.1:0")
        code, body = yield self.http.get(self.url(node, "health"))
        self.assertEqual((code, body), (200, b"OK"))
        code, body = yield self.ready(node)
        self.assertEqual(
            (code, body),
            (503, {"ready": False, "waiting": ["registry: first read from etcd", "name: claiming"]}),
        )

        self.proxy.restore()
        body = yield self.wait_ready(node, True)
        self.assertEqual((body["name"], body["slot"]), ("worker1.tf.local.", 1))
        lease = yield self.held_lease(body["name"])
        self.assertEqual(body["lease"], f"{lease:x}")

        # Cut off from etcd, the node cannot renew; its lease is revoked
        # meanwhile.  Once the lease could have expired, it is not ready.
        self.proxy.cut()
        yield self.client.lease_revoke(lease)
        body = yield self.wait_ready(node, False, timeout=20)
        self.assertEqual(body, {"ready": False, "waiting": ["name: claiming"]})
        code, text = yield self.http.get(self.url(node, "health"))
        self.assertEqual((code, text), (200, b"OK"))

        # Back in touch, it claims again, on a new lease.
        self.proxy.restore()
        body = yield self.wait_ready(node, True)
        self.assertEqual(body["name"], "worker1.tf.local.")
        self.assertNotEqual(body["lease"], f"{lease:x}")
        self.assertEqual(body["lease"], f"{(yield self.held_lease(body['name'])):x}")

    @defer.inlineCallbacks
    def test_other_paths_and_methods(self):
        node = self.node("health 127.0.0.1:0\n    ready 127.0.0.1:0")
        yield node.when_claimed()
        base = self.url(node, "ready").rsplit("/", 1)[0]
        for path in ("", "health", "ready/x", "ready/", "ready/dns/x", "metrics"):
            code, _ = yield self.http.get(f"{base}/{path}")
            self.assertEqual(code, 404, path)
        code, _ = yield self.http.get(self.url(node, "ready"), method="POST")
        self.assertEqual(code, 405)
        code, body = yield self.http.get(self.url(node, "ready"), method="HEAD")
        self.assertEqual((code, body), (200, b""))

    @defer.inlineCallbacks
    def test_stop_closes_the_ports_and_connections(self):
        """
        The endpoints are child services of the node: they stop with it,
        closing their ports and the connections open on them.
        """
        node = self.node("health 127.0.0.1:0\n    ready 127.0.0.1:0")
        yield node.when_claimed()
        endpoints = [service for service in node if isinstance(service, HttpEndpoint)]
        self.assertEqual(sorted(e.name for e in endpoints), ["health", "ready"])
        ports = [e.port for e in endpoints]
        idle = yield protocol.ClientCreator(reactor, _Idle).connectTCP("127.0.0.1", ports[1])
        yield node.stopService()
        self.assertFalse(any(e.running for e in endpoints))
        yield idle.lost
        for port in ports:
            with self.assertRaises(ConnectionRefusedError):
                yield protocol.ClientCreator(reactor, _Idle).connectTCP("127.0.0.1", port)

    @defer.inlineCallbacks
    def test_only_when_configured(self):
        node = self.node("")
        yield node.when_claimed()
        self.assertEqual([s for s in node if isinstance(s, HttpEndpoint)], [])
        node = IdetcdService.from_corefile(
            reactor,
            text=COREFILE.format(http="ready 127.0.0.1:0", endpoint=self.proxy.url),
            state_dir=os.path.abspath(self.mktemp()),
        )
        self.assertEqual([s.name for s in node if isinstance(s, HttpEndpoint)], ["ready"])


class ReadyWithoutEtcdTests(unittest.TestCase):
    """
    A node whose etcd never answers stays unready, and says why.
    """

    @defer.inlineCallbacks
    def test_unreachable_etcd(self):
        proxy = FaultProxy(9)  # nothing listens on the discard port
        proxy.start()
        self.addCleanup(proxy.close)
        proxy.blackhole()
        text = COREFILE.format(http="ready 127.0.0.1:0", endpoint=proxy.url)
        node = IdetcdService.from_corefile(reactor, text=text, state_dir=os.path.abspath(self.mktemp()))
        node.startService()
        self.addCleanup(node.stopService)
        http = HttpGetter(timeout=5)
        self.addCleanup(http.close)
        url = f"http://127.0.0.1:{node.getServiceNamed('ready').port}/ready"
        for _ in range(3):
            code, body = yield http.get(url)
            self.assertEqual(code, 503)
            self.assertEqual(
                json.loads(body)["waiting"], ["registry: first read from etcd", "name: claiming"]
            )
            yield sleep(0.2)


class ReadinessInQuorumLossTests(unittest.TestCase):
    """
    A node of a 3-member etcd whose peer traffic goes through proxies, so
    that the test can take the quorum away.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_dns_readiness_stays_while_the_name_readiness_drops(self):
        """
        With etcd's quorum lost, C{/ready} of every node says 503 once it
        cannot vouch for its name, while C{/ready/dns} stays 200 and each
        node answers the other's name as before: a load balancer keeps
        them.  Both are 200 again once the quorum is back.
        """
        network = PeerNetwork()
        members = yield start_etcd_cluster(self, network=network)
        text = COREFILE.format(http="ready 127.0.0.1:0", endpoint=" ".join(m.client_url for m in members))
        nodes = [
            IdetcdService.from_corefile(reactor, text=text, state_dir=os.path.abspath(self.mktemp()))
            for _ in range(2)
        ]
        for node in nodes:
            node.startService()
            self.addCleanup(lambda node=node: node.stopService() if node.running else None)
        http = HttpGetter(timeout=5)
        self.addCleanup(http.close)
        urls = [f"http://127.0.0.1:{node.getServiceNamed('ready').port}/ready" for node in nodes]
        names = yield defer.gatherResults([node.when_claimed() for node in nodes])
        for url in urls:
            yield self.wait_code(http, url, 200)
            _, body = yield self.wait_code(http, url + "/dns", 200)
            self.assertEqual(body["members"], 2)

        network.isolate(members[0].member)
        network.isolate(members[1].member)
        for url in urls:
            _, body = yield self.wait_code(http, url, 503)
            self.assertEqual(body, {"ready": False, "waiting": ["name: claiming"]})
        for _ in range(3):
            for node, url, other in zip(nodes, urls, reversed(names)):
                code, body = yield http.get(url + "/dns")
                self.assertEqual((code, json.loads(body)["ready"]), (200, True))
                reply = yield query(node.dns.port, other)
                self.assertEqual([rr.address for rr in reply.answer[0]], ["127.0.0.1"])
            yield sleep(0.5)

        network.heal()
        for url in urls:
            yield self.wait_code(http, url, 200, timeout=60)
            yield self.wait_code(http, url + "/dns", 200)

    @defer.inlineCallbacks
    def wait_code(self, http, url, code, timeout=30):
        """
        Poll C{url} until it answers C{code}; fire with the code and JSON
        body.
        """
        for _ in range(int(timeout / 0.1)):
            got, body = yield http.get(url)
            if got == code:
                return got, json.loads(body)
            yield sleep(0.1)
        self.fail(f"{url} did not answer {code} in {timeout}s: {got} {body}")
