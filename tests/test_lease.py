"""
The lease keeper's machine (unkept, live, lapsed) on a L{Clock}, on
idetcd.testing's etcd with every request of the keeper held until the test
lets it through.  TTL 9: keepalives every 3 s.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from idetcd.claim import LeaseKeeper
from idetcd.etcd import EtcdUnavailable
from idetcd.testing import FakeEtcd
from tests.memoryetcd import HeldClient


class LeaseKeeperTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd(self.clock)
        self.held = HeldClient(self.etcd)
        self.client = self.held.client
        #: An operator's, or the node's previous process's, client.
        self.others = self.etcd.client()
        self.events = []
        self.keeper = LeaseKeeper(
            self.client, 9, self.clock,
            on_expired=lambda: self.events.append("expired"),
            on_renewed=lambda: self.events.append("renewed"),
            on_gone=lambda: self.events.append("gone"),
        )

    def granted(self):
        """
        Grant a lease through the keeper; returns it.
        """
        granted = self.keeper.grant()
        lease = int(self.held.release("grant")["ID"])
        self.assertEqual(self.successResultOf(granted), lease)
        return lease

    def tearDown(self):
        self.keeper.drop()
        for client in (self.client, self.others):
            client.close()
        self.assertNothingScheduled()

    def assertNothingScheduled(self):
        """
        Once etcd's own timers (its leases') are stopped, nothing is left
        on the clock: no timer of the keeper's, no request under way.
        """
        self.etcd.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unkept_is_not_alive(self):
        self.assertFalse(self.keeper.alive)
        self.assertIsNone(self.keeper.drop())
        self.assertIsNone(self.successResultOf(self.keeper.revoke()))
        self.assertEqual(self.held.revoked(), [])

    def test_granted_lease_is_alive_until_its_deadline(self):
        lease = self.granted()
        self.assertTrue(self.keeper.alive)
        self.assertEqual((self.keeper.lease, self.keeper.deadline), (lease, 9))
        # No keepalive is answered: the deadline passes, keepalives go on.
        self.clock.advance(8.9)
        self.assertTrue(self.keeper.alive)
        self.clock.advance(0.1)
        self.assertFalse(self.keeper.alive)
        self.assertEqual(self.events, ["expired"])
        self.assertEqual(self.keeper.lease, lease)

    def test_keepalive_moves_the_deadline_from_its_send_time(self):
        self.granted()
        self.clock.advance(3)
        self.clock.advance(2)
        self.held.release("keepalive")
        self.assertEqual(self.keeper.deadline, 12)
        self.assertEqual(self.events, [])

    def unanswered_until_the_deadline(self):
        """
        Keepalives go out at 3 and 6; at 6 the one of 3 reaches etcd
        (which renews the lease until 15) and no reply comes back: it is
        given up on 4.5 s after it was sent.  At 9 the ones sent at 6 and 9
        are held.
        """
        self.granted()
        for _ in range(2):
            self.clock.advance(3)
        self.held.reach("keepalive")
        self.clock.advance(3)
        self.assertEqual(len(self.held.pending("keepalive")), 2)

    def test_lapsed_lease_revives_on_a_timely_renewal(self):
        self.unanswered_until_the_deadline()
        self.assertEqual(self.events, ["expired"])
        # The keepalive sent at 6 answers now: it lives until 15.
        self.held.release("keepalive")
        self.assertTrue(self.keeper.alive)
        self.assertEqual(self.keeper.deadline, 15)
        self.assertEqual(self.events, ["expired", "renewed"])

    def test_renewal_too_late_does_not_revive(self):
        """
        A renewal read after the time it vouches for: the process was
        frozen (SIGSTOP) until 16, and reads the reply to the keepalive
        sent at 6 (good until 15) before any timer runs.
        """
        self.unanswered_until_the_deadline()
        self.clock.rightNow = 16
        self.held.release("keepalive")
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
        self.assertNothingScheduled()

    def test_gone_stops_keeping(self):
        lease = self.granted()
        self.clock.advance(3)
        self.successResultOf(self.others.lease_revoke(lease))  # an operator
        self.held.release("keepalive")
        self.assertEqual(self.events, ["gone"])
        self.assertIsNone(self.keeper.lease)
        self.assertFalse(self.keeper.alive)
        self.assertNothingScheduled()
        self.assertEqual(self.held.pending("keepalive"), [])

    def test_owner_may_grant_again_when_told_gone(self):
        """
        The owner hears of the loss once the keeper has dropped the lease,
        so a grant from inside C{on_gone} starts afresh.
        """
        self.keeper.on_gone = lambda: self.events.append(self.keeper.grant())
        lease = self.granted()
        self.clock.advance(3)
        self.successResultOf(self.others.lease_revoke(lease))
        self.held.release("keepalive")
        again = int(self.held.release("grant")["ID"])
        self.assertNotEqual(again, lease)
        self.assertEqual(self.successResultOf(self.events[0]), again)
        self.assertTrue(self.keeper.alive)
        self.assertEqual(self.keeper.deadline, 12)

    def test_failed_keepalive_is_retried_soon(self):
        self.granted()
        self.clock.advance(3)
        self.held.cut("keepalive")
        self.clock.advance(1)
        self.assertEqual(len(self.held.pending("keepalive")), 1)
        self.held.release("keepalive")
        self.assertEqual(self.keeper.deadline, 13)
        self.assertEqual(dict(self.keeper.keepalives), {"ok": 1, "failed": 1})

    def test_lost_grant_reply_is_asked_again_with_the_same_id(self):
        first = self.keeper.grant()
        asked = self.held.lose("grant")
        self.failureResultOf(first, EtcdUnavailable)
        self.clock.advance(2)
        again = self.keeper.grant()
        # The first try went through: etcd says the ID exists.
        self.assertEqual(self.held.release("grant")["ID"], asked["ID"])
        lease = self.successResultOf(again)
        self.assertEqual((self.keeper.lease, lease), (int(asked["ID"]), int(asked["ID"])))
        # Counted from the first try's send time.
        self.assertEqual(self.keeper.deadline, 9)

    def test_adopted_lease_renews_on_its_own_ttl(self):
        lease, _ = self.successResultOf(self.others.lease_grant(6))
        adopted = self.keeper.adopt(lease)
        self.held.release("keepalive")
        self.assertEqual(self.successResultOf(adopted), lease)
        self.assertEqual(self.keeper.deadline, 6)
        self.assertEqual(self.keeper.period, 2)

    def test_revoke_drops_then_revokes(self):
        lease = self.granted()
        self.clock.advance(3)
        self.assertIsNone(self.successResultOf(self.keeper.revoke()))
        self.assertEqual(self.held.revoked(), [lease])
        self.assertFalse(self.keeper.alive)
        self.assertNothingScheduled()
        # The keepalive under way was cancelled, and counted as nothing.
        self.assertEqual(self.held.pending("keepalive"), [])
        self.assertEqual(dict(self.keeper.keepalives), {})

    def test_keepalive_outcomes_are_counted(self):
        self.granted()
        for _ in range(2):
            self.clock.advance(3)
            self.held.release("keepalive")
        self.clock.advance(3)
        self.held.cut("keepalive")
        # Retried 1 s later, then every 3 s; none answered: the one sent
        # at 10 is given up on at 14.5 and sent again at 15.5.
        for step in (1, 3, 3):
            self.clock.advance(step)
        self.assertEqual(len(self.held.pending("keepalive")), 2)
        self.assertEqual(self.keeper.keepalives["failed"], 2)
        # etcd last renewed the lease at 6: it is gone since 15.
        self.held.release("keepalive")
        self.assertEqual(dict(self.keeper.keepalives), {"ok": 2, "failed": 2, "gone": 1})
        self.assertEqual(self.events, ["expired", "gone"])
        self.assertNothingScheduled()

    def test_dropped_lease_counts_nothing_more(self):
        self.granted()
        self.clock.advance(3)
        self.keeper.drop()
        self.assertEqual(dict(self.keeper.keepalives), {})
        self.assertNothingScheduled()
        self.assertEqual(self.held.pending("keepalive"), [])
