"""
What a node cut off from etcd answers: real ``twistd idetcd`` processes on a
real etcd, one of them behind a fault proxy, asked by dnspython.
"""

import dns.edns
import dns.message
import dns.query
import dns.rcode
from twisted.internet import defer, reactor, threads

from idetcd.etcd import EtcdClient, prefix_range_end
from idetcd.members._record import Member
from tests import nodes
from tests.faultproxy import FaultProxy
from tests.nodes import NodeProcessCase
from tests.waiting import sleep

LEASE = 3
TTL = 60
PREFIX = b"/idetcd/"
COREFILE = nodes.COREFILE.replace("lease {$LEASE:3}", f"lease {LEASE}\n        ttl {TTL}").replace(
    "address 127.0.0.1", "address {$ADDRESS}"
)
CUT_OFF = "127.0.0.1"
NEWCOMER = "127.0.0.2"
STATIC = Member("static.tf.local.", ("127.0.0.3",))


def ask(port, name, edns):
    message = dns.message.make_query(name, "A", use_edns=0 if edns else None)
    return threads.deferToThread(dns.query.udp, message, "127.0.0.1", timeout=2, port=port)


def codes(reply):
    return [(option.otype, option.code) for option in reply.options]


class CutOffTests(NodeProcessCase):
    COREFILE = COREFILE

    @defer.inlineCallbacks
    def setUp(self):
        yield NodeProcessCase.setUp(self)
        self.proxy = FaultProxy(self.etcd.client_port)
        self.proxy.start()
        self.addCleanup(self.proxy.close)
        self.client = EtcdClient([self.etcd.client_url], reactor)
        self.addCleanup(self.client.close)

    @defer.inlineCallbacks
    def held(self, name):
        """
        The lease that holds C{name} in etcd, or None.
        """
        kvs, _ = yield self.client.range(PREFIX, prefix_range_end(PREFIX))
        return {kv.key: kv.lease for kv in kvs}.get(PREFIX + name.encode())

    @defer.inlineCallbacks
    def assertAnswer(self, port, name, address, ttl, stale):
        for edns in (True, False):
            reply = yield ask(port, name, edns)
            self.assertEqual(reply.rcode(), dns.rcode.NOERROR, reply)
            self.assertEqual([r.address for r in reply.answer[0]], [address])
            self.assertLessEqual(reply.answer[0].ttl, ttl)
            self.assertEqual(codes(reply), [(dns.edns.EDE, 3)] if stale and edns else [])

    @defer.inlineCallbacks
    def assertUnvouched(self, port, name):
        for edns in (True, False):
            reply = yield ask(port, name, edns)
            self.assertEqual(reply.rcode(), dns.rcode.SERVFAIL, reply)
            self.assertEqual(reply.answer, [])
            self.assertEqual(codes(reply), [(dns.edns.EDE, 22)] if edns else [])

    @defer.inlineCallbacks
    def test_partitioned_while_its_slot_is_taken(self):
        """
        A node cut off from etcd for twice its lease while another node
        takes its slot never answers its former name with its own address
        once etcd has let the name go: SERVFAIL, so a resolver asks the
        next node.  What else it knew it answers as stale, TTL capped at
        30 s, marked for EDNS clients.  Healed, it answers the new holder.
        """
        yield self.client.put(PREFIX + STATIC.name.encode(), STATIC.to_value())
        cut_off = self.start_node(ETCD_URL=self.proxy.url, ADDRESS=CUT_OFF)
        name = yield self.wait_claimed(cut_off)
        lease = yield self.held(name)
        yield self.assertAnswer(cut_off.port, name, CUT_OFF, TTL, stale=False)

        self.proxy.blackhole()
        partitioned = reactor.seconds()
        for _ in range(200):
            if (yield self.held(name)) != lease:
                break
            yield sleep(0.1)
        else:
            self.fail(f"etcd kept {name} on lease {lease:x}")
        newcomer = self.start_node(ADDRESS=NEWCOMER)
        self.assertEqual((yield self.wait_claimed(newcomer)), name)
        yield self.assertAnswer(newcomer.port, name, NEWCOMER, TTL, stale=False)

        # From etcd's expiry of its lease to twice the lease and beyond.
        while True:
            yield self.assertUnvouched(cut_off.port, name)
            yield self.assertAnswer(cut_off.port, STATIC.name, "127.0.0.3", 30, stale=True)
            if reactor.seconds() > partitioned + 2 * LEASE:
                break
            yield sleep(0.2)
        yield self.assertUnvouched(cut_off.port, "worker3.tf.local.")

        self.proxy.restore()
        for _ in range(300):
            reply = yield ask(cut_off.port, name, edns=True)
            if reply.rcode() == dns.rcode.NOERROR and not codes(reply):
                break
            yield sleep(0.1)
        yield self.assertAnswer(cut_off.port, name, NEWCOMER, TTL, stale=False)
        yield self.assertAnswer(cut_off.port, STATIC.name, "127.0.0.3", TTL, stale=False)
        self.assertIn(b"etcd heard from again", cut_off.output)
