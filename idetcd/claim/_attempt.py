"""
One claim of a slot: the etcd requests that win this node a name, apart
from the claimer's machine, which only decides what a claim's outcome
means.

The claim is one etcd transaction per slot tried ("create only if absent"),
so of any number of racing nodes exactly one gets a slot.  The key lives on
a lease that L{LeaseKeeper} keeps alive from the moment it is granted, for
as long as the claim takes and the name is held.

A name belongs to a lease, not to a node identity: this node takes over an
existing key only when it is on the lease this node's own previous
incarnation held and that incarnation provably ended (see
L{idetcd.claim._state_directory.NodeState}).  A key carrying this node's identity that it
cannot prove its own is watched until its lease expires; if the lease is
renewed instead, another live node shares the identity, and this node takes
a fresh one.

A node alone in the claim queue makes way for a replacement's ordinal: if
a member below the slot it would get is marked dead (its holder stopped
renewing its lease: see L{idetcd.training.liveness}), it waits, at most
until that lease should have ended, for the slot to free, so a machine
replacing a dead one takes the dead one's slot instead of a higher one
for good.
"""

import uuid

import attr
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from idetcd.claim._decision import (
    Full,
    Probe,
    Queue,
    WaitTurn,
    Won,
    for_preferred,
    for_queued,
    make_way,
)
from idetcd.common import RateLimitedLog
from idetcd.etcd import EtcdError, EtcdUnavailable, LeaseNotFound, NoSpace
from idetcd.members import Member

log = Logger()

#: How often a key whose lease might belong to a live twin is looked at.
PROBE_INTERVAL = 1.0

#: How long after a lease's TTL runs out its key may still be seen: etcd
#: rounds TTLs down to whole seconds, expires leases on a half-second tick,
#: and the delete then comes down the watch.
EXPIRY_MARGIN = 2.0


def say_lease_gone():
    """
    Says the claim's lease is gone: found so by a claim, or by the lease's
    keeper while one was under way.
    """
    log.info("the claim's lease is gone from etcd (revoked, or expired); claiming with a new one")


@attr.s(eq=False)
class SlotTaker:
    """
    Takes this node a slot, one claim at a time (L{take}, which stops
    once its Deferred is cancelled), on the lease C{keeper} keeps (granting
    one when it keeps none).

    C{names} are the pattern's names rendered, lowest slot first, C{slots}
    each name's slot number, and C{role} the pattern's role: what a claimed
    key under C{prefix} holds.  C{registry} is the claim's view of etcd,
    C{queue} the L{ClaimQueue} in which nodes of the pattern tagged C{tag}
    wait their turn.  C{announcement()} gives the L{Announcement} to claim
    with now; C{on_fresh_identity(announcement)} is told the one to claim
    with from then on, when another live node uses this node's identity.
    """

    client = attr.ib()
    registry = attr.ib()
    queue = attr.ib()
    keeper = attr.ib()
    reactor = attr.ib()
    backoff = attr.ib()
    prefix = attr.ib()
    role = attr.ib()
    names = attr.ib()
    slots = attr.ib()
    tag = attr.ib()
    announcement = attr.ib()
    on_fresh_identity = attr.ib()
    #: How often, at most, "cannot claim a name yet" is logged.
    warn_interval = attr.ib(default=30.0)
    #: Whether the claim waits for etcd's NOSPACE alarm to end: its last
    #: try was refused for lack of space.
    nospace = attr.ib(default=False, init=False)
    _warn = attr.ib(init=False)

    def __attrs_post_init__(self):
        self._warn = RateLimitedLog(self.reactor, log, self.warn_interval, LogLevel.warn)

    @defer.inlineCallbacks
    def take(self):
        """
        Win a slot: returns C{(name, revision)}, or C{None} when every slot
        is taken.  etcd trouble is retried with backoff; after a failed try
        whose transaction may have gone through, the lease is first asked
        which key it holds already, so a lost reply never makes a second.
        """
        maybe_won = False
        while True:
            try:
                lease = self.keeper.lease
                if lease is None:
                    lease = yield self._new_lease()
                elif maybe_won:
                    held = yield self._already_held(lease)
                    if held is not None:
                        return held
                result = yield self._take_slot(lease)
            except defer.CancelledError:
                raise
            except LeaseNotFound:
                # The lease expired or was revoked: a new one holds nothing.
                self.keeper.drop()
                maybe_won = False
                error = None
                say_lease_gone()
            except Exception as e:
                maybe_won = True
                if isinstance(e, NoSpace):
                    self._out_of_space()
                    error = None
                elif isinstance(e, (EtcdUnavailable, EtcdError, defer.TimeoutError)):
                    error = str(e)
                else:
                    # A traceback per retry would flood the log: one per interval.
                    self._warn("unexpected", "unexpected error while claiming", log_failure=Failure())
                    error = repr(e)
            else:
                self.backoff.reset()
                self._warn.reset("claim")
                self._warn.reset("unexpected")
                self.nospace = False
                return result
            delay = self.backoff.next()
            if error is not None:
                self._warn("claim", "cannot claim a name yet ({error}); retrying in {delay:.2f}s", error=error, delay=delay)
            yield deferLater(self.reactor, delay, lambda: None)

    def _out_of_space(self):
        """
        etcd refused a write of the claim for lack of space: say so, with
        the fix, once until a claim goes through.
        """
        if self.nospace:
            return
        self.nospace = True
        log.error(
            "cannot claim a name: etcd is out of space (NOSPACE alarm) and refuses writes;"
            " this node answers DNS from what it reads and retries the claim until an operator"
            " frees space: {fix}",
            fix=NoSpace.FIX,
        )

    @defer.inlineCallbacks
    def _new_lease(self):
        """
        A new lease, kept alive.  While etcd is out of space it grants none,
        but keeps alive those it has: the lease of this node's provably
        ended previous process is kept instead, with the preferred name, if
        that name's key is still on it exactly as this node would write it.
        """
        try:
            return (yield self.keeper.grant())
        except NoSpace as e:
            refused = e
        start = self.announcement()
        if start.predecessor_lease is None or start.preferred not in self.slots:
            raise refused
        kvs, _ = yield self.client.range(self.key(start.preferred))
        if not kvs or (kvs[0].lease, kvs[0].value) != (start.predecessor_lease, self._value(start.preferred)):
            raise refused
        lease = yield self.keeper.adopt(start.predecessor_lease)
        log.info(
            "etcd is out of space and grants no lease: keeping lease {lease:x} of this node's"
            " previous process, which holds {name}",
            lease=lease,
            name=start.preferred,
        )
        return lease

    @defer.inlineCallbacks
    def _already_held(self, lease):
        """
        The slot C{lease} holds already, as C{(name, revision)}, or C{None};
        if it holds several (a lost reply, then another try), the best is
        kept and the others are deleted.
        """
        info = yield self.client.lease_time_to_live(lease, keys=True)
        names = sorted(
            (name for name in (self._name_of(key) for key in info.keys) if name is not None),
            key=lambda name: (name != self.announcement().preferred, self.slots[name]),
        )
        if not names:
            return None
        for extra in names[1:]:
            log.warn("lease {lease:x} also held {name}: deleting it", lease=lease, name=extra)
            yield self.client.delete_on_lease(self.key(extra), lease)
        # The queue key of the try that won, if it is still there.
        yield self.client.delete_on_lease(self.queue.key(self.tag, lease), lease)
        kvs, _ = yield self.client.range(self.key(names[0]))
        if not kvs or kvs[0].lease != lease:
            return None  # gone meanwhile: claim afresh
        return names[0], kvs[0].mod_revision

    @defer.inlineCallbacks
    def _take_slot(self, lease):
        """
        Win a slot with C{lease}: the preferred one if it can be had, else
        the one the queue assigns (see L{ClaimQueue.assignment}); returns the
        name won and the revision it was won at, or C{None} when no slot is
        free.  In the common case this costs one put and one transaction,
        however many nodes start at once, and reads nothing but the
        preferred slot's key.
        """
        registry = self.registry
        won = yield self._take_preferred(lease)
        if won is not None:
            return won
        queue_key = self.queue.key(self.tag, lease)
        revision = yield self.client.put(queue_key, b"", lease=lease)
        yield registry.when_caught_up(revision)
        if (yield self._wait_for_dead_holder(lease, queue_key)):
            revision = yield self.client.put(queue_key, b"", lease=lease)
        while True:
            yield registry.when_caught_up(revision)
            share = self.queue.assignment(self.tag, self.names).get(lease)
            step = for_queued(share, self.names, registry.is_free)
            if isinstance(step, Full):
                return None
            if isinstance(step, WaitTurn):
                revision = yield self._next_change(registry.applied, self.keeper.ttl / 3)
                continue
            name = step.name
            result = yield self.client.create(
                self.key(name), self._value(name), lease=lease, also_delete=queue_key
            )
            won = self._won(result, lease)
            if won is not None:
                return name, won
            # Taken outside the queue's order (a node's own preferred slot):
            # the registry's next view gives everyone a new share.  Wait for
            # that write, which is under the prefix, not for etcd's revision,
            # which other users of etcd move.
            log.debug("lost the race for {name}", name=name)
            revision = result.existing.mod_revision if result.existing else registry.applied + 1

    @staticmethod
    def _won(result, lease):
        """
        The revision a create won at, or C{None} if it lost.  A create sent
        again (to the next endpoint, after a timeout) fails against the key
        its first sending put: that is a win too.
        """
        if result.succeeded:
            return result.revision
        if result.existing is not None and result.existing.lease == lease:
            return result.existing.mod_revision
        return None

    def _next_change(self, revision, timeout):
        """
        Fires with the revision to wait for once the registry moved past
        C{revision}, or after C{timeout} seconds, whichever comes first.
        """
        changed = self.registry.when_caught_up(revision + 1)
        timer = self.reactor.callLater(timeout, changed.cancel)

        def settled(result):
            if not timer.active():
                return self.registry.applied  # our own timeout's cancel
            timer.cancel()
            if isinstance(result, Failure):
                return result  # the claim itself was cancelled
            return self.registry.applied

        return changed.addBoth(settled)

    @defer.inlineCallbacks
    def _wait_for_dead_holder(self, lease, queue_key):
        """
        When this node is alone in its pattern's queue and a member below
        the slot it would get is marked dead, leave the queue (so that a
        node queueing meanwhile is alone too, and waits as well, rather
        than take that slot) and wait for a slot below to free, at most
        until that lease should have ended: a mark is written once a lease
        has under half its TTL left.  Returns whether it left the queue.
        Only alone: a crowd of starters takes its slots at once; and the
        queue is known to be empty only once this node's own entry is in
        the registry.
        """
        registry = self.registry
        step = make_way(
            self.queue.assignment(self.tag, self.names).get(lease),
            self.queue.queue(self.tag),
            lease,
            self.slots,
            [n for n in registry.dead if n in registry.members and registry.is_dead(registry.members[n])],
        )
        if step is None:
            return False
        bound = self.keeper.ttl / 2 + EXPIRY_MARGIN
        log.info(
            "waiting up to {bound:.0f}s for {dead}, whose holder stopped renewing its lease, "
            "rather than taking {name}",
            bound=bound,
            dead=step.dead[0],
            name=step.name,
        )
        yield self.client.delete_on_lease(queue_key, lease)
        deadline = self.reactor.seconds() + bound
        while not any(registry.is_free(n) for n in step.dead) and self.reactor.seconds() < deadline:
            yield self._next_change(registry.applied, deadline - self.reactor.seconds())
        return True

    @defer.inlineCallbacks
    def _take_preferred(self, lease):
        """
        Claim the preferred slot when it is free, ours already, or held by
        this node's provably ended incarnation; returns C{(name, revision)},
        or C{None} to queue instead.
        """
        preferred = self.announcement().preferred
        while preferred in self.slots:
            key = self.key(preferred)
            kvs, _ = yield self.client.range(key)
            kv = kvs[0] if kvs else None
            step = for_preferred(
                preferred, kv, lease, self.announcement().predecessor_lease,
                kv is not None and self._carries_identity(kv),
            )
            if isinstance(step, Won):
                return preferred, step.revision  # won by a try whose reply was lost
            if isinstance(step, Queue):
                return None
            if isinstance(step, Probe):
                # Ours by identity, but not provably: wait for its lease to
                # end, unless someone keeps it alive.
                twin = yield self._probe(kv)
                if twin is not None:
                    self._take_fresh_identity(twin)
                    return None
                continue
            result = yield self.client.create(
                key, self._value(preferred), lease=lease, replacing=step.replacing,
                also_delete=self.queue.key(self.tag, lease),
            )
            won = self._won(result, lease)
            if won is None:
                return None
            if kv is not None and kv.lease:
                # Our own ended incarnation's lease: it holds nothing else.
                yield self.client.lease_revoke(kv.lease).addErrback(lambda _: None)
            return preferred, won
        return None

    @defer.inlineCallbacks
    def _probe(self, kv):
        """
        Watch C{kv}'s lease until it ends; returns C{kv} if it was renewed
        instead (a live process holds it), else C{None}.  A live holder
        renews within a third of its TTL, a dead one never.
        """
        log.info(
            "{name} carries this node's identity on lease {lease:x}, which this "
            "node cannot prove its own; waiting for the lease to end",
            name=self._name_of(kv.key),
            lease=kv.lease,
        )
        try:
            remaining = (yield self.client.lease_time_to_live(kv.lease)).ttl
            since = self.reactor.seconds()
            rises = 0
            while True:
                yield deferLater(self.reactor, PROBE_INTERVAL, lambda: None)
                asked = self.reactor.seconds()
                now_remaining = (yield self.client.lease_time_to_live(kv.lease)).ttl
                # A dead lease ages at least as long as from the reply that
                # set the baseline to this request, however slow etcd is;
                # TTLs are whole seconds, so allow for rounding.  One rise
                # can be etcd renewing every lease on a leader change; a
                # live holder renews every third of its TTL, so it rises
                # again from the new baseline.
                if now_remaining > remaining - (asked - since) + 1.5:
                    rises += 1
                    if rises >= 2:
                        return kv
                    remaining, since = now_remaining, self.reactor.seconds()
        except LeaseNotFound:
            return None

    def _take_fresh_identity(self, kv):
        announcement = self.announcement()
        old = announcement.member.node
        member = attr.evolve(announcement.member, node=uuid.uuid4().hex)
        log.error(
            "another live node uses this node's identity {old!r}: it holds {name} on "
            "lease {lease:x}. This node takes the fresh identity {new!r}. Give every "
            "host its own state directory, and its own 'node' if you set one.",
            old=old,
            name=self._name_of(kv.key),
            lease=kv.lease,
            new=member.node,
        )
        self.on_fresh_identity(attr.evolve(announcement, member=member, preferred=None, predecessor_lease=None))

    def _carries_identity(self, kv):
        node = self.announcement().member.node
        if not node:
            return False
        try:
            return Member.from_value("", kv.value).node == node
        except ValueError:
            return False

    def key(self, name):
        """
        The etcd key of the slot named C{name}.
        """
        return self.prefix + name.encode("ascii")

    def _name_of(self, key):
        if not key.startswith(self.prefix):
            return None
        name = key[len(self.prefix) :].decode("ascii", "replace")
        return name if name in self.slots else None

    def _value(self, name):
        return attr.evolve(
            self.announcement().member, name=name, role=self.role, slot=self.slots[name]
        ).to_value()

