"""
The claimer: against a real etcd for what etcd decides, and on a
L{Clock} with a scripted client for the timing of keepalives.
"""

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from idetcd.claimer import Claimer, SlotsExhausted
from idetcd.etcd import (
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    TxnResult,
    prefix_range_end,
)
from idetcd.members import Member
from idetcd.pattern import Pattern
from idetcd.registry import Registry
from tests.etcdserver import EtcdTestCase
from tests.test_etcd import sleep, wait_for

PREFIX = b"/idetcd/"
PATTERN = Pattern.parse("worker{{.ID}}.tf.local.")


def identity(node, address="127.0.0.1"):
    return Member(name="", ipv4=(address,), port="53", node=node)


class ClaimerTests(EtcdTestCase):

    def claimer(self, node, limit=5, lease_ttl=3, **kwargs):
        claimer = Claimer(
            self.client, PATTERN, limit, PREFIX, identity(node), lease_ttl, reactor, **kwargs
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
        name = yield self.claimer("a").when_claimed()
        self.assertEqual(name, "worker2.tf.local.")
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker1.tf.local.": "other", "worker2.tf.local.": "a"})

    @defer.inlineCallbacks
    def test_value_is_the_original_plugins_shape(self):
        yield self.claimer("a").when_claimed()
        kvs, _ = yield self.client.range(PREFIX + b"worker1.tf.local.")
        self.assertEqual(
            kvs[0].value, b'{"ipv4":"127.0.0.1","ipv6":"","port":"53","node":"a"}'
        )
        self.assertNotEqual(kvs[0].lease, 0)

    @defer.inlineCallbacks
    def test_simultaneous_claimers_get_distinct_names(self):
        claimers = [self.claimer(f"n{i}", limit=10) for i in range(10)]
        names = yield defer.gatherResults([c.when_claimed() for c in claimers])
        self.assertEqual(sorted(names), sorted(PATTERN.render(i) for i in range(1, 11)))
        held = yield self.names_in_etcd()
        self.assertEqual(len(held), 10)

    @defer.inlineCallbacks
    def test_full_fails_with_message(self):
        for i in range(2):
            yield self.claimer(f"n{i}", limit=2).when_claimed()
        error = yield self.assertFailure(self.claimer("late", limit=2).when_claimed(), SlotsExhausted)
        self.assertIn("all 2 slots of pattern 'worker{{.ID}}.tf.local.' are taken", str(error))

    @defer.inlineCallbacks
    def test_wait_takes_a_freed_slot(self):
        first = self.claimer("a", limit=1)
        yield first.when_claimed()
        waiting = self.claimer("b", limit=1, wait=True).when_claimed()
        yield sleep(0.5)
        self.assertFalse(waiting.called)
        yield first.stopService()
        name = yield waiting
        self.assertEqual(name, "worker1.tf.local.")

    @defer.inlineCallbacks
    def test_stop_revokes_the_lease(self):
        claimer = self.claimer("a")
        yield claimer.when_claimed()
        yield claimer.stopService()
        held = yield self.names_in_etcd()
        self.assertEqual(held, {})

    @defer.inlineCallbacks
    def test_keeps_the_name_past_the_ttl(self):
        claimer = self.claimer("a", lease_ttl=2)
        name = yield claimer.when_claimed()
        yield sleep(5)
        self.assertEqual(claimer.name, name)
        held = yield self.names_in_etcd()
        self.assertEqual(held, {name: "a"})

    @defer.inlineCallbacks
    def test_revoked_lease_is_claimed_again_on_the_old_slot(self):
        """
        An operator revoking the lease makes the node claim again; it gets
        its old slot back if free.
        """
        claimer = self.claimer("a", lease_ttl=3)
        yield claimer.when_claimed()
        old_lease = claimer.lease
        yield self.client.lease_revoke(old_lease)
        yield wait_for(lambda: claimer.lease not in (None, old_lease), timeout=10)
        self.assertEqual(claimer.name, "worker1.tf.local.")
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker1.tf.local.": "a"})

    @defer.inlineCallbacks
    def test_deleted_key_is_noticed_through_the_registry(self):
        registry = Registry(self.client, PREFIX, reactor)
        registry.startService()
        self.addCleanup(registry.stopService)
        claimer = self.claimer("a", registry=registry)
        yield claimer.when_claimed()
        old_lease = claimer.lease
        yield self.client.delete(PREFIX + b"worker1.tf.local.")
        yield wait_for(lambda: claimer.lease not in (None, old_lease), timeout=10)
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker1.tf.local.": "a"})

    @defer.inlineCallbacks
    def test_restart_takes_over_its_own_key(self):
        """
        A node back from a crash, its old lease still alive, takes its own
        key over at once instead of taking a second slot.
        """
        lease, _ = yield self.client.lease_grant(60)
        yield self.client.put(PREFIX + b"worker3.tf.local.", identity("a").to_value(), lease=lease)
        name = yield self.claimer("a", preferred="worker3.tf.local.").when_claimed()
        self.assertEqual(name, "worker3.tf.local.")
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker3.tf.local.": "a"})
        yield self.assertFailure(self.client.lease_keepalive(lease), LeaseNotFound)

    @defer.inlineCallbacks
    def test_takes_over_only_the_name_it_held(self):
        """
        A live key with this node's identity on another name (a clone of
        its state, a shared 'node' setting) is left alone.
        """
        yield self.client.put(PREFIX + b"worker1.tf.local.", identity("a").to_value())
        name = yield self.claimer("a", preferred="worker3.tf.local.").when_claimed()
        self.assertEqual(name, "worker3.tf.local.")
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker1.tf.local.": "a", "worker3.tf.local.": "a"})

    @defer.inlineCallbacks
    def test_garbage_in_a_slot_counts_as_taken(self):
        yield self.client.put(PREFIX + b"worker1.tf.local.", b"not json")
        name = yield self.claimer("a").when_claimed()
        self.assertEqual(name, "worker2.tf.local.")

    @defer.inlineCallbacks
    def test_stop_while_waiting_for_a_slot(self):
        yield self.claimer("a", limit=1).when_claimed()
        waiting = self.claimer("b", limit=1, wait=True)
        d = waiting.when_claimed()
        yield sleep(0.3)
        yield waiting.stopService()
        yield self.assertFailure(d, defer.CancelledError)
        held = yield self.names_in_etcd()
        self.assertEqual(held, {"worker1.tf.local.": "a"})

    @defer.inlineCallbacks
    def test_empty_prefix_gives_the_original_keys(self):
        claimer = Claimer(self.client, PATTERN, 5, b"", identity("a"), 3, reactor)
        claimer.startService()
        self.addCleanup(claimer.stopService)
        yield self.client.put(b"unrelated", b"x")
        name = yield claimer.when_claimed()
        self.assertEqual(name, "worker1.tf.local.")
        kvs, _ = yield self.client.range(b"worker1.tf.local.")
        self.assertEqual(Member.from_value(name, kvs[0].value).node, "a")

    @defer.inlineCallbacks
    def test_preferred_slot_when_free(self):
        name = yield self.claimer("a", preferred="worker4.tf.local.").when_claimed()
        self.assertEqual(name, "worker4.tf.local.")


class ScriptedClient:
    """
    An etcd client whose answers the test gives, for timing tests on a
    L{Clock}.
    """

    def __init__(self):
        self.keepalives = []
        self.revoked = []
        self.grants = []

    def lease_grant(self, ttl):
        # The first grant succeeds; later ones wait for the test.
        d = defer.succeed((7, ttl)) if not self.grants else defer.Deferred()
        self.grants.append(d)
        return d

    def range(self, key, range_end=None):
        return defer.succeed(([], 1))

    def create(self, key, value, lease=0, replacing=None, read_range=None):
        return defer.succeed(TxnResult(True, 2, None))

    def lease_keepalive(self, lease):
        d = defer.Deferred()
        self.keepalives.append(d)
        return d

    def lease_revoke(self, lease):
        self.revoked.append(lease)
        return defer.succeed({})


class KeepaliveTimingTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.client = ScriptedClient()
        self.claimer = Claimer(self.client, PATTERN, 3, PREFIX, identity("a"), 9, self.clock)
        self.claimer.startService()
        self.addCleanup(self.claimer.stopService)

    def test_keepalive_every_third_of_the_ttl(self):
        self.assertEqual(self.claimer.name, "worker1.tf.local.")
        self.clock.advance(2.9)
        self.assertEqual(len(self.client.keepalives), 0)
        self.clock.advance(0.1)
        self.assertEqual(len(self.client.keepalives), 1)
        self.client.keepalives[0].callback(9)
        self.clock.advance(3)
        self.assertEqual(len(self.client.keepalives), 2)

    def test_gives_the_name_up_when_the_lease_may_have_expired(self):
        """
        With etcd silent, the name is given up exactly one TTL after the last
        renewal was sent, not later: by then etcd may hand it to another.
        """
        self.clock.advance(3)
        self.client.keepalives[0].callback(9)  # sent at t=3: valid until t=12
        self.clock.advance(3)
        self.client.keepalives[1].errback(EtcdUnavailable("down"))
        self.clock.advance(5.9)  # t=11.9
        self.assertEqual(self.claimer.name, "worker1.tf.local.")
        self.clock.advance(0.1)  # t=12
        self.assertIsNone(self.claimer.name)

    def test_resent_transaction_that_won_counts_as_won(self):
        """
        A txn resent to the next endpoint after the first applied it fails
        its compare against our own key: that is a win, not a lost race.
        """
        client = ScriptedClient()
        ours = KeyValue(PREFIX + b"worker1.tf.local.", b"{}", 5, 5, 7)
        client.create = lambda *a, **kw: defer.succeed(TxnResult(False, 5, ours, (ours,)))
        claimer = Claimer(client, PATTERN, 3, PREFIX, identity("a"), 9, self.clock)
        claimer.startService()
        self.addCleanup(claimer.stopService)
        self.assertEqual((claimer.name, claimer.lease, claimer.claim_revision), ("worker1.tf.local.", 7, 5))

    def test_lease_not_found_gives_the_name_up_at_once(self):
        self.clock.advance(3)
        self.client.keepalives[0].errback(LeaseNotFound(5, "gone"))
        self.assertIsNone(self.claimer.name)
        self.assertEqual(self.client.revoked, [7])
        self.assertEqual(len(self.client.grants), 2)  # claiming again
        self.client.grants[1].callback((8, 9))
        self.assertEqual(self.claimer.name, "worker1.tf.local.")
        self.assertEqual(self.claimer.lease, 8)
