"""
The claim queue (L{idetcd.claim.ClaimQueue}) as a registry fed by a real
etcd follows it, and the registry's sub-prefix hook that feeds it.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.trial import unittest

from idetcd.claim import QUEUE, ClaimQueue
from idetcd.claim._queue import assign
from idetcd.members import Registry
from tests.etcdserver import EtcdTestCase
from tests.memberdata import PREFIX, value

TAG = b"0123456789abcdef"
NAMES = [f"worker{slot}.tf.local." for slot in range(1, 5)]


class ClaimQueueTests(EtcdTestCase):
    @defer.inlineCallbacks
    def registry(self):
        registry = Registry(self.client, PREFIX, reactor)
        registry.startService()
        self.addCleanup(registry.stopService)
        yield registry.when_ready()
        return registry

    @defer.inlineCallbacks
    def enqueue(self, lease):
        yield self.client.lease_grant(30, lease)
        return (yield self.client.put(PREFIX + QUEUE + TAG + b"/%016x" % lease, b"", lease=lease))

    @defer.inlineCallbacks
    def test_follows_the_queue_in_order(self):
        """
        Entries queued before the queue follows the registry are known at
        once; those after, once the registry applied them; the k-th queued
        is assigned the k-th lowest free name.
        """
        yield self.enqueue(0xB)
        registry = yield self.registry()
        queue = ClaimQueue(registry)
        self.assertEqual(queue.queue(TAG), [0xB])
        yield self.client.put(PREFIX + NAMES[0].encode(), value())
        revision = yield self.enqueue(0xA)
        yield registry.when_caught_up(revision)
        self.assertEqual(queue.queue(TAG), [0xB, 0xA])
        self.assertEqual(queue.assignment(TAG, NAMES), {0xB: NAMES[1], 0xA: NAMES[2]})
        # B claims its name, deleting its queue key: A's share is unchanged.
        yield self.client.put(PREFIX + NAMES[1].encode(), value())
        yield self.client.delete(queue.key(TAG, 0xB))
        _, revision = yield self.client.range(PREFIX)
        yield registry.when_caught_up(revision)
        self.assertEqual(queue.queue(TAG), [0xA])
        self.assertEqual(queue.assignment(TAG, NAMES), {0xA: NAMES[2]})
        # Other patterns' queues are their own.
        self.assertEqual(queue.queue(b"fedcba9876543210"), [])

    @defer.inlineCallbacks
    def test_an_ended_lease_leaves_the_queue(self):
        registry = yield self.registry()
        queue = ClaimQueue(registry)
        yield self.enqueue(0xC)
        yield self.client.lease_revoke(0xC)
        _, revision = yield self.client.range(PREFIX)
        yield registry.when_caught_up(revision)
        self.assertEqual(queue.queue(TAG), [])
        self.assertEqual(queue.assignment(TAG, NAMES), {})

    @defer.inlineCallbacks
    def test_follow_is_for_bookkeeping_only(self):
        registry = yield self.registry()
        with self.assertRaises(ValueError):
            registry.follow(b"worker", lambda key, kv: None)
        heard = []
        stop = registry.follow(QUEUE, lambda key, kv: heard.append((key, kv is not None)))
        revision = yield self.enqueue(0xD)
        yield registry.when_caught_up(revision)
        stop()
        yield self.client.lease_revoke(0xD)
        _, revision = yield self.client.range(PREFIX)
        yield registry.when_caught_up(revision)
        self.assertEqual(heard, [(PREFIX + QUEUE + TAG + b"/%016x" % 0xD, True)])
        # Queue keys are not members.
        self.assertEqual(registry.members, {})


class AssignTests(unittest.TestCase):
    """
    The matching every queued node computes alike.
    """

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(st.integers(min_value=1, max_value=255), unique=True, max_size=8),
        st.sets(st.sampled_from(NAMES)),
    )
    def test_no_name_for_two_leases(self, queued, taken):
        matching = assign(queued, NAMES, lambda name: name not in taken)
        free = [name for name in NAMES if name not in taken]
        self.assertEqual(len(set(matching.values())), len(matching))
        self.assertFalse(set(matching.values()) & taken)
        # As many served as there are free names, first queued first, each
        # a lower name than those queued after it.
        self.assertEqual(list(matching), queued[: len(free)])
        self.assertEqual(list(matching.values()), free[: len(queued)])

    def test_a_claim_leaves_the_others_shares(self):
        before = assign([1, 2, 3], NAMES, lambda name: True)
        # 1 claims its share and leaves the queue in one transaction.
        after = assign([2, 3], NAMES, lambda name: name != before[1])
        self.assertEqual(after, {2: before[2], 3: before[3]})
