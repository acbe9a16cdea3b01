"""
How far a node can vouch for its view of etcd, and so for its answers.

A node answers from memory, and its memory is only as good as its contact
with etcd.  The view I{may be stale} when the registry's watch has been
broken for a lease TTL (longer breaks than an etcd restart or an endpoint
failover), or when this node's own claim is past its lease's deadline
without etcd's confirmation (keepalives have failed for a lease TTL: a
silently cut link leaves the watch looking open).  A stale view is served
as RFC 8767 says, for at most C{bound} seconds; then not at all.  The
node's own unconfirmed name is never served: etcd may have given it to
another node.
"""

import attr
from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()

#: RFC 8767 section 5: a bound on serving stale data, 1 to 3 days.
STALE_BOUND = 86400


@attr.s(frozen=True, slots=True, auto_attribs=True)
class View:
    """
    What the node's answers may claim: C{stale}, the view may be out of
    date; C{expired}, it has been so for longer than the bound;
    C{unvouched}, the labels of this node's own name, held on a lease past
    its deadline, or L{None}.
    """

    stale: bool = False
    expired: bool = False
    unvouched: tuple = None


CURRENT = View()


def _labels(name):
    return tuple(name[:-1].encode("ascii").split(b"."))


@attr.s(eq=False)
class Freshness(Service):
    """
    Follows C{registry} and C{claimer} and tells C{on_view(view)} each
    time the L{View} changes: at once for what the registry reports (call
    L{check} when the claimer claims), and by timers for the thresholds
    (C{after} seconds of broken watch, the claimer's lease deadline,
    C{bound} seconds of staleness).
    """

    registry = attr.ib()
    claimer = attr.ib()
    reactor = attr.ib()
    after = attr.ib()
    bound = attr.ib(default=STALE_BOUND)
    on_view = attr.ib(default=None)
    view = attr.ib(default=CURRENT, init=False)
    _claim = attr.ib(default=None, init=False)  # (name, lease) last held
    _stale_since = attr.ib(default=None, init=False)
    _timer = attr.ib(default=None, init=False)
    _unsubscribe = attr.ib(factory=list, init=False)

    def startService(self):
        Service.startService(self)
        self._unsubscribe = [
            self.registry.subscribe(self.check),
            self.registry.subscribe_contact(self.check),
        ]
        self.check()

    def stopService(self):
        Service.stopService(self)
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._cancel()

    def check(self):
        """
        Work the view out again, tell it if it changed, and set the timer
        for the next threshold.
        """
        now = self.reactor.seconds()
        unvouched = self._unvouched()
        unheard = self.registry.unheard_since
        cut_off = unheard is not None and now >= unheard + self.after
        stale = cut_off or unvouched is not None
        if not stale:
            self._stale_since = None
        elif self._stale_since is None:
            self._stale_since = now
            log.warn(
                "etcd not heard from for {after}s{own}: answering from what is known,"
                " marked stale, for at most {bound}s",
                after=self.after,
                own=f" and {unvouched} unconfirmed (SERVFAIL for it)" if unvouched else "",
                bound=self.bound,
            )
        expired = stale and now >= self._stale_since + self.bound
        view = View(stale, expired, None if unvouched is None else _labels(unvouched))
        if view != self.view:
            if self.view.stale and not stale:
                log.info("etcd heard from again: answering as usual")
            elif expired and not self.view.expired:
                log.warn(
                    "stale for {bound}s: SERVFAIL for every name until etcd is heard from",
                    bound=self.bound,
                )
            self.view = view
            if self.on_view is not None:
                self.on_view(view)
        self._schedule(now, unheard, cut_off, expired)

    def _unvouched(self):
        """
        This node's own name while its claim on it is unconfirmed: the name
        it last held, still on the lease it held it with in the registry
        (a registry that shows it gone or taken knows better).
        """
        held = self.claimer.held_name
        if held is not None:
            self._claim = (held, self.claimer.lease)
            return None
        if self._claim is None:
            return None
        name, lease = self._claim
        member = self.registry.members.get(name)
        if member is None or member.lease != lease:
            self._claim = None
            return None
        return name

    def _schedule(self, now, unheard, cut_off, expired):
        self._cancel()
        due = []
        deadline = self.claimer.deadline
        if deadline is not None:
            due.append(deadline)
        if unheard is not None and not cut_off:
            due.append(unheard + self.after)
        if self._stale_since is not None and not expired:
            due.append(self._stale_since + self.bound)
        if due and self.running:
            self._timer = self.reactor.callLater(max(0, min(due) - now), self._due)

    def _due(self):
        self._timer = None
        self.check()

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
