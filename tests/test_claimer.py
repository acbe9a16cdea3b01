"""
The claimer: on idetcd.testing's etcd for what etcd decides, and on a
L{Clock} with a scripted client for the timing of keepalives.  Races and
storms against real etcd are in test_claim_race.
"""

import functools

import attr
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from idetcd.claim import Announcement, ClaimQueue
from idetcd.claim._claimer import Claimer, SlotsExhausted, _Held
from idetcd.etcd import (
    EtcdUnavailable,
    KeyValue,
    LeaseInfo,
    LeaseNotFound,
    TxnResult,
    prefix_range_end,
)
from idetcd.members._record import Member
from idetcd.members._registry import Registry
from idetcd.names._pattern import Pattern
from tests.memoryetcd import FakeEtcdCase

PREFIX = b"/idetcd/"
PATTERN = Pattern.parse("worker{{.ID}}.tf.local.")


def identity(node, address="127.0.0.1"):
    return Member(name="", ipv4=(address,), port="53", node=node)


class ClaimerTests(FakeEtcdCase):
    """
    What the claimer does with what etcd decides, on idetcd.testing's etcd
    and its clock.
    """

    def claimer(self, node, limit=5, lease_ttl=3, preferred=None, predecessor_lease=None, registry=None, **kwargs):
        if registry is None:
            registry = Registry(self.client, PREFIX, self.clock)
            registry.startService()
            self.addCleanup(registry.stopService)
        announcement = Announcement(identity(node), preferred, predecessor_lease)
        claimer = Claimer(
            self.client, PATTERN, limit, PREFIX, lambda: announcement, lease_ttl, self.clock,
            registry, ClaimQueue(registry), **kwargs
        )
        claimer.startService()
        self.addCleanup(lambda: claimer.stopService() if claimer.running else None)
        return claimer

    @defer.inlineCallbacks
    def names_in_etcd(self):
        kvs, _ = yield self.client.range(PREFIX, prefix_range_end(PREFIX))
        return {kv.key[len(PREFIX):].decode(): Member.from_value("", kv.value).node for kv in kvs}

    @defer.inlineCallbacks
    def test_lowest_free_slot_first(self):
        yield self.client.put(PREFIX + b"worker1.tf.local.", identity("other").to_value())
        name = yield self.settled(self.claimer("a").when_claimed())
        self.assertEqual(name, "worker2.tf.local.")
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker1.tf.local.": "other", "worker2.tf.local.": "a"})

    @defer.inlineCallbacks
    def test_value_is_the_original_plugins_shape(self):
        yield self.settled(self.claimer("a").when_claimed())
        kvs, _ = yield self.client.range(PREFIX + b"worker1.tf.local.")
        # The original plugin's fields first; it ignores the rest.
        self.assertEqual(
            kvs[0].value,
            b'{"ipv4":"127.0.0.1","ipv6":"","port":"53","node":"a","role":"worker","slot":1}',
        )
        self.assertNotEqual(kvs[0].lease, 0)

    @defer.inlineCallbacks
    def test_simultaneous_claimers_get_distinct_names(self):
        claimers = [self.claimer(f"n{i}", limit=10) for i in range(10)]
        names = yield self.settled(defer.gatherResults([c.when_claimed() for c in claimers]))
        self.assertEqual(sorted(names), sorted(PATTERN.render(i) for i in range(1, 11)))
        held = yield self.names_in_etcd()
        self.assertEqual(len(held), 10)

    @defer.inlineCallbacks
    def test_full_fails_with_message(self):
        for i in range(2):
            yield self.settled(self.claimer(f"n{i}", limit=2).when_claimed())
        error = yield self.assertFailure(self.settled(self.claimer("late", limit=2).when_claimed()), SlotsExhausted)
        self.assertIn("all 2 slots of pattern 'worker{{.ID}}.tf.local.' are taken", str(error))

    @defer.inlineCallbacks
    def test_wait_takes_a_freed_slot(self):
        first = self.claimer("a", limit=1)
        yield self.settled(first.when_claimed())
        waiting = self.claimer("b", limit=1, wait=True).when_claimed()
        self.advance(0.5)
        self.assertFalse(waiting.called)
        yield first.stopService()
        name = yield self.settled(waiting)
        self.assertEqual(name, "worker1.tf.local.")

    @defer.inlineCallbacks
    def test_stop_revokes_the_lease(self):
        claimer = self.claimer("a")
        yield self.settled(claimer.when_claimed())
        yield claimer.stopService()
        held = yield self.names_in_etcd()
        self.assertEqual(held, {})

    @defer.inlineCallbacks
    def test_keeps_the_name_past_the_ttl(self):
        claimer = self.claimer("a", lease_ttl=2)
        name = yield self.settled(claimer.when_claimed())
        self.advance(5)
        self.assertEqual(claimer.held_name, name)
        held = yield self.names_in_etcd()
        self.assertEqual(held, {name: "a"})

    @defer.inlineCallbacks
    def test_revoked_lease_is_claimed_again_on_the_old_slot(self):
        """
        An operator revoking the lease makes the node claim again; it gets
        its old slot back if free.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        registry = Registry(self.client, PREFIX, self.clock)
        registry.startService()
        self.addCleanup(registry.stopService)
        claimer = self.claimer("a", lease_ttl=3, registry=registry)
        yield self.settled(claimer.when_claimed())
        old_lease = claimer.lease
        yield self.client.lease_revoke(old_lease)
        self.advance_until(lambda: claimer.lease not in (None, old_lease))
        self.assertEqual(claimer.held_name, "worker1.tf.local.")
        lines = [formatEvent(e) for e in events]
        self.assertIn("the claim's lease is gone from etcd (revoked, or expired); claiming with a new one", lines)
        self.assertFalse([line for line in lines if "taken over" in line or "cannot claim" in line], lines)
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker1.tf.local.": "a"})

    @defer.inlineCallbacks
    def test_deleted_key_is_noticed_through_the_registry(self):
        """
        An operator deleting the key makes the node claim again, on the same
        lease, which is still alive and now holds nothing.
        """
        registry = Registry(self.client, PREFIX, self.clock)
        registry.startService()
        self.addCleanup(registry.stopService)
        claimer = self.claimer("a", registry=registry)
        yield self.settled(claimer.when_claimed())
        lease = claimer.lease
        yield self.client.delete(PREFIX + b"worker1.tf.local.")
        self.advance_until(lambda: registry.members.get("worker1.tf.local.") is not None)
        self.assertEqual(registry.members["worker1.tf.local."].lease, lease)
        self.assertEqual(claimer.held_name, "worker1.tf.local.")
        self.assertEqual(claimer.lease, lease)

    @defer.inlineCallbacks
    def test_restart_takes_over_its_own_key(self):
        """
        A node back from a crash, its old lease still alive and provably its
        own (the state directory says so), takes its key over at once
        instead of taking a second slot, and revokes the old lease.
        """
        lease, _ = yield self.client.lease_grant(60)
        yield self.client.put(PREFIX + b"worker3.tf.local.", identity("a").to_value(), lease=lease)
        claimer = self.claimer("a", preferred="worker3.tf.local.", predecessor_lease=lease)
        name = yield self.settled(claimer.when_claimed())
        self.assertEqual(name, "worker3.tf.local.")
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker3.tf.local.": "a"})
        yield self.assertFailure(self.client.lease_keepalive(lease), LeaseNotFound)

    @defer.inlineCallbacks
    def test_unproven_own_key_is_waited_for_not_taken(self):
        """
        A key with this node's identity on a lease it cannot prove its own
        (a reboot, a copied state directory) is left alone until its lease
        ends; then the node takes the slot with a plain create.
        """
        lease, _ = yield self.client.lease_grant(3)
        put = yield self.client.put(PREFIX + b"worker3.tf.local.", identity("a").to_value(), lease=lease)
        claimer = self.claimer("a", preferred="worker3.tf.local.")
        name = yield self.settled(claimer.when_claimed())
        self.assertEqual(name, "worker3.tf.local.")
        kvs, _ = yield self.client.range(PREFIX + b"worker3.tf.local.")
        self.assertEqual(kvs[0].lease, claimer.lease)
        self.assertGreater(kvs[0].create_revision, put)  # created anew, not overwritten

    @defer.inlineCallbacks
    def test_live_twin_makes_the_later_node_take_a_fresh_identity(self):
        """
        Two live processes with one identity (a cloned state directory): the
        later one finds the other's key alive and renewed, leaves it alone,
        takes a fresh identity, says so, and claims another slot.
        """
        twin = self.claimer("a", lease_ttl=3)
        yield self.settled(twin.when_claimed())
        fresh = []
        later = self.claimer(
            "a", lease_ttl=3, preferred="worker1.tf.local.",
            predecessor_lease=12345, on_identity=fresh.append,
        )
        name = yield self.settled(later.when_claimed())
        self.assertEqual(name, "worker2.tf.local.")
        self.assertEqual(len(fresh), 1)
        self.assertNotEqual(fresh[0], "a")
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker1.tf.local.": "a", "worker2.tf.local.": fresh[0]})
        self.assertEqual(twin.held_name, "worker1.tf.local.")
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    @defer.inlineCallbacks
    def test_lost_reply_and_freed_lower_slot_leave_one_key(self):
        """
        The reply to a winning transaction is lost, and meanwhile a lower
        slot frees: the retry finds the key already on its lease and does
        not take a second one.
        """
        lower = self.claimer("low")
        yield self.settled(lower.when_claimed())
        lost = []
        create = self.client.create

        def lose_first_reply(*args, **kwargs):
            d = create(*args, **kwargs)
            if not lost:
                lost.append(args[0])
                d.addCallback(lambda _: lower.stopService())
                d.addCallback(lambda _: defer.fail(defer.TimeoutError("reply lost")))
            return d

        self.client.create = lose_first_reply
        claimer = self.claimer("a")
        name = yield self.settled(claimer.when_claimed())
        self.assertEqual(lost, [PREFIX + b"worker2.tf.local."])
        self.assertEqual(name, "worker2.tf.local.")
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker2.tf.local.": "a"})
        info = yield self.client.lease_time_to_live(claimer.lease, keys=True)
        self.assertEqual(info.keys, {PREFIX + b"worker2.tf.local."})

    @defer.inlineCallbacks
    def test_lost_grant_reply_leaves_no_second_lease(self):
        """
        The reply to a lease grant is lost (a timeout on a slow etcd): the
        retry asks for the same lease ID, so etcd holds one lease, the one
        the claim is on, not one per try.
        """
        lost = []
        grant = self.client.lease_grant

        def lose_first_reply(*args, **kwargs):
            d = grant(*args, **kwargs)
            if not lost:
                lost.append(args)
                d.addCallback(lambda _: defer.fail(defer.TimeoutError("reply lost")))
            return d

        self.client.lease_grant = lose_first_reply
        claimer = self.claimer("a")
        name = yield self.settled(claimer.when_claimed())
        self.assertEqual(len(lost), 1)
        self.assertEqual(name, "worker1.tf.local.")
        leases = yield self.client.call("/v3/lease/leases", {})
        self.assertEqual([int(lease["ID"]) for lease in leases["leases"]], [claimer.lease])

    @defer.inlineCallbacks
    def test_garbage_in_a_slot_counts_as_taken(self):
        yield self.client.put(PREFIX + b"worker1.tf.local.", b"not json")
        name = yield self.settled(self.claimer("a").when_claimed())
        self.assertEqual(name, "worker2.tf.local.")

    @defer.inlineCallbacks
    def test_stop_while_waiting_for_a_slot(self):
        yield self.settled(self.claimer("a", limit=1).when_claimed())
        waiting = self.claimer("b", limit=1, wait=True)
        d = waiting.when_claimed()
        self.advance(0.3)
        yield waiting.stopService()
        yield self.assertFailure(d, defer.CancelledError)
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker1.tf.local.": "a"})

    @defer.inlineCallbacks
    def test_empty_prefix_gives_the_original_keys(self):
        registry = Registry(self.client, b"", self.clock)
        registry.startService()
        self.addCleanup(registry.stopService)
        claimer = Claimer(
            self.client, PATTERN, 5, b"", lambda: Announcement(identity("a")), 3, self.clock,
            registry, ClaimQueue(registry),
        )
        claimer.startService()
        self.addCleanup(claimer.stopService)
        yield self.client.put(b"unrelated", b"x")
        name = yield self.settled(claimer.when_claimed())
        self.assertEqual(name, "worker1.tf.local.")
        kvs, _ = yield self.client.range(b"worker1.tf.local.")
        self.assertEqual(Member.from_value(name, kvs[0].value).node, "a")

    @defer.inlineCallbacks
    def test_preferred_slot_when_free(self):
        name = yield self.settled(self.claimer("a", preferred="worker4.tf.local.").when_claimed())
        self.assertEqual(name, "worker4.tf.local.")


class ScriptedClient:
    """
    An etcd client whose every reply the test gives, in order, for the
    claimer's transitions on a L{Clock}.
    """

    def __init__(self):
        self.calls = []
        self.revoked = []

    def _call(self, method, *args):
        d = defer.Deferred()
        self.calls.append((method, args, d))
        return d

    def pending(self, method):
        return [args for m, args, d in self.calls if m == method and not d.called]

    def answer(self, method, result):
        """
        Answer the oldest unanswered call of C{method} with C{result} (an
        exception fails it).
        """
        for m, args, d in self.calls:
            if m == method and not d.called:
                if isinstance(result, Exception):
                    d.errback(result)
                else:
                    d.callback(result)
                return args
        raise AssertionError(f"no {method} call waits for an answer: {self.calls}")

    def lease_grant(self, ttl, lease=0):
        return self._call("grant", ttl)

    def lease_keepalive(self, lease, timeout=None):
        return self._call("keepalive", lease, timeout)

    def lease_time_to_live(self, lease, keys=False, timeout=None):
        return self._call("timetolive", lease, keys)

    def range(self, key, range_end=None):
        return self._call("range", key)

    def put(self, key, value, lease=0):
        return self._call("put", key, lease)

    def create(self, key, value, lease=0, replacing=None, also_delete=None):
        return self._call("create", key, lease)

    def delete_on_lease(self, key, lease):
        return self._call("delete", key, lease)

    def lease_revoke(self, lease):
        self.revoked.append(lease)
        return defer.succeed({})


KEY1 = PREFIX + b"worker1.tf.local."


def lease_info(*keys, revision=9):
    return LeaseInfo(ttl=5, granted_ttl=9, keys=frozenset(keys), revision=revision)


class FakeRegistry:
    """
    The claimer's view of etcd, told by the test.
    """

    def __init__(self):
        self.members = {}
        self.revision = self.applied = 0
        #: Whether waits for revisions not yet applied really wait; when
        #: not, the view is taken as caught up but blind to the node's own
        #: writes, as a registry whose watch lags is.
        self.strict = False
        self._subscribers = []
        self._waiting = []
        self.dead = {}

    def when_caught_up(self, revision):
        if revision <= self.applied or not self.strict:
            return defer.succeed(self)
        d = defer.Deferred()
        self._waiting.append((revision, d))
        return d

    def is_free(self, name):
        return name not in self.members

    def is_dead(self, member):
        # Members here carry no names: a mark is known by its lease.
        return member.lease in self.dead.values()

    def take_every_slot(self):
        self.members = {PATTERN.render(i): identity("other") for i in (1, 2, 3)}

    def subscribe(self, callback):
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def change(self, members, revision):
        self.members, self.revision, self.applied = members, revision, revision
        for callback in list(self._subscribers):
            callback()
        waiting, self._waiting = self._waiting, []
        for wanted, d in waiting:
            if d.called:
                continue
            if wanted <= revision:
                d.callback(self)
            else:
                self._waiting.append((wanted, d))


class FakeQueue:
    """
    The claim queue, told by the test: queued nodes are assigned the free
    slots in the order they queued.
    """

    def __init__(self, registry):
        self.registry = registry
        self.queued = []

    def key(self, tag, lease):
        self.queued = [lease]  # one claimer here
        return PREFIX + b"_claims/" + tag + b"/%016x" % lease

    def queue(self, tag):
        return list(self.queued)

    def assignment(self, tag, names):
        free = [name for name in names if self.registry.is_free(name)]
        return dict(zip(self.queue(tag), free))


class TransitionTests(unittest.TestCase):
    """
    Each transition of the claimer's state machine, with time and etcd's
    replies in the test's hands.  TTL 9: keepalives every 3 s.
    """

    def setUp(self):
        self.clock = Clock()
        self.client = ScriptedClient()
        self.registry = FakeRegistry()
        self.queue = FakeQueue(self.registry)
        self.claimed = []
        self.claimer = Claimer(
            self.client, PATTERN, 3, PREFIX, lambda: Announcement(identity("a")), 9, self.clock,
            registry=self.registry, queue=self.queue, on_claimed=lambda name, lease: self.claimed.append((name, lease)),
        )

    def tearDown(self):
        if self.claimer.running:
            self.claimer.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def start(self):
        self.claimer.startService()
        return self.claimer.when_claimed()

    def hold(self, lease=7):
        """
        Start and win worker1 on C{lease} at t=0, through the queue the
        first time, directly (the slot it held) after that; returns
        when_claimed().
        """
        d = self.start()
        self.client.answer("grant", (lease, 9))
        if self.claimer.announcement.preferred is None:
            self.client.answer("put", 1)
        else:
            self.client.answer("range", ([], 1))
        self.client.answer("create", TxnResult(True, 2, None))
        self.assertEqual(self.claimer.held_name, "worker1.tf.local.")
        return d

    def keepalive(self, result=9):
        self.client.answer("keepalive", result)

    # idle

    def test_idle_stop(self):
        d = self.claimer.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual((self.client.calls, self.client.revoked), ([], []))

    def test_stopped_starts_again(self):
        self.hold()
        self.claimer.stopService()
        self.assertEqual(self.client.revoked, [7])
        self.hold(lease=8)
        self.assertEqual(self.claimer.lease, 8)
        self.assertEqual(self.claimed, [("worker1.tf.local.", 7), ("worker1.tf.local.", 8)])

    # claiming

    def test_claiming_wins(self):
        d = self.hold()
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")
        self.assertEqual(self.claimer.lease, 7)
        self.assertEqual(self.claimer.slot, 1)
        self.assertEqual(self.claimed, [("worker1.tf.local.", 7)])

    def test_claiming_stop_before_the_lease_revokes_nothing(self):
        d = self.start()
        self.claimer.stopService()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.client.revoked, [])
        self.assertTrue(self.client.calls[0][2].called)  # the grant was cancelled

    def test_claiming_stop_with_a_lease_revokes_it(self):
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.claimer.stopService()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.client.revoked, [7])
        self.assertEqual(self.client.pending("put"), [])

    def test_claiming_keeps_the_lease_alive_while_it_claims(self):
        """
        A claim slower than the lease still wins on a live lease.
        """
        d = self.start()
        self.client.answer("grant", (7, 9))
        for _ in range(5):  # 15 s of a range that does not come back
            self.clock.advance(3)
            self.keepalive()
        self.assertEqual(len(self.client.pending("keepalive")), 0)
        self.client.answer("put", 1)
        self.client.answer("create", TxnResult(True, 2, None))
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")

    def test_claiming_won_on_an_unsure_lease_is_confirmed_first(self):
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.clock.advance(9)  # no keepalive answered: the deadline passes
        self.client.answer("put", 1)
        self.client.answer("create", TxnResult(True, 2, None))
        self.assertNoResult(d)
        self.assertIsNone(self.claimer.held_name)
        self.keepalive()  # the keepalive sent at t=3 comes back
        self.client.answer("timetolive", lease_info(KEY1))
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")

    def test_claiming_lease_gone_starts_over_with_a_new_lease(self):
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.clock.advance(3)
        self.client.answer("keepalive", LeaseNotFound(5, "gone"))
        self.assertEqual(len(self.client.pending("grant")), 1)
        self.client.answer("grant", (8, 9))
        self.client.answer("put", 1)
        self.client.answer("create", TxnResult(True, 2, None))
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")
        self.assertEqual(self.claimer.lease, 8)

    def test_claiming_lost_reply_looks_at_its_own_lease_first(self):
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.client.answer("put", 1)
        self.client.answer("create", EtcdUnavailable("reply lost"))
        self.clock.advance(1)  # the backoff
        self.client.answer("timetolive", lease_info(KEY1, PREFIX + b"worker2.tf.local."))
        self.assertEqual(self.client.answer("delete", True), (PREFIX + b"worker2.tf.local.", 7))
        self.assertEqual(self.client.answer("delete", True)[0][:len(PREFIX) + 8], PREFIX + b"_claims/")
        self.client.answer("range", ([KeyValue(KEY1, b"{}", 8, 8, 7)], 9))
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")
        self.assertEqual(self.claimer.claim_revision, 8)

    def test_claiming_lost_race_takes_the_next_share(self):
        """
        The assigned slot was taken outside the queue's order (a node
        taking back its own slot): the next view gives another.
        """
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.client.answer("put", 1)
        self.registry.change({"worker1.tf.local.": identity("other")}, 3)
        self.client.answer("create", TxnResult(False, 3, None))
        self.assertEqual(self.client.answer("create", TxnResult(True, 4, None))[0], PREFIX + b"worker2.tf.local.")
        self.assertEqual(self.successResultOf(d), "worker2.tf.local.")

    def test_claiming_waits_behind_a_node_queued_earlier(self):
        """
        The one free slot is another queued node's share: this node waits
        for the registry to move (or a third of the lease), and takes the
        share that is then its own.
        """
        self.registry.members = {PATTERN.render(i): identity("other") for i in (1, 2)}
        self.registry.applied, self.registry.strict = 1, True
        self.queue.queued = [5]
        self.queue.key = lambda tag, lease: self.queue.queued.append(lease) or b"q"
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.client.answer("put", 1)
        self.assertEqual(self.client.pending("create"), [])
        self.clock.advance(3)  # a third of the lease: look again, still nothing
        self.assertEqual(self.client.pending("create"), [])
        self.queue.queued.remove(5)  # the earlier node's lease ended
        self.registry.change(dict(self.registry.members), 4)
        self.client.answer("create", TxnResult(True, 5, None))
        self.assertEqual(self.successResultOf(d), "worker3.tf.local.")

    def test_claiming_resent_create_that_won_counts_as_won(self):
        """
        A create sent again to the next endpoint after a timeout fails
        against the key its first sending put, on our own lease: a win.
        """
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.client.answer("put", 1)
        ours = KeyValue(KEY1, b"{}", 5, 5, 7)
        self.client.answer("create", TxnResult(False, 6, ours))
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")
        self.assertEqual(self.claimer.claim_revision, 5)

    def test_claiming_won_just_as_the_deadline_passed_asks_etcd(self):
        """
        A claim won when the lease's deadline has passed, before the expiry
        timer ran: the node asks etcd at once rather than wait for a
        renewal report that may never come.
        """
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.client.answer("put", 1)
        self.clock.rightNow = 9.5  # frozen past the deadline
        self.client.answer("create", TxnResult(True, 2, None))
        self.assertNoResult(d)
        # etcd: 5 s left on the lease, which holds our key.
        self.assertEqual(self.client.answer("timetolive", lease_info(KEY1)), (7, True))
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")
        self.assertEqual(self.claimer._keeper.deadline, 14.5)

    def test_claiming_no_slot_fails(self):
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.registry.take_every_slot()
        self.client.answer("put", 1)
        self.failureResultOf(d, SlotsExhausted)
        self.failureResultOf(self.claimer.when_claimed(), SlotsExhausted)
        self.assertEqual(self.client.revoked, [7])
        self.claimer.stopService()

    def test_reclaim_with_no_free_slot_waits_without_a_lease(self):
        """
        A node whose slot was taken while no other is free does not exit
        and does not keep an empty lease: it waits, holding nothing.
        """
        self.hold()
        self.registry.change({}, 5)  # the key is gone...
        held = KeyValue(KEY1, identity("other").to_value(), 4, 4, 99)
        self.client.answer("range", ([held], 5))  # ...by another node...
        self.registry.take_every_slot()  # ...and every other slot too
        self.client.answer("put", 5)
        self.assertEqual(self.client.revoked, [7])
        self.assertIsNone(self.claimer.held_name)
        self.assertIsNone(self.claimer._machine.failure())
        self.clock.advance(3)
        self.assertEqual(len(self.client.pending("grant")), 1)

    # claiming alone, behind a dead holder

    def members_below(self, count):
        """
        Slots 1 to C{count} held, on leases 41, 42, …; the registry's waits
        are real.
        """
        self.registry.members = {
            PATTERN.render(slot): attr.evolve(identity(f"n{slot}"), lease=40 + slot)
            for slot in range(1, count + 1)
        }
        self.registry.applied, self.registry.strict = 1, True

    def queue_alone(self):
        """
        Start; answer the grant (lease 7) and the queue put at revision 1.
        """
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.client.answer("put", 1)
        return d

    def mark_dead(self, *slots):
        """
        Mark the members of C{slots} dead, as their neighbours would.
        """
        for slot in slots:
            name = PATTERN.render(slot)
            self.registry.dead[name] = self.registry.members[name].lease

    def test_alone_behind_live_holders_takes_the_next_slot_at_once(self):
        self.members_below(1)
        d = self.queue_alone()
        self.assertEqual(self.client.answer("create", TxnResult(True, 2, None))[0], PREFIX + b"worker2.tf.local.")
        self.assertEqual(self.successResultOf(d), "worker2.tf.local.")
        self.assertEqual(self.client.pending("delete"), [])
        self.assertEqual(self.client.pending("timetolive"), [])

    def test_alone_behind_a_dead_holder_waits_and_takes_its_slot(self):
        """
        A member below is marked dead: the node leaves the queue, says so,
        and once the key is gone queues again and gets the freed slot.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.members_below(1)
        self.mark_dead(1)
        d = self.queue_alone()
        queue_key = self.client.answer("delete", True)[0]
        self.assertTrue(queue_key.startswith(PREFIX + b"_claims/"))
        self.assertIn(
            "waiting up to 6s for worker1.tf.local., whose holder stopped renewing its lease, "
            "rather than taking worker2.tf.local.",
            [formatEvent(e) for e in events],
        )
        self.clock.advance(5)
        self.assertEqual(self.client.pending("put") + self.client.pending("create"), [])
        self.registry.change({}, 5)  # the lease ran out
        self.assertEqual(self.client.answer("put", 6)[0], queue_key)
        self.registry.change({}, 6)
        self.assertEqual(self.client.answer("create", TxnResult(True, 7, None))[0], KEY1)
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")

    def test_the_wait_ends_when_the_lease_should_have(self):
        """
        A holder marked dead that renews after all (a stalled process)
        keeps its slot: the node waits no longer than half a lease plus a
        margin, then takes the next slot.
        """
        self.members_below(1)
        self.mark_dead(1)
        d = self.queue_alone()
        self.client.answer("delete", True)
        self.clock.advance(6.4)
        self.assertEqual(self.client.pending("put"), [])
        self.clock.advance(0.1)
        self.client.answer("put", 1)
        self.assertEqual(self.client.answer("create", TxnResult(True, 2, None))[0], PREFIX + b"worker2.tf.local.")
        self.assertEqual(self.successResultOf(d), "worker2.tf.local.")

    def test_a_mark_of_an_earlier_lease_is_no_mark(self):
        self.members_below(1)
        self.registry.dead[PATTERN.render(1)] = 99
        d = self.queue_alone()
        self.client.answer("create", TxnResult(True, 2, None))
        self.assertEqual(self.successResultOf(d), "worker2.tf.local.")

    def test_not_alone_in_the_queue_does_not_wait(self):
        """
        Another node queued too (many starting at once): the node takes its
        share at once.
        """
        self.members_below(1)
        self.mark_dead(1)
        self.queue.key = lambda tag, lease: self.queue.queued.extend([lease, 8]) or b"q"
        d = self.queue_alone()
        self.assertEqual(self.client.pending("delete"), [])
        self.assertEqual(self.client.answer("create", TxnResult(True, 2, None))[0], PREFIX + b"worker2.tf.local.")
        self.assertEqual(self.successResultOf(d), "worker2.tf.local.")

    def test_stop_while_waiting_for_a_dead_holder(self):
        self.members_below(1)
        self.mark_dead(1)
        d = self.queue_alone()
        self.client.answer("delete", True)
        self.clock.advance(1)
        self.claimer.stopService()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.client.revoked, [7])
        self.assertEqual(self.registry._waiting[0][1].called, True)  # the registry wait, cancelled

    # waiting

    def wait_for_slot(self):
        self.claimer.wait = True
        d = self.start()
        self.client.answer("grant", (7, 9))
        self.registry.take_every_slot()
        self.client.answer("put", 1)
        self.assertEqual(self.client.revoked, [7])  # no empty lease is kept
        return d

    def test_waiting_wakes_on_its_timer(self):
        d = self.wait_for_slot()
        self.registry.members = {}
        self.clock.advance(3)
        self.client.answer("grant", (8, 9))
        self.client.answer("put", 1)
        self.client.answer("create", TxnResult(True, 2, None))
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")

    def test_waiting_wakes_when_a_slot_frees(self):
        d = self.wait_for_slot()
        self.registry.change({"worker1.tf.local.": object(), "worker2.tf.local.": object()}, 5)
        self.assertEqual(len(self.client.pending("grant")), 1)
        self.claimer.stopService()
        self.failureResultOf(d, defer.CancelledError)

    def test_waiting_stop(self):
        d = self.wait_for_slot()
        self.claimer.stopService()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.client.revoked, [7])

    # holding

    def test_holding_keepalives_every_third_of_the_ttl_from_send_times(self):
        """
        Replies 3 s late (a slow etcd) keep the name: the next keepalive
        goes out 3 s after the last was sent, not after its reply.
        """
        self.hold()
        for second in range(1, 31):
            self.clock.advance(1)
            if second % 3 == 0 and second > 3:
                self.keepalive()  # the one sent 3 s ago
            self.assertEqual(self.claimer.held_name, "worker1.tf.local.", f"t={second}")
        self.assertEqual(self.client.revoked, [])
        self.assertEqual(len(self.client.pending("keepalive")), 1)
        timeouts = {args[1] for args in self.client.pending("keepalive")}
        self.assertEqual(timeouts, {4.5})

    def test_holding_gives_the_name_up_at_the_deadline(self):
        """
        With etcd silent, the name stops being ours exactly one TTL after
        the last renewal was sent: by then etcd may hand it to another.
        """
        self.hold()
        self.clock.advance(3)
        self.keepalive()  # sent at t=3: valid until t=12
        self.clock.advance(6)  # t=9
        self.clock.advance(2.9)  # t=11.9
        self.assertEqual(self.claimer.held_name, "worker1.tf.local.")
        self.clock.advance(0.1)
        self.assertIsNone(self.claimer.held_name)

    def test_holding_frozen_past_the_deadline_reports_no_name(self):
        """
        A process frozen past its deadline (SIGSTOP) reports no name as
        soon as it runs again, before any timer has fired.
        """
        self.hold()
        self.clock.rightNow = 9.5
        self.assertIsNone(self.claimer.held_name)

    def test_holding_lease_gone(self):
        self.hold()
        self.clock.advance(3)
        self.client.answer("keepalive", LeaseNotFound(5, "gone"))
        self.assertIsNone(self.claimer.held_name)
        self.assertEqual(self.client.revoked, [])
        self.client.answer("grant", (8, 9))
        self.client.answer("range", ([], 1))
        self.client.answer("create", TxnResult(True, 3, None))
        self.assertEqual((self.claimer.held_name, self.claimer.lease), ("worker1.tf.local.", 8))

    def test_holding_key_lost_claims_again_on_the_same_lease(self):
        self.hold()
        self.registry.change({}, 5)
        self.assertIsNone(self.claimer.held_name)
        self.assertEqual(self.client.pending("grant"), [])
        self.client.answer("range", ([], 5))
        self.assertEqual(self.client.answer("create", TxnResult(True, 6, None)), (KEY1, 7))
        self.assertEqual((self.claimer.held_name, self.claimer.lease), ("worker1.tf.local.", 7))

    def test_holding_ignores_a_registry_behind_the_claim(self):
        self.hold()
        self.registry.change({}, 1)  # before the claim's revision 2
        self.assertEqual(self.claimer.held_name, "worker1.tf.local.")

    def test_holding_key_on_another_lease_is_lost(self):
        self.hold()
        self.registry.change({"worker1.tf.local.": attr.evolve(identity("a"), lease=99)}, 5)
        self.assertIsNone(self.claimer.held_name)

    def test_holding_stop_revokes(self):
        self.hold()
        self.clock.advance(3)
        self.claimer.stopService()
        self.assertEqual(self.client.revoked, [7])
        self.assertEqual(self.client.pending("keepalive"), [])

    def test_one_keepalive_loop_after_a_reclaim(self):
        """
        However the name is lost and won again, one keepalive loop runs.
        """
        self.hold()
        self.clock.advance(3)  # a keepalive is under way...
        self.registry.change({}, 5)  # ...when the key is lost
        self.client.answer("range", ([], 5))
        self.client.answer("create", TxnResult(True, 6, None))
        self.keepalive()
        self.clock.advance(3)
        self.assertEqual(len(self.client.pending("keepalive")), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)  # next keepalive, deadline

    # unsure

    def unsure(self):
        self.hold()
        self.clock.advance(3)
        self.client.answer("keepalive", EtcdUnavailable("down"))
        self.clock.advance(6)  # t=9: the grant's deadline
        self.assertIsNone(self.claimer.held_name)
        self.assertEqual(self.client.revoked, [])

    def test_unsure_confirmed_keeps_the_name_and_lease(self):
        """
        A stall shorter than the lease deletes nothing: once etcd confirms
        the same lease still holds the key, the name is ours again.
        """
        self.unsure()
        self.clock.advance(1)
        self.keepalive()
        self.assertEqual(self.client.answer("timetolive", lease_info(KEY1)), (7, True))
        self.assertEqual((self.claimer.held_name, self.claimer.lease), ("worker1.tf.local.", 7))
        self.assertEqual(self.client.pending("grant") + self.client.pending("create"), [])
        self.assertEqual(self.client.revoked, [])

    def test_unsure_delete_seen_while_asking_etcd_is_not_forgotten(self):
        """
        The key is deleted after etcd answered "still yours" but before the
        answer arrived, and the registry shows the delete first: confirmed,
        the node still notices the loss.
        """
        self.unsure()
        self.clock.advance(1)
        self.keepalive()
        self.registry.change({}, 5)  # the delete, seen while unsure
        self.client.answer("timetolive", lease_info(KEY1))
        self.assertIsNone(self.claimer.held_name)
        self.assertEqual(len(self.client.pending("range")), 1)  # claiming its slot again

    def test_unsure_key_missing_claims_again_on_the_lease(self):
        self.unsure()
        self.clock.advance(1)
        self.keepalive()
        self.client.answer("timetolive", lease_info())
        self.client.answer("range", ([], 5))
        self.client.answer("create", TxnResult(True, 6, None))
        self.assertEqual((self.claimer.held_name, self.claimer.lease), ("worker1.tf.local.", 7))

    def test_unsure_lease_gone(self):
        self.unsure()
        self.clock.advance(1)
        self.client.answer("keepalive", LeaseNotFound(5, "gone"))
        self.assertEqual(len(self.client.pending("grant")), 1)

    def test_unsure_verify_failure_asks_again(self):
        self.unsure()
        self.clock.advance(1)
        self.keepalive()
        self.client.answer("timetolive", EtcdUnavailable("down"))
        self.clock.advance(1)
        self.client.answer("timetolive", lease_info(KEY1))
        self.assertEqual(self.claimer.held_name, "worker1.tf.local.")

    def test_unsure_stop(self):
        self.unsure()
        self.clock.advance(1)
        self.keepalive()
        self.claimer.stopService()
        self.assertEqual(self.client.revoked, [7])
        self.assertTrue(all(d.called for _, _, d in self.client.calls))

    # failed, stopped

    def test_failed_stop(self):
        self.test_claiming_no_slot_fails()
        self.assertFalse(self.claimer.running)

    def test_late_news_is_ignored_in_every_state(self):
        """
        Inputs that do not apply in a state change nothing.
        """
        machine, feed = self.claimer._machine, self.claimer._feed
        key_confirmed = functools.partial(machine.key_confirmed, _Held("worker1.tf.local.", 2))
        for input in (machine.wake, machine.lease_renewed, key_confirmed, machine.key_missing):
            feed(input)  # idle
        self.hold()
        for input in (machine.wake, machine.lease_renewed, key_confirmed, machine.start):
            feed(input)
        self.assertEqual(self.claimer.held_name, "worker1.tf.local.")
        self.claimer.stopService()
        stop = functools.partial(machine.stop, defer.Deferred())
        for input in (machine.lease_expired, machine.lease_gone, machine.key_lost, stop):
            feed(input)
        self.assertIsNone(self.claimer.held_name)
