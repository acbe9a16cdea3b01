"""
The claimer on idetcd.testing's etcd: what it does with what etcd decides,
and each transition of its machine with every request it sends held until
the test lets it through, for the timing of keepalives and of lost and
late replies.  Races and storms against real etcd are in test_claim_race.
"""

import base64
import functools

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from idetcd.claim import Announcement, ClaimQueue
from idetcd.claim._claimer import Claimer, SlotsExhausted, _Held
from idetcd.etcd import LeaseNotFound, prefix_range_end
from idetcd.members._record import Member
from idetcd.members._registry import Registry, dead_key
from idetcd.testing import FakeEtcd, LoseReply
from tests.memberdata import PATTERN, PREFIX, identity
from tests.memoryetcd import CALLS, FakeEtcdCase, HeldClient


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
        self.etcd.faults.once("/v3/kv/txn", LoseReply())
        claimer = self.claimer("a")
        lost = self.etcd.requests("/v3/kv/txn")[-1]  # the create whose reply was lost
        self.assertEqual(key_of(lost), PREFIX + b"worker2.tf.local.")
        self.assertIsNone(claimer.held_name)
        yield lower.stopService()
        name = yield self.settled(claimer.when_claimed())
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
        self.etcd.faults.once("/v3/lease/grant", LoseReply())
        claimer = self.claimer("a")
        name = yield self.settled(claimer.when_claimed())
        grants = self.etcd.requests("/v3/lease/grant")
        self.assertEqual(len(grants), 2)
        self.assertEqual(grants[0]["ID"], grants[1]["ID"])
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


KEY1 = PREFIX + b"worker1.tf.local."
KEY2 = PREFIX + b"worker2.tf.local."


def key_of(body):
    """
    The key a held request names; a transaction's, its first comparison's.
    """
    if "compare" in body:
        body = body["compare"][0]
    return base64.b64decode(body["key"])


class TransitionTests(unittest.TestCase):
    """
    Each transition of the claimer's state machine, with time in the
    test's hands and every request the claimer sends held until the test
    lets it through: on idetcd.testing's etcd, with the real client,
    registry and queue, so etcd's answers are etcd's.  The test plays the
    other nodes through a client of its own.  TTL 9: keepalives every 3 s.
    """

    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd(self.clock)
        #: The other nodes', and the registry's, client.
        self.others = self.etcd.client()
        self.registry = Registry(self.others, PREFIX, self.clock)
        self.registry.startService()
        self.queue = ClaimQueue(self.registry)
        self.claimed = []
        self.hold_claimer()

    def hold_claimer(self, spares=()):
        """
        The claimer under test, on a L{HeldClient} with C{spares}.
        """
        self.held = HeldClient(self.etcd, spares=spares)
        self.client = self.held.client
        self.claimer = Claimer(
            self.client, PATTERN, 3, PREFIX, lambda: Announcement(identity("a")), 9, self.clock,
            registry=self.registry, queue=self.queue, on_claimed=lambda name, lease: self.claimed.append((name, lease)),
        )

    def tearDown(self):
        if self.claimer.running:
            self.claimer.stopService()
        self.registry.stopService()
        for client in (self.client, self.others):
            client.close()
        self.etcd.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def start(self):
        self.claimer.startService()
        return self.claimer.when_claimed()

    def granted(self):
        """
        Let the pending grant through; the lease etcd granted.
        """
        return int(self.held.release("grant")["ID"])

    def hold(self):
        """
        Start and win worker1 on a new lease (C{self.lease}) at t=0,
        through the queue the first time, directly (the slot it held)
        after that; returns when_claimed().
        """
        d = self.start()
        self.lease = self.granted()
        if self.claimer.announcement.preferred is None:
            self.held.release("put")
        else:
            self.held.release("range")
        self.held.release("create")
        self.assertEqual(self.claimer.held_name, "worker1.tf.local.")
        return d

    def keepalive(self):
        self.held.release("keepalive")

    def put(self, name, node="other", lease=0):
        """
        Another node puts C{name}; returns the revision.
        """
        return self.successResultOf(self.others.put(PREFIX + name.encode("ascii"), identity(node).to_value(), lease=lease))

    def other_lease(self):
        """
        A lease of another node, alive for the whole test.
        """
        lease, _ = self.successResultOf(self.others.lease_grant(60))
        return lease

    def take_every_slot(self):
        for slot in (1, 2, 3):
            self.put(PATTERN.render(slot))

    def registry_stream(self):
        """
        The registry's watch stream.
        """
        (stream,) = [stream for stream in self.etcd.watch_streams if not stream.closed]
        return stream

    # idle

    def test_idle_stop(self):
        d = self.claimer.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual((self.held.sent(), self.held.revoked()), ({}, []))

    def test_stopped_starts_again(self):
        self.hold()
        first = self.lease
        self.claimer.stopService()
        self.assertEqual(self.held.revoked(), [first])
        self.hold()
        self.assertEqual(self.claimer.lease, self.lease)
        self.assertNotEqual(self.lease, first)
        self.assertEqual(self.claimed, [("worker1.tf.local.", first), ("worker1.tf.local.", self.lease)])

    # claiming

    def test_claiming_wins(self):
        d = self.hold()
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")
        self.assertEqual(self.claimer.lease, self.lease)
        self.assertEqual(self.claimer.slot, 1)
        self.assertEqual(self.claimed, [("worker1.tf.local.", self.lease)])

    def test_claiming_stop_before_the_lease_revokes_nothing(self):
        d = self.start()
        self.claimer.stopService()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.held.revoked(), [])
        self.assertEqual(self.held.pending("grant"), [])  # the grant was cancelled
        self.assertEqual(self.successResultOf(self.others.call("/v3/lease/leases", {})).get("leases"), None)

    def test_claiming_stop_with_a_lease_revokes_it(self):
        d = self.start()
        lease = self.granted()
        self.claimer.stopService()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.held.revoked(), [lease])
        self.assertEqual(self.held.pending("put"), [])

    def test_claiming_keeps_the_lease_alive_while_it_claims(self):
        """
        A claim slower than the lease still wins on a live lease.
        """
        d = self.start()
        self.granted()
        for _ in range(5):  # 15 s of a queue put that does not come back
            self.clock.advance(3)
            self.keepalive()
        self.assertEqual(len(self.held.pending("keepalive")), 0)
        self.held.release("put")
        self.held.release("create")
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")

    def test_claiming_won_on_an_unsure_lease_is_confirmed_first(self):
        d = self.start()
        self.granted()
        # Keepalives reach etcd, which renews the lease, but no reply comes
        # back in time: the deadline passes.
        for _ in range(2):
            self.clock.advance(3)
            self.held.reach("keepalive")
        self.assertEqual(self.etcd.served("/v3/lease/keepalive"), 2)  # those of t=3 and t=6
        self.clock.advance(3)
        self.held.release("put")
        self.held.release("create")
        self.assertNoResult(d)
        self.assertIsNone(self.claimer.held_name)
        self.keepalive()  # the reply to the one sent at t=6 comes back
        self.held.release("timetolive")
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")

    def test_claiming_lease_gone_starts_over_with_a_new_lease(self):
        d = self.start()
        lease = self.granted()
        self.clock.advance(3)
        self.successResultOf(self.others.lease_revoke(lease))  # an operator
        self.keepalive()
        self.assertEqual(len(self.held.pending("grant")), 1)
        lease = self.granted()
        self.held.release("put")
        self.held.release("create")
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")
        self.assertEqual(self.claimer.lease, lease)

    def test_claiming_lost_reply_looks_at_its_own_lease_first(self):
        """
        The create's reply is lost after etcd applied it; and an earlier
        lost try had won worker2 on the same lease.  The retry asks the
        lease what it holds, keeps worker1, deletes worker2 and the queue
        key.
        """
        d = self.start()
        lease = self.granted()
        self.held.release("put")
        self.put("worker2.tf.local.", node="a", lease=lease)
        self.assertEqual(key_of(self.held.lose("create")), KEY1)
        self.clock.advance(1)  # the backoff
        self.held.release("timetolive")
        deleted = self.held.release("delete")
        self.assertEqual((key_of(deleted), int(deleted["compare"][0]["lease"])), (KEY2, lease))
        self.assertEqual(key_of(self.held.release("delete"))[: len(PREFIX) + 8], PREFIX + b"_claims/")
        self.held.release("range")
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")
        kvs, _ = self.successResultOf(self.others.range(PREFIX, prefix_range_end(PREFIX)))
        self.assertEqual([(kv.key, kv.lease) for kv in kvs], [(KEY1, lease)])
        self.assertEqual(self.claimer.claim_revision, kvs[0].mod_revision)

    def test_claiming_lost_race_takes_the_next_share(self):
        """
        The assigned slot was taken outside the queue's order (a node
        taking back its own slot): the next view gives another.
        """
        d = self.start()
        self.granted()
        self.held.release("put")
        self.put("worker1.tf.local.")
        self.assertEqual(key_of(self.held.release("create")), KEY1)
        self.assertEqual(key_of(self.held.release("create")), KEY2)
        self.assertEqual(self.successResultOf(d), "worker2.tf.local.")

    def test_claiming_waits_behind_a_node_queued_earlier(self):
        """
        The one free slot is another queued node's share: this node waits
        for the registry to move (or a third of the lease), and takes the
        share that is then its own.
        """
        for slot in (1, 2):
            self.put(PATTERN.render(slot))
        earlier = self.other_lease()
        self.successResultOf(self.others.put(self.queue.key(self.claimer._tag, earlier), b"", lease=earlier))
        d = self.start()
        self.granted()
        self.held.release("put")
        self.assertEqual(self.held.pending("create"), [])
        self.clock.advance(3)  # a third of the lease: look again, still nothing
        self.assertEqual(self.held.pending("create"), [])
        self.successResultOf(self.others.lease_revoke(earlier))  # the earlier node's lease ended
        self.held.release("create")
        self.assertEqual(self.successResultOf(d), "worker3.tf.local.")

    def test_claiming_resent_create_that_won_counts_as_won(self):
        """
        A create sent again to the next endpoint after its reply was lost
        fails against the key its first sending put, on our own lease: a
        win.
        """
        # A second endpoint, where the client sends again what failed.
        self.client.close()
        self.hold_claimer(spares=("http://next:2379",))
        d = self.start()
        lease = self.granted()
        self.held.release("put")
        self.held.lose("create")
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")
        kvs, _ = self.successResultOf(self.others.range(KEY1))
        self.assertEqual(kvs[0].lease, lease)
        self.assertEqual(self.claimer.claim_revision, kvs[0].mod_revision)
        self.assertEqual(len(self.etcd.requests("/v3/kv/txn", host="next:2379")), 1)

    def test_claiming_won_just_as_the_deadline_passed_asks_etcd(self):
        """
        A claim won when the lease's deadline has passed, before the expiry
        timer ran: the node asks etcd at once rather than wait for a
        renewal report that may never come.
        """
        d = self.start()
        lease = self.granted()
        self.held.release("put")
        self.clock.advance(3)
        self.held.lose("keepalive")  # etcd renewed the lease at t=3, until t=12
        self.clock.rightNow = 9.5  # frozen past the deadline
        self.held.release("create")
        self.assertNoResult(d)
        # etcd: 2.5 s left on the lease, which holds our key.
        asked = self.held.release("timetolive")
        self.assertEqual((int(asked["ID"]), asked["keys"]), (lease, True))
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")
        self.assertEqual(self.claimer._keeper.deadline, 11.5)

    def test_claiming_no_slot_fails(self):
        d = self.start()
        lease = self.granted()
        self.take_every_slot()
        self.held.release("put")
        self.failureResultOf(d, SlotsExhausted)
        self.failureResultOf(self.claimer.when_claimed(), SlotsExhausted)
        self.assertEqual(self.held.revoked(), [lease])
        self.claimer.stopService()

    def test_reclaim_with_no_free_slot_waits_without_a_lease(self):
        """
        A node whose slot was taken while no other is free does not exit
        and does not keep an empty lease: it waits, holding nothing.
        """
        self.hold()
        self.put("worker1.tf.local.", lease=self.other_lease())  # the key taken by another node...
        self.put("worker2.tf.local.")  # ...and every other slot too
        self.put("worker3.tf.local.")
        self.held.release("range")
        self.held.release("put")
        self.assertEqual(self.held.revoked(), [self.lease])
        self.assertIsNone(self.claimer.held_name)
        self.assertIsNone(self.claimer._machine.failure())
        self.clock.advance(3)
        self.assertEqual(len(self.held.pending("grant")), 1)

    # claiming alone, behind a dead holder

    def members_below(self, count):
        """
        Slots 1 to C{count} held by live nodes, on leases of theirs
        (C{self.below}, by slot).
        """
        self.below = {slot: self.other_lease() for slot in range(1, count + 1)}
        for slot, lease in self.below.items():
            self.put(PATTERN.render(slot), node=f"n{slot}", lease=lease)

    def queue_alone(self):
        """
        Start; let the grant (C{self.lease}) and the queue put through.
        """
        d = self.start()
        self.lease = self.granted()
        self.held.release("put")
        return d

    def mark_dead(self, *slots):
        """
        Mark the members of C{slots} dead, as their neighbours would.
        """
        for slot in slots:
            name = PATTERN.render(slot)
            self.successResultOf(self.others.put(dead_key(PREFIX, name), b"", lease=self.below[slot]))

    def test_alone_behind_live_holders_takes_the_next_slot_at_once(self):
        self.members_below(1)
        d = self.queue_alone()
        self.assertEqual(key_of(self.held.release("create")), KEY2)
        self.assertEqual(self.successResultOf(d), "worker2.tf.local.")
        self.assertEqual(self.held.pending("delete"), [])
        self.assertEqual(self.held.pending("timetolive"), [])

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
        queue_key = key_of(self.held.release("delete"))
        self.assertTrue(queue_key.startswith(PREFIX + b"_claims/"))
        self.assertIn(
            "waiting up to 6s for worker1.tf.local., whose holder stopped renewing its lease, "
            "rather than taking worker2.tf.local.",
            [formatEvent(e) for e in events],
        )
        self.clock.advance(5)
        self.assertEqual(self.held.pending("put") + self.held.pending("create"), [])
        self.successResultOf(self.others.lease_revoke(self.below[1]))  # the lease ran out
        self.assertEqual(key_of(self.held.release("put")), queue_key)
        self.assertEqual(key_of(self.held.release("create")), KEY1)
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
        self.held.release("delete")
        self.clock.advance(6.4)
        self.assertEqual(self.held.pending("put"), [])
        self.clock.advance(0.1)
        self.held.release("put")
        self.assertEqual(key_of(self.held.release("create")), KEY2)
        self.assertEqual(self.successResultOf(d), "worker2.tf.local.")

    def test_a_mark_of_an_earlier_lease_is_no_mark(self):
        self.members_below(1)
        earlier = self.other_lease()
        self.successResultOf(self.others.put(dead_key(PREFIX, PATTERN.render(1)), b"", lease=earlier))
        d = self.queue_alone()
        self.held.release("create")
        self.assertEqual(self.successResultOf(d), "worker2.tf.local.")

    def test_not_alone_in_the_queue_does_not_wait(self):
        """
        Another node queued too (many starting at once): the node takes its
        share at once.
        """
        self.members_below(1)
        self.mark_dead(1)
        d = self.start()
        self.granted()
        stream = self.registry_stream()
        stream.pause()
        self.held.release("put")
        later = self.other_lease()
        self.successResultOf(self.others.put(self.queue.key(self.claimer._tag, later), b"", lease=later))
        stream.resume()  # the registry sees both queued
        self.assertEqual(self.held.pending("delete"), [])
        self.assertEqual(key_of(self.held.release("create")), KEY2)
        self.assertEqual(self.successResultOf(d), "worker2.tf.local.")

    def test_stop_while_waiting_for_a_dead_holder(self):
        self.members_below(1)
        self.mark_dead(1)
        d = self.queue_alone()
        self.held.release("delete")
        self.clock.advance(1)
        self.assertEqual(len(self.registry._progress_waiters), 1)  # the claimer waits on the registry
        self.claimer.stopService()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.held.revoked(), [self.lease])
        self.assertEqual(self.registry._progress_waiters, [])  # the registry wait, cancelled

    # waiting

    def wait_for_slot(self):
        self.claimer.wait = True
        d = self.start()
        lease = self.granted()
        self.take_every_slot()
        self.held.release("put")
        self.assertEqual(self.held.revoked(), [lease])  # no empty lease is kept
        return d

    def test_waiting_wakes_on_its_timer(self):
        d = self.wait_for_slot()
        stream = self.registry_stream()
        stream.pause()  # the registry does not see the slots free
        self.successResultOf(self.others.delete(PREFIX, prefix_range_end(PREFIX)))
        self.assertEqual(self.held.pending("grant"), [])
        self.clock.advance(3)
        self.assertEqual(len(self.held.pending("grant")), 1)
        stream.resume()
        self.granted()
        self.held.release("put")
        self.held.release("create")
        self.assertEqual(self.successResultOf(d), "worker1.tf.local.")

    def test_waiting_wakes_when_a_slot_frees(self):
        d = self.wait_for_slot()
        self.successResultOf(self.others.delete(KEY1))
        self.assertEqual(len(self.held.pending("grant")), 1)
        self.claimer.stopService()
        self.failureResultOf(d, defer.CancelledError)

    def test_waiting_stop(self):
        d = self.wait_for_slot()
        lease = self.held.revoked()[0]
        self.claimer.stopService()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.held.revoked(), [lease])

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
        self.assertEqual(self.held.revoked(), [])
        self.assertEqual(len(self.held.pending("keepalive")), 1)
        self.assertEqual(self.claimer.keepalives, {"ok": 9})
        # Each is given up on 4.5 s after it was sent.
        self.clock.advance(4.4)
        self.assertEqual(len(self.held.pending("keepalive")), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.held.pending("keepalive")), 1)

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
        """
        etcd says the lease is gone before the registry shows its key
        deleted (its watch is slow): the node claims again, on a new lease.
        """
        self.hold()
        self.clock.advance(3)
        self.registry_stream().pause()
        self.successResultOf(self.others.lease_revoke(self.lease))
        self.keepalive()
        self.assertIsNone(self.claimer.held_name)
        self.assertEqual(self.held.revoked(), [])
        lease = self.granted()
        self.held.release("range")
        self.held.release("create")
        self.assertEqual((self.claimer.held_name, self.claimer.lease), ("worker1.tf.local.", lease))
        self.registry_stream().resume()
        self.assertEqual((self.claimer.held_name, self.claimer.lease), ("worker1.tf.local.", lease))

    def test_holding_key_lost_claims_again_on_the_same_lease(self):
        self.hold()
        self.successResultOf(self.others.delete(KEY1))
        self.assertIsNone(self.claimer.held_name)
        self.assertEqual(self.held.pending("grant"), [])
        self.held.release("range")
        created = self.held.release("create")
        self.assertEqual((key_of(created), int(created["success"][0]["request_put"]["lease"])), (KEY1, self.lease))
        self.assertEqual((self.claimer.held_name, self.claimer.lease), ("worker1.tf.local.", self.lease))

    def test_holding_ignores_a_registry_behind_the_claim(self):
        self.start()
        self.lease = self.granted()
        self.held.release("put")
        stream = self.registry_stream()
        stream.pause()
        before = self.put("worker3.tf.local.")
        self.held.release("create")
        self.assertEqual(self.claimer.held_name, "worker1.tf.local.")
        stream.resume(before)  # a view from before the claim's revision
        self.assertEqual(self.registry.applied, before)
        self.assertEqual(self.claimer.held_name, "worker1.tf.local.")

    def test_holding_key_on_another_lease_is_lost(self):
        self.hold()
        self.put("worker1.tf.local.", node="a", lease=self.other_lease())
        self.assertIsNone(self.claimer.held_name)

    def test_holding_stop_revokes(self):
        self.hold()
        self.clock.advance(3)
        self.claimer.stopService()
        self.assertEqual(self.held.revoked(), [self.lease])
        self.assertEqual(self.held.pending("keepalive"), [])

    def test_one_keepalive_loop_after_a_reclaim(self):
        """
        However the name is lost and won again, one keepalive loop runs.
        """
        self.hold()
        self.clock.advance(3)  # a keepalive is under way...
        self.successResultOf(self.others.delete(KEY1))  # ...when the key is lost
        self.held.release("range")
        self.held.release("create")
        self.keepalive()
        self.clock.advance(3)
        self.assertEqual(len(self.held.pending("keepalive")), 1)
        # All that is left on the clock once etcd's timers are stopped: the
        # next keepalive, the one under way's timeout, the deadline.
        self.etcd.close()
        keeper = self.claimer._keeper
        calls = sorted(self.clock.getDelayedCalls(), key=lambda call: call.getTime())
        self.assertEqual([call.getTime() for call in calls], [9, 10.5, 12])
        self.assertEqual((calls[0].func, calls[2].func), (keeper._send, keeper._expire))

    # unsure

    def unsure(self):
        """
        Hold worker1; the keepalive sent at t=3 renews the lease in etcd
        (until t=12), but its reply is lost: at t=9 the node is unsure.
        """
        self.hold()
        self.clock.advance(3)
        self.held.lose("keepalive")
        self.clock.advance(6)  # t=9: the grant's deadline
        self.assertIsNone(self.claimer.held_name)
        self.assertEqual(self.held.revoked(), [])

    def test_unsure_confirmed_keeps_the_name_and_lease(self):
        """
        A stall shorter than the lease deletes nothing: once etcd confirms
        the same lease still holds the key, the name is ours again.
        """
        self.unsure()
        self.clock.advance(1)
        self.keepalive()
        asked = self.held.release("timetolive")
        self.assertEqual((int(asked["ID"]), asked["keys"]), (self.lease, True))
        self.assertEqual((self.claimer.held_name, self.claimer.lease), ("worker1.tf.local.", self.lease))
        self.assertEqual(self.held.pending("grant") + self.held.pending("create"), [])
        self.assertEqual(self.held.revoked(), [])

    def test_unsure_delete_seen_while_asking_etcd_is_not_forgotten(self):
        """
        The key is deleted after etcd answered "still yours" but before the
        answer arrived, and the registry shows the delete first: confirmed,
        the node still notices the loss.
        """
        self.unsure()
        self.clock.advance(1)
        self.keepalive()
        self.held.reach("timetolive")  # etcd answers "still yours"...
        self.successResultOf(self.others.delete(KEY1))  # ...the key is deleted, the registry sees it...
        self.held.release("timetolive")  # ...and then the answer arrives
        self.assertIsNone(self.claimer.held_name)
        self.assertEqual(len(self.held.pending("range")), 1)  # claiming its slot again

    def test_unsure_key_missing_claims_again_on_the_lease(self):
        self.unsure()
        self.clock.advance(1)
        self.keepalive()
        self.successResultOf(self.others.delete(KEY1))
        self.held.release("timetolive")
        self.held.release("range")
        self.held.release("create")
        self.assertEqual((self.claimer.held_name, self.claimer.lease), ("worker1.tf.local.", self.lease))

    def test_unsure_lease_gone(self):
        self.unsure()
        self.clock.advance(1)
        self.registry_stream().pause()
        self.successResultOf(self.others.lease_revoke(self.lease))
        self.keepalive()
        self.assertEqual(len(self.held.pending("grant")), 1)

    def test_unsure_verify_failure_asks_again(self):
        self.unsure()
        self.clock.advance(1)
        self.keepalive()
        self.held.cut("timetolive")
        self.clock.advance(1)
        self.held.release("timetolive")
        self.assertEqual(self.claimer.held_name, "worker1.tf.local.")

    def test_unsure_stop(self):
        self.unsure()
        self.clock.advance(1)
        self.keepalive()
        self.claimer.stopService()
        self.assertEqual(self.held.revoked(), [self.lease])
        self.assertEqual([self.held.pending(call) for call in CALLS], [[]] * len(CALLS))

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
