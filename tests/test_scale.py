"""
A node over a zone of 10,000 members in a real etcd: answers, apex
replies, and membership changes whose cost does not grow with the zone.
"""

import os
import random

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from idetcd import IdetcdService
from idetcd.etcd import EtcdClient
from idetcd.members._record import Member
from tests.dnsclient import tcp_session
from tests.etcdserver import start_etcd
from tests.memberdata import address, plain_member, write_members
from tests.waiting import sleep

COREFILE = """\
tf.local.:0 {{
    bind 127.0.0.1
    idetcd {{
        endpoint {endpoint}
        prefix {prefix}
        limit 20000
        pattern worker{{{{.ID}}}}.tf.local.
        address 127.0.0.1
    }}
}}
"""


def ask(port, questions, tcp=False):
    """
    The replies to (name, type) C{questions}, asked one by one from a
    thread (dnspython blocks).
    """
    send = dns.query.tcp if tcp else dns.query.udp

    def run():
        return [
            send(dns.message.make_query(name, rdtype), "127.0.0.1", timeout=5, port=port)
            for name, rdtype in questions
        ]

    return threads.deferToThread(run)


def addresses(reply):
    if reply.rcode() != dns.rcode.NOERROR:
        return dns.rcode.to_text(reply.rcode())
    return sorted(rr.address for rrset in reply.answer for rr in rrset)


#: The same node with an SRV port, serving the reverse names of 10.0.0.0/8.
PEERS_COREFILE = COREFILE.replace("tf.local.:0 {{", "tf.local.:0 10.in-addr.arpa.:0 {{").replace(
    "address 127.0.0.1\n", "address 127.0.0.1\n        srv 2222\n"
)


def peer_member(index):
    return Member("", (address(index),), role="worker", slot=index, srv=2222)


def fitting_srv_targets(question_name, names):
    """
    The first of C{names} whose SRV records fit a 65,535-byte reply with an
    OPT: 12 bytes of header, the question, 11 of OPT; each record a pointer
    to the question, 10 bytes of type to length, 6 of priority, weight and
    port, and its target written out.
    """
    room = 65535 - 12 - (len(question_name) + 1 + 4) - 11
    used = 0
    fitting = []
    for name in names:
        used += 2 + 10 + 6 + len(name) + 1
        if used > room:
            break
        fitting.append(name)
    return fitting


class ScaleTests(unittest.TestCase):
    timeout = 600

    @defer.inlineCallbacks
    def node(self, etcd, members, corefile=COREFILE, member=plain_member):
        """
        A node over C{members} members, written into C{etcd} under a prefix
        of their own, once it holds its name (worker{members + 1}).
        """
        prefix = f"/scale{members}/"
        client = EtcdClient([etcd.client_url], reactor, timeout=60.0)
        self.addCleanup(client.close)
        yield write_members(client, prefix.encode(), members, member=member)
        text = corefile.format(endpoint=etcd.client_url, prefix=prefix)
        node = IdetcdService.from_corefile(
            reactor, text=text, state_dir=os.path.abspath(self.mktemp())
        )
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        name = yield node.when_claimed()
        self.assertEqual(name, f"worker{members + 1}.tf.local.")
        return node, client, prefix.encode()

    @defer.inlineCallbacks
    def changes(self, node, client, prefix, members):
        """
        100 single-member changes (add, change address, delete), each
        checked over DNS once the node has applied it; the replies each
        change re-encoded.
        """
        replies = node.dns._replies
        port = node.dns.port
        encoded = []
        for step in range(100):
            kind = ("add", "move", "delete")[step % 3]
            if kind == "add":
                name = f"x{step}.tf.local."
                write = client.put(prefix + name.encode(), Member("", ("10.200.0.1",)).to_value())
                expected = ["10.200.0.1"]
            elif kind == "move":
                index = 4 + (step * 7919) % (members - 3)  # not a name server
                name = f"worker{index}.tf.local."
                new = address(index, generation=step)
                write = client.put(prefix + name.encode(), Member("", (new,)).to_value())
                expected = [new]
            else:
                name = f"x{step - 2}.tf.local."
                write = client.delete(prefix + name.encode())
                expected = "NXDOMAIN"
            before = replies.encoded_count
            yield write
            _, revision = yield client.range(prefix + b"worker1.tf.local.")
            yield node.registry.when_caught_up(revision)
            encoded.append(replies.encoded_count - before)
            (reply,) = yield ask(port, [(name, "A")])
            self.assertEqual(addresses(reply), expected, (step, kind, name))
        return encoded

    @defer.inlineCallbacks
    def test_ten_thousand_members(self):
        etcd = yield start_etcd(self)
        small, small_client, small_prefix = yield self.node(etcd, 100)
        small_encoded = yield self.changes(small, small_client, small_prefix, 100)
        yield small.stopService()

        members = 10000
        node, client, prefix = yield self.node(etcd, members)
        port = node.dns.port
        self.assertEqual(len(node.members), members + 1)

        sample = random.Random(7).sample(range(1, members + 1), 200)
        replies = yield ask(port, [(f"worker{i}.tf.local", "A") for i in sample])
        self.assertEqual([addresses(r) for r in replies], [[address(i)] for i in sample])

        for tcp in (False, True):
            soa, ns, any_ = yield ask(port, [("tf.local", "SOA"), ("tf.local", "NS"), ("tf.local", "ANY")], tcp)
            for reply in (soa, ns, any_):
                self.assertTrue(reply.flags & dns.flags.AA)
                self.assertFalse(reply.flags & dns.flags.TC)
            self.assertEqual(soa.answer[0][0].serial, node.registry.revision)
            self.assertEqual(str(soa.answer[0][0].mname), "worker1.tf.local.")
            self.assertEqual(
                sorted(str(r.target) for r in ns.answer[0]),
                ["worker1.tf.local.", "worker2.tf.local.", "worker3.tf.local."],
            )
            self.assertEqual(
                {str(rrset.name) for rrset in ns.additional},
                {"worker1.tf.local.", "worker2.tf.local.", "worker3.tf.local."},
            )
            self.assertEqual(any_.answer[0].rdtype, dns.rdatatype.HINFO)

        encoded = yield self.changes(node, client, prefix, members)
        # The same changes re-encode the same replies at 100 and 10,000
        # members: a few per change, whatever the size of the zone.
        self.assertEqual(encoded, small_encoded)
        self.assertLessEqual(max(encoded), 3)

        (reply,) = yield ask(port, [(f"worker{members}.tf.local", "A")])
        self.assertEqual(addresses(reply), [address(members)])
        (reply,) = yield ask(port, [(node.held_name, "A")], tcp=True)
        self.assertEqual(addresses(reply), ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_ten_thousand_peers(self):
        """
        A role of 10,001 members: its SRV RRset does not fit one reply, so
        UDP says TC and TCP carries the lowest slots that fit in 65,535
        bytes; PTR answers for every address.  A storm of 1,000 joins of
        another role builds that role's SRV reply at most once per question
        asked during it, and never the first role's.
        """
        members = 10000
        etcd = yield start_etcd(self)
        node, client, prefix = yield self.node(etcd, members, PEERS_COREFILE, peer_member)
        port = node.dns.port
        authority = node.dns.authority

        (reply,) = yield ask(port, [("_worker._tcp.tf.local", "SRV")])
        self.assertTrue(reply.flags & dns.flags.TC)
        self.assertEqual(reply.answer, [])
        query = dns.message.make_query("_worker._tcp.tf.local", "SRV", use_edns=0)
        (data,) = yield threads.deferToThread(tcp_session, port, [query.to_wire()])
        self.assertLessEqual(len(data), 65535)
        reply = dns.message.from_wire(data)
        self.assertFalse(reply.flags & dns.flags.TC)
        (rrset,) = reply.answer
        names = [f"worker{slot}.tf.local." for slot in range(1, members + 2)]
        self.assertEqual(
            [str(r.target) for r in rrset], fitting_srv_targets("_worker._tcp.tf.local.", names)
        )
        self.assertGreater(len(rrset), 1500)
        self.assertEqual({r.port for r in rrset}, {2222})

        sample = random.Random(11).sample(range(1, members + 1), 100)
        replies = yield ask(port, [(dns.reversename.from_address(address(i)), "PTR") for i in sample])
        self.assertEqual(
            [[str(r.target) for r in reply.answer[0]] for reply in replies],
            [[f"worker{i}.tf.local."] for i in sample],
        )
        (reply,) = yield ask(port, [(dns.reversename.from_address("10.255.255.255"), "PTR")])
        self.assertEqual(reply.rcode(), dns.rcode.NXDOMAIN)

        changes = []
        node.registry.subscribe_changes(changes.append)
        builds = authority.peer_builds
        asked = []
        storm_over = []

        @defer.inlineCallbacks
        def keep_asking():
            while not storm_over and len(asked) < 10000:
                (reply,) = yield ask(port, [("_ps._tcp.tf.local", "SRV")], tcp=True)
                asked.append(reply.rcode())
                yield sleep(0.02)

        def join(slot):
            member = Member("", (f"10.250.{slot >> 8}.{slot & 255}",), role="ps", slot=slot, srv=2223)
            return client.put(prefix + f"ps{slot}.tf.local.".encode(), member.to_value())

        asking = keep_asking()
        limit = defer.DeferredSemaphore(10)
        yield defer.gatherResults([limit.run(join, slot) for slot in range(1, 1001)], consumeErrors=True)
        _, revision = yield client.range(prefix + b"worker1.tf.local.")
        yield node.registry.when_caught_up(revision)
        storm_over.append(True)
        yield asking

        (reply,) = yield ask(port, [("_ps._tcp.tf.local", "SRV")], tcp=True)
        self.assertEqual(
            [str(r.target) for r in reply.answer[0]], [f"ps{slot}.tf.local." for slot in range(1, 1001)]
        )
        (reply,) = yield ask(port, [("_worker._tcp.tf.local", "SRV")], tcp=True)
        self.assertEqual(len(reply.answer[0]), len(rrset))
        # Builds: one per question after a change at most (and the last
        # one), however many changes came; the workers' RRset none.
        built = authority.peer_builds - builds
        self.assertLessEqual(built, min(len(asked), len(changes)) + 1)
        self.assertGreater(len(changes), 100)
        self.assertTrue(asked)
