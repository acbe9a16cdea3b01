"""
Keeps one etcd lease alive, and knows until when it surely is.

etcd expires a lease no earlier than the *receipt* of its last keepalive
plus the TTL; this side counts from the *send* time of the last keepalive
that succeeded, which is earlier, so "alive" here never outlasts the lease
in etcd.  Keepalives go out every third of the TTL counted from send times,
whatever the replies do, so a slow but working etcd keeps the lease.

Whether a lease is kept, and whether it is surely alive, is a small state
machine (L{_Lifecycle}): unkept, live, lapsed.  Its inputs come from the
keeper's own timers and replies, never from inside one of its transitions,
and the keeper tells its owner what happened only once a transition is
over, so an owner that reacts by granting a new lease starts afresh.
"""

import collections
import secrets
from typing import Protocol

import attr
from automat import TypeMachineBuilder
from twisted.internet import defer
from twisted.logger import Logger

from idetcd.etcd import LeaseExists, LeaseNotFound, describe

log = Logger()

#: Keepalives a keeper lets be under way at once: with replies slower than
#: the keepalive period, a second one goes out before the first returns.
MAX_IN_FLIGHT = 2


class _Lifecycle(Protocol):
    """
    The inputs of a kept lease's life: unkept, live (its deadline is ahead
    as far as the keeper knows), lapsed (the deadline passed unrenewed).
    """

    def keep(self, lease: int, ttl: float, sent: float) -> None:
        "etcd said, to a request sent at C{sent}, that C{lease} lives C{ttl} s."

    def lapse(self) -> None:
        "The local deadline passed with no renewal."

    def revive(self) -> bool:
        "A renewal moved the deadline past now; whether the lease had lapsed."

    def drop(self) -> None:
        "Stop keeping the lease (not revoked)."

    def is_live(self) -> bool:
        "Whether a lease is kept and its deadline has not passed unrenewed."


@attr.s(eq=False)
class LeaseKeeper:
    """
    Grants a lease of C{ttl} seconds and keeps it alive on C{clock}.

    Tells its owner what it learns: C{on_expired()} when the local deadline
    passes with no renewal (the lease may be gone; keepalives go on),
    C{on_renewed()} when a keepalive succeeds after that, C{on_gone()} when
    etcd says the lease no longer exists (keepalives stop).  C{keepalives}
    counts how the keepalives of the lease kept went: "ok", "failed" (no
    answer in time, or an error), "gone".
    """

    client = attr.ib()
    ttl = attr.ib()
    clock = attr.ib()
    on_expired = attr.ib()
    on_renewed = attr.ib()
    on_gone = attr.ib()
    #: The lease kept, or C{None}.
    lease = attr.ib(default=None, init=False)
    #: When the lease may expire in etcd, at the earliest (clock time).
    deadline = attr.ib(default=None, init=False)
    keepalives = attr.ib(factory=collections.Counter, init=False)
    _lifecycle = attr.ib(init=False)
    _next = attr.ib(default=None, init=False)
    _expiry = attr.ib(default=None, init=False)
    _in_flight = attr.ib(factory=list, init=False)
    #: Whether a failed keepalive was logged and none worked since: one
    #: warning per outage, not one per retry.
    _failing = attr.ib(default=False, init=False)
    _granted = attr.ib(default=None, init=False)
    _granting = attr.ib(default=None, init=False)  # (ID asked for, first sent)

    def __attrs_post_init__(self):
        self._lifecycle = _LifecycleMachine(self)

    @property
    def period(self):
        # An adopted lease may have been granted a shorter TTL than ours.
        return min(self.ttl, self._granted or self.ttl) / 3

    @property
    def request_timeout(self):
        """
        How long one keepalive may take: long enough for an etcd that is
        slow but working, short enough that a retry fits in the TTL.
        """
        return self.ttl / 2

    @property
    def alive(self):
        """
        Whether the lease surely still exists in etcd now.
        """
        return self._lifecycle.is_live() and self.clock.seconds() < self.deadline

    def grant(self):
        """
        Grant a new lease and keep it alive; fires with its ID.  Any lease
        kept before is dropped (not revoked).  The ID is chosen here and
        asked for again until a grant of it is answered, so a grant whose
        reply was lost (a timeout on a slow etcd) leaves no second lease
        behind: etcd's "already exists" is that lost grant.
        """
        self.drop()
        if self._granting is None:
            self._granting = (secrets.randbelow(2**63 - 1) + 1, self.clock.seconds())
        lease, first_sent = self._granting
        sent = self.clock.seconds()
        d = self.client.lease_grant(self.ttl, lease)

        def granted(result):
            self._granting = None
            return self._keep(*result, sent)

        def exists(failure):
            failure.trap(LeaseExists)
            self._granting = None
            # Granted by an earlier try, at the earliest when the first was
            # sent; a keepalive from then on says for how long.
            return self._keep(lease, self.ttl, first_sent)

        return d.addCallbacks(granted, exists)

    def adopt(self, lease):
        """
        Keep C{lease}, granted by someone else (this node's previous
        process), alive from now on; fires with it once etcd renewed it,
        fails with L{LeaseNotFound} if it is gone.  Any lease kept before is
        dropped (not revoked).
        """
        self.drop()
        sent = self.clock.seconds()
        d = self.client.lease_keepalive(lease, timeout=self.request_timeout)
        return d.addCallback(lambda ttl: self._keep(lease, ttl, sent))

    def _keep(self, lease, ttl, sent):
        self._lifecycle.keep(lease, ttl, sent)
        return lease

    def drop(self):
        """
        Stop keeping the lease alive, without revoking it; returns the lease
        dropped, or C{None}.
        """
        lease = self.lease
        self._lifecycle.drop()
        return lease

    def revoke(self):
        """
        Drop the lease and revoke it, deleting every key on it; fires when
        etcd has done so or could not be reached (then the lease expires by
        itself).
        """
        lease = self.drop()
        if lease is None:
            return defer.succeed(None)
        d = self.client.lease_revoke(lease)

        def failed(failure):
            log.warn(
                "could not revoke lease {lease:x} ({error}); it expires by itself",
                lease=lease,
                error=describe(failure.value),
            )

        return d.addCallbacks(lambda _: None, failed)

    def confirmed(self, sent, ttl):
        """
        etcd said, to a question sent at C{sent}, that the lease has C{ttl}
        seconds left: it surely lives until C{sent + ttl}.
        """
        if self.lease is None:
            return  # dropped meanwhile: nothing to confirm
        self._extend(sent + ttl)
        if self.clock.seconds() < self.deadline:
            self._lifecycle.revive()

    # The work behind the transitions.

    def _start_keeping(self, lease, ttl, sent):
        self.lease, self._granted = lease, ttl
        self._extend(sent + ttl)
        self._schedule(sent + self.period)

    def _stop_keeping(self):
        self.lease, self.deadline, self._granted = None, None, None
        self._failing = False
        for call in (self._next, self._expiry):
            if call is not None and call.active():
                call.cancel()
        self._next = self._expiry = None
        in_flight, self._in_flight = self._in_flight, []
        for d in in_flight:
            d.cancel()

    def _schedule(self, when):
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = self.clock.callLater(max(0, when - self.clock.seconds()), self._send)

    def _extend(self, deadline):
        if self.deadline is not None and deadline <= self.deadline:
            return
        self.deadline = deadline
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = self.clock.callLater(max(0, deadline - self.clock.seconds()), self._expire)

    # Timers and replies: each an input, then the owner hears of it.

    def _expire(self):
        self._expiry = None
        self._lifecycle.lapse()
        self.on_expired()

    def _send(self):
        self._next = None
        lease = self.lease
        sent = self.clock.seconds()
        # The next one goes out a period after this one was sent, whatever
        # this one's reply does; a reply that never comes is given up on.
        self._schedule(sent + self.period)
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            self._in_flight.pop(0).cancel()
        d = self.client.lease_keepalive(lease, timeout=self.request_timeout)
        self._in_flight.append(d)
        d.addBoth(self._settled, d)
        d.addCallbacks(self._renewed, self._failed, callbackArgs=(lease, sent), errbackArgs=(lease,))

    def _settled(self, result, d):
        if d in self._in_flight:
            self._in_flight.remove(d)
        return result

    def _renewed(self, ttl, lease, sent):
        if lease != self.lease:
            return
        self.keepalives["ok"] += 1
        if self._failing:
            self._failing = False
            log.info("keepalive of lease {lease:x} works again", lease=lease)
        self._extend(sent + ttl)
        if self.clock.seconds() < self.deadline and self._lifecycle.revive():
            self.on_renewed()

    def _failed(self, failure, lease):
        if lease != self.lease:
            return  # dropped meanwhile
        gone = failure.check(LeaseNotFound)
        self.keepalives["gone" if gone else "failed"] += 1
        if failure.check(defer.CancelledError):
            return  # given up on for the next one
        if gone:
            self.drop()
            self.on_gone()
            return
        if not self._failing:
            # Once per outage, not once per retry.
            self._failing = True
            log.warn(
                "keepalive of lease {lease:x} failed ({error}); retrying until it works",
                lease=lease,
                error=describe(failure.value),
            )
        # Try again soon rather than a whole period later.
        retry = self.clock.seconds() + min(1.0, self.ttl / 6)
        if self._next is not None and self._next.getTime() > retry:
            self._schedule(retry)


def _build_lifecycle():
    builder = TypeMachineBuilder(_Lifecycle, LeaseKeeper)
    unkept = builder.state("unkept")
    live = builder.state("live")
    lapsed = builder.state("lapsed")

    def start_keeping(lifecycle, keeper, lease, ttl, sent):
        keeper._start_keeping(lease, ttl, sent)

    def stop_keeping(lifecycle, keeper):
        keeper._stop_keeping()

    for state in (unkept, live, lapsed):
        # A grant or adoption answered: kept from now on, whatever before.
        state.upon(_Lifecycle.keep).to(live)(start_keeping)
        state.upon(_Lifecycle.is_live).loop().returns(state is live)
    for state in (live, lapsed):
        state.upon(_Lifecycle.drop).to(unkept)(stop_keeping)
    unkept.upon(_Lifecycle.drop).loop().returns(None)

    live.upon(_Lifecycle.lapse).to(lapsed).returns(None)
    lapsed.upon(_Lifecycle.revive).to(live).returns(True)
    # News that does not apply: a deadline passing again (a renewal that
    # came too late), a renewal of a lease that never lapsed, either after
    # the lease was dropped.
    lapsed.upon(_Lifecycle.lapse).loop().returns(None)
    unkept.upon(_Lifecycle.lapse).loop().returns(None)
    live.upon(_Lifecycle.revive).loop().returns(False)
    unkept.upon(_Lifecycle.revive).loop().returns(False)
    return builder.build()


_LifecycleMachine = _build_lifecycle()
