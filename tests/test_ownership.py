"""
"Never two nodes on one name", with real node processes: shared
identities, a frozen node, checked by a watcher of etcd's own history.
"""

import os
import shutil
import signal

import dns.rcode
from twisted.internet import defer, reactor

from idetcd.etcd import EtcdClient, prefix_range_end
from idetcd.members._registry import DEAD
from tests.dnsclient import query
from tests.faultproxy import FaultProxy
from tests.holdings import Holdings
from tests.memberdata import PREFIX
from tests.nodes import COREFILE, NodeProcessCase
from tests.waiting import sleep

SHARED_NODE = COREFILE.replace("        address 127.0.0.1\n", "        address 127.0.0.1\n        node shared\n")


class OwnershipCase(NodeProcessCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield NodeProcessCase.setUp(self)
        self.client = EtcdClient([self.etcd.client_url], reactor)
        self.addCleanup(self.client.close)
        self.holdings = yield Holdings.watch(self, self.client)

    @defer.inlineCallbacks
    def assert_held_throughout(self, nodes, names, seconds):
        """
        For C{seconds}, each node keeps its name on one lease, and etcd
        never sees a key put by two leases.
        """
        leases = dict(self.holdings.holder)
        yield sleep(seconds)
        self.assertEqual(self.holdings.collisions, [])
        self.assertEqual(self.holdings.holder, leases)
        self.assertEqual(self.holdings.deletes, [])
        for node, name in zip(nodes, names):
            self.assertEqual(node.output.count(b"claimed "), 1, node.output.decode())
            self.assertNotIn(b"no longer holding", node.output)
            reply = yield query(node.port, name)
            self.assertEqual(reply.rcode(), dns.rcode.NOERROR)


class SharedNodeSettingTests(OwnershipCase):
    COREFILE = SHARED_NODE

    @defer.inlineCallbacks
    def test_one_node_setting_on_two_hosts(self):
        """
        The 'node' directive written in a Corefile shared by two hosts: the
        two nodes hold two names and never take one from each other.
        """
        nodes = [self.start_node(), self.start_node()]
        names = yield defer.gatherResults([self.wait_claimed(node) for node in nodes])
        self.assertEqual(sorted(names), ["worker1.tf.local.", "worker2.tf.local."])
        yield self.assert_held_throughout(nodes, names, 10)  # more than three leases


class ClonedStateTests(OwnershipCase):
    @defer.inlineCallbacks
    def test_cloned_state_directory(self):
        """
        A state directory copied from a live node (a cloned machine image):
        the copy's node finds the name it remembers held on a lease that is
        being renewed, leaves it alone, takes a fresh identity and says so.
        """
        state = os.path.abspath(self.mktemp())
        first = self.start_node(state)
        name = yield self.wait_claimed(first)
        clone = os.path.abspath(self.mktemp())
        shutil.copytree(state, clone)
        second = self.start_node(clone)
        other = yield self.wait_claimed(second)
        self.assertEqual((name, other), ("worker1.tf.local.", "worker2.tf.local."))
        self.assertIn(b"another live node uses this node's identity", second.output)
        with open(os.path.join(state, "node-id")) as a, open(os.path.join(clone, "node-id")) as b:
            self.assertNotEqual(a.read(), b.read())
        yield self.assert_held_throughout([first, second], [name, other], 10)


class FrozenNodeTests(OwnershipCase):
    COREFILE = COREFILE.replace("lease {$LEASE:3}", "lease 10")

    @defer.inlineCallbacks
    def test_stall_shorter_than_the_lease_deletes_nothing(self):
        """
        A node frozen (SIGSTOP) for less than its lease minus a keepalive
        period keeps its key and lease, and the other node answers for it
        all along.  (Frozen past half its lease, it may be marked dead
        meanwhile: it takes the mark back once thawed.)
        """
        frozen, other = self.start_node(), self.start_node()
        names = yield defer.gatherResults([self.wait_claimed(frozen), self.wait_claimed(other)])
        frozen.process.signalProcess(signal.SIGSTOP)
        try:
            for _ in range(30):  # 6 s
                reply = yield query(other.port, names[0])
                self.assertEqual(reply.rcode(), dns.rcode.NOERROR)
                yield sleep(0.2)
        finally:
            frozen.process.signalProcess(signal.SIGCONT)
        yield self.assert_held_throughout([frozen, other], names, 4)
        marks, _ = yield self.client.range(PREFIX + DEAD, prefix_range_end(PREFIX + DEAD))
        self.assertEqual(marks, [])


class SlowEtcdTests(OwnershipCase):
    COREFILE = COREFILE.replace("lease {$LEASE:3}", "lease 9")

    @defer.inlineCallbacks
    def test_replies_three_seconds_late_keep_the_name(self):
        """
        An etcd that answers every request 3 s late (a loaded disk, a long
        link) but answers: keepalives go out every 3 s from their send
        times and may take 4.5 s, so the node keeps its name and lease.
        """
        proxy = FaultProxy(int(self.etcd.client_url.rsplit(":", 1)[1]))
        proxy.start()
        self.addCleanup(proxy.close)
        node = self.start_node(ETCD_URL=proxy.url)
        other = self.start_node()
        names = yield defer.gatherResults([self.wait_claimed(node), self.wait_claimed(other)])
        before = dict(self.holdings.holder)
        proxy.delay(1.5)  # each way: every reply 3 s after its request
        for _ in range(30):
            reply = yield query(other.port, names[0])
            self.assertEqual(reply.rcode(), dns.rcode.NOERROR)
            yield sleep(1)
        self.assertNotIn(b"not renewed in time", node.output)
        self.assertEqual(self.holdings.holder, before)
        yield self.assert_held_throughout([node, other], names, 0)
