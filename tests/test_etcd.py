"""
The etcd client against a real etcd server.
"""

import json
import socket

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web._newclient import ResponseNeverReceived

from idetcd.etcd import (
    Compacted,
    EtcdClient,
    EtcdUnavailable,
    LeaseNotFound,
    WatchStream,
    describe,
    prefix_range_end,
)
from idetcd.etcd.connections import request_url
from idetcd.node._embedded import free_port
from tests.etcdserver import EtcdTestCase, own_etcd, restart
from tests.waiting import sleep, wait_for

PREFIX = b"/idetcd/"


class PrefixRangeEndTests(unittest.TestCase):
    def test_increments_last_byte(self):
        self.assertEqual(prefix_range_end(b"/idetcd/"), b"/idetcd0")

    def test_carries_over_ff(self):
        self.assertEqual(prefix_range_end(b"a\xff\xff"), b"b")

    def test_empty_prefix_means_every_key(self):
        self.assertEqual(prefix_range_end(b""), b"\0")


class RequestUrlTests(unittest.TestCase):
    """
    The URLs handed to treq reach the wire as written, but for a host
    outside ASCII, which is IDNA-encoded.
    """

    def test_hosts(self):
        for url, wire in [
            ("http://[::1]:2379/v3/kv/range", "http://[::1]:2379/v3/kv/range"),
            ("https://[fd00::1]:2379/v3/watch", "https://[fd00::1]:2379/v3/watch"),
            ("http://127.0.0.1:2379/version", "http://127.0.0.1:2379/version"),
            ("http://etcd_1:2379/health", "http://etcd_1:2379/health"),
            ("https://etcd1.Example.com:2379/v3/kv/txn", "https://etcd1.Example.com:2379/v3/kv/txn"),
            ("http://bücher.example:2379/version", "http://xn--bcher-kva.example:2379/version"),
        ]:
            self.assertEqual(request_url(url).to_uri().to_text(), wire)


class WatchStreamTests(unittest.TestCase):
    """
    The watch body arrives in arbitrary TCP pieces.
    """

    def test_lines_split_across_reads(self):
        lines = []
        stream = WatchStream(lines.append)
        stream.makeConnection(object())
        one = json.dumps({"result": {"events": []}}).encode()
        two = json.dumps({"result": {"events": [{"type": "DELETE"}]}}).encode()
        payload = one + b"\n" + two + b"\n"
        for i in range(len(payload)):
            stream.dataReceived(payload[i : i + 1])
        self.assertEqual(lines, [one, two])


class EtcdClientTests(EtcdTestCase):
    share_etcd = True

    @defer.inlineCallbacks
    def test_put_and_range(self):
        yield self.client.put(PREFIX + b"a", b"1")
        yield self.client.put(PREFIX + b"b", b"2")
        yield self.client.put(b"/other", b"3")
        kvs, revision = yield self.client.range(PREFIX, prefix_range_end(PREFIX))
        self.assertEqual([(kv.key, kv.value) for kv in kvs], [(PREFIX + b"a", b"1"), (PREFIX + b"b", b"2")])
        self.assertGreaterEqual(revision, 3)

    @defer.inlineCallbacks
    def test_create_conflict(self):
        """
        Of two creates of one key only the first wins; the loser learns who
        holds it.
        """
        first = yield self.client.create(PREFIX + b"w1", b"mine")
        second = yield self.client.create(PREFIX + b"w1", b"yours")
        self.assertTrue(first.succeeded)
        self.assertFalse(second.succeeded)
        self.assertEqual(second.existing.value, b"mine")
        kvs, _ = yield self.client.range(PREFIX + b"w1")
        self.assertEqual(kvs[0].value, b"mine")

    @defer.inlineCallbacks
    def test_create_replacing(self):
        """
        A replacing create wins only while the key is unchanged.
        """
        yield self.client.put(PREFIX + b"w1", b"old")
        kvs, _ = yield self.client.range(PREFIX + b"w1")
        won = yield self.client.create(PREFIX + b"w1", b"new", replacing=kvs[0])
        stale = yield self.client.create(PREFIX + b"w1", b"newer", replacing=kvs[0])
        self.assertTrue(won.succeeded)
        self.assertFalse(stale.succeeded)
        self.assertEqual(stale.existing.value, b"new")

    @defer.inlineCallbacks
    def test_many_racing_creates_have_one_winner(self):
        results = yield defer.gatherResults(
            [self.client.create(PREFIX + b"race", str(i).encode()) for i in range(20)]
        )
        self.assertEqual(sum(result.succeeded for result in results), 1)

    @defer.inlineCallbacks
    def test_lease_keepalive_and_revoke(self):
        lease, ttl = yield self.client.lease_grant(5)
        self.assertEqual(ttl, 5)
        yield self.client.put(PREFIX + b"leased", b"x", lease=lease)
        refreshed = yield self.client.lease_keepalive(lease)
        self.assertEqual(refreshed, 5)
        yield self.client.lease_revoke(lease)
        kvs, _ = yield self.client.range(PREFIX + b"leased")
        self.assertEqual(kvs, [])
        yield self.assertFailure(self.client.lease_keepalive(lease), LeaseNotFound)

    @defer.inlineCallbacks
    def test_lease_expiry_deletes_keys(self):
        lease, ttl = yield self.client.lease_grant(2)
        yield self.client.create(PREFIX + b"short", b"x", lease=lease)
        kvs, _ = yield self.client.range(PREFIX + b"short")
        self.assertEqual(kvs[0].lease, lease)
        yield sleep(ttl + 1.5)
        kvs, _ = yield self.client.range(PREFIX + b"short")
        self.assertEqual(kvs, [])
        yield self.assertFailure(self.client.lease_keepalive(lease), LeaseNotFound)

    @defer.inlineCallbacks
    def test_watch_reports_puts_and_deletes(self):
        _, revision = yield self.client.range(PREFIX, prefix_range_end(PREFIX))
        seen = []
        watch = self.client.watch(
            PREFIX, prefix_range_end(PREFIX), revision + 1, lambda events, rev: seen.extend(events)
        )
        self.addCleanup(watch.stop)
        yield self.client.put(PREFIX + b"a", b"1")
        yield self.client.put(b"/outside", b"1")
        yield self.client.delete(PREFIX + b"a")
        yield wait_for(lambda: len(seen) == 2)
        self.assertEqual([(e.deleted, e.kv.key, e.kv.value) for e in seen],
                         [(False, PREFIX + b"a", b"1"), (True, PREFIX + b"a", b"")])

    @own_etcd
    @defer.inlineCallbacks
    def test_watch_resumes_after_etcd_restart(self):
        """
        Changes made while the watch is down arrive once etcd is back, each
        exactly once.
        """
        seen = []
        watch = self.client.watch(
            PREFIX, prefix_range_end(PREFIX), 1, lambda events, rev: seen.extend(events)
        )
        self.addCleanup(watch.stop)
        yield self.client.put(PREFIX + b"before", b"1")
        yield wait_for(lambda: len(seen) == 1)
        yield restart(self.etcd)
        yield self.client.put(PREFIX + b"after", b"2")
        yield self.client.delete(PREFIX + b"before")
        yield wait_for(lambda: len(seen) == 3, timeout=15)
        yield sleep(0.3)
        self.assertEqual(
            [(e.deleted, e.kv.key) for e in seen],
            [(False, PREFIX + b"before"), (False, PREFIX + b"after"), (True, PREFIX + b"before")],
        )
        self.assertFalse(watch.done.called)

    @defer.inlineCallbacks
    def test_watch_from_compacted_revision_fails(self):
        for i in range(5):
            yield self.client.put(PREFIX + b"k", str(i).encode())
        _, revision = yield self.client.range(PREFIX + b"k")
        yield self.client.call("/v3/kv/compaction", {"revision": str(revision)})
        watch = self.client.watch(PREFIX, prefix_range_end(PREFIX), 2, lambda events, rev: None)
        failure = yield self.assertFailure(watch.done, Compacted)
        self.assertEqual(failure.compact_revision, revision)

    @defer.inlineCallbacks
    def test_watch_from_the_compaction_revision_fails(self):
        """
        A compaction at exactly the revision a watch starts from removes a
        deletion made there, yet etcd accepts a watch from that revision:
        the watch must report it compacted, not miss the deletion (a node
        cut off while a member went, then compacted, kept it for good).
        """
        yield self.client.put(PREFIX + b"gone", b"1")
        yield self.client.delete(PREFIX + b"gone")
        _, revision = yield self.client.range(PREFIX + b"gone")  # the deletion's
        yield self.client.call("/v3/kv/compaction", {"revision": str(revision)})
        seen = []
        watch = self.client.watch(PREFIX, prefix_range_end(PREFIX), revision, lambda events, rev: seen.extend(events))
        self.addCleanup(watch.stop)
        yield self.assertFailure(watch.done.addTimeout(5, reactor), Compacted)
        self.assertEqual(seen, [])

    @defer.inlineCallbacks
    def test_watch_delivers_from_its_start_revision(self):
        """
        Starting from the revision before, to hear of a compaction there,
        a watch still delivers nothing below its start revision.
        """
        yield self.client.put(PREFIX + b"a", b"1")
        revision = yield self.client.put(PREFIX + b"b", b"2")
        seen = []
        watch = self.client.watch(PREFIX, prefix_range_end(PREFIX), revision, lambda events, rev: seen.extend(events))
        self.addCleanup(watch.stop)
        yield self.client.put(PREFIX + b"c", b"3")
        yield wait_for(lambda: len(seen) == 2)
        yield sleep(0.3)
        self.assertEqual([e.kv.key for e in seen], [PREFIX + b"b", PREFIX + b"c"])

    @defer.inlineCallbacks
    def test_moves_to_next_endpoint(self):
        """
        A dead first endpoint costs one failed connection; the client then
        stays on the live one.
        """
        client = self.make_client([f"http://127.0.0.1:{free_port()}", self.etcd.client_url])
        yield client.put(PREFIX + b"x", b"1")
        self.assertEqual(client.endpoint, self.etcd.client_url)
        kvs, _ = yield client.range(PREFIX + b"x")
        self.assertEqual(kvs[0].value, b"1")

    @defer.inlineCallbacks
    def test_endpoints_asked_at_every_request(self):
        """
        A client given a function for its endpoints (an embedded etcd's,
        whose port may change while it starts) asks it at every request:
        it reaches etcd once the function names where etcd listens.
        """
        urls = [f"http://127.0.0.1:{free_port()}"]
        client = self.make_client(lambda: urls)
        yield self.assertFailure(client.put(PREFIX + b"x", b"1"), EtcdUnavailable)
        urls[:] = [self.etcd.client_url]
        self.assertEqual(client.endpoints, (self.etcd.client_url,))
        yield client.put(PREFIX + b"x", b"1")
        kvs, _ = yield self.client.range(PREFIX + b"x")
        self.assertEqual(kvs[0].value, b"1")

    @defer.inlineCallbacks
    def test_endpoints_that_shrink(self):
        """
        A function that names fewer endpoints than before, after the client
        moved down its list: the client goes on round the list as it is
        now, not past its end.
        """
        dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
        urls = [*dead, self.etcd.client_url]
        client = self.make_client(lambda: urls)
        yield client.put(PREFIX + b"x", b"1")
        self.assertEqual(client.current_index, 2)
        urls[:] = [dead[0], self.etcd.client_url]
        self.assertEqual(client.endpoint, dead[0])
        yield client.put(PREFIX + b"x", b"2")
        self.assertEqual(client.endpoint, self.etcd.client_url)
        kvs, _ = yield self.client.range(PREFIX + b"x")
        self.assertEqual(kvs[0].value, b"2")

    def silent_endpoint(self):
        """
        An endpoint that accepts connections and never answers.
        """
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def test_silent_endpoint_times_out_to_the_next(self):
        client = EtcdClient([self.silent_endpoint(), self.etcd.client_url], reactor, timeout=0.5)
        self.addCleanup(client.close)
        yield client.put(PREFIX + b"x", b"1")
        self.assertEqual(client.endpoint, self.etcd.client_url)

    @defer.inlineCallbacks
    def test_cancelled_call_stays_cancelled(self):
        """
        Cancelling a call fails it with CancelledError at once; it does not
        move on to the next endpoint.
        """
        yield self.assert_cancel_stays_on(self.silent_endpoint())

    @defer.inlineCallbacks
    def assert_cancel_stays_on(self, stuck):
        """
        A put to C{stuck}, cancelled while it hangs there, fails with
        CancelledError and is never sent to the next endpoint.
        """
        client = self.make_client([stuck, self.etcd.client_url])
        d = client.put(PREFIX + b"x", b"1")
        yield sleep(0.2)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertEqual(client.endpoint, stuck)
        kvs, _ = yield self.client.range(PREFIX + b"x")
        self.assertEqual(kvs, [])

    @defer.inlineCallbacks
    def test_cancel_while_connecting_stays_cancelled(self):
        """
        A call cancelled while its TCP connection is still being made (the
        peer's accept queue is full, as on a partitioned host) is cancelled
        too, not sent to the next endpoint.
        """
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):  # fill the accept queue: later SYNs get no answer
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            self.addCleanup(filler.close)
        yield self.assert_cancel_stays_on(f"http://127.0.0.1:{port}")

    @defer.inlineCallbacks
    def test_cancel_while_resolving_stays_cancelled(self):
        """
        A call cancelled before its connection has resolved the endpoint's
        host (the HTTP stack reports that as a failed DNS lookup) fails with
        CancelledError and is never sent to the next endpoint: a node
        stopped while it waits for etcd must not find a retry still armed.
        """
        client = self.make_client([self.silent_endpoint(), self.etcd.client_url])
        d = client.put(PREFIX + b"x", b"1")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(client.endpoint, client.endpoints[0])
        yield sleep(0.2)  # anything sent on would have reached etcd by now
        kvs, _ = yield self.client.range(PREFIX + b"x")
        self.assertEqual(kvs, [])

    @defer.inlineCallbacks
    def test_connections_use_tcp_keepalive(self):
        """
        A watch must notice a peer gone without a reset; the connection to
        etcd probes it.
        """
        seen = []
        watch = self.client.watch(PREFIX, prefix_range_end(PREFIX), 1, lambda e, r: seen.extend(e))
        self.addCleanup(watch.stop)
        yield self.client.put(PREFIX + b"a", b"1")
        yield wait_for(lambda: seen)
        transport = watch._stream.transport._producer
        sock = transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 5)

    @defer.inlineCallbacks
    def test_no_endpoint_answers(self):
        client = self.make_client([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])
        error = yield self.assertFailure(client.range(PREFIX), EtcdUnavailable)
        self.assertIn("no etcd endpoint answered", str(error))


class DescribeTests(unittest.TestCase):
    """
    Errors as one line, in warnings and in L{EtcdUnavailable}'s message.
    """

    def test_wrapped_failures_are_told_by_what_they_wrap(self):
        error = ResponseNeverReceived([Failure(ConnectionLost()), Failure(ValueError("bad"))])
        self.assertEqual(
            describe(error),
            "ResponseNeverReceived: ConnectionLost: Connection to the other side was lost in a non-clean fashion.;"
            " ValueError: bad",
        )

    def test_an_error_without_a_message_is_named(self):
        self.assertEqual(describe(defer.CancelledError()), "CancelledError")

    @defer.inlineCallbacks
    def test_a_connection_cut_mid_request(self):
        """
        An endpoint that drops the connection once the request is in: no
        reprs of Twisted failures in the message.
        """

        class Drop(protocol.Protocol):
            def dataReceived(self, data):
                self.transport.abortConnection()

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Drop), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = EtcdClient([f"http://127.0.0.1:{port.getHost().port}"], reactor, timeout=2.0)
        self.addCleanup(client.close)
        error = yield self.assertFailure(client.lease_keepalive(5), EtcdUnavailable)
        self.assertNotIn("Failure", str(error))
        self.assertIn(": ResponseNeverReceived: ConnectionLost: ", str(error))
