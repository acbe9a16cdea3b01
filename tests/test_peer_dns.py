"""
DNS for peers with whole nodes: three workers and a parameter server, real
``twistd idetcd`` processes on one real etcd, each on its own Corefile
settings, asked for SRV and PTR records by dnspython, dig and kdig.
"""

import signal

import dns.flags
import dns.rcode
import dns.rdatatype
import dns.reversename
from twisted.internet import defer

from tests.dnsclient import query, run_tool
from tests.nodes import NodeProcessCase
from tests.waiting import sleep

COREFILE = """\
# Every node serves tf.local, and members' reverse names through REVERSE:
# the root zone or 127.in-addr.arpa.
tf.local:{$NODE_PORT} {$REVERSE}:{$NODE_PORT} {
    bind 127.0.0.1
    idetcd {
        endpoint {$ETCD_URL}
        limit 5
        pattern {$PATTERN}
        srv {$SRV}
        lease 3
        address {$ADDRESS}
    }
}
"""

WORKERS = [("127.0.0.11", "."), ("127.0.0.12", "127.in-addr.arpa"), ("127.0.0.13", ".")]
PS = ("127.0.0.21", "127.in-addr.arpa")


def srv_targets(reply):
    if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
        return dns.rcode.to_text(reply.rcode())
    return sorted((str(r.target), r.port) for r in reply.answer[0])


class PeerDNSTests(NodeProcessCase):
    COREFILE = COREFILE

    def start_peer(self, role, srv, address, reverse):
        node = self.start_node(
            PATTERN=role + "{{.ID}}.tf.local.", SRV=str(srv), ADDRESS=address, REVERSE=reverse
        )
        node.address = address
        node.reverse = reverse
        return node

    @defer.inlineCallbacks
    def wait_srv(self, node, service, expected, timeout=30):
        """
        The SRV targets of C{service} on C{node} once they are C{expected}
        (each node learns of the others through its etcd watch).
        """
        for _ in range(int(timeout / 0.1)):
            reply = yield query(node.port, service, "SRV", tcp=True)
            if srv_targets(reply) == expected:
                return reply
            yield sleep(0.1)
        self.fail(f"{service} on port {node.port}: {srv_targets(reply)}, not {expected}")

    @defer.inlineCallbacks
    def test_srv_and_ptr(self):
        workers = [self.start_peer("worker", 2222, *settings) for settings in WORKERS]
        ps = self.start_peer("ps", 2223, *PS)
        nodes = workers + [ps]
        names = yield defer.gatherResults([self.wait_claimed(node) for node in nodes])
        for node, name in zip(nodes, names):
            node.name = name
        self.assertEqual(sorted(names[:3]), ["worker1.tf.local.", "worker2.tf.local.", "worker3.tf.local."])
        self.assertEqual(names[3], "ps1.tf.local.")
        every_worker = [(f"worker{slot}.tf.local.", 2222) for slot in (1, 2, 3)]

        for node in nodes:
            reply = yield self.wait_srv(node, "_worker._tcp.tf.local", every_worker)
            self.assertTrue(reply.flags & dns.flags.AA)
            self.assertEqual(
                sorted(str(rrset.name) for rrset in reply.additional), [name for name, _ in every_worker]
            )
            yield self.wait_srv(node, "_ps._tcp.tf.local", [("ps1.tf.local.", 2223)])
            # Over UDP too: three SRV records fit.
            reply = yield query(node.port, "_worker._tcp.tf.local", "SRV")
            self.assertEqual(srv_targets(reply), every_worker)
            self.assertFalse(reply.flags & dns.flags.TC)
            for other in nodes:
                reply = yield query(node.port, dns.reversename.from_address(other.address), "PTR")
                self.assertEqual(reply.rcode(), dns.rcode.NOERROR, (node.port, other.address))
                self.assertTrue(reply.flags & dns.flags.AA)
                self.assertEqual([str(r.target) for r in reply.answer[0]], [other.name])
            # An address of no member: NXDOMAIN in 127.in-addr.arpa, and
            # refused, as every name outside tf.local, through the root zone.
            reply = yield query(node.port, dns.reversename.from_address("127.0.0.99"), "PTR")
            if node.reverse == ".":
                self.assertEqual(reply.rcode(), dns.rcode.REFUSED)
            else:
                self.assertEqual(reply.rcode(), dns.rcode.NXDOMAIN)
                self.assertEqual(
                    (str(reply.authority[0].name), reply.authority[0].rdtype),
                    ("127.in-addr.arpa.", dns.rdatatype.SOA),
                )
            reply = yield query(node.port, "_chief._tcp.tf.local", "SRV")
            self.assertEqual(reply.rcode(), dns.rcode.NXDOMAIN)

        text = yield run_tool(self, ps.port, "dig", "_worker._tcp.tf.local", "SRV", "+norec")
        for name, port in every_worker:
            self.assertRegex(text, rf"_worker\._tcp\.tf\.local\.\s+5\s+IN\s+SRV\s+0 0 {port} {name}")
        text = yield run_tool(self, workers[0].port, "kdig", "-x", ps.address, "+norec")
        self.assertIn("Flags: qr aa;", text)
        self.assertRegex(text, r"21\.0\.0\.127\.in-addr\.arpa\.\s+5\s+IN\s+PTR\s+ps1\.tf\.local\.")

        # A worker that leaves drops out of the others' SRV and PTR answers.
        leaving = workers[1]
        leaving.process.signalProcess(signal.SIGTERM)
        yield leaving.ended
        staying = [(name, port) for name, port in every_worker if name != leaving.name]
        for node in (workers[0], ps):
            yield self.wait_srv(node, "_worker._tcp.tf.local", staying)
            reply = yield query(node.port, dns.reversename.from_address(leaving.address), "PTR")
            self.assertEqual(
                reply.rcode(), dns.rcode.REFUSED if node.reverse == "." else dns.rcode.NXDOMAIN
            )
