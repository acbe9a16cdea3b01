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

The claimer is a state machine: idle, claiming, waiting (every slot taken),
holding, unsure (the lease's local deadline passed: the name is not called
ours until etcd confirms the same lease still holds the same key), failed
and stopped.  Every input is handled in every state.

A node alone in the claim queue makes way for a replacement's ordinal: if
a member below the slot it would get is marked dead (its holder stopped
renewing its lease: see L{idetcd.training.liveness}), it waits, at most
until that lease should have ended, for the slot to free, so a machine
replacing a dead one takes the dead one's slot instead of a higher one
for good.
"""

import hashlib
import uuid

import attr
from automat import MethodicalMachine
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
from idetcd.claim._queue import ClaimQueue
from idetcd.common import EXIT_UNAVAILABLE, Backoff, RateLimitedLog, Waiters
from idetcd.etcd import EtcdError, EtcdUnavailable, LeaseNotFound, NoSpace
from idetcd.members import Member, Registry

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


@attr.s(eq=False)
class Claimer(Service):
    """
    Claims the lowest free slot of C{pattern} (1 to C{limit}) for a node
    announcing C{identity} (a L{Member} whose name is ignored).

    C{preferred} names a slot to try first, such as the one held before a
    restart.  C{registry} (a L{Registry} of C{prefix}) is the claimer's view
    of etcd; without one it runs its own.  C{queue} is the L{ClaimQueue} of
    that registry, shared by the claimers that share it; without one it
    follows its own.  C{predecessor_lease} is the lease this node's previous
    incarnation held, given only when that incarnation is known to have
    ended: a key on it is taken over at once.  C{on_claimed(name, lease)}
    is called on every claim, the first and those after a lost lease;
    C{on_identity(node)} when this node had to take a fresh identity.
    """

    client = attr.ib()
    pattern = attr.ib()
    limit = attr.ib()
    prefix = attr.ib()
    identity = attr.ib()
    lease_ttl = attr.ib()
    reactor = attr.ib()
    wait = attr.ib(default=False)
    preferred = attr.ib(default=None)
    predecessor_lease = attr.ib(default=None)
    registry = attr.ib(default=None)
    queue = attr.ib(default=None)
    on_claimed = attr.ib(default=None)
    on_identity = attr.ib(default=None)
    backoff = attr.ib(factory=Backoff)
    #: How often, at most, "cannot claim a name yet" is logged.
    warn_interval = attr.ib(default=30.0)
    #: The etcd revision at which the name held now was won.
    claim_revision = attr.ib(default=0, init=False)
    #: Whether the claim waits for etcd's NOSPACE alarm to end: its last
    #: try was refused for lack of space.
    nospace = attr.ib(default=False, init=False)
    _name = attr.ib(default=None, init=False)
    _holding = attr.ib(default=False, init=False)
    _held_before = attr.ib(default=False, init=False)
    _failure = attr.ib(default=None, init=False)
    _waiters = attr.ib(factory=Waiters, init=False)
    _task = attr.ib(default=None, init=False)
    _dropping = attr.ib(default=None, init=False)
    _verifying = attr.ib(default=None, init=False)
    _wake_call = attr.ib(default=None, init=False)
    _unsubscribe = attr.ib(default=None, init=False)
    _keeper = attr.ib(init=False)
    _own_registry = attr.ib(default=False, init=False)
    _tag = attr.ib(init=False)
    _names = attr.ib(init=False)
    _slots = attr.ib(init=False)
    _warn = attr.ib(init=False)

    _machine = MethodicalMachine()

    def __attrs_post_init__(self):
        # Rendered once: a large limit makes this the costly part of a claim.
        self._names = [self.pattern.render(slot) for slot in range(1, self.limit + 1)]
        self._slots = {name: slot for slot, name in enumerate(self._names, 1)}
        self._warn = RateLimitedLog(self.reactor, log, self.warn_interval, LogLevel.warn)
        # Nodes of one pattern queue together.
        self._tag = hashlib.sha256(self.pattern.text.encode("utf-8")).hexdigest()[:16].encode("ascii")
        if self.registry is None:
            self.registry = Registry(self.client, self.prefix, self.reactor)
            self._own_registry = True
        if self.queue is None:
            self.queue = ClaimQueue(self.registry)
        self._keeper = LeaseKeeper(
            self.client,
            self.lease_ttl,
            self.reactor,
            on_expired=self.lease_expired,
            on_renewed=self.lease_renewed,
            on_gone=self.lease_gone,
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
        if self._holding and self._keeper.alive:
            return self._name
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
        if self.held_name is not None:
            return defer.succeed(self._name)
        if self._failure is not None:
            return defer.fail(self._failure)
        return self._waiters.wait()

    def startService(self):
        Service.startService(self)
        if self._own_registry:
            self.registry.startService()
        self._unsubscribe = self.registry.subscribe(self._registry_changed)
        self._held_before = False
        self.start()

    def stopService(self):
        """
        Give the name back (revoke the lease, which deletes its key) and
        stop; fires once etcd has done so or could not be reached.
        """
        Service.stopService(self)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        waiting = [d for d in self.stop() if isinstance(d, defer.Deferred)]
        if self._dropping is not None:
            # An empty lease given back (every slot taken): let etcd end it
            # rather than cancel the revoke.
            waiting.append(self._dropping)
            self._dropping = None
        if self._own_registry:
            self.registry.stopService()
        return defer.gatherResults(waiting).addCallback(lambda _: None)

    # States.

    @_machine.state(initial=True)
    def idle(self):
        "Not started."

    @_machine.state()
    def claiming(self):
        "Looking for a slot; the lease, once granted, is kept alive."

    @_machine.state()
    def waiting(self):
        "Every slot was taken; no lease is held until one looks free."

    @_machine.state()
    def holding(self):
        "The name is ours and its lease is kept alive."

    @_machine.state()
    def unsure(self):
        "The lease's deadline passed: the name is not ours until confirmed."

    @_machine.state()
    def failed(self):
        "Every slot was taken at start and waiting is off."

    @_machine.state()
    def stopped(self):
        "Stopped; the lease was revoked."

    # Inputs.

    @_machine.input()
    def start(self):
        "The service started."

    @_machine.input()
    def stop(self):
        "The service stops."

    @_machine.input()
    def won(self, name, revision):
        "The claim won C{name} on a lease that is surely alive."

    @_machine.input()
    def won_unsure(self, name, revision):
        "The claim won C{name}, but the lease's deadline passed meanwhile."

    @_machine.input()
    def no_slot(self):
        "Every slot is taken, and this node may not wait."

    @_machine.input()
    def no_slot_wait(self):
        "Every slot is taken, and this node waits for one."

    @_machine.input()
    def wake(self):
        "Time to look for a free slot again."

    @_machine.input()
    def lease_expired(self):
        "The lease's local deadline passed with no renewal."

    @_machine.input()
    def lease_renewed(self):
        "A keepalive succeeded after the deadline had passed."

    @_machine.input()
    def lease_gone(self):
        "etcd says the lease does not exist."

    @_machine.input()
    def key_lost(self):
        "The registry shows the key deleted or on another lease."

    @_machine.input()
    def key_confirmed(self):
        "etcd says the lease still holds the name's key."

    @_machine.input()
    def key_missing(self):
        "etcd says the lease no longer holds the name's key."

    # Outputs.

    @_machine.output()
    def _begin_claim(self):
        self._start_task()

    @_machine.output()
    def _restart_claim(self):
        self._say_lease_gone()
        self._cancel_task()
        self._start_task()

    @_machine.output()
    def _abandon_claim(self):
        self._cancel_task()

    @_machine.output()
    def _announce(self, name, revision):
        self._name, self.claim_revision = name, revision
        self._holding = self._held_before = True
        self.preferred = name
        log.info(
            "claimed {name} (slot {slot}) with lease {lease:x} (TTL {ttl}s)",
            name=name,
            slot=self._slots[name],
            lease=self._keeper.lease,
            ttl=self.lease_ttl,
        )
        self._report_claim(name)
        self._waiters.fire(name)

    @_machine.output()
    def _hold_unconfirmed(self, name, revision):
        self._name, self.claim_revision = name, revision
        log.warn(
            "won {name}, but lease {lease:x} may have expired meanwhile; confirming with etcd",
            name=name,
            lease=self._keeper.lease,
        )

    @_machine.output()
    def _reconfirm(self):
        self._holding = True
        log.info(
            "still holding {name}: etcd confirmed lease {lease:x} and its key",
            name=self._name,
            lease=self._keeper.lease,
        )
        self._report_claim(self._name)
        self._waiters.fire(self._name)

    @_machine.output()
    def _suspend(self):
        self._holding = False
        log.warn(
            "lease of {name} not renewed in time: not answering as {name} until etcd confirms it",
            name=self._name,
        )

    @_machine.output()
    def _lose_to_lease(self):
        self._lose("its lease is gone from etcd (revoked, or expired)")

    @_machine.output()
    def _lose_to_key(self):
        member = self.registry.members.get(self._name)
        if member is None or not member.lease:
            # A revoked lease takes its key with it; the claim says so when
            # it finds the lease gone.
            self._lose("its key was deleted from etcd")
        else:
            self._lose(f"its key is on lease {member.lease:x} now, not on this node's")

    @_machine.output()
    def _verify(self):
        self._cancel_verify()
        lease = self._keeper.lease
        sent = self.reactor.seconds()
        d = self._verifying = self.client.lease_time_to_live(
            lease, keys=True, timeout=self._keeper.request_timeout
        )
        d.addCallbacks(self._verified, self._verify_failed, callbackArgs=(d, sent), errbackArgs=(d,))

    @_machine.output()
    def _stop_verifying(self):
        self._cancel_verify()

    @_machine.output()
    def _fail(self):
        self._failure = SlotsExhausted(
            f"all {self.limit} slots of pattern {self.pattern.text!r} are taken "
            "(raise 'limit', or set 'wait' to wait for a free slot)"
        )
        self._waiters.fire(Failure(self._failure))

    @_machine.output()
    def _drop_lease(self):
        # The lease holds nothing: do not keep an empty lease while waiting.
        self._dropping = self._keeper.revoke()

    @_machine.output()
    def _sleep(self):
        log.info(
            "all {limit} slots of {pattern!r} are taken; waiting for one to free",
            limit=self.limit,
            pattern=self.pattern.text,
        )
        self._schedule_wake(max(1.0, self.lease_ttl / 3))

    @_machine.output()
    def _stop_sleeping(self):
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        self._wake_call = None

    @_machine.output()
    def _cancel_waiters(self):
        self._waiters.cancel()

    @_machine.output()
    def _release(self):
        name = self._name or "the name being claimed"
        lease = self._keeper.lease
        self._holding = False
        self._name = None
        d = self._keeper.revoke()
        if lease is not None:
            d.addCallback(
                lambda _: log.info("released {name} (lease {lease:x} revoked)", name=name, lease=lease)
            )
        return d

    # Transitions: every input in every state.

    _every_input = (
        start, stop, won, won_unsure, no_slot, no_slot_wait, wake,
        lease_expired, lease_renewed, lease_gone, key_lost, key_confirmed, key_missing,
    )

    idle.upon(start, enter=claiming, outputs=[_begin_claim])
    idle.upon(stop, enter=stopped, outputs=[])

    claiming.upon(stop, enter=stopped, outputs=[_abandon_claim, _cancel_waiters, _release])
    claiming.upon(won, enter=holding, outputs=[_announce])
    claiming.upon(won_unsure, enter=unsure, outputs=[_hold_unconfirmed, _verify])
    claiming.upon(no_slot, enter=failed, outputs=[_drop_lease, _fail])
    claiming.upon(no_slot_wait, enter=waiting, outputs=[_drop_lease, _sleep])
    # A new lease is needed; the claim starts over with it.
    claiming.upon(lease_gone, enter=claiming, outputs=[_restart_claim])

    waiting.upon(stop, enter=stopped, outputs=[_stop_sleeping, _cancel_waiters])
    waiting.upon(wake, enter=claiming, outputs=[_begin_claim])

    holding.upon(stop, enter=stopped, outputs=[_cancel_waiters, _release])
    holding.upon(lease_expired, enter=unsure, outputs=[_suspend])
    holding.upon(lease_gone, enter=claiming, outputs=[_lose_to_lease, _begin_claim])
    # The lease is fine: the claim goes on with it.
    holding.upon(key_lost, enter=claiming, outputs=[_lose_to_key, _begin_claim])

    unsure.upon(stop, enter=stopped, outputs=[_stop_verifying, _cancel_waiters, _release])
    unsure.upon(lease_renewed, enter=unsure, outputs=[_verify])
    unsure.upon(key_confirmed, enter=holding, outputs=[_reconfirm])
    unsure.upon(key_missing, enter=claiming, outputs=[_lose_to_key, _begin_claim])
    unsure.upon(lease_gone, enter=claiming, outputs=[_stop_verifying, _lose_to_lease, _begin_claim])

    failed.upon(stop, enter=stopped, outputs=[])

    stopped.upon(start, enter=claiming, outputs=[_begin_claim])

    # Everything else is news that does not apply in that state: a late
    # reply, a change that was already acted on, a second start or stop.
    for _state in (idle, claiming, waiting, holding, unsure, failed, stopped):
        for _input in _every_input:
            try:
                _state.upon(_input, enter=_state, outputs=[])
            except ValueError:
                pass  # already given a transition above
    del _state, _input, _every_input

    # The work behind the outputs.

    def _report_claim(self, name):
        if self.on_claimed is None:
            return
        try:
            self.on_claimed(name, self._keeper.lease)
        except Exception:
            log.failure("could not record the claim of {name}", name=name)

    def _lose(self, why):
        log.warn("no longer holding {name}: {why}; claiming again", name=self._name, why=why)
        self._holding = False
        self._name = None

    def _start_task(self):
        self._failure = None
        self._task = self._claim()
        self._task.addCallbacks(self._claim_done, self._claim_failed)

    def _cancel_task(self):
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    def _cancel_verify(self):
        verifying, self._verifying = self._verifying, None
        if verifying is not None:
            verifying.cancel()

    def _schedule_wake(self, delay):
        if self._wake_call is None or not self._wake_call.active():
            self._wake_call = self.reactor.callLater(delay, self._woken)

    def _woken(self):
        self._wake_call = None
        self.wake()

    def _verified(self, info, d, sent):
        if d is not self._verifying:
            return
        self._verifying = None
        self._keeper.confirmed(sent, info.ttl)
        if not self._keeper.alive:
            return  # too little left to count on: the next renewal asks again
        if self._key(self._name) in info.keys:
            self.key_confirmed()
            # A delete the registry saw while etcd was being asked.
            self._registry_changed()
        else:
            self.key_missing()

    def _verify_failed(self, failure, d):
        if d is not self._verifying:
            return
        self._verifying = None
        if failure.check(defer.CancelledError):
            return
        if failure.check(LeaseNotFound):
            self.lease_gone()
            return
        # etcd answered the keepalive but not this: ask again shortly.
        self._verifying = deferLater(self.reactor, 1.0, lambda: None)
        self._verifying.addCallback(lambda _: self.lease_renewed())
        self._verifying.addErrback(lambda f: f.trap(defer.CancelledError))

    def _registry_changed(self):
        registry = self.registry
        if self._wake_call is not None and any(registry.is_free(n) for n in self._names):
            # Waiting, and a slot looks free: look now, not at the next tick.
            self._wake_call.cancel()
            self._wake_call = None
            self.wake()
            return
        if not self._holding or registry.applied < self.claim_revision:
            return
        member = registry.members.get(self._name)
        if member is None or member.lease != self._keeper.lease:
            self.key_lost()

    # The claim.

    def _claim_done(self, result):
        self._task = None
        if result is None:
            if self.wait or self._held_before:
                self.no_slot_wait()
            else:
                self.no_slot()
        elif self._keeper.alive:
            self.won(*result)
            # A delete the registry saw while the claim was under way.
            self._registry_changed()
        else:
            self.won_unsure(*result)

    def _claim_failed(self, failure):
        self._task = None
        failure.trap(defer.CancelledError)

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
        if self.predecessor_lease is None or self.preferred not in self._slots:
            raise refused
        kvs, _ = yield self.client.range(self._key(self.preferred))
        if not kvs or (kvs[0].lease, kvs[0].value) != (self.predecessor_lease, self._value(self.preferred)):
            raise refused
        lease = yield self._keeper.adopt(self.predecessor_lease)
        log.info(
            "etcd is out of space and grants no lease: keeping lease {lease:x} of this node's"
            " previous process, which holds {name}",
            lease=lease,
            name=self.preferred,
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
            key=lambda name: (name != self.preferred, self._slots[name]),
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
        preferred = self.preferred
        while preferred in self._slots:
            key = self._key(preferred)
            kvs, _ = yield self.client.range(key)
            kv = kvs[0] if kvs else None
            step = for_preferred(
                preferred, kv, lease, self.predecessor_lease, kv is not None and self._carries_identity(kv)
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
        old = self.identity.node
        self.identity = attr.evolve(self.identity, node=uuid.uuid4().hex)
        self.preferred = self.predecessor_lease = None
        log.error(
            "another live node uses this node's identity {old!r}: it holds {name} on "
            "lease {lease:x}. This node takes the fresh identity {new!r}. Give every "
            "host its own state directory, and its own 'node' if you set one.",
            old=old,
            name=self._name_of(kv.key),
            lease=kv.lease,
            new=self.identity.node,
        )
        if self.on_identity is not None:
            self.on_identity(self.identity.node)

    def _carries_identity(self, kv):
        if not self.identity.node:
            return False
        try:
            return Member.from_value("", kv.value).node == self.identity.node
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
            self.identity, name=name, role=self.pattern.role, slot=self._slots[name]
        ).to_value()
