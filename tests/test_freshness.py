"""
Tests for L{idetcd.dns._freshness}: when a node's view turns stale, when it
expires, and which name it cannot vouch for; with the real registry and
claimer on idetcd.testing's etcd, whose links to them the test breaks.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from idetcd.claim import Announcement
from idetcd.claim._claimer import Claimer
from idetcd.claim._queue import ClaimQueue
from idetcd.dns._freshness import CURRENT, Freshness, View
from idetcd.members._record import Member
from idetcd.members._registry import Registry
from idetcd.names._pattern import Pattern
from idetcd.testing import Cut, FakeEtcd, LoseReply

LEASE = 10
BOUND = 100
OWN = "worker4.tf.local."
PREFIX = b"/idetcd/"
PATTERN = Pattern.parse("worker{{.ID}}.tf.local.")
#: The endpoints of the registry's client (the other nodes write through
#: it too) and of the claimer's: a fault for one leaves the other be.
REGISTRY = "registry:2379"
CLAIMER = "claimer:2379"


class FreshnessTests(unittest.TestCase):
    """
    A node that holds worker4 (slots 1 to 3 are other nodes'), its
    registry, and its Freshness, on a clock moved half a second at a time.
    """

    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd(self.clock)
        self.addCleanup(self.etcd.close)
        self.others = self.etcd.client([f"http://{REGISTRY}"])
        self.addCleanup(self.others.close)
        for slot in (1, 2, 3):
            self.put(PATTERN.render(slot), f"10.0.0.{slot}")
        self.registry = Registry(self.others, PREFIX, self.clock)
        self.registry.startService()
        self.addCleanup(self.registry.stopService)
        client = self.etcd.client([f"http://{CLAIMER}"])
        self.addCleanup(client.close)
        self.claimer = Claimer(
            client, PATTERN, 5, PREFIX, lambda: Announcement(Member("", ("10.0.0.4",), node="n4")), LEASE, self.clock,
            registry=self.registry, queue=ClaimQueue(self.registry),
        )
        self.claimer.startService()
        self.addCleanup(self.claimer.stopService)
        self.assertEqual(self.successResultOf(self.claimer.when_claimed()), OWN)
        self.lease = self.claimer.lease
        self.views = []
        self.freshness = Freshness(
            self.registry, self.claimer, self.clock, LEASE, BOUND, on_view=self.views.append
        )
        self.freshness.startService()
        self.addCleanup(self.freshness.stopService)

    def put(self, name, address, lease=0):
        """
        Another node writes C{name} (or this one's, with its C{lease}).
        """
        value = Member("", (address,)).to_value()
        self.successResultOf(self.others.put(PREFIX + name.encode("ascii"), value, lease=lease))

    def advance(self, seconds):
        for _ in range(round(seconds / 0.5)):
            self.clock.advance(0.5)

    def advance_until(self, predicate):
        for _ in range(100):
            if predicate():
                return
            self.clock.advance(0.5)
        self.fail("not so after 50s")

    def lose_etcd(self):
        """
        The registry's link to etcd breaks: its watch stream is cut, and so
        is every new one.
        """
        self.etcd.faults.always("/v3/watch", Cut(), host=REGISTRY)
        for stream in self.etcd.watch_streams:
            if not stream.closed:
                stream.cut()
        self.assertIsNotNone(self.registry.unheard_since)

    def hear_etcd(self):
        """
        The link is back: the watch's next try (its backoff is at most 2 s)
        gets through.
        """
        self.etcd.faults.clear("/v3/watch", host=REGISTRY)
        self.advance_until(lambda: self.registry.unheard_since is None)

    def silence_keepalives(self):
        """
        A silent link: the claimer's keepalives reach etcd, which renews its
        lease, but no reply comes back.
        """
        self.etcd.faults.always("/v3/lease/keepalive", LoseReply(), host=CLAIMER)

    def test_watch_broken(self):
        """
        A watch broken for a lease TTL makes the view stale; for the bound
        after that, expired; hearing from etcd again, current.  Nothing is
        told twice.
        """
        self.advance(1)
        self.lose_etcd()
        self.advance(LEASE - 0.5)
        self.clock.advance(0.4)
        self.assertEqual(self.views, [])
        self.clock.advance(0.1)
        self.assertEqual(self.views, [View(stale=True)])
        self.advance(BOUND)
        self.assertEqual(self.views[-1], View(stale=True, expired=True))
        self.hear_etcd()
        self.assertEqual(self.views[-1], CURRENT)
        self.assertEqual(len(self.views), 3)

    def test_short_break(self):
        """
        A watch that resumes within a lease TTL changes nothing.
        """
        self.lose_etcd()
        self.advance(LEASE / 2)
        self.hear_etcd()
        self.advance(LEASE * 2)
        self.assertEqual(self.views, [])

    def test_own_name_past_its_deadline(self):
        """
        Past its lease's deadline the node's own name is unvouched (and the
        view stale), even while the watch looks fine: a silent link.  Once
        the claimer holds it again, current.
        """
        self.silence_keepalives()
        self.advance(LEASE - 0.5)
        self.assertEqual(self.views, [])
        self.advance(0.5)
        self.assertEqual(self.views, [View(stale=True, unvouched=(b"worker4", b"tf", b"local"))])
        self.etcd.faults.clear("/v3/lease/keepalive", host=CLAIMER)
        self.advance_until(lambda: self.claimer.held_name is not None)
        self.freshness.check()
        self.assertEqual(self.views[-1], CURRENT)

    def test_renewed_deadline_followed(self):
        """
        A deadline that keepalives push on is followed, not acted on.
        """
        for _ in range(5):
            self.advance(LEASE / 2)
            self.assertEqual(self.claimer.held_name, OWN)
        self.assertEqual(self.views, [])

    def test_name_taken_over(self):
        """
        Once the registry shows the name gone or on another lease, it is
        answered from the registry again: etcd said so.
        """
        self.silence_keepalives()
        self.advance(LEASE)
        self.assertEqual(self.freshness.view.unvouched, (b"worker4", b"tf", b"local"))
        other, _ = self.successResultOf(self.others.lease_grant(60))
        self.put(OWN, "10.0.0.9", lease=other)
        self.assertEqual(self.views[-1], CURRENT)
        self.successResultOf(self.others.delete(PREFIX + OWN.encode("ascii")))
        self.put(OWN, "10.0.0.4", lease=self.lease)
        self.assertEqual(self.views[-1], CURRENT)

    def test_stopped(self):
        """
        A stopped Freshness sets no timer and hears nothing.
        """
        self.freshness.stopService()
        self.lose_etcd()
        self.advance(LEASE * 2)
        self.assertEqual(self.views, [])
        # With the parts it hears from stopped too, and etcd's timers,
        # nothing at all is left on the clock.
        self.claimer.stopService()
        self.registry.stopService()
        self.etcd.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.views, [])
