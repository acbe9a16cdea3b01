"""
etcd out of space (its NOSPACE alarm, reached here with a 16 MiB quota):
etcd refuses writes but serves reads, watches and keepalives, so a node
starts, reads the members and answers DNS; a claim waits, says why once
with the fix, and goes through once an operator frees space; a node
restarted after a crash keeps the name its previous process held.
"""

import json
import os
import signal

import attr
import dns.exception
import dns.rcode
from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher

from idetcd.claim import Announcement, ClaimQueue
from idetcd.claim._claimer import Claimer
from idetcd.etcd import NoSpace
from idetcd.members import Registry
from idetcd.node._embedded import free_ports
from tests.dnsclient import query
from tests.etcdserver import SMALL_QUOTA, EtcdTestCase, fill, free_space, start_etcd
from tests.httpendpoints import HttpGetter, samples, value
from tests.memberdata import PATTERN, PREFIX, identity
from tests.nodes import NodeProcessCase
from tests.waiting import sleep, wait_for

#: The line a claim says, once, while etcd is out of space.
CANNOT_CLAIM = "cannot claim a name: etcd is out of space (NOSPACE alarm)"


def log_lines(case):
    """
    The text of every log event from now to the end of C{case}.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return lambda: [formatEvent(event) for event in events]


class NoSpaceEtcdTests(EtcdTestCase):
    """
    The client, the start-up check and the claimer against a real etcd out
    of space.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.etcd = yield start_etcd(self, extra_args=SMALL_QUOTA)
        self.client = self.make_client([self.etcd.client_url])

    def claimer(self, node, preferred=None, predecessor_lease=None):
        registry = Registry(self.client, PREFIX, reactor)
        registry.startService()
        self.addCleanup(registry.stopService)
        announcement = Announcement(identity(node), preferred, predecessor_lease)
        claimer = Claimer(
            self.client, PATTERN, 5, PREFIX, lambda: announcement, 4, reactor, registry, ClaimQueue(registry)
        )
        claimer.startService()
        self.addCleanup(lambda: claimer.stopService() if claimer.running else None)
        return claimer

    @defer.inlineCallbacks
    def test_writes_refused_reads_and_keepalives_go_on(self):
        lease, _ = yield self.client.lease_grant(30)
        yield self.client.put(PREFIX + b"worker1.tf.local.", b"{}", lease=lease)
        yield fill(self.etcd)
        error = yield self.assertFailure(self.client.lease_grant(5), NoSpace)
        self.assertEqual(error.message, "etcdserver: mvcc: database space exceeded")
        yield self.assertFailure(self.client.create(PREFIX + b"worker2.tf.local.", b"{}"), NoSpace)
        kvs, _ = yield self.client.range(PREFIX + b"worker1.tf.local.")
        self.assertEqual(kvs[0].lease, lease)
        self.assertEqual((yield self.client.lease_keepalive(lease)), 30)

    @defer.inlineCallbacks
    def test_start_up_check_passes(self):
        """
        The check's write probe is refused: the node starts anyway, and
        says it could not check the write permission.
        """
        lines = log_lines(self)
        yield fill(self.etcd)
        yield self.client.check(PREFIX).addTimeout(20, reactor)
        warned = [line for line in lines() if "out of space (NOSPACE alarm)" in line]
        self.assertEqual(len(warned), 1, lines())
        self.assertIn("cannot check that this node may write its prefix; starting anyway", warned[0])

    @defer.inlineCallbacks
    def test_claim_waits_says_why_once_and_goes_through_after_the_fix(self):
        lines = log_lines(self)
        yield fill(self.etcd)
        claimer = self.claimer("a")
        yield wait_for(lambda: claimer.nospace, timeout=20)
        yield sleep(3)  # retries on a backoff that starts at 0.05 s
        told = [line for line in lines() if CANNOT_CLAIM in line]
        self.assertEqual(len(told), 1, lines())
        self.assertIn("etcdctl compact REVISION", told[0])
        self.assertIn("etcdctl defrag", told[0])
        self.assertIn("etcdctl alarm disarm", told[0])
        self.assertFalse([line for line in lines() if "cannot claim a name yet" in line])
        self.assertIsNone(claimer.held_name)
        yield free_space(self.etcd)
        name = yield claimer.when_claimed().addTimeout(20, reactor)
        self.assertEqual(name, "worker1.tf.local.")
        self.assertFalse(claimer.nospace)

    @defer.inlineCallbacks
    def test_restart_keeps_the_previous_processs_lease(self):
        """
        etcd grants no lease, but keeps the previous process's alive: the
        restarted claimer keeps it, and the name with it, past its TTL.
        """
        lease, _ = yield self.client.lease_grant(4)
        key = PREFIX + b"worker3.tf.local."
        value = attr.evolve(identity("a"), name="worker3.tf.local.", role="worker", slot=3).to_value()
        yield self.client.put(key, value, lease=lease)
        yield fill(self.etcd)
        claimer = self.claimer("a", preferred="worker3.tf.local.", predecessor_lease=lease)
        name = yield claimer.when_claimed().addTimeout(20, reactor)
        self.assertEqual((name, claimer.lease), ("worker3.tf.local.", lease))
        yield sleep(6)  # past the lease's 4 s
        kvs, _ = yield self.client.range(key)
        self.assertEqual([(kv.lease, kv.value) for kv in kvs], [(lease, value)])
        self.assertEqual(claimer.held_name, "worker3.tf.local.")

    @defer.inlineCallbacks
    def test_restart_does_not_keep_a_key_it_would_write_otherwise(self):
        """
        The previous process's key says something else (another address):
        it is not kept as it is; the claim waits for space to write it.
        """
        lease, _ = yield self.client.lease_grant(30)
        key = PREFIX + b"worker3.tf.local."
        old = attr.evolve(identity("a", "127.0.0.9"), name="worker3.tf.local.", role="worker", slot=3)
        yield self.client.put(key, old.to_value(), lease=lease)
        yield fill(self.etcd)
        claimer = self.claimer("a", preferred="worker3.tf.local.", predecessor_lease=lease)
        yield wait_for(lambda: claimer.nospace, timeout=20)
        self.assertIsNone(claimer.held_name)
        yield free_space(self.etcd)
        self.assertEqual((yield claimer.when_claimed().addTimeout(20, reactor)), "worker3.tf.local.")
        kvs, _ = yield self.client.range(key)
        self.assertEqual(kvs[0].lease, claimer.lease)
        self.assertIn(b'"127.0.0.1"', kvs[0].value)


COREFILE = """\
.:{$NODE_PORT} {
    bind 127.0.0.1
    ready 127.0.0.1:{$READY_PORT}
    prometheus 127.0.0.1:{$METRICS_PORT}
    idetcd {
        endpoint {$ETCD_URL}
        limit 3
        pattern worker{{.ID}}.tf.local.
        lease 10
        address 127.0.0.1
    }
}
"""


class NoSpaceNodeTests(NodeProcessCase):
    """
    Real ``twistd idetcd`` processes against an etcd that runs out of
    space.  Lease 10: a crashed node restarted within a few seconds finds
    its previous lease alive.
    """

    COREFILE = COREFILE
    ETCD_ARGS = SMALL_QUOTA

    @defer.inlineCallbacks
    def setUp(self):
        yield NodeProcessCase.setUp(self)
        self.http = HttpGetter(timeout=5)
        self.addCleanup(self.http.close)

    def start(self, state=None, port=None):
        ready, metrics = free_ports(2)
        env = {} if port is None else {"NODE_PORT": str(port)}
        node = self.start_node(state, READY_PORT=str(ready), METRICS_PORT=str(metrics), **env)
        node.port = port or node.port
        node.ready_url = f"http://127.0.0.1:{ready}/ready"
        node.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        return node

    @defer.inlineCallbacks
    def ready(self, node):
        code, body = yield self.http.get(node.ready_url)
        return code, json.loads(body)

    @defer.inlineCallbacks
    def nospace_gauge(self, node):
        _, body = yield self.http.get(node.metrics_url)
        return value(samples(body.decode("utf-8")), "idetcd_etcd_nospace")

    @defer.inlineCallbacks
    def answers(self, node, name, timeout=30):
        """
        The addresses C{node} answers for C{name}, once it answers NOERROR.
        """
        rcode = "no reply"
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            try:
                reply = yield query(node.port, name)
            except dns.exception.Timeout:  # not listening yet
                continue
            if reply.rcode() == dns.rcode.NOERROR:
                return [rr.address for rr in reply.answer[0]]
            rcode = dns.rcode.to_text(reply.rcode())
            yield sleep(0.2)
        self.fail(f"{name} not answered in {timeout}s ({rcode}):\n{node.output.decode()}")

    @defer.inlineCallbacks
    def test_a_node_starts_and_answers_under_nospace(self):
        """
        A node started while etcd is out of space reads the members and
        answers for them; it says once why it cannot claim, and what to
        do, on /ready and in its metrics too; once space is freed, it
        claims.
        """
        first = self.start()
        name = yield self.wait_claimed(first)
        yield fill(self.etcd)
        late = self.start()
        self.assertEqual((yield self.answers(late, name)), ["127.0.0.1"])
        for _ in range(100):
            code, body = yield self.ready(late)
            if any("NOSPACE" in reason for reason in body.get("waiting", ())):
                break
            yield sleep(0.2)
        self.assertEqual(code, 503)
        self.assertIn(
            "etcd is out of space (NOSPACE alarm): an operator must compact its history"
            " (etcdctl compact REVISION), defragment every member (etcdctl defrag)"
            " and disarm the alarm (etcdctl alarm disarm)",
            body["waiting"],
        )
        self.assertEqual((yield self.nospace_gauge(late)), 1)
        yield sleep(6)  # the claim retries, on a backoff up to 5 s
        output = late.output.decode()
        self.assertEqual(output.count(CANNOT_CLAIM), 1, output)
        self.assertNotIn("cannot reach etcd", output)
        self.assertNotIn("cannot claim a name yet", output)
        yield free_space(self.etcd)
        self.assertEqual((yield self.wait_claimed(late)), "worker2.tf.local.")
        self.assertEqual((yield self.nospace_gauge(late)), 0)
        self.assertEqual((yield self.ready(late))[0], 200)

    @defer.inlineCallbacks
    def test_a_crashed_node_keeps_its_name_under_nospace(self):
        """
        kill -9 a node, fill etcd, restart the node with its state: it
        keeps its previous process's lease alive and its name with it, past
        the lease's TTL, and every node answers for it; once space is
        freed, new nodes claim again.
        """
        state = os.path.abspath(self.mktemp())
        first = self.start(state)
        other = self.start()
        name = yield self.wait_claimed(first)
        yield self.wait_claimed(other)
        client = self.etcd.make_client()
        self.addCleanup(client.close)
        kvs, _ = yield client.range(b"/idetcd/" + name.encode())
        lease = kvs[0].lease
        first.process.signalProcess(signal.SIGKILL)
        yield first.ended
        yield fill(self.etcd)
        again = self.start(state, port=first.port)  # its key names the port
        self.assertEqual((yield self.wait_claimed(again)), name)
        self.assertIn(f"keeping lease {lease:x} of this node's previous process".encode(), again.output)
        yield sleep(12)  # past the lease's 10 s
        kvs, _ = yield client.range(b"/idetcd/" + name.encode())
        self.assertEqual([kv.lease for kv in kvs], [lease])
        for node in (again, other):
            self.assertEqual((yield self.answers(node, name)), ["127.0.0.1"])
        code, body = yield self.ready(again)
        self.assertEqual((code, body["name"], body["lease"]), (200, name, f"{lease:x}"))
        yield free_space(self.etcd)
        fresh = self.start()
        self.assertEqual((yield self.wait_claimed(fresh)), "worker3.tf.local.")
        self.assertEqual((yield self.ready(again))[1]["name"], name)
