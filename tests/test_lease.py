"""
The lease keeper's machine (unkept, live, lapsed) on a L{Clock}, with every
etcd reply given by the test.  TTL 9: keepalives every 3 s.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from idetcd.claim import LeaseKeeper
from idetcd.etcd import EtcdUnavailable, LeaseExists, LeaseNotFound
from tests.scriptedclient import ScriptedClient


class LeaseKeeperTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.client = ScriptedClient()
        self.events = []
        self.keeper = LeaseKeeper(
            self.client, 9, self.clock,
            on_expired=lambda: self.events.append("expired"),
            on_renewed=lambda: self.events.append("renewed"),
            on_gone=lambda: self.events.append("gone"),
        )

    def granted(self, lease=7):
        granted = self.keeper.grant()
        self.client.answer("grant", (lease, 9))
        self.assertEqual(self.successResultOf(granted), lease)

    def test_unkept_is_not_alive(self):
        self.assertFalse(self.keeper.alive)
        self.assertIsNone(self.keeper.drop())
        self.assertIsNone(self.successResultOf(self.keeper.revoke()))
        self.assertEqual(self.client.revoked, [])

    def test_granted_lease_is_alive_until_its_deadline(self):
        self.granted()
        self.assertTrue(self.keeper.alive)
        self.assertEqual((self.keeper.lease, self.keeper.deadline), (7, 9))
        # No keepalive is answered: the deadline passes, keepalives go on.
        self.clock.advance(8.9)
        self.assertTrue(self.keeper.alive)
        self.clock.advance(0.1)
        self.assertFalse(self.keeper.alive)
        self.assertEqual(self.events, ["expired"])
        self.assertEqual(self.keeper.lease, 7)

    def test_keepalive_moves_the_deadline_from_its_send_time(self):
        self.granted()
        self.clock.advance(3)
        self.clock.advance(2)
        self.client.answer("keepalive", 9)
        self.assertEqual(self.keeper.deadline, 12)
        self.assertEqual(self.events, [])

    def unanswered_until_the_deadline(self):
        """
        Keepalives go out at 3, 6 and 9, none answered; the one sent at 3
        is given up on when the third goes out.
        """
        self.granted()
        for _ in range(3):
            self.clock.advance(3)
        self.assertEqual(len(self.client.pending("keepalive")), 2)

    def test_lapsed_lease_revives_on_a_timely_renewal(self):
        self.unanswered_until_the_deadline()
        self.assertEqual(self.events, ["expired"])
        # The keepalive sent at 6 answers now: it lives until 15.
        self.client.answer("keepalive", 9)
        self.assertTrue(self.keeper.alive)
        self.assertEqual(self.events, ["expired", "renewed"])

    def test_renewal_too_late_does_not_revive(self):
        self.unanswered_until_the_deadline()
        # The one sent at 6 says the lease had 2 s left then: gone by 8.
        self.client.answer("keepalive", 2)
        self.assertFalse(self.keeper.alive)
        self.assertEqual(self.events, ["expired"])

    def test_confirmation_revives_without_telling_the_owner(self):
        self.granted()
        self.clock.advance(10)
        self.keeper.confirmed(10, 6)
        self.assertTrue(self.keeper.alive)
        self.assertEqual(self.keeper.deadline, 16)
        self.assertEqual(self.events, ["expired"])

    def test_confirmation_of_a_dropped_lease_is_ignored(self):
        self.granted()
        self.keeper.drop()
        self.keeper.confirmed(0, 9)
        self.assertFalse(self.keeper.alive)
        self.assertIsNone(self.keeper.deadline)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_gone_stops_keeping(self):
        self.granted()
        self.clock.advance(3)
        self.client.answer("keepalive", LeaseNotFound(5, "lease not found"))
        self.assertEqual(self.events, ["gone"])
        self.assertIsNone(self.keeper.lease)
        self.assertFalse(self.keeper.alive)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_owner_may_grant_again_when_told_gone(self):
        """
        The owner hears of the loss once the keeper has dropped the lease,
        so a grant from inside C{on_gone} starts afresh.
        """
        self.keeper.on_gone = lambda: self.events.append(self.keeper.grant())
        self.granted()
        self.clock.advance(3)
        self.client.answer("keepalive", LeaseNotFound(5, "lease not found"))
        self.client.answer("grant", (8, 9))
        self.assertEqual(self.successResultOf(self.events[0]), 8)
        self.assertTrue(self.keeper.alive)
        self.assertEqual(self.keeper.deadline, 12)

    def test_failed_keepalive_is_retried_soon(self):
        self.granted()
        self.clock.advance(3)
        self.client.answer("keepalive", EtcdUnavailable("no etcd endpoint answered"))
        self.clock.advance(1)
        self.assertEqual(len(self.client.pending("keepalive")), 1)
        self.client.answer("keepalive", 9)
        self.assertEqual(self.keeper.deadline, 13)
        self.assertEqual(dict(self.keeper.keepalives), {"ok": 1, "failed": 1})

    def test_lost_grant_reply_is_asked_again_with_the_same_id(self):
        first = self.keeper.grant()
        self.client.answer("grant", EtcdUnavailable("timed out"))
        self.failureResultOf(first, EtcdUnavailable)
        self.clock.advance(2)
        again = self.keeper.grant()
        # The first try went through: etcd says the ID exists.
        self.client.answer("grant", LeaseExists(9, "lease already exists"))
        lease = self.successResultOf(again)
        self.assertEqual(self.keeper.lease, lease)
        # Counted from the first try's send time.
        self.assertEqual(self.keeper.deadline, 9)

    def test_adopted_lease_renews_on_its_own_ttl(self):
        adopted = self.keeper.adopt(5)
        self.client.answer("keepalive", 6)
        self.assertEqual(self.successResultOf(adopted), 5)
        self.assertEqual(self.keeper.deadline, 6)
        self.assertEqual(self.keeper.period, 2)

    def test_revoke_drops_then_revokes(self):
        self.granted()
        self.clock.advance(3)
        self.assertIsNone(self.successResultOf(self.keeper.revoke()))
        self.assertEqual(self.client.revoked, [7])
        self.assertFalse(self.keeper.alive)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # The keepalive under way was cancelled, and counted as nothing.
        self.assertEqual(dict(self.keeper.keepalives), {})

    def keepalive(self, result):
        self.clock.advance(3)
        self.client.answer("keepalive", result)

    def test_keepalive_outcomes_are_counted(self):
        self.granted()
        self.keepalive(9)
        self.keepalive(9)
        self.keepalive(EtcdUnavailable("no etcd endpoint answered"))
        # Retried 1 s later, then every 3 s; none answered: the first is
        # given up on when the third goes out.
        for step in (1, 3, 3):
            self.clock.advance(step)
        self.assertEqual(len(self.client.pending("keepalive")), 2)
        self.assertEqual(self.keeper.keepalives["failed"], 2)
        self.client.answer("keepalive", LeaseNotFound(5, "lease not found"))
        self.assertEqual(dict(self.keeper.keepalives), {"ok": 2, "failed": 2, "gone": 1})
        self.assertEqual(self.events, ["expired", "gone"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_dropped_lease_counts_nothing_more(self):
        self.granted()
        self.clock.advance(3)
        self.keeper.drop()
        self.assertEqual(dict(self.keeper.keepalives), {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
