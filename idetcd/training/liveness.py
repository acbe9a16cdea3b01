"""
Which members are alive: a member whose holder stopped renewing its lease
is dead long before etcd expires the lease, and a job must not wait for it.

A live holder renews every third of its TTL (L{idetcd.lease.LeaseKeeper}),
so etcd's time-to-live on its lease stays above two thirds of the granted
TTL.  A lease surely below half of it is I{overdue}: its holder has missed
a renewal by a wide margin, and is counted dead.  etcd reports whole
seconds, rounded down, so that is a reported time-to-live at least one
second below half the TTL: a holder killed just after a renewal is counted
dead once half its TTL (10 s: 5 s; 3 s: 2 s) has passed.
"""

import attr
from twisted.internet import defer

from idetcd.membership import next_change, when_members
from idetcd.snapshot import lease_infos

#: How often members are looked at again while waiting for live ones, since
#: a member dies (its lease goes overdue) without any change in etcd's keys.
RECHECK = 1.0


def overdue(info):
    """
    Whether the lease etcd describes by C{info} (a L{LeaseInfo}) has surely
    gone unrenewed for more than half its TTL.
    """
    return 2 * (info.ttl + 1) <= info.granted_ttl


@attr.s(eq=False)
class Liveness:
    """
    Tells which leases are alive, asking etcd only about leases whose last
    reading no longer proves it: a lease read with C{ttl} seconds left is
    surely not overdue for C{ttl - granted/2} seconds more.
    """

    client = attr.ib()
    reactor = attr.ib()
    _alive_until = attr.ib(factory=dict, init=False)  # lease -> reactor time

    @defer.inlineCallbacks
    def alive(self, leases):
        """
        The subset of C{leases} that are alive now; a key on no lease (0)
        never expires, and counts as alive.
        """
        now = self.reactor.seconds()
        unknown = [lease for lease in set(leases) if self._alive_until.get(lease, 0) <= now]
        infos = yield lease_infos(self.client, unknown)
        for lease, info in infos.items():
            if info is None or overdue(info):
                self._alive_until.pop(lease, None)
            else:
                self._alive_until[lease] = now + info.ttl - info.granted_ttl / 2
        now = self.reactor.seconds()
        return {lease for lease in leases if not lease or self._alive_until.get(lease, 0) > now}


@defer.inlineCallbacks
def when_live_members(registry, liveness, reactor, count, role=None, zone=None):
    """
    Fire with the live members of C{role} in C{zone}, by role then slot,
    once at least C{count} are present and alive: L{when_members}, and the
    members it gives checked with C{liveness}.  A dead member among them
    makes it wait for the next change, or L{RECHECK} seconds.
    """
    while True:
        found = yield when_members(registry, count, role, zone)
        alive = yield liveness.alive([member.lease for member in found])
        live = [member for member in found if member.lease in alive]
        if len(live) >= count:
            return live
        yield next_change(registry, reactor, RECHECK)
