"""
Tests for L{idetcd.dns._freshness}, on a fake clock: when a node's view turns
stale, when it expires, and which name it cannot vouch for.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from idetcd.dns._freshness import CURRENT, Freshness, View
from idetcd.members._record import Member
from tests.fakeregistry import FakeRegistry

LEASE = 10
BOUND = 100
OWN = "worker4.tf.local."


class ContactRegistry(FakeRegistry):
    """
    A L{FakeRegistry} that can lose etcd.
    """

    def __init__(self, clock, members):
        FakeRegistry.__init__(self, members)
        self.clock = clock
        self.unheard_since = None
        self.contact_subscribers = []

    def subscribe_contact(self, callback):
        self.contact_subscribers.append(callback)
        return lambda: self.contact_subscribers.remove(callback)

    def contact(self, live):
        self.unheard_since = None if live else self.clock.seconds()
        for callback in list(self.contact_subscribers):
            callback()


class FakeClaimer:
    """
    The claimer's surface: C{held_name} and C{lease} until C{deadline}.
    """

    def __init__(self, clock, name, lease):
        self.clock = clock
        self.name = name
        self._lease = lease
        self.renewed_until = clock.seconds() + LEASE

    @property
    def held_name(self):
        return self.name if self.clock.seconds() < self.renewed_until else None

    @property
    def lease(self):
        return self._lease if self.held_name else None

    @property
    def deadline(self):
        return self.renewed_until if self.held_name else None


class FreshnessTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.registry = ContactRegistry(
            self.clock,
            [Member(OWN, ("10.0.0.4",), lease=0x44), Member("worker2.tf.local.", ("10.0.0.2",))],
        )
        self.claimer = FakeClaimer(self.clock, OWN, 0x44)
        self.views = []
        self.freshness = Freshness(
            self.registry, self.claimer, self.clock, LEASE, BOUND, on_view=self.views.append
        )
        self.freshness.startService()
        self.addCleanup(self.freshness.stopService)

    def test_watch_broken(self):
        """
        A watch broken for a lease TTL makes the view stale; for the bound
        after that, expired; hearing from etcd again, current.  Nothing is
        told twice.
        """
        self.claimer.renewed_until = float("inf")  # keepalives work
        self.clock.advance(1)
        self.registry.contact(False)
        self.clock.advance(LEASE - 0.1)
        self.assertEqual(self.views, [])
        self.clock.advance(0.1)
        self.assertEqual(self.views, [View(stale=True)])
        self.clock.advance(BOUND)
        self.assertEqual(self.views[-1], View(stale=True, expired=True))
        self.registry.contact(True)
        self.assertEqual(self.views[-1], CURRENT)
        self.assertEqual(len(self.views), 3)

    def test_short_break(self):
        """
        A watch that resumes within a lease TTL changes nothing.
        """
        self.claimer.renewed_until = float("inf")
        self.registry.contact(False)
        self.clock.advance(LEASE / 2)
        self.registry.contact(True)
        self.clock.advance(LEASE * 2)
        self.assertEqual(self.views, [])

    def test_own_name_past_its_deadline(self):
        """
        Past its lease's deadline the node's own name is unvouched (and the
        view stale), even while the watch looks fine: a silent link.  Once
        the claimer holds it again, current.
        """
        self.clock.advance(LEASE)
        self.assertEqual(self.views, [View(stale=True, unvouched=(b"worker4", b"tf", b"local"))])
        self.claimer.renewed_until = self.clock.seconds() + LEASE
        self.freshness.check()
        self.assertEqual(self.views[-1], CURRENT)

    def test_renewed_deadline_followed(self):
        """
        A deadline that keepalives push on is followed, not acted on.
        """
        for _ in range(5):
            self.clock.advance(LEASE / 2)
            self.claimer.renewed_until = self.clock.seconds() + LEASE
        self.assertEqual(self.views, [])

    def test_name_taken_over(self):
        """
        Once the registry shows the name gone or on another lease, it is
        answered from the registry again: etcd said so.
        """
        self.clock.advance(LEASE)
        self.assertEqual(self.freshness.view.unvouched, (b"worker4", b"tf", b"local"))
        self.registry.put(Member(OWN, ("10.0.0.9",), lease=0x99))
        self.assertEqual(self.views[-1], CURRENT)
        self.registry.delete(OWN)
        self.registry.put(Member(OWN, ("10.0.0.4",), lease=0x44))
        self.assertEqual(self.views[-1], CURRENT)

    def test_stopped(self):
        """
        A stopped Freshness sets no timer and hears nothing.
        """
        self.freshness.stopService()
        self.registry.contact(False)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.views, [])
