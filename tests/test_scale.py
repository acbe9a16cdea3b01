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
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from idetcd import IdetcdService
from idetcd.etcd import EtcdClient, _b64
from idetcd.members import Member
from tests.etcdserver import start_etcd

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
#: etcd's default --max-txn-ops.
TXN_OPS = 128


def address(index, generation=0):
    return f"10.{generation}.{index >> 8}.{index & 255}"


@defer.inlineCallbacks
def write_members(client, prefix, count, parallel=4):
    """
    Put worker1 … worker{count} under C{prefix}, 128 to a transaction.
    """

    def txn(start):
        puts = [
            {
                "request_put": {
                    "key": _b64(prefix + f"worker{index}.tf.local.".encode()),
                    "value": _b64(Member("", (address(index),)).to_value()),
                }
            }
            for index in range(start, min(start + TXN_OPS, count + 1))
        ]
        return client.call("/v3/kv/txn", {"success": puts})

    limit = defer.DeferredSemaphore(parallel)
    yield defer.gatherResults(
        [limit.run(txn, start) for start in range(1, count + 1, TXN_OPS)], consumeErrors=True
    )


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


class ScaleTests(unittest.TestCase):
    timeout = 600

    @defer.inlineCallbacks
    def node(self, etcd, members):
        """
        A node over C{members} members, written into C{etcd} under a prefix
        of their own, once it holds its name (worker{members + 1}).
        """
        prefix = f"/scale{members}/"
        client = EtcdClient([etcd.client_url], reactor, timeout=60.0)
        self.addCleanup(client.close)
        yield write_members(client, prefix.encode(), members)
        text = COREFILE.format(endpoint=etcd.client_url, prefix=prefix)
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
