"""
How a watch handles what its stream says, on fake streams and a fake clock.
"""

import json

import attr
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseDone, ResponseFailed

from idetcd.etcd import Watch

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


def result(revision, *puts, created=False):
    """
    One watch line as etcd's gateway writes it, with a put per key.
    """
    events = [
        {"kv": {"key": "L2E=", "value": "MQ==", "mod_revision": str(rev)}} for rev in puts
    ]
    body = {"header": {"revision": str(revision)}, "events": events}
    if created:
        body["created"] = True
    return json.dumps({"result": body}).encode() + b"\n"


class FakeTransport:
    stopped = False

    def stopProducing(self):
        self.stopped = True


@attr.s(eq=False)
class FakeClient:
    """
    The part of EtcdClient a watch uses; records each stream it opens.
    """

    endpoints = attr.ib()
    reactor = attr.ib(factory=Clock)
    _current = attr.ib(default=0)
    opened = attr.ib(factory=list)

    @property
    def endpoint(self):
        return self.endpoints[self._current]

    def _next_endpoint(self, failed_index):
        if self._current == failed_index:
            self._current = (failed_index + 1) % len(self.endpoints)

    def _open_watch_stream(self, index, body, protocol):
        protocol.makeConnection(FakeTransport())
        self.opened.append((index, int(body["create_request"]["start_revision"]), protocol))
        return defer.succeed(None)


class WatchLineTests(unittest.TestCase):
    def setUp(self):
        self.client = FakeClient(["http://a", "http://b", "http://c"])
        self.seen = []
        self.watch = Watch(self.client, b"/a", b"/b", 5, lambda events, rev: self.seen.append(rev))
        self.watch.start()
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def stream(self):
        return self.client.opened[-1][2]

    def watch_logs(self):
        return [e for e in self.logged if e.get("log_namespace") == "idetcd.etcd"]

    def test_error_line_resumes_on_next_endpoint(self):
        """
        etcd's "no leader" line ends the stream (etcd itself keeps it open);
        the watch opens a new one on the next endpoint from the revision
        after the last one it delivered, and says so once, as a warning.
        """
        first = self.stream()
        first.dataReceived(result(6, created=True) + result(6, 6))
        first.dataReceived(NO_LEADER)
        self.assertEqual(len(self.client.opened), 1)
        # What etcd sends: the error object as the last chunk, no line end.
        first.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.seen, [6])
        self.assertEqual(self.client.endpoint, "http://b")
        self.client.reactor.advance(1)
        index, start_revision, second = self.client.opened[-1]
        self.assertEqual((index, start_revision), (1, 7))
        second.dataReceived(result(7, created=True) + result(7, 7))
        self.assertEqual(self.seen, [6, 7])
        self.client.reactor.advance(5)
        self.assertEqual(len(self.client.opened), 2)
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
        first.dataReceived(result(5, created=True) + NO_LEADER + b"\n" + result(6, 6))
        self.assertTrue(first.transport.stopped)
        self.assertEqual(self.seen, [])
        self.client.reactor.advance(1)
        self.assertEqual(self.client.opened[-1][:2], (1, 5))

    def test_cut_stream_resumes_on_next_endpoint(self):
        """
        A stream cut in the middle of a line: the piece is not a line.
        """
        first = self.stream()
        first.dataReceived(result(5, created=True) + result(6, 6)[:20])
        first.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.client.reactor.advance(1)
        self.assertEqual(self.client.opened[-1][:2], (1, 5))
        self.assertEqual(self.watch_logs()[0]["why"], "closed")

    def test_garbled_line_resumes_without_losing_events(self):
        first = self.stream()
        first.dataReceived(result(5, created=True) + b'{"result": {"events": [tru\n')
        self.assertTrue(first.transport.stopped)
        self.client.reactor.advance(1)
        self.assertEqual(self.client.opened[-1][:2], (1, 5))

    def test_repeated_breaks_are_logged_once_per_interval(self):
        """
        With every member leaderless the watch goes round the endpoints
        with a backoff, logging the first break and then one line every
        30 s, not one per attempt.
        """
        for _ in range(100):
            self.stream().dataReceived(NO_LEADER)
            self.stream().connectionLost(Failure(ResponseDone()))
            self.client.reactor.advance(2)
        self.assertEqual(len(self.client.opened), 101)
        self.assertEqual([index for index, _, _ in self.client.opened[:4]], [0, 1, 2, 0])
        breaks = [e for e in self.watch_logs() if "ended" in e["log_format"]]
        self.assertLessEqual(len(breaks), 1 + 200 // 30)
        self.assertGreater(len(breaks), 1)
        self.assertGreater(breaks[-1]["breaks"], 10)

    def test_stop_after_error_line_opens_nothing(self):
        self.stream().dataReceived(NO_LEADER)
        self.stream().connectionLost(Failure(ResponseDone()))
        self.watch.stop()
        self.client.reactor.advance(5)
        self.assertEqual(len(self.client.opened), 1)
        self.assertIsNone(self.successResultOf(self.watch.done))

