"""
The fault hooks of idetcd.testing's etcd: what each does to a request, and
that the store under them stays etcd's (what was applied, was; what was
not, was not).  etcd itself never does these, so no contract case runs
them against a real one.
"""

import json

from twisted.internet import defer

from idetcd.etcd import (
    Compacted,
    EtcdError,
    EtcdUnavailable,
    LeaseNotFound,
    ResyncNeeded,
    b64_text,
)
from idetcd.testing import NO_LEADER, Cut, Hold, LoseReply, Refuse, Stream
from tests.memoryetcd import FakeEtcdCase

KEY = b"/faults/a"
#: What etcd's gateway sends as the last chunk of a watch it ends.
NO_LEADER_LINE = b'{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}'


class RequestFaultTests(FakeEtcdCase):
    """
    Faults planned for a path befall the requests for it.
    """

    @defer.inlineCallbacks
    def stored(self, key=KEY):
        kvs, _ = yield self.client.range(key)
        return [kv.value for kv in kvs]

    @defer.inlineCallbacks
    def test_lost_reply_was_applied(self):
        self.etcd.faults.once("/v3/kv/put", LoseReply())
        yield self.assertFailure(self.client.put(KEY, b"1"), EtcdUnavailable)
        self.assertEqual((yield self.stored()), [b"1"])
        self.assertEqual(self.etcd.revision, 2)
        self.assertEqual(self.etcd.served("/v3/kv/put"), 1)
        # Once: the next put is answered.
        self.assertEqual((yield self.client.put(KEY, b"2")), 3)

    @defer.inlineCallbacks
    def test_cut_was_not_applied(self):
        self.etcd.faults.once("/v3/kv/txn", Cut())
        yield self.assertFailure(self.client.create(KEY, b"1"), EtcdUnavailable)
        self.assertEqual((yield self.stored()), [])
        self.assertEqual(self.etcd.revision, 1)
        self.assertEqual(self.etcd.served("/v3/kv/txn"), 0)
        self.assertEqual(len(self.etcd.requests("/v3/kv/txn")), 1)

    @defer.inlineCallbacks
    def test_no_leader_moves_the_client_to_the_next_endpoint(self):
        client = self.etcd.client(["http://a:2379", "http://b:2379"], timeout=2.0)
        self.addCleanup(client.close)
        self.etcd.faults.once("/v3/kv/put", NO_LEADER)
        revision = yield client.put(KEY, b"1")
        self.assertEqual(revision, 2)
        self.assertEqual(client.endpoint, "http://b:2379")
        self.assertEqual(len(self.etcd.requests("/v3/kv/put")), 2)
        self.assertEqual(self.etcd.served("/v3/kv/put"), 1)

    @defer.inlineCallbacks
    def test_refusal_with_etcds_words(self):
        """
        A refusal etcd would give in another state (a lease it lost) while
        the store says otherwise: the client reads it as etcd's.
        """
        lease, _ = yield self.client.lease_grant(10)
        self.etcd.faults.once("/v3/lease/keepalive", Refuse(5, "etcdserver: requested lease not found", 404))
        yield self.assertFailure(self.client.lease_keepalive(lease), LeaseNotFound)
        self.assertEqual((yield self.client.lease_keepalive(lease)), 10)
        self.etcd.faults.once("/v3/kv/put", Refuse(3, "etcdserver: key is not provided"))
        error = yield self.assertFailure(self.client.put(KEY, b"1"), EtcdError)
        self.assertEqual(error.code, 3)

    @defer.inlineCallbacks
    def test_always_until_cleared(self):
        self.etcd.faults.always("/v3/kv/range", NO_LEADER)
        for _ in range(3):
            yield self.assertFailure(self.client.range(KEY), EtcdUnavailable)
        self.etcd.faults.clear("/v3/kv/range")
        self.assertEqual((yield self.stored()), [])

    @defer.inlineCallbacks
    def test_once_before_always(self):
        self.etcd.faults.always("/v3/kv/put", Cut())
        self.etcd.faults.once("/v3/kv/put", LoseReply())
        yield self.assertFailure(self.client.put(KEY, b"1"), EtcdUnavailable)
        yield self.assertFailure(self.client.put(KEY, b"2"), EtcdUnavailable)
        self.assertEqual((yield self.stored()), [b"1"])

    @defer.inlineCallbacks
    def test_for_one_host(self):
        """
        A fault planned for one endpoint's host befalls the requests sent
        there only: one client of several behind it.
        """
        hindered = self.etcd.client(["http://claimer:2379"], timeout=2.0)
        self.addCleanup(hindered.close)
        self.etcd.faults.always("/v3/kv/put", Cut(), host="claimer:2379")
        yield self.assertFailure(hindered.put(KEY, b"1"), EtcdUnavailable)
        self.assertEqual((yield self.client.put(KEY, b"2")), 2)
        self.etcd.faults.clear("/v3/kv/put", host="claimer:2379")
        self.assertEqual((yield hindered.put(KEY, b"3")), 3)
        self.assertEqual(len(self.etcd.requests("/v3/kv/put", host="claimer:2379")), 2)
        self.assertEqual(len(self.etcd.requests("/v3/kv/put")), 3)

    @defer.inlineCallbacks
    def test_paths_received(self):
        """
        Every request etcd received, by path and host: GETs, and requests
        a fault cut, too.
        """
        hindered = self.etcd.client(["http://claimer:2379"], timeout=2.0)
        self.addCleanup(hindered.close)
        self.etcd.faults.once("/v3/kv/put", Cut(), host="claimer:2379")
        yield self.assertFailure(hindered.put(KEY, b"1"), EtcdUnavailable)
        self.assertTrue((yield hindered.healthy()))
        yield self.client.put(KEY, b"2")
        self.assertEqual(self.etcd.paths("claimer:2379"), {"/v3/kv/put": 1, "/health": 1})
        self.assertEqual(self.etcd.paths(), {"/v3/kv/put": 2, "/health": 1})
        self.assertEqual(self.etcd.requests("/health"), [None])

    def test_returns_the_fault(self):
        hold = Hold()
        self.assertIs(self.etcd.faults.once("/v3/kv/put", hold), hold)
        self.assertIs(self.etcd.faults.always("/v3/kv/range", hold), hold)


class HoldTests(FakeEtcdCase):
    """
    A request held in flight reaches etcd when released, or never.
    """

    @defer.inlineCallbacks
    def test_release_applies_then_answers(self):
        hold = self.etcd.faults.once("/v3/kv/put", Hold())
        d = self.client.put(KEY, b"1")
        self.assertNoResult(d)
        self.assertEqual(hold.pending, 1)
        self.assertEqual(self.etcd.revision, 1)
        yield self.client.put(b"/faults/b", b"x")  # passes the held one
        self.assertEqual(hold.release()["value"], "MQ==")
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual(hold.pending, 0)

    def test_releases_in_order(self):
        hold = self.etcd.faults.always("/v3/kv/put", Hold())
        first, second = self.client.put(KEY, b"1"), self.client.put(KEY, b"2")
        self.assertEqual([body["value"] for body in hold.bodies], ["MQ==", "Mg=="])
        hold.release()
        self.assertEqual(self.successResultOf(first), 2)
        self.assertNoResult(second)
        hold.release()
        self.assertEqual(self.successResultOf(second), 3)

    @defer.inlineCallbacks
    def test_cut_never_applies(self):
        hold = self.etcd.faults.once("/v3/kv/put", Hold())
        d = self.client.put(KEY, b"1")
        hold.cut()
        self.failureResultOf(d, EtcdUnavailable)
        kvs, _ = yield self.client.range(KEY)
        self.assertEqual(kvs, [])

    def test_given_up_by_the_client_is_gone(self):
        """
        A request held past the client's timeout is dropped with its
        connection: never applied, nothing left to release.
        """
        hold = self.etcd.faults.once("/v3/kv/put", Hold())
        d = self.client.put(KEY, b"1")
        self.clock.advance(2.0)
        self.failureResultOf(d, EtcdUnavailable)
        self.assertEqual(hold.pending, 0)
        self.assertRaises(AssertionError, hold.release)
        self.assertEqual(self.etcd.revision, 1)

    def test_delay_on_the_clock(self):
        """
        A slow etcd: the request reaches it C{delay} seconds after it was
        sent, and is applied then.
        """
        self.etcd.faults.once("/v3/lease/grant", Hold(self.clock, delay=1.5))
        d = self.client.lease_grant(10)
        self.clock.advance(1.4)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        lease, ttl = self.successResultOf(d)
        self.assertEqual(ttl, 10)
        info = self.successResultOf(self.client.lease_time_to_live(lease))
        self.assertEqual(info.ttl, 10)  # granted at t=1.5, not at t=0

    def test_delay_past_the_timeout(self):
        self.etcd.faults.once("/v3/lease/grant", Hold(self.clock, delay=3))
        d = self.client.lease_grant(10)
        self.advance(5)
        self.failureResultOf(d, EtcdUnavailable)
        self.assertEqual(self.successResultOf(self.client.call("/v3/lease/leases", {})).get("leases"), None)

    def test_release_matching(self):
        """
        Requests of one path told apart by their bodies: the oldest one
        that matches goes first.
        """
        hold = self.etcd.faults.always("/v3/kv/txn", Hold())
        create = self.client.create(KEY, b"1")
        delete = self.client.delete_on_lease(b"/faults/b", 7)
        self.assertEqual(hold.release(lambda body: body["compare"][0]["target"] == "LEASE")["compare"][0]["key"], "L2ZhdWx0cy9i")
        self.assertFalse(self.successResultOf(delete))
        self.assertNoResult(create)
        self.assertRaises(AssertionError, hold.release, lambda body: False)
        hold.release()
        self.assertTrue(self.successResultOf(create).succeeded)

    @defer.inlineCallbacks
    def test_lose_applies_without_a_reply(self):
        hold = self.etcd.faults.once("/v3/kv/txn", Hold())
        d = self.client.create(KEY, b"1")
        hold.lose()
        self.failureResultOf(d, EtcdUnavailable)
        kvs, _ = yield self.client.range(KEY)
        self.assertEqual([kv.value for kv in kvs], [b"1"])

    @defer.inlineCallbacks
    def test_reach_applies_now_and_answers_later(self):
        """
        A request that reached etcd, its reply slow on the way back: the
        reply says what etcd answered then, whatever happened since.
        """
        hold = self.etcd.faults.once("/v3/kv/range", Hold())
        yield self.client.put(KEY, b"1")
        d = self.client.range(KEY)
        hold.reach()
        yield self.client.put(KEY, b"2")
        self.assertNoResult(d)
        self.assertEqual(hold.pending, 1)
        hold.release()
        kvs, revision = self.successResultOf(d)
        self.assertEqual(([kv.value for kv in kvs], revision), ([b"1"], 2))

    def test_reached_then_given_up_stays_applied(self):
        hold = self.etcd.faults.once("/v3/kv/put", Hold())
        d = self.client.put(KEY, b"1")
        hold.reach()
        self.clock.advance(2.0)
        self.failureResultOf(d, EtcdUnavailable)
        self.assertEqual(hold.pending, 0)
        self.assertEqual(self.etcd.revision, 2)

    @defer.inlineCallbacks
    def test_large_body(self):
        """
        A request over the 100,000 bytes twisted.web keeps in memory (it
        keeps larger bodies in a file): a transaction of 100 puts of 1 KB,
        held and released as any other.
        """
        hold = self.etcd.faults.once("/v3/kv/txn", Hold())
        value = b64_text(b"x" * 1000)
        puts = [{"request_put": {"key": b64_text(b"/faults/%03d" % i), "value": value}} for i in range(100)]
        body = {"success": puts}
        self.assertGreater(len(json.dumps(body)), 100000)
        d = self.client.call("/v3/kv/txn", body)
        self.assertEqual(hold.bodies, [body])
        self.assertEqual(hold.release(), body)
        self.successResultOf(d)
        kvs, revision = yield self.client.range(b"/faults/", b"/faults0")
        self.assertEqual((len(kvs), revision), (100, 2))

    def test_reach_passes_over_those_that_reached(self):
        """
        A second reach lets the next request reach etcd, not the one whose
        reply is held already; lose and cut pass over it too.
        """
        hold = self.etcd.faults.always("/v3/kv/put", Hold())
        first, second, third = (self.client.put(KEY, value) for value in (b"1", b"2", b"3"))
        self.assertEqual(hold.reach()["value"], "MQ==")
        self.assertEqual(hold.reach()["value"], "Mg==")
        self.assertEqual(self.etcd.revision, 3)
        self.assertEqual(hold.cut()["value"], "Mw==")
        self.failureResultOf(third, EtcdUnavailable)
        self.assertRaises(AssertionError, hold.reach)
        self.assertRaises(AssertionError, hold.lose)
        self.assertRaises(AssertionError, hold.cut)
        self.assertEqual(hold.pending, 2)
        hold.release()
        hold.release()
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (2, 3))
        self.assertEqual(self.etcd.revision, 3)

    def test_delay_needs_a_clock(self):
        self.assertRaises(TypeError, Hold, delay=1.5)

    def test_nothing_held(self):
        self.assertRaises(AssertionError, Hold().release)
        self.assertRaises(AssertionError, Hold().cut)
        self.assertRaises(AssertionError, Hold().lose)
        self.assertRaises(AssertionError, Hold().reach)


class WatchStreamTests(FakeEtcdCase):
    """
    A watch stream the test breaks; the client's watch resumes from where
    it was, as it would from etcd's.
    """

    def setUp(self):
        FakeEtcdCase.setUp(self)
        self.seen = []
        self.watch = self.client.watch(
            b"/faults/", b"/faults0", 1, lambda events, revision: self.seen.append(revision)
        )
        self.addCleanup(self.watch.stop)

    def open_streams(self):
        return [stream for stream in self.etcd.watch_streams if not stream.closed]

    def resumed(self):
        """
        The stream the watch opens once its backoff has passed (the one it
        had is closed).
        """
        self.assertEqual(self.open_streams(), [])
        self.advance_until(self.open_streams)
        (stream,) = self.open_streams()
        return stream

    @defer.inlineCallbacks
    def test_open_streams(self):
        (stream,) = self.open_streams()
        self.assertEqual(stream.create["start_revision"], "1")
        self.assertIsNone(stream.token)
        self.assertEqual(stream.host, "etcd.invalid:2379")
        self.assertFalse(stream.closed)
        yield self.client.put(KEY, b"1")
        self.assertEqual(self.seen, [2])
        self.watch.stop()
        self.assertTrue(stream.closed)
        self.assertEqual(self.open_streams(), [])
        self.assertEqual(self.etcd.watch_streams, [stream])

    @defer.inlineCallbacks
    def test_garbled_line(self):
        yield self.client.put(KEY, b"1")
        (stream,) = self.open_streams()
        stream.write(b'{"result": {"events": [tru\n')
        self.assertTrue(stream.closed)
        again = self.resumed()
        self.assertEqual(again.create["start_revision"], "2")
        yield self.client.put(KEY, b"2")
        self.assertEqual(self.seen, [2, 3])

    @defer.inlineCallbacks
    def test_cut_in_the_middle_of_a_line(self):
        (stream,) = self.open_streams()
        stream.write(b'{"result": {"header"')
        stream.cut()
        self.assertTrue(stream.closed)
        yield self.client.put(KEY, b"1")  # while no stream is open
        self.resumed()
        self.assertEqual(self.seen, [2])

    def test_ended_with_an_error(self):
        (stream,) = self.open_streams()
        stream.end(NO_LEADER_LINE)
        self.assertTrue(stream.closed)
        self.assertEqual(self.resumed().create["start_revision"], "1")
        self.assertFalse(self.watch.done.called)

    @defer.inlineCallbacks
    def test_held_watch_opens_when_released(self):
        hold = self.etcd.faults.once("/v3/watch", Hold())
        (stream,) = self.open_streams()
        stream.cut()
        self.advance_until(lambda: hold.pending)
        self.assertEqual(self.etcd.served("/v3/watch"), 1)
        yield self.client.put(KEY, b"1")
        self.assertEqual(self.seen, [])
        hold.release()
        self.assertEqual(self.etcd.served("/v3/watch"), 2)
        self.assertEqual(self.seen, [2])

    @defer.inlineCallbacks
    def test_paused_stream_holds_results_back(self):
        """
        A paused stream (a slow link) sends its events only when resumed,
        in one result, up to a revision or all of them.
        """
        (stream,) = self.open_streams()
        stream.pause()
        for value in (b"1", b"2", b"3"):
            yield self.client.put(KEY, value)
        self.assertEqual(self.seen, [])
        stream.resume(3)
        self.assertEqual(self.seen, [3])  # revisions 2 and 3, in one result
        yield self.client.put(KEY, b"4")
        self.assertEqual(self.seen, [3])
        stream.resume()
        self.assertEqual(self.seen, [3, 5])
        yield self.client.put(KEY, b"5")
        self.assertEqual(self.seen, [3, 5, 6])

    @defer.inlineCallbacks
    def test_paused_past_a_compaction(self):
        """
        A stream held back past a compaction cannot catch up: when resumed
        it is told the watch was cancelled at the compaction revision, as
        etcd tells a watch from before it, and the client's watch gives up
        for a full read.
        """
        (stream,) = self.open_streams()
        stream.pause()
        for value in (b"1", b"2", b"3"):
            yield self.client.put(KEY, value)
        self.etcd.compact(3)
        self.assertFalse(self.watch.done.called)
        stream.resume()
        error = self.failureResultOf(self.watch.done, Compacted)
        self.assertEqual((error.value.compact_revision, self.seen), (3, []))
        self.assertTrue(stream.closed)
        yield self.client.put(KEY, b"4")
        self.assertEqual(self.seen, [])

    @defer.inlineCallbacks
    def test_paused_up_to_the_compaction_revision(self):
        """
        A stream held back from the compaction revision on catches up, as
        a watch from that revision starts.
        """
        (stream,) = self.open_streams()
        stream.pause()
        for value in (b"1", b"2"):
            yield self.client.put(KEY, value)
        self.etcd.compact(2)
        stream.resume()
        self.assertEqual(self.seen, [3])
        self.assertFalse(self.watch.done.called)

    def test_pause_before_etcd_took_the_watch(self):
        """
        A stream whose watch etcd has not taken (held here) has nothing to
        pause or resume: the test is told so.
        """
        self.etcd.faults.once("/v3/watch", Hold())
        self.open_streams()[0].cut()
        self.advance_until(lambda: len(self.etcd.watch_streams) == 2)
        held = self.etcd.watch_streams[-1]
        self.assertRaises(AssertionError, held.pause)
        self.assertRaises(AssertionError, held.resume)

    def test_stream_in_place_of_etcds(self):
        """
        A watch answered with the test's lines: refused at its start, or
        ended before it began (no leader), and resumed after.
        """
        self.etcd.faults.once("/v3/watch", Stream(NO_LEADER_LINE, end=True))
        self.open_streams()[0].cut()
        self.advance_until(lambda: len(self.etcd.watch_streams) == 3)
        first, refused, resumed = self.etcd.watch_streams
        self.assertTrue(refused.closed)
        self.assertFalse(resumed.closed)
        self.assertEqual(self.etcd.served("/v3/watch"), 2)
        self.etcd.faults.once(
            "/v3/watch", Stream(b'{"result":{"header":{},"created":true,"canceled":true,"cancel_reason":"gone"}}\n')
        )
        resumed.cut()
        self.advance_until(lambda: self.watch.done.called)
        self.failureResultOf(self.watch.done, ResyncNeeded)
