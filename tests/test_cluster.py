"""
Whole nodes: real ``twistd -n idetcd`` processes on loopback against a real
etcd, checked with a real DNS client.
"""

import os
import re
import signal

import dns.flags
import dns.rcode
import dns.rdatatype
from twisted.internet import defer, reactor

from idetcd.common import EXIT_UNAVAILABLE
from idetcd.etcd import EtcdClient, prefix_range_end
from idetcd.members._registry import dead_key
from tests.dnsclient import query
from tests.nodes import COREFILE, NodeProcessCase
from tests.waiting import sleep


class ClusterTests(NodeProcessCase):

    @defer.inlineCallbacks
    def test_every_node_answers_for_every_node(self):
        nodes = [self.start_node() for _ in range(3)]
        names = yield defer.gatherResults([self.wait_claimed(node) for node in nodes])
        self.assertEqual(sorted(names), ["worker1.tf.local.", "worker2.tf.local.", "worker3.tf.local."])
        for node in nodes:
            self.assertRegex(node.output, rb"claimed worker\d\.tf\.local\. \(slot \d\) with lease [0-9a-f]+ \(TTL 3s\)")
            for name in names:
                for tcp in (False, True):
                    reply = yield query(node.port, name, tcp=tcp)
                    self.assertEqual(reply.rcode(), dns.rcode.NOERROR)
                    self.assertEqual([rr.address for rr in reply.answer[0]], ["127.0.0.1"])

        # An unknown name in the zone: NXDOMAIN with the SOA, authoritatively.
        reply = yield query(nodes[0].port, "worker9.tf.local.")
        self.assertEqual(reply.rcode(), dns.rcode.NXDOMAIN)
        self.assertTrue(reply.flags & dns.flags.AA)
        self.assertEqual(reply.authority[0].rdtype, dns.rdatatype.SOA)

        # A fourth node finds no free slot and exits, saying why.
        late = self.start_node()
        status = yield late.ended
        self.assertEqual(status, EXIT_UNAVAILABLE)
        self.assertIn(b"all 3 slots of pattern 'worker{{.ID}}.tf.local.' are taken", late.output)
        # Its empty lease is revoked before it exits, not left to expire.
        self.assertNotIn(b"could not revoke", late.output)

        # A node stopped with SIGTERM gives its name back; the others stop
        # answering for it within a second.
        leaving = nodes[1]
        gone = names[1]
        leaving.process.signalProcess(signal.SIGTERM)
        stopped_at = reactor.seconds()
        yield leaving.ended
        # twistd stops cleanly, then ends itself with the signal it got.
        self.assertEqual((leaving.status, leaving.signal), (None, signal.SIGTERM))
        self.assertIn(f"released {gone}".encode(), leaving.output)
        for node in (nodes[0], nodes[2]):
            while True:
                reply = yield query(node.port, gone)
                if reply.rcode() == dns.rcode.NXDOMAIN:
                    break
                self.assertLess(reactor.seconds() - stopped_at, 1.0, f"{gone} still answered")
                yield sleep(0.02)
        self.assertLess(reactor.seconds() - stopped_at, 1.0)

    @defer.inlineCallbacks
    def test_crashed_node_restarted_gets_its_name_at_once(self):
        """
        A node killed without a chance to release its name, restarted with
        its state before its lease runs out, takes its own key over at once:
        no wait for the expiry, no second slot.
        """
        state = os.path.abspath(self.mktemp())
        first = self.start_node(state, LEASE="60")
        other = self.start_node(LEASE="60")
        name = yield self.wait_claimed(first)
        yield self.wait_claimed(other)
        first.process.signalProcess(signal.SIGKILL)
        yield first.ended
        started = reactor.seconds()
        again = self.start_node(state, LEASE="60")
        self.assertEqual((yield self.wait_claimed(again)), name)
        self.assertLess(reactor.seconds() - started, 30)
        client = EtcdClient([self.etcd.client_url], reactor)
        self.addCleanup(client.close)
        kvs, _ = yield client.range(b"/idetcd/", prefix_range_end(b"/idetcd/"))
        self.assertEqual(len(kvs), 2)
        reply = yield query(other.port, name)
        self.assertEqual(reply.rcode(), dns.rcode.NOERROR)


class ReplacementTests(NodeProcessCase):
    """
    A machine replacing a dead one, with a fresh state directory, while the
    dead node's lease still runs.  Lease 10: a dead holder is marked dead
    once under 5 s are left, which leaves a fresh node time to start
    before the key is gone.
    """

    COREFILE = COREFILE.replace("limit 3", "limit 8").replace("lease {$LEASE:3}", "lease 10")

    @defer.inlineCallbacks
    def start_four(self):
        """
        Four nodes holding worker1 to worker4; returns them by name.
        """
        nodes = [self.start_node() for _ in range(4)]
        names = yield defer.gatherResults([self.wait_claimed(node) for node in nodes])
        self.assertEqual(sorted(names), [f"worker{slot}.tf.local." for slot in range(1, 5)])
        client = EtcdClient([self.etcd.client_url], reactor)
        self.addCleanup(client.close)
        return dict(zip(names, nodes)), client

    @defer.inlineCallbacks
    def test_fresh_node_takes_the_dead_nodes_slot(self):
        """
        kill -9 the holder of worker2; once worker3 has marked it dead, a
        fresh node waits for its lease to end and takes worker2, not
        worker5, and says why it waits.
        """
        nodes, client = yield self.start_four()
        nodes["worker2.tf.local."].process.signalProcess(signal.SIGKILL)
        yield nodes["worker2.tf.local."].ended
        for _ in range(50):  # marked within 6 s
            kvs, _ = yield client.range(dead_key(b"/idetcd/", "worker2.tf.local."))
            if kvs:
                break
            yield sleep(0.2)
        else:
            self.fail("worker2 was never marked dead")
        fresh = self.start_node()
        self.assertEqual((yield self.wait_claimed(fresh)), "worker2.tf.local.")
        waited = re.search(
            rb"waiting up to (\d+)s for worker2\.tf\.local\., whose holder stopped renewing its lease, "
            rb"rather than taking worker5\.tf\.local\.",
            fresh.output,
        )
        self.assertIsNotNone(waited, fresh.output.decode())
        # Half of 10 s, and the margin.
        self.assertEqual(int(waited.group(1)), 5 + 2)
        held, _ = yield client.range(b"/idetcd/", prefix_range_end(b"/idetcd/"))
        self.assertEqual(sorted(kv.key for kv in held), [b"/idetcd/worker%d.tf.local." % slot for slot in range(1, 5)])

    @defer.inlineCallbacks
    def test_fresh_node_behind_live_holders_takes_the_next_slot_at_once(self):
        yield self.start_four()
        fresh = self.start_node()
        self.assertEqual((yield self.wait_claimed(fresh)), "worker5.tf.local.")
        self.assertNotIn(b"waiting up to", fresh.output)
