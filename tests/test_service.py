"""
The node service embedded in-process, as an application would use it, with
real etcd servers and a real DNS client.
"""

import ipaddress
import os
import socket

import dns.rcode
from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from idetcd import ClusterSpec, IdetcdService, StateDirectoryBusy
from idetcd.claim._announcement import announced_address
from idetcd.etcd import EtcdClient, prefix_range_end
from tests.dnsclient import query
from tests.etcdserver import start_etcd, start_etcd_cluster
from tests.inprocess import COREFILE
from tests.waiting import sleep, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServiceTests(unittest.TestCase):
    timeout = 120

    def node(self, endpoints, state=None, lease=3, address=1):
        text = COREFILE.format(endpoints=" ".join(endpoints), lease=lease, address=address)
        node = IdetcdService.from_corefile(
            reactor, text=text, state_dir=state or os.path.abspath(self.mktemp())
        )
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        return node

    @defer.inlineCallbacks
    def answers(self, node, name):
        reply = yield query(node.dns.port, name)
        if reply.rcode() != dns.rcode.NOERROR:
            return dns.rcode.to_text(reply.rcode())
        return [rr.address for rr in reply.answer[0]] if reply.answer else []

    @defer.inlineCallbacks
    def test_quick_start_corefile_with_embedded_etcd(self):
        """
        Corefile.sample runs with nothing else running: a private etcd is
        started, and stopped with the node.
        """
        with open(os.path.join(ROOT, "Corefile.sample")) as f:
            text = f.read().replace(".:1053", ".:0")
        node = IdetcdService.from_corefile(reactor, text=text, state_dir=os.path.abspath(self.mktemp()))
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        name = yield node.when_claimed()
        self.assertEqual(name, "worker1.tf.local.")
        self.assertEqual(node.held_name, name)
        self.assertEqual(list(node.members), [name])
        self.assertEqual(node.members[name].ipv4, ("127.0.0.1",))
        addresses = yield self.answers(node, "WORKER1.tf.local")
        self.assertEqual(addresses, ["127.0.0.1"])
        yield node.stopService()
        self.assertTrue(node.etcd._protocol.ended.called)

    @defer.inlineCallbacks
    def test_restart_gets_the_previous_name(self):
        etcd = yield start_etcd(self)
        states = [os.path.abspath(self.mktemp()) for _ in range(2)]
        first = [self.node([etcd.client_url], state) for state in states]
        names = yield defer.gatherResults([node.when_claimed() for node in first])
        yield defer.gatherResults([node.stopService() for node in first])
        # Started the other way round, each gets its own name back.
        second = [self.node([etcd.client_url], state) for state in reversed(states)]
        again = yield defer.gatherResults([node.when_claimed() for node in second])
        self.assertEqual(list(reversed(again)), names)

    @defer.inlineCallbacks
    def test_embedded_in_an_application_and_started_again(self):
        """
        The README's recipe: a node under an application's service tree
        leaves it cleanly while holding a name, and a stopped node starts
        again with the same name.
        """
        from twisted.application.service import MultiService

        etcd = yield start_etcd(self)
        app = MultiService()
        node = self.node([etcd.client_url])
        node.setServiceParent(app)
        name = yield node.when_claimed()
        yield node.disownServiceParent()
        self.assertEqual(list(app), [])
        yield node.stopService()
        self.assertIsNone(node.held_name)
        client = EtcdClient([etcd.client_url], reactor)
        self.addCleanup(client.close)
        kvs, _ = yield client.range(b"/idetcd/", prefix_range_end(b"/idetcd/"))
        self.assertEqual(kvs, [])
        node.startService()
        self.assertEqual((yield node.when_claimed()), name)
        addresses = yield self.answers(node, name)
        self.assertEqual(addresses, ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_parts_are_named_children_in_start_order(self):
        """
        An embedding application sees the node's parts as its children, in
        the order they start (they stop in reverse: the claimer first,
        while the etcd client is still open, so the name is given back).
        """
        etcd = yield start_etcd(self)
        node = self.node([etcd.client_url])
        yield node.when_claimed()
        self.assertEqual(
            [child.name for child in node],
            ["etcd-client", "registry", "dns", "identity", "claimer", "freshness", "look-after"],
        )
        self.assertTrue(all(child.running for child in node))
        self.assertIs(node.getServiceNamed("claimer"), node.claimer)
        self.assertIs(node.getServiceNamed("freshness"), node.freshness)
        self.assertIs(node.getServiceNamed("dns"), node.dns)
        self.assertEqual(node.getServiceNamed("identity").member.ipv4, ("127.0.0.1",))
        yield node.stopService()
        self.assertFalse(any(child.running for child in node))
        client = EtcdClient([etcd.client_url], reactor)
        self.addCleanup(client.close)
        kvs, _ = yield client.range(b"/idetcd/", prefix_range_end(b"/idetcd/"))
        self.assertEqual(kvs, [])

    @defer.inlineCallbacks
    def test_a_taken_port_fails_the_start_and_leaves_nothing_behind(self):
        """
        A taken HTTP port fails the start at once, before anything talks to
        etcd; the DNS port bound before it and the state directory are let
        go, so the same node starts once the port is free.
        """
        etcd = yield start_etcd(self)
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        text = COREFILE.format(endpoints=etcd.client_url, lease=3, address=1).replace(
            "    idetcd {", f"    ready 127.0.0.1:{port}\n    idetcd {{"
        )
        state = os.path.abspath(self.mktemp())
        node = IdetcdService.from_corefile(reactor, text=text, state_dir=state)
        self.assertRaises(CannotListenError, node.startService)
        self.assertFalse(node.running)
        self.assertFalse(node.dns._listening)
        taken.close()
        yield sleep(0)  # the DNS sockets close at the reactor's next turn
        node.startService()
        self.addCleanup(node.stopService)
        self.assertEqual((yield node.when_claimed()), "worker1.tf.local.")

    @defer.inlineCallbacks
    def test_two_live_nodes_never_share_a_state_directory(self):
        etcd = yield start_etcd(self)
        state = os.path.abspath(self.mktemp())
        node = self.node([etcd.client_url], state)
        yield node.when_claimed()
        other = IdetcdService.from_corefile(
            reactor, text=COREFILE.format(endpoints=etcd.client_url, lease=3, address=2), state_dir=state
        )
        error = self.assertRaises(StateDirectoryBusy, other.startService)
        self.assertIn(state, str(error))

    @defer.inlineCallbacks
    def test_answers_through_an_etcd_restart(self):
        """
        While etcd is down the nodes answer from memory, never SERVFAIL;
        afterwards they hold the same names and know what etcd holds.
        """
        etcd = yield start_etcd(self)
        nodes = [self.node([etcd.client_url], address=i + 1) for i in range(2)]
        names = yield defer.gatherResults([node.when_claimed() for node in nodes])
        yield wait_for(lambda: all(len(node.members) == 2 for node in nodes))
        yield etcd.kill()
        for _ in range(10):
            for node in nodes:
                for i, name in enumerate(names):
                    addresses = yield self.answers(node, name)
                    self.assertEqual(addresses, [f"127.0.0.{i + 1}"])
            yield sleep(0.1)
        etcd.running = 0
        yield etcd.startService()
        yield sleep(4)  # more than the lease TTL
        self.assertEqual([node.held_name for node in nodes], names)
        kvs, _ = yield nodes[0].client.range(b"/idetcd/", prefix_range_end(b"/idetcd/"))
        held = sorted(kv.key.decode()[len("/idetcd/"):] for kv in kvs)
        self.assertEqual(held, sorted(names))
        for node in nodes:
            self.assertEqual(sorted(node.members), held)

    @defer.inlineCallbacks
    def test_etcd_member_loss_keeps_names(self):
        """
        With a three-member etcd, killing the member a node talks to moves
        it to another; no name changes and answers go on.
        """
        members = yield start_etcd_cluster(self)
        endpoints = [etcd.client_url for etcd in members]
        nodes = [self.node(endpoints, address=i + 1) for i in range(2)]
        names = yield defer.gatherResults([node.when_claimed() for node in nodes])
        victim = next(etcd for etcd in members if etcd.client_url == nodes[0].client.endpoint)
        yield victim.kill()
        for _ in range(25):  # 5 s, more than the 3 s lease
            for node in nodes:
                addresses = yield self.answers(node, names[1])
                self.assertEqual(addresses, ["127.0.0.2"])
            yield sleep(0.2)
        self.assertEqual([node.held_name for node in nodes], names)
        self.assertNotEqual(nodes[0].client.endpoint, victim.client_url)
        yield self.node(endpoints, address=3).when_claimed()
        yield wait_for(lambda: all(len(node.members) == 3 for node in nodes))

    @defer.inlineCallbacks
    def test_slots_when_members_and_subscriptions(self):
        """
        The embedding API: a node's slot, a barrier on members, and the
        names that change; waits still pending end when the node stops.
        """
        etcd = yield start_etcd(self)
        first = self.node([etcd.client_url])
        changes = []
        unsubscribe = first.subscribe(changes.append)
        three = first.when_members(3)
        too_many = first.when_members(4, role="worker")
        others = [self.node([etcd.client_url], address=i) for i in (2, 3)]
        yield defer.gatherResults([node.when_claimed() for node in [first] + others])
        members = yield three
        self.assertEqual([m.name for m in members], [f"worker{i}.tf.local." for i in (1, 2, 3)])
        self.assertEqual(sorted(node.slot for node in [first] + others), [1, 2, 3])
        self.assertEqual(first.members[first.held_name].slot, first.slot)
        self.assertEqual(ClusterSpec.of(members, first.held_name).index, first.slot - 1)
        yield wait_for(lambda: set().union(*changes) == {m.name for m in members})
        self.assertTrue(all(changes))

        leaving = others[0].held_name
        yield others[0].stopService()
        yield wait_for(lambda: leaving in changes[-1])
        self.assertNotIn(leaving, first.members)
        unsubscribe()
        seen = len(changes)
        yield others[1].stopService()
        yield wait_for(lambda: len(first.members) == 1)
        self.assertEqual(len(changes), seen)

        self.assertFalse(too_many.called)
        yield first.stopService()
        yield self.assertFailure(too_many, defer.CancelledError)
        self.assertIsNone(first.slot)


class AnnouncedAddressTests(unittest.TestCase):
    def test_local_etcd_announces_the_default_route_address(self):
        """
        For an etcd on this machine (the original Corefile's 127.0.0.1),
        loopback would be useless to other nodes: the default route's source
        address is announced, and loopback only on a machine with no route.
        """
        address = ipaddress.ip_address(announced_address("127.0.0.1", socket.AF_INET))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("192.0.2.1", 9))
                routed = s.getsockname()[0]
        except OSError:
            routed = "127.0.0.1"
        self.assertEqual(str(address), routed)
        self.assertEqual(address.is_loopback, routed.startswith("127."))
