"""
Reading a zone's members and their leases, and waiting for members: on
idetcd.testing's etcd, but for the lookups of many leases at once, whose
bound on requests in flight needs replies that take their time.
"""

from twisted.internet import defer

from idetcd.claim import QUEUE
from idetcd.etcd import EtcdUnavailable
from idetcd.members import Registry
from idetcd.members._barrier import when_members
from idetcd.members._record import Member
from idetcd.members._snapshot import lease_times, read_members
from tests.etcdserver import EtcdTestCase
from tests.memoryetcd import FakeEtcdCase
from tests.waiting import sleep

PREFIX = b"/idetcd/"
ZONE = "tf.local."


def value(name, role, slot):
    return Member(name=name, ipv4=("10.0.0.1",), role=role, slot=slot, node=name).to_value()


@defer.inlineCallbacks
def put_member(client, role, slot, zone=ZONE, lease=0):
    name = f"{role}{slot}.{zone}"
    yield client.put(PREFIX + name.encode(), value(name, role, slot), lease=lease)
    return name


class _CountingClient:
    """
    A real client that counts its lease lookups, and the most in flight.
    """

    def __init__(self, client):
        self.client = client
        self.calls = 0
        self.in_flight = 0
        self.most = 0

    def lease_time_to_live(self, lease):
        self.calls += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)

        def done(result):
            self.in_flight -= 1
            return result

        return self.client.lease_time_to_live(lease).addBoth(done)


class SnapshotTests(EtcdTestCase):
    @defer.inlineCallbacks
    def grant(self, count):
        leases = []
        for _ in range(count):
            lease, _ = yield self.client.lease_grant(60)
            leases.append(lease)
        return leases

    @defer.inlineCallbacks
    def test_lease_times_with_bounded_lookups(self):
        leases = yield self.grant(120)
        yield self.client.lease_revoke(leases[-1])
        counting = _CountingClient(self.client)
        times = yield lease_times(counting, leases + leases[:10] + [0], concurrency=8)
        self.assertEqual(sorted(times), sorted(leases))
        self.assertEqual(counting.calls, len(leases))
        self.assertEqual(counting.most, 8)
        self.assertIsNone(times[leases[-1]])
        self.assertTrue(all(55 <= times[lease] <= 60 for lease in leases[:-1]), times)

    @defer.inlineCallbacks
    def test_lease_times_stop_at_the_first_failure(self):
        leases = yield self.grant(100)
        yield self.etcd.kill()
        counting = _CountingClient(self.client)
        yield self.assertFailure(lease_times(counting, leases, concurrency=8), EtcdUnavailable)
        self.assertLessEqual(counting.calls, 16)
        yield sleep(0.1)
        self.assertEqual(counting.in_flight, 0)


class ReadMembersTests(FakeEtcdCase):
    @defer.inlineCallbacks
    def test_read_members_of_the_zone(self):
        yield put_member(self.client, "worker", 1)
        yield put_member(self.client, "ps", 1)
        yield put_member(self.client, "worker", 1, zone="other.zone.")
        yield self.client.put(PREFIX + b"worker2.tf.local.", b"not json")
        yield self.client.put(PREFIX + QUEUE + b"0123456789abcdef/00000000000000a1", b"")
        members, revision = yield read_members(self.client, PREFIX, ZONE)
        self.assertEqual(sorted(members), ["ps1.tf.local.", "worker1.tf.local."])
        self.assertEqual((members["ps1.tf.local."].role, members["ps1.tf.local."].slot), ("ps", 1))
        _, now = yield self.client.range(PREFIX)
        self.assertEqual(revision, now)


class WhenMembersTests(FakeEtcdCase):
    @defer.inlineCallbacks
    def test_fires_once_enough_of_the_role_are_in_the_zone(self):
        registry = Registry(self.client, PREFIX, self.clock)
        self.addCleanup(registry.stopService)
        first = yield put_member(self.client, "worker", 1)
        d = when_members(registry, 2, "worker", ZONE)
        everyone = when_members(registry, 3, zone=ZONE)
        registry.startService()
        yield registry.when_ready()
        yield put_member(self.client, "worker", 1, zone="other.zone.")
        yield put_member(self.client, "ps", 1)
        yield self.client.delete(PREFIX + first.encode())
        yield put_member(self.client, "worker", 2)
        self.assertIn("worker2.tf.local.", registry.members)
        self.assertFalse(d.called)
        yield put_member(self.client, "worker", 1)
        found = yield d
        self.assertEqual([m.name for m in found], ["worker1.tf.local.", "worker2.tf.local."])
        found = yield everyone
        self.assertEqual([m.name for m in found], ["ps1.tf.local.", "worker1.tf.local.", "worker2.tf.local."])

    @defer.inlineCallbacks
    def test_cancel_stops_following(self):
        registry = Registry(self.client, PREFIX, self.clock)
        self.addCleanup(registry.stopService)
        registry.startService()
        yield registry.when_ready()
        d = when_members(registry, 5)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertEqual(registry._change_subscribers, [])
