"""
Claims this node's name and holds it.

The name is held on a lease that L{LeaseKeeper} keeps alive from the
moment it is granted, for as long as the claim takes and the name is held.
The claim itself, the etcd requests that win a slot, is L{SlotTaker}'s
(L{idetcd.claim._attempt}); this module decides what its outcome, the
lease's news and the registry's changes mean.

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
"""

import collections
import functools
import hashlib
from typing import Optional, Protocol

import attr
from automat import TypeMachineBuilder
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from idetcd.claim._attempt import SlotTaker, say_lease_gone
from idetcd.claim._lease import LeaseKeeper
from idetcd.common import EXIT_UNAVAILABLE, Backoff, Waiters
from idetcd.etcd import LeaseNotFound

log = Logger()


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
    _taker = attr.ib(init=False)

    def __attrs_post_init__(self):
        # Rendered once: a large limit makes this the costly part of a claim.
        self._names = [self.pattern.render(slot) for slot in range(1, self.limit + 1)]
        self._slots = {name: slot for slot, name in enumerate(self._names, 1)}
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
        self._taker = SlotTaker(
            self.client,
            self.registry,
            self.queue,
            self._keeper,
            self.reactor,
            self.backoff,
            prefix=self.prefix,
            role=self.pattern.role,
            names=self._names,
            slots=self._slots,
            tag=self._tag,
            announcement=lambda: self.announcement,
            on_fresh_identity=self._use_fresh_identity,
            warn_interval=self.warn_interval,
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
    def nospace(self):
        """
        Whether the claim waits for etcd's NOSPACE alarm to end: its last
        try was refused for lack of space.
        """
        return self._taker.nospace

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
        claiming.task = self._taker.take()
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

    # What the claim tells the claimer, and asks of it.

    def _use_fresh_identity(self, announcement):
        """
        Another live node uses this node's identity: claim with
        C{announcement}, a fresh one, from now on, and tell the node.
        """
        self.announcement = announcement
        if self.on_identity is not None:
            self.on_identity(announcement.member.node)

    def _key(self, name):
        return self._taker.key(name)


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
        say_lease_gone()
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
