"""
Claims this node's name and holds it.

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

The claimer is a state machine (L{_Inputs}) whose states hold their own
data: idle, claiming (the claim under way), waiting (every slot taken: the
timer that looks again, and the registry followed for a slot that frees),
holding (the name, the revision it was won at, and the registry followed
for its key), unsure (the lease's local deadline passed: the name is not
called ours until etcd confirms the same lease still holds the same key;
the question asked), failed (why) and stopped.  Every input is handled in
every state.  A transition only decides and changes its state's data; the
work that may call back into the claimer (a claim started, a lease
revoked, a waiter fired) runs once the machine is at rest, so that a reply
given at once, or a caller reacting to its name, is an input of its own.

A node alone in the claim queue makes way for a replacement's ordinal: if
a member below the slot it would get is marked dead (its holder stopped
renewing its lease: see L{idetcd.training.liveness}), it waits, at most
until that lease should have ended, for the slot to free, so a machine
replacing a dead one takes the dead one's slot instead of a higher one
for good.
"""

import collections
import functools
import hashlib
import uuid
from typing import Optional, Protocol

import attr
from automat import TypeMachineBuilder
from twisted.application.service import Service
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
from idetcd.claim._lease import LeaseKeeper
from idetcd.common import EXIT_UNAVAILABLE, Backoff, RateLimitedLog, Waiters
from idetcd.etcd import EtcdError, EtcdUnavailable, LeaseNotFound, NoSpace
from idetcd.members import Member

log = Logger()

#: How often a key whose lease might belong to a live twin is looked at.
PROBE_INTERVAL = 1.0

#: How long after a lease's TTL runs out its key may still be seen: etcd
#: rounds TTLs down to whole seconds, expires leases on a half-second tick,
#: and the delete then comes down the watch.
EXPIRY_MARGIN = 2.0


class SlotsExhausted(Exception):
    """
    Every slot of the pattern is held by another node.
    """

    exit_status = EXIT_UNAVAILABLE


# The states' data.


@attr.s(frozen=True)
class _Held:
    """
    A name won, and the etcd revision it was won at: what holding and
    unsure hold, and hand each other.
    """

    name = attr.ib()
    revision = attr.ib()


@attr.s(eq=False)
class _Claiming:
    """
    The claim under way (its Deferred, once started); C{over} once the
    claimer left this claiming, so that a start still due is not made.
    """

    task = attr.ib(default=None)
    over = attr.ib(default=False)

    def cancel(self):
        task, self.task = self.task, None
        if task is not None:
            task.cancel()

    def end(self):
        self.over = True
        self.cancel()


@attr.s(eq=False)
class _Holding:
    """
    The name held, and the registry's subscription that looks for its key
    deleted or on another lease.
    """

    held = attr.ib()
    unsubscribe = attr.ib()

    def end(self):
        self.unsubscribe()


@attr.s(eq=False)
class _Waiting:
    """
    Every slot was taken: the timer that looks for a free one again, and
    the registry's subscription that looks at once when one frees.
    """

    wake_call = attr.ib()
    unsubscribe = attr.ib()

    def end(self):
        self.unsubscribe()
        if self.wake_call.active():
            self.wake_call.cancel()


@attr.s(eq=False)
class _Unsure:
    """
    The name won (C{held}) while the lease's deadline passed, and the
    question put to etcd about it (a Deferred), or the pause before it is
    put again.
    """

    held = attr.ib()
    verifying = attr.ib(default=None)

    def end(self):
        verifying, self.verifying = self.verifying, None
        if verifying is not None:
            verifying.cancel()


class _Inputs(Protocol):
    """
    What happens to the claim, and what its readers ask (the questions,
    which return something, must not be asked from inside a transition).
    """

    def start(self) -> None:
        "The service started."

    def stop(self, done: defer.Deferred) -> None:
        "The service stops; C{done} fires once the name was given back."

    def won(self, held: _Held) -> None:
        "The claim won a name on a lease that is surely alive."

    def won_unsure(self, held: _Held) -> None:
        "The claim won a name, but the lease's deadline passed meanwhile."

    def no_slot(self, error: SlotsExhausted) -> None:
        "Every slot is taken, and this node may not wait."

    def no_slot_wait(self) -> None:
        "Every slot is taken, and this node waits for one."

    def wake(self) -> None:
        "Time to look for a free slot again."

    def lease_expired(self) -> None:
        "The lease's local deadline passed with no renewal."

    def suspend(self, held: _Held) -> None:
        "The name held is not called ours until etcd confirms it."

    def lease_renewed(self) -> None:
        "A keepalive succeeded after the deadline had passed."

    def confirm(self) -> None:
        "Ask etcd (again) whether the lease still holds the name's key."

    def lease_gone(self) -> None:
        "etcd says the lease does not exist."

    def key_lost(self) -> None:
        "The registry shows the key deleted or on another lease."

    def key_confirmed(self, held: _Held) -> None:
        "etcd says the lease still holds the name's key."

    def key_missing(self) -> None:
        "etcd says the lease no longer holds the name's key."

    def held(self) -> Optional[str]:
        "The name held, if the claimer is holding one."

    def failure(self) -> Optional[SlotsExhausted]:
        "Why the claim failed, if it did."


@attr.s(eq=False)
class Claimer(Service):
    """
    Claims the lowest free slot of C{pattern} (1 to C{limit}) on a lease of
    C{lease_ttl} seconds.

    C{announcer()} gives, at each start, the L{Announcement} to claim
    with: the member value to write (its name ignored), the slot to try
    first and the lease of this node's provably ended previous process.
    C{registry} (a L{Registry} of C{prefix}, started and stopped by its
    owner) is the claimer's view of etcd; C{queue} the L{ClaimQueue} of
    that registry, shared by the claimers that share it.
    C{on_claimed(name, lease)} is called on every claim, the first and
    those after a lost lease; C{on_identity(node)} when this node had to
    take a fresh identity.
    """

    client = attr.ib()
    pattern = attr.ib()
    limit = attr.ib()
    prefix = attr.ib()
    announcer = attr.ib()
    lease_ttl = attr.ib()
    reactor = attr.ib()
    registry = attr.ib()
    queue = attr.ib()
    wait = attr.ib(default=False)
    on_claimed = attr.ib(default=None)
    on_identity = attr.ib(default=None)
    backoff = attr.ib(factory=Backoff)
    #: How often, at most, "cannot claim a name yet" is logged.
    warn_interval = attr.ib(default=30.0)
    #: What the claim writes and where it starts now: the announcer's, then
    #: preferring the name last won, or with a fresh identity.
    announcement = attr.ib(default=None, init=False)
    #: The etcd revision at which the name held now was won.
    claim_revision = attr.ib(default=0, init=False)
    #: Whether the claim waits for etcd's NOSPACE alarm to end: its last
    #: try was refused for lack of space.
    nospace = attr.ib(default=False, init=False)
    #: Whether a name was held since the start: losing it then never fails.
    _held_before = attr.ib(default=False, init=False)
    #: The revoke of an empty lease given back (every slot taken), which
    #: stopping waits for rather than cancel, in whatever state.
    _dropping = attr.ib(default=None, init=False)
    _waiters = attr.ib(factory=Waiters, init=False)
    _machine = attr.ib(init=False)
    _keeper = attr.ib(init=False)
    #: Work left by transitions for once the machine is at rest.
    _afterwards = attr.ib(factory=collections.deque, init=False)
    _busy = attr.ib(default=0, init=False)
    _tag = attr.ib(init=False)
    _names = attr.ib(init=False)
    _slots = attr.ib(init=False)
    _warn = attr.ib(init=False)

    def __attrs_post_init__(self):
        # Rendered once: a large limit makes this the costly part of a claim.
        self._names = [self.pattern.render(slot) for slot in range(1, self.limit + 1)]
        self._slots = {name: slot for slot, name in enumerate(self._names, 1)}
        self._warn = RateLimitedLog(self.reactor, log, self.warn_interval, LogLevel.warn)
        # Nodes of one pattern queue together.
        self._tag = hashlib.sha256(self.pattern.text.encode("utf-8")).hexdigest()[:16].encode("ascii")
        self._machine = _ClaimerMachine(self)
        self._keeper = LeaseKeeper(
            self.client,
            self.lease_ttl,
            self.reactor,
            on_expired=functools.partial(self._feed, self._machine.lease_expired),
            on_renewed=functools.partial(self._feed, self._machine.lease_renewed),
            on_gone=functools.partial(self._feed, self._machine.lease_gone),
        )

    # What the rest of the node reads.

    @property
    def held_name(self):
        """
        The name this node holds now, on a lease that surely still exists in
        etcd; C{None} otherwise.  Checked against the clock on every read,
        so a process that was frozen past its deadline never reports a name
        that etcd may have given to another node.
        """
        name = self._machine.held()
        if name is not None and self._keeper.alive:
            return name
        return None

    @property
    def lease(self):
        """
        The lease of the name held now, or C{None}.
        """
        return self._keeper.lease if self.held_name is not None else None

    @property
    def deadline(self):
        """
        When the name held now stops being this node's unless a keepalive
        renews its lease (reactor time), or C{None} while it holds none.
        """
        return self._keeper.deadline if self.held_name is not None else None

    @property
    def lease_left(self):
        """
        Seconds left before the held name's lease may expire in etcd unless
        renewed, or C{None}.
        """
        return None if self.deadline is None else self.deadline - self.reactor.seconds()

    @property
    def keepalives(self):
        """
        How this node's lease keepalives went, by outcome (see
        L{LeaseKeeper}).
        """
        return self._keeper.keepalives

    @property
    def slot(self):
        """
        The slot number of the name held now, or C{None}.
        """
        return self._slots.get(self.held_name)

    def when_claimed(self):
        """
        Fires with the claimed name, now if there is one, else once claimed;
        fails with L{SlotsExhausted} when every slot is taken and C{wait} is
        off.
        """
        name = self.held_name
        if name is not None:
            return defer.succeed(name)
        failure = self._machine.failure()
        if failure is not None:
            return defer.fail(failure)
        return self._waiters.wait()

    def startService(self):
        Service.startService(self)
        self.announcement = self.announcer()
        self._held_before = False
        self._feed(self._machine.start)

    def stopService(self):
        """
        Give the name back (revoke the lease, which deletes its key) and
        stop; fires once etcd has done so or could not be reached.
        """
        Service.stopService(self)
        done = defer.Deferred()
        self._feed(self._machine.stop, done)
        waiting = [done]
        if self._dropping is not None:
            # An empty lease given back (every slot taken): let etcd end it
            # rather than cancel the revoke.
            waiting.append(self._dropping)
            self._dropping = None
        return defer.gatherResults(waiting).addCallback(lambda _: None)

    # Feeding the machine.

    def _feed(self, given, *args):
        """
        Give the machine the input C{given}; once it is at rest, do the work
        its transitions left.  An input given from inside a transition (a
        question to etcd answered at once) is run by Automat once that
        transition is over, and its work is done with the rest.
        """
        self._busy += 1
        try:
            given(*args)
        finally:
            self._busy -= 1
        if not self._busy:
            while self._afterwards:
                self._afterwards.popleft()()

    def _after(self, work, *args):
        self._afterwards.append(functools.partial(work, *args))

    # The work behind the transitions.

    def _begin(self, claiming):
        """
        Start the claim of C{claiming}, unless it was left meanwhile or is
        under way.
        """
        if claiming.over or claiming.task is not None:
            return
        claiming.task = self._claim()
        claiming.task.addCallbacks(
            self._claim_done, self._claim_failed, callbackArgs=(claiming,), errbackArgs=(claiming,)
        )

    def _claim_done(self, result, claiming):
        claiming.task = None
        machine = self._machine
        if result is None:
            if self.wait or self._held_before:
                self._feed(machine.no_slot_wait)
            else:
                self._feed(machine.no_slot, self._exhausted())
        elif self._keeper.alive:
            held = _Held(*result)
            self._feed(machine.won, held)
            # A delete the registry saw while the claim was under way.
            self._check_key(held)
        else:
            self._feed(machine.won_unsure, _Held(*result))

    def _claim_failed(self, failure, claiming):
        claiming.task = None
        failure.trap(defer.CancelledError)

    def _exhausted(self):
        return SlotsExhausted(
            f"all {self.limit} slots of pattern {self.pattern.text!r} are taken "
            "(raise 'limit', or set 'wait' to wait for a free slot)"
        )

    def _announce(self, held):
        """
        The name in C{held} is this node's: said, remembered as the one to
        prefer, and told once the machine is at rest.
        """
        self.claim_revision = held.revision
        self._held_before = True
        self.announcement = attr.evolve(self.announcement, preferred=held.name)
        log.info(
            "claimed {name} (slot {slot}) with lease {lease:x} (TTL {ttl}s)",
            name=held.name,
            slot=self._slots[held.name],
            lease=self._keeper.lease,
            ttl=self.lease_ttl,
        )
        self._after(self._report_claim, held.name)

    def _report_claim(self, name):
        if self.on_claimed is not None:
            try:
                self.on_claimed(name, self._keeper.lease)
            except Exception:
                log.failure("could not record the claim of {name}", name=name)
        self._waiters.fire(name)

    def _lose(self, held, why):
        log.warn("no longer holding {name}: {why}; claiming again", name=held.name, why=why)

    def _lose_to_lease(self, held):
        self._lose(held, "its lease is gone from etcd (revoked, or expired)")

    def _lose_to_key(self, held):
        member = self.registry.members.get(held.name)
        if member is None or not member.lease:
            # A revoked lease takes its key with it; the claim says so when
            # it finds the lease gone.
            self._lose(held, "its key was deleted from etcd")
        else:
            self._lose(held, f"its key is on lease {member.lease:x} now, not on this node's")

    def _hold(self, held):
        return _Holding(held, self.registry.subscribe(functools.partial(self._check_key, held)))

    def _check_key(self, held):
        """
        Claim again if the registry, caught up with the claim of C{held},
        shows its key deleted or on another lease.
        """
        registry = self.registry
        if registry.applied < held.revision:
            return
        member = registry.members.get(held.name)
        if member is None or member.lease != self._keeper.lease:
            self._feed(self._machine.key_lost)

    def _check_free(self):
        if any(self.registry.is_free(name) for name in self._names):
            # A slot looks free: look now, not at the next tick.
            self._feed(self._machine.wake)

    def _release(self, name, done):
        """
        Revoke the lease (which deletes its key), then fire C{done}.
        """
        lease = self._keeper.lease
        d = self._keeper.revoke()
        if lease is not None:
            d.addCallback(
                lambda _: log.info("released {name} (lease {lease:x} revoked)", name=name, lease=lease)
            )
        d.chainDeferred(done)

    def _drop_lease(self):
        # The lease holds nothing: do not keep an empty lease while waiting.
        self._dropping = self._keeper.revoke()

    def _sleep(self):
        log.info(
            "all {limit} slots of {pattern!r} are taken; waiting for one to free",
            limit=self.limit,
            pattern=self.pattern.text,
        )
        return _Waiting(
            self.reactor.callLater(max(1.0, self.lease_ttl / 3), self._feed, self._machine.wake),
            self.registry.subscribe(self._check_free),
        )

    def _verify(self, unsure):
        """
        Ask etcd whether the lease still holds the key of C{unsure}'s name.
        """
        unsure.end()
        sent = self.reactor.seconds()
        d = unsure.verifying = self.client.lease_time_to_live(
            self._keeper.lease, keys=True, timeout=self._keeper.request_timeout
        )
        d.addCallbacks(
            self._verified, self._verify_failed, callbackArgs=(unsure, d, sent), errbackArgs=(unsure, d)
        )

    def _verified(self, info, unsure, d, sent):
        if d is not unsure.verifying:
            return
        unsure.verifying = None
        self._keeper.confirmed(sent, info.ttl)
        if not self._keeper.alive:
            return  # too little left to count on: the next renewal asks again
        if self._key(unsure.held.name) in info.keys:
            self._feed(self._machine.key_confirmed, unsure.held)
            # A delete the registry saw while etcd was being asked.
            self._check_key(unsure.held)
        else:
            self._feed(self._machine.key_missing)

    def _verify_failed(self, failure, unsure, d):
        if d is not unsure.verifying:
            return
        unsure.verifying = None
        if failure.check(defer.CancelledError):
            return
        if failure.check(LeaseNotFound):
            self._feed(self._machine.lease_gone)
            return
        # etcd answered the keepalive but not this: ask again shortly.
        unsure.verifying = deferLater(self.reactor, 1.0, lambda: None)
        unsure.verifying.addCallback(lambda _: self._feed(self._machine.confirm))
        unsure.verifying.addErrback(lambda f: f.trap(defer.CancelledError))

    # The claim.

    @defer.inlineCallbacks
    def _claim(self):
        """
        Win a slot: returns C{(name, revision)}, or C{None} when every slot
        is taken.  etcd trouble is retried with backoff; after a failed try
        whose transaction may have gone through, the lease is first asked
        which key it holds already, so a lost reply never makes a second.
        """
        maybe_won = False
        while True:
            try:
                lease = self._keeper.lease
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
                self._keeper.drop()
                maybe_won = False
                error = None
                self._say_lease_gone()
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

    @staticmethod
    def _say_lease_gone():
        log.info("the claim's lease is gone from etcd (revoked, or expired); claiming with a new one")

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
            return (yield self._keeper.grant())
        except NoSpace as e:
            refused = e
        start = self.announcement
        if start.predecessor_lease is None or start.preferred not in self._slots:
            raise refused
        kvs, _ = yield self.client.range(self._key(start.preferred))
        if not kvs or (kvs[0].lease, kvs[0].value) != (start.predecessor_lease, self._value(start.preferred)):
            raise refused
        lease = yield self._keeper.adopt(start.predecessor_lease)
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
            key=lambda name: (name != self.announcement.preferred, self._slots[name]),
        )
        if not names:
            return None
        for extra in names[1:]:
            log.warn("lease {lease:x} also held {name}: deleting it", lease=lease, name=extra)
            yield self.client.delete_on_lease(self._key(extra), lease)
        # The queue key of the try that won, if it is still there.
        yield self.client.delete_on_lease(self.queue.key(self._tag, lease), lease)
        kvs, _ = yield self.client.range(self._key(names[0]))
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
        queue_key = self.queue.key(self._tag, lease)
        revision = yield self.client.put(queue_key, b"", lease=lease)
        yield registry.when_caught_up(revision)
        if (yield self._wait_for_dead_holder(lease, queue_key)):
            revision = yield self.client.put(queue_key, b"", lease=lease)
        while True:
            yield registry.when_caught_up(revision)
            share = self.queue.assignment(self._tag, self._names).get(lease)
            step = for_queued(share, self._names, registry.is_free)
            if isinstance(step, Full):
                return None
            if isinstance(step, WaitTurn):
                revision = yield self._next_change(registry.applied, self.lease_ttl / 3)
                continue
            name = step.name
            result = yield self.client.create(
                self._key(name), self._value(name), lease=lease, also_delete=queue_key
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
            self.queue.assignment(self._tag, self._names).get(lease),
            self.queue.queue(self._tag),
            lease,
            self._slots,
            [n for n in registry.dead if n in registry.members and registry.is_dead(registry.members[n])],
        )
        if step is None:
            return False
        bound = self.lease_ttl / 2 + EXPIRY_MARGIN
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
        preferred = self.announcement.preferred
        while preferred in self._slots:
            key = self._key(preferred)
            kvs, _ = yield self.client.range(key)
            kv = kvs[0] if kvs else None
            step = for_preferred(
                preferred, kv, lease, self.announcement.predecessor_lease,
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
                also_delete=self.queue.key(self._tag, lease),
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
        old = self.announcement.member.node
        member = attr.evolve(self.announcement.member, node=uuid.uuid4().hex)
        self.announcement = attr.evolve(self.announcement, member=member, preferred=None, predecessor_lease=None)
        log.error(
            "another live node uses this node's identity {old!r}: it holds {name} on "
            "lease {lease:x}. This node takes the fresh identity {new!r}. Give every "
            "host its own state directory, and its own 'node' if you set one.",
            old=old,
            name=self._name_of(kv.key),
            lease=kv.lease,
            new=member.node,
        )
        if self.on_identity is not None:
            self.on_identity(member.node)

    def _carries_identity(self, kv):
        node = self.announcement.member.node
        if not node:
            return False
        try:
            return Member.from_value("", kv.value).node == node
        except ValueError:
            return False

    def _key(self, name):
        return self.prefix + name.encode("ascii")

    def _name_of(self, key):
        if not key.startswith(self.prefix):
            return None
        name = key[len(self.prefix) :].decode("ascii", "replace")
        return name if name in self._slots else None

    def _value(self, name):
        return attr.evolve(
            self.announcement.member, name=name, role=self.pattern.role, slot=self._slots[name]
        ).to_value()


def _claiming(machine, core):
    claiming = _Claiming()
    core._after(core._begin, claiming)
    return claiming


def _build_machine():
    builder = TypeMachineBuilder(_Inputs, Claimer)
    idle = builder.state("idle")
    claiming = builder.state("claiming", _claiming)
    waiting = builder.state("waiting", lambda machine, core: core._sleep())
    holding = builder.state("holding", lambda machine, core, held: core._hold(held))
    unsure = builder.state("unsure", lambda machine, core, held: _Unsure(held))
    failed = builder.state("failed", lambda machine, core, error: error)
    stopped = builder.state("stopped")
    states = (idle, claiming, waiting, holding, unsure, failed, stopped)
    handled = set()

    def upon(state, given, to=None):
        handled.add((state, given))
        return state.upon(given).to(state if to is None else to)

    # Starting, and stopping: in every state, done fires once the lease
    # kept (if any) is revoked.

    for state in (idle, stopped):
        upon(state, _Inputs.start, claiming).returns(None)

    @upon(idle, _Inputs.stop, stopped)
    @upon(stopped, _Inputs.stop)
    def stop_with_nothing_held(machine, core, done):
        core._after(done.callback, None)

    @upon(failed, _Inputs.stop, stopped)
    def stop_failed(machine, core, error: SlotsExhausted, done):
        core._after(done.callback, None)

    @upon(waiting, _Inputs.stop, stopped)
    def stop_waiting(machine, core, sleeping: _Waiting, done):
        sleeping.end()
        core._after(core._waiters.cancel)
        core._after(done.callback, None)

    @upon(claiming, _Inputs.stop, stopped)
    def stop_claiming(machine, core, claim: _Claiming, done):
        claim.end()
        core._after(core._waiters.cancel)
        core._after(core._release, "the name being claimed", done)

    @upon(holding, _Inputs.stop, stopped)
    def stop_holding(machine, core, holding: _Holding, done):
        holding.end()
        core._after(core._waiters.cancel)
        core._after(core._release, holding.held.name, done)

    @upon(unsure, _Inputs.stop, stopped)
    def stop_unsure(machine, core, unsure: _Unsure, done):
        unsure.end()
        core._after(core._waiters.cancel)
        core._after(core._release, unsure.held.name, done)

    # What the claim came to.

    @upon(claiming, _Inputs.won, holding)
    def won(machine, core, claim: _Claiming, held):
        claim.end()
        core._announce(held)

    @upon(claiming, _Inputs.won_unsure, unsure)
    def won_unsure(machine, core, claim: _Claiming, held):
        claim.end()
        core.claim_revision = held.revision
        log.warn(
            "won {name}, but lease {lease:x} may have expired meanwhile; confirming with etcd",
            name=held.name,
            lease=core._keeper.lease,
        )
        machine.confirm()

    @upon(claiming, _Inputs.no_slot, failed)
    def no_slot(machine, core, claim: _Claiming, error):
        claim.end()
        core._after(core._drop_lease)
        core._after(core._waiters.fire, Failure(error))

    @upon(claiming, _Inputs.no_slot_wait, waiting)
    def no_slot_wait(machine, core, claim: _Claiming):
        claim.end()
        core._after(core._drop_lease)

    @upon(claiming, _Inputs.lease_gone)
    def restart(machine, core, claim: _Claiming):
        # A new lease is needed; the claim starts over with it.
        core._say_lease_gone()
        claim.cancel()
        core._after(core._begin, claim)

    # Waiting for a slot.

    @upon(waiting, _Inputs.wake, claiming)
    def wake(machine, core, sleeping: _Waiting):
        sleeping.end()

    # Holding, and unsure of, the name.

    @upon(holding, _Inputs.lease_expired)
    def expired(machine, core, holding: _Holding):
        # A state's data reaches the next state only as an input's
        # arguments: holding hands its name to unsure, which Automat runs
        # as soon as this transition is over.
        machine.suspend(holding.held)

    @upon(holding, _Inputs.suspend, unsure)
    def suspend(machine, core, holding: _Holding, held: _Held):
        holding.end()
        log.warn(
            "lease of {name} not renewed in time: not answering as {name} until etcd confirms it",
            name=held.name,
        )

    @upon(holding, _Inputs.lease_gone, claiming)
    def lost_lease(machine, core, holding: _Holding):
        holding.end()
        core._lose_to_lease(holding.held)

    @upon(holding, _Inputs.key_lost, claiming)
    def lost_key(machine, core, holding: _Holding):
        # The lease is fine: the claim goes on with it.
        holding.end()
        core._lose_to_key(holding.held)

    @upon(unsure, _Inputs.lease_renewed)
    @upon(unsure, _Inputs.confirm)
    def verify(machine, core, unsure: _Unsure):
        core._verify(unsure)

    @upon(unsure, _Inputs.key_confirmed, holding)
    def reconfirmed(machine, core, unsure: _Unsure, held):
        log.info(
            "still holding {name}: etcd confirmed lease {lease:x} and its key",
            name=held.name,
            lease=core._keeper.lease,
        )
        core._after(core._report_claim, held.name)

    @upon(unsure, _Inputs.key_missing, claiming)
    def missing(machine, core, unsure: _Unsure):
        core._lose_to_key(unsure.held)

    @upon(unsure, _Inputs.lease_gone, claiming)
    def gone_while_unsure(machine, core, unsure: _Unsure):
        unsure.end()
        core._lose_to_lease(unsure.held)

    # What the readers ask.

    @upon(holding, _Inputs.held)
    def held_name(machine, core, holding: _Holding):
        return holding.held.name

    @upon(failed, _Inputs.failure)
    def why(machine, core, error: SlotsExhausted):
        return error

    for state in states:
        for asked in (_Inputs.held, _Inputs.failure):
            if (state, asked) not in handled:
                upon(state, asked).returns(None)

    # Everything else is news that does not apply in that state: a late
    # reply, a change that was already acted on, a second start.
    for state in states:
        for given in (
            _Inputs.start, _Inputs.won, _Inputs.won_unsure, _Inputs.no_slot,
            _Inputs.no_slot_wait, _Inputs.wake, _Inputs.lease_expired, _Inputs.suspend,
            _Inputs.lease_renewed, _Inputs.confirm, _Inputs.lease_gone,
            _Inputs.key_lost, _Inputs.key_confirmed, _Inputs.key_missing,
        ):
            if (state, given) not in handled:
                upon(state, given).returns(None)
    return builder.build()


_ClaimerMachine = _build_machine()
