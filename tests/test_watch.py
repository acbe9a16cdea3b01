"""
How a watch handles what its stream says, on idetcd.testing's etcd whose
streams the test breaks, on its clock; and a watch on a real 3-member etcd
whose member is cut off from its peers.
"""

import json

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from idetcd.etcd import (
    Credentials,
    EtcdClient,
    EtcdUnavailable,
    ResyncNeeded,
    Watch,
    prefix_range_end,
)
from idetcd.members._registry import Registry
from idetcd.testing import Stream
from tests.etcdserver import start_etcd_cluster
from tests.memberdata import value
from tests.memoryetcd import FakeEtcdCase
from tests.peerproxy import PeerNetwork
from tests.waiting import sleep, wait_for

PREFIX = b"/idetcd/"

NO_LEADER = json.dumps(
    {
        "error": {
            "grpc_code": 14,
            "http_code": 503,
            "message": "etcdserver: no leader",
            "http_status": "Service Unavailable",
        }
    }
).encode()


def result(revision, *puts):
    """
    One watch line as etcd's gateway writes it, with a put of C{/a} per
    revision in C{puts}.
    """
    events = [
        {"kv": {"key": "L2E=", "value": "MQ==", "mod_revision": str(rev)}} for rev in puts
    ]
    return json.dumps({"result": {"header": {"revision": str(revision)}, "events": events}}).encode() + b"\n"


class FakeStreamCase(FakeEtcdCase):
    """
    A watch of C{[/a, /b)} from revision 5 on idetcd.testing's etcd, which
    three endpoints reach; the test breaks its streams there.
    """

    def setUp(self):
        FakeEtcdCase.setUp(self)
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        for index in range(4):  # revisions 2 to 5, outside the watch
            self.successResultOf(self.client.put(b"/z%d" % index, b"x"))

    def start(self, **kwargs):
        """
        Watch through a client of C{kwargs}' (credentials), on endpoints
        a, b and c.
        """
        self.client = self.etcd.client(["http://a", "http://b", "http://c"], **kwargs)
        self.addCleanup(self.client.close)
        self.seen = []
        self.watch = Watch(self.client, b"/a", b"/b", 5, lambda events, rev: self.seen.append(rev))
        self.watch.start()
        self.addCleanup(self.watch.stop)

    def stream(self):
        """
        The watch stream open now.
        """
        (stream,) = [stream for stream in self.etcd.watch_streams if not stream.closed]
        return stream

    def put(self):
        """
        Put C{/a}: the watch's next event.
        """
        return self.successResultOf(self.client.put(b"/a", b"1"))

    def watch_logs(self):
        return [e for e in self.logged if e.get("log_namespace") == "idetcd.etcd.watch"]


class WatchLineTests(FakeStreamCase):
    def setUp(self):
        FakeStreamCase.setUp(self)
        self.start()

    def test_error_line_resumes_on_next_endpoint(self):
        """
        etcd's "no leader" line ends the stream (etcd itself keeps it open);
        the watch opens a new one on the next endpoint from the revision
        after the last one it delivered, and says so once, as a warning.
        """
        first = self.stream()
        self.assertEqual(self.put(), 6)
        first.write(NO_LEADER)
        self.assertEqual(self.etcd.served("/v3/watch"), 1)
        # What etcd sends: the error object as the last chunk, no line end.
        first.end()
        self.assertEqual(self.seen, [6])
        self.assertEqual(self.client.endpoint, "http://b")
        self.clock.advance(1)
        second = self.stream()
        # From the revision before the one it wants next, 7.
        self.assertEqual((second.host, second.create["start_revision"]), ("b", "6"))
        self.put()
        self.assertEqual(self.seen, [6, 7])
        self.clock.advance(5)
        self.assertEqual(self.etcd.served("/v3/watch"), 2)
        logs = self.watch_logs()
        self.assertEqual([e["log_level"].name for e in logs], ["warn", "info"])
        self.assertIn("no leader", logs[0]["why"])
        self.assertFalse(self.watch.done.called)

    def test_error_line_within_a_stream_ends_it(self):
        """
        An error followed by a line end and more data: nothing after the
        error is used, and the stream is closed.
        """
        first = self.stream()
        first.write(NO_LEADER + b"\n" + result(6, 6))
        self.assertTrue(first.closed)
        self.assertEqual(self.seen, [])
        self.clock.advance(1)
        self.assertEqual((self.stream().host, self.stream().create["start_revision"]), ("b", "4"))

    def test_cut_stream_resumes_on_next_endpoint(self):
        """
        A stream cut in the middle of a line: the piece is not a line.
        """
        first = self.stream()
        first.write(result(6, 6)[:20])
        first.cut()
        self.clock.advance(1)
        self.assertEqual((self.stream().host, self.stream().create["start_revision"]), ("b", "4"))
        self.assertEqual(self.watch_logs()[0]["why"], "closed")
        self.assertEqual(self.seen, [])

    def test_garbled_line_resumes_without_losing_events(self):
        first = self.stream()
        first.write(b'{"result": {"events": [tru\n')
        self.assertTrue(first.closed)
        self.put()  # while no stream is open
        self.clock.advance(1)
        self.assertEqual((self.stream().host, self.stream().create["start_revision"]), ("b", "4"))
        self.assertEqual(self.seen, [6])

    def test_repeated_breaks_are_logged_once_per_interval(self):
        """
        With every member leaderless the watch goes round the endpoints
        with a backoff, logging the first break and then one line every
        30 s, not one per attempt.
        """
        self.etcd.faults.always("/v3/watch", Stream(NO_LEADER, end=True))
        self.stream().end(NO_LEADER)
        for _ in range(100):
            self.clock.advance(2)
        streams = self.etcd.watch_streams
        self.assertEqual(len(streams), 101)
        self.assertEqual([stream.host for stream in streams[:4]], ["a", "b", "c", "a"])
        breaks = [e for e in self.watch_logs() if "ended" in e["log_format"]]
        self.assertLessEqual(len(breaks), 1 + 200 // 30)
        self.assertGreater(len(breaks), 1)
        self.assertGreater(breaks[-1]["breaks"], 10)

    def test_stop_after_error_line_opens_nothing(self):
        self.stream().end(NO_LEADER)
        self.watch.stop()
        self.clock.advance(5)
        self.assertEqual(self.etcd.served("/v3/watch"), 1)
        self.assertIsNone(self.successResultOf(self.watch.done))


@defer.inlineCallbacks
def until_written(write, timeout=30.0):
    """
    Retry C{write} while the majority elects a leader (its members refuse
    requests until then).
    """
    for _ in range(int(timeout / 0.5)):
        try:
            result = yield write()
        except EtcdUnavailable:
            yield sleep(0.5)
        else:
            return result
    raise AssertionError(f"no write succeeded in {timeout}s")


def refused(reason):
    """
    The line etcd sends when it refuses a watch's token.
    """
    body = {"header": {"revision": "9"}, "created": True, "canceled": True, "cancel_reason": reason}
    return json.dumps({"result": body}).encode() + b"\n"


#: etcd 3.5's and 3.4's words for a watch whose token is dead.
REFUSED_35 = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
REFUSED_34 = "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"


class WatchTokenTests(FakeStreamCase):
    """
    A watch whose token etcd refused resumes once with a new one.
    """

    def setUp(self):
        FakeStreamCase.setUp(self)
        self.etcd.enable_auth({"u": "p"})
        self.start(credentials=Credentials("u", "p"))
        self.put()

    def authentications(self):
        return self.etcd.served("/v3/auth/authenticate")

    def test_resumes_with_a_new_token(self):
        for reason in [REFUSED_35, REFUSED_34]:
            resume_from = self.watch.next_revision
            traded = self.authentications()
            # The token expires while the watch is away: etcd refuses it.
            self.etcd.faults.once("/v3/watch", Stream(refused(reason)))
            opened = len(self.etcd.watch_streams)
            self.stream().cut()
            self.clock.advance(3)
            again, renewed = self.etcd.watch_streams[opened:]
            self.assertTrue(again.closed)
            self.assertIs(self.stream(), renewed)
            self.assertEqual(renewed.create["start_revision"], str(resume_from - 1))
            self.assertNotEqual(renewed.token, again.token)
            self.assertEqual(self.authentications(), traded + 1)
            self.assertEqual(self.put(), resume_from)
            self.assertFalse(self.watch.done.called)
        self.assertEqual(self.seen, [6, 7, 8])
        self.assertEqual(self.watch.next_revision, 9)

    def test_refused_twice_in_a_row_gives_up(self):
        """
        A new token refused too: the user lost its permission, which the
        caller learns by reading everything again.
        """
        self.stream().write(refused(REFUSED_35))
        self.etcd.faults.once("/v3/watch", Stream(refused(REFUSED_35)))
        self.clock.advance(0)
        self.failureResultOf(self.watch.done, ResyncNeeded)
        self.assertEqual(self.authentications(), 2)  # the first token, and one more

    def test_without_credentials_gives_up(self):
        self.watch.stop()
        self.etcd.faults.once("/v3/watch", Stream(refused(REFUSED_34)))
        self.start()
        self.failureResultOf(self.watch.done, ResyncNeeded)
        self.assertEqual(len(self.etcd.watch_streams), 2)  # the first watch's, and this one's


class IsolatedMemberTests(unittest.TestCase):
    """
    A 3-member etcd whose peer traffic goes through proxies; the member
    holding the registry's watch is cut off from its two peers, while the
    test still reaches every member's client port.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_registry_follows_the_majority(self):
        network = PeerNetwork()
        members = yield start_etcd_cluster(self, network=network)
        client = EtcdClient([m.client_url for m in members], reactor, timeout=2.0)
        self.addCleanup(client.close)
        logged = []

        def observe(event):
            if event.get("log_namespace") == "idetcd.etcd.watch":
                logged.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

        yield client.put(PREFIX + b"worker1.tf.local.", value("10.0.0.1"))
        registry = Registry(client, PREFIX, reactor)
        registry.startService()
        self.addCleanup(registry.stopService)
        yield registry.when_ready()
        revision = yield client.put(PREFIX + b"worker2.tf.local.", value("10.0.0.2"))
        yield registry.when_caught_up(revision)

        watched = next(m for m in members if m.client_url == client.endpoint)
        majority = EtcdClient([m.client_url for m in members if m is not watched], reactor, timeout=2.0)
        self.addCleanup(majority.close)
        network.isolate(watched.member)
        # Changes the cut-off member never sees.
        yield until_written(lambda: majority.delete(PREFIX + b"worker1.tf.local."))
        revision = yield until_written(
            lambda: majority.put(PREFIX + b"worker3.tf.local.", value("10.0.0.3"))
        )

        # etcd ends the watch with "no leader" a few seconds after the member
        # loses its leader; the watch resumes on another member.
        yield wait_for(lambda: registry.revision >= revision, timeout=30)
        self.assertEqual(set(registry.members), {"worker2.tf.local.", "worker3.tf.local."})
        self.assertNotEqual(client.endpoint, watched.client_url)
        ended = [e for e in logged if "ended" in e["log_format"]]
        self.assertEqual(ended[0]["endpoint"], watched.client_url)
        self.assertIn("no leader", ended[0]["why"])

        # It goes on following the majority.
        revision = yield majority.put(PREFIX + b"worker4.tf.local.", value("10.0.0.4"))
        yield wait_for(lambda: registry.revision >= revision, timeout=30)
        kvs, _ = yield majority.range(PREFIX, prefix_range_end(PREFIX))
        self.assertEqual(
            {kv.key[len(PREFIX) :].decode() for kv in kvs},
            set(registry.members),
        )


class ClusterStartTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_a_taken_port_is_chosen_again(self):
        """
        A port chosen free but taken before etcd binds it (here, by the
        test) fails that start; the cluster starts on new ports.
        """
        import socket

        from tests import etcdserver

        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        real = etcdserver.free_ports
        calls = []

        def first_one_taken(count):
            calls.append(count)
            ports = real(count)
            return ports if len(calls) > 1 else [taken.getsockname()[1]] + ports[1:]

        self.patch(etcdserver, "free_ports", first_one_taken)
        members = yield start_etcd_cluster(self, network=PeerNetwork())
        self.assertEqual(len(calls), 2)
        self.assertNotIn(taken.getsockname()[1], [m.client_port for m in members])
