"""
Hostile DNS traffic against a live node with a real etcd on loopback: the
node's lease and its answers must survive it.  The load runs in a process
of its own (tests/flood.py), so what is measured is the node's reactor;
a well-behaved client asks meanwhile from a thread.
"""

import os
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from idetcd import IdetcdService
from idetcd.dns import _wire as wire
from tests.etcdserver import start_etcd
from tests.inprocess import COREFILE
from tests.traffic import NodeTraffic

LEASE = 3
# The bound on the server's CPU for one pointer-chain query.
CHAIN_CPU = 0.010
UDP_RATE = 8000


class HostileTrafficTests(NodeTraffic, unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        etcd = yield start_etcd(self)
        text = COREFILE.format(endpoints=etcd.client_url, lease=LEASE, address=1)
        self.node = IdetcdService.from_corefile(
            reactor, text=text, state_dir=os.path.abspath(self.mktemp())
        )
        self.node.startService()
        self.addCleanup(lambda: self.node.stopService() if self.node.running else None)
        self.name = yield self.node.when_claimed()

    def count_formerr(self):
        """
        A list that gets one entry per query the node found malformed.
        """
        malformed = []
        read_query = wire.read_query

        def counting(data):
            try:
                return read_query(data)
            except wire.FormatError:
                malformed.append(len(data))
                raise

        self.patch(wire, "read_query", counting)
        return malformed

    @defer.inlineCallbacks
    def test_pointer_chains(self):
        """
        The pointer-chain queries, 64 KB over TCP and 8 KB over UDP, get
        FORMERR for well under 10 ms of the node's CPU each, and a client
        asking meanwhile over UDP is answered at once.
        """
        malformed = self.count_formerr()
        cpu = time.thread_time()
        counts = yield self.flood("--chain", "tcp", "--count", 40)
        spent = time.thread_time() - cpu
        self.assertEqual(counts, {"sent": 40, "rcode 1": 40})
        self.assertEqual(len(malformed), 40)
        self.assertLess(spent / len(malformed), CHAIN_CPU)

        del malformed[:]
        stop = self.probing()
        cpu = time.thread_time()
        try:
            counts = yield self.flood("--chain", "udp", "--count", 3000)
        finally:
            outcomes = yield stop()
        spent = time.thread_time() - cpu
        self.assertGreater(len(malformed), 300)
        self.assertEqual(set(counts), {"sent", "rcode 1"})
        self.assertGreater(counts["rcode 1"], 300)
        self.assertLess(spent / len(malformed), CHAIN_CPU)
        self.assertGreater(len(outcomes), 5)
        self.assertTrue(all(answered for answered, _ in outcomes), outcomes)
        latencies = sorted(seconds for _, seconds in outcomes)
        self.assertLess(latencies[len(latencies) // 2], 0.1)

    @defer.inlineCallbacks
    def test_flood_keeps_the_lease(self):
        """
        200 TCP connections pipelining without reading plus 8,000 UDP
        queries a second (the rate that overflowed the old receive buffer),
        for three lease periods: the node keeps its key on the same lease,
        and a client asking meanwhile gets answers.
        """
        key = self.node.claimer._key(self.name)
        (before,), _ = yield self.node.client.range(key)
        stop = self.probing()
        try:
            counts = yield self.flood(
                "--seconds", 3 * LEASE, "--tcp", 200, "--udp", "--rate", UDP_RATE
            )
        finally:
            outcomes = yield stop()
        self.assertEqual(counts["tcp connections"], 200)
        self.assertGreater(counts["udp sent"], 0.5 * 3 * LEASE * UDP_RATE)
        self.assertGreater(counts["tcp bytes sent"], 200 * 1000)
        (after,), _ = yield self.node.client.range(key)
        self.assertEqual((after.lease, after.create_revision), (before.lease, before.create_revision))
        self.assertEqual((self.node.held_name, self.node.claimer.lease), (self.name, before.lease))
        answered = [ok for ok, _ in outcomes]
        self.assertGreater(len(answered), 10)
        self.assertGreaterEqual(answered.count(True), 0.9 * len(answered))
