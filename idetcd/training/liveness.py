"""
Which members are alive: a member whose holder stopped renewing its lease
is dead long before etcd expires the lease, and a job must not wait for it.

A live holder renews every third of its TTL (L{idetcd.claim._lease.LeaseKeeper}),
so etcd's time-to-live on its lease stays above two thirds of the granted
TTL.  A lease surely below half of it is I{overdue}: its holder has missed
a renewal by a wide margin, and is dead.  etcd reports whole seconds,
rounded down, so that is a reported time-to-live at least one second below
half the TTL.

Only etcd knows a lease's time left, and asking it about every member
from every node would cost the cluster members x askers lookups.  So each
node looks after one other: the member before it in its role, by slot, in
a ring (the lowest slot looks after the highest).  Every look-after period
it asks etcd about that member's lease, and once the lease is overdue it
writes a I{dead mark} for it, on the dead member's own lease so that etcd
drops both together.  Everyone else learns of the death from the watch
they already follow: one lookup per node and period in all, and a write
per death.  If the member before is marked dead already, the node looks
after the one before that too, so two neighbours dying together are both
found.  A node that finds itself marked (its keepalives were late, not
lost) takes the mark back.
"""

import bisect
import json

import attr
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel

from idetcd.common import RateLimitedLog
from idetcd.etcd import LeaseNotFound
from idetcd.members import dead_key, member_filter

log = Logger()

#: At most this many members before this node's are looked after in one
#: period (a run of members marked dead, then one that is not).
MOST_LOOKED_AFTER = 16


def overdue(info):
    """
    Whether the lease etcd describes by C{info} (a L{LeaseInfo}) has surely
    gone unrenewed for more than half its TTL.
    """
    return 2 * (info.ttl + 1) <= info.granted_ttl


def look_after_period(lease_ttl):
    """
    How often a node asks about the member before it: a tenth of the lease
    TTL (at least half a second), so a dead member is marked at most that
    long after half its TTL.
    """
    return max(0.5, lease_ttl / 10)


@attr.s(eq=False)
class LookAfter(Service):
    """
    Marks the members before this node's in its role dead once their leases
    are overdue, every C{period} seconds, while this node holds a name
    (C{claimer.held_name}); see the module's docstring.
    """

    client = attr.ib()
    registry = attr.ib()
    claimer = attr.ib()
    reactor = attr.ib()
    role = attr.ib()
    zone = attr.ib()
    period = attr.ib()
    warn_interval = attr.ib(default=30.0)
    _loop = attr.ib(default=None, init=False)
    _looking = attr.ib(default=None, init=False)
    _unsubscribe = attr.ib(default=None, init=False)
    _peers = attr.ib(factory=list, init=False)  # (slot, name) of the role's members, sorted
    _keys = attr.ib(factory=dict, init=False)  # name -> its entry in _peers
    _wanted = attr.ib(init=False)
    _warn = attr.ib(init=False)

    def __attrs_post_init__(self):
        self._warn = RateLimitedLog(self.reactor, log, self.warn_interval, LogLevel.warn)
        self._wanted = member_filter(self.role, self.zone)

    def startService(self):
        Service.startService(self)
        self._peers, self._keys = [], {}
        self._unsubscribe = self.registry.subscribe_changes(self._changed)
        self._changed(list(self.registry.members))
        self._loop = LoopingCall(self._look)
        self._loop.clock = self.reactor
        self._loop.start(self.period, now=False)

    def stopService(self):
        Service.stopService(self)
        if self._unsubscribe is None:
            return  # never started: the node stopped before it could claim
        self._unsubscribe()
        self._unsubscribe = None
        if self._loop.running:
            self._loop.stop()
        if self._looking is not None:
            self._looking.cancel()

    def _changed(self, names):
        """
        Keep the role's members in slot order, change by change: the cost
        of a change does not grow with the role.
        """
        for name in names:
            old = self._keys.pop(name, None)
            if old is not None:
                del self._peers[bisect.bisect_left(self._peers, old)]
            member = self.registry.members.get(name)
            if self._wanted(member):
                self._keys[name] = key = (member.slot, name)
                bisect.insort(self._peers, key)

    def looked_after(self, own):
        """
        The members C{own} looks after, nearest first: the one before it by
        slot in its role (in a ring), and, while that one is marked dead,
        the one before that, up to L{MOST_LOOKED_AFTER}.
        """
        key = self._keys.get(own.name)
        if key is None or len(self._peers) < 2:
            return []
        at = bisect.bisect_left(self._peers, key)
        chosen = []
        for step in range(1, min(len(self._peers), MOST_LOOKED_AFTER + 1)):
            member = self.registry.members[self._peers[at - step][1]]
            chosen.append(member)
            if not self.registry.is_dead(member):
                break
        return chosen

    def _look(self):
        if self._looking is not None:
            return  # the last look is still waiting for etcd
        name = self.claimer.held_name
        own = self.registry.members.get(name) if name else None
        if own is None or own.lease != self.claimer.lease:
            return
        self._looking = self._look_after(own)
        self._looking.addBoth(self._looked)

    def _looked(self, _):
        self._looking = None

    @defer.inlineCallbacks
    def _look_after(self, own):
        try:
            if self.registry.is_dead(own):
                yield self._take_back(own)
            for member in self.looked_after(own):
                if not self.registry.is_dead(member):
                    yield self._ask(own, member)
        except defer.CancelledError:
            pass
        except Exception as e:
            self._warn("look", "cannot look after the members before {name} ({error})", name=own.name, error=e)
        else:
            self._warn.reset("look")

    @defer.inlineCallbacks
    def _ask(self, own, member):
        try:
            info = yield self.client.lease_time_to_live(member.lease)
        except LeaseNotFound:
            return  # gone: etcd drops its name by itself
        if not overdue(info):
            return
        mark = json.dumps({"by": own.name, "ttl": info.ttl, "granted": info.granted_ttl}).encode()
        try:
            yield self.client.put(dead_key(self.registry.prefix, member.name), mark, lease=member.lease)
        except LeaseNotFound:
            return
        log.info(
            "{name} is dead: lease {lease:x} has {ttl}s left of {granted}s, not renewed for over half its TTL",
            name=member.name,
            lease=member.lease,
            ttl=info.ttl,
            granted=info.granted_ttl,
        )

    @defer.inlineCallbacks
    def _take_back(self, own):
        taken = yield self.client.delete_on_lease(dead_key(self.registry.prefix, own.name), own.lease)
        if taken:
            log.warn(
                "{name} was marked dead: its lease went unrenewed for over half its TTL (keepalives late,"
                " not lost); mark taken back. Rounds agreed meanwhile left it out",
                name=own.name,
            )
