"""
Claims this node's name and holds it.

The claim is one etcd transaction per slot tried ("create only if absent"),
so of any number of racing nodes exactly one gets a slot.  The key lives on
a lease kept alive every third of its TTL.  The claimer stops calling the
name its own at the moment the lease could have expired in etcd (the send
time of the last successful keepalive plus the TTL), before any other node
can take it, and then claims again, trying its old slot first.
"""

import attr
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from idetcd.backoff import Backoff
from idetcd.etcd import EtcdError, EtcdUnavailable, LeaseNotFound, prefix_range_end
from idetcd.members import Member

log = Logger()


class SlotsExhausted(Exception):
    """
    Every slot of the pattern is held by another node.
    """


@attr.s(eq=False)
class Claimer(Service):
    """
    Claims the lowest free slot of C{pattern} (1 to C{limit}) for a node
    announcing C{identity} (a L{Member} whose name is ignored).

    C{preferred} names a slot to try first, such as the one held before a
    restart; if a key of C{identity.node} (a crashed predecessor's) still
    holds it, it is taken over at once.  C{on_claimed(name)} is called on
    every claim, the first and those after a lost lease.
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
    registry = attr.ib(default=None)
    on_claimed = attr.ib(default=None)
    backoff = attr.ib(factory=Backoff)
    name = attr.ib(default=None, init=False)
    lease = attr.ib(default=None, init=False)
    #: The etcd revision at which the name held now was won.
    claim_revision = attr.ib(default=0, init=False)
    _waiters = attr.ib(factory=list, init=False)
    _task = attr.ib(default=None, init=False)
    _keepalive_call = attr.ib(default=None, init=False)
    _keepalive_request = attr.ib(default=None, init=False)
    _expiry = attr.ib(default=None, init=False)
    _unsubscribe = attr.ib(default=None, init=False)
    _wake = attr.ib(default=None, init=False)
    _reclaiming = attr.ib(default=False, init=False)
    _names = attr.ib(init=False)
    _slots = attr.ib(init=False)
    _claim_lease = attr.ib(default=None, init=False)

    def __attrs_post_init__(self):
        # Rendered once: a large limit makes this the costly part of a claim.
        self._names = [self.pattern.render(slot) for slot in range(1, self.limit + 1)]
        self._slots = {name: slot for slot, name in enumerate(self._names, 1)}

    @property
    def slot(self):
        """
        The slot number of the name held now, or C{None}.
        """
        return self._slots.get(self.name)

    def when_claimed(self):
        """
        Fires with the claimed name, now if there is one, else once claimed;
        fails with L{SlotsExhausted} when every slot is taken and C{wait} is
        off.
        """
        if self.name is not None:
            return defer.succeed(self.name)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def startService(self):
        Service.startService(self)
        if self.registry is not None:
            self._unsubscribe = self.registry.subscribe(self._registry_changed)
        self._start_claim()

    def stopService(self):
        Service.stopService(self)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stop_timers()
        if self._task is not None:
            self._task.cancel()
        for d in self._waiters:
            d.cancel()
        self._waiters = []
        # Stopped mid-claim, the claim's lease may already hold a key.
        name = self.name or "the name being claimed"
        lease = self.lease or self._claim_lease
        self.name = self.lease = self._claim_lease = None
        if lease is None:
            return defer.succeed(None)
        d = self.client.lease_revoke(lease)
        d.addCallbacks(
            lambda _: log.info("released {name} (lease {lease:x} revoked)", name=name, lease=lease),
            lambda f: log.warn(
                "could not revoke lease {lease:x} of {name}: {error}; it expires by itself",
                lease=lease,
                name=name,
                error=f.getErrorMessage(),
            ),
        )
        return d

    def _stop_timers(self):
        for call in (self._keepalive_call, self._expiry):
            if call is not None and call.active():
                call.cancel()
        self._keepalive_call = self._expiry = None
        if self._keepalive_request is not None:
            self._keepalive_request.cancel()
            self._keepalive_request = None

    def _start_claim(self):
        self._task = self._claim()
        self._task.addCallbacks(self._claimed, self._claim_failed)

    @defer.inlineCallbacks
    def _claim(self):
        lease = None
        while True:
            sent = self.reactor.seconds()
            try:
                if lease is None:
                    lease, ttl = yield self.client.lease_grant(self.lease_ttl)
                    self._claim_lease = lease
                else:
                    ttl = yield self.client.lease_keepalive(lease)
                name, revision = yield self._take_slot(lease)
            except defer.CancelledError:
                raise
            except Exception as e:
                if isinstance(e, LeaseNotFound):
                    lease = self._claim_lease = None
                delay = self.backoff.next()
                log.warn(
                    "cannot claim a name yet ({error}); retrying in {delay:.2f}s",
                    error=str(e) if isinstance(e, (EtcdUnavailable, EtcdError)) else repr(e),
                    delay=delay,
                )
                yield deferLater(self.reactor, delay, lambda: None)
                continue
            if name is not None:
                self.backoff.reset()
                return name, lease, revision, sent + ttl, ttl
            if not (self.wait or self._reclaiming):
                self._claim_lease = None
                yield self.client.lease_revoke(lease).addErrback(lambda _: None)
                raise SlotsExhausted(
                    f"all {self.limit} slots of pattern {self.pattern.text!r} are taken "
                    "(raise 'limit', or set 'wait' to wait for a free slot)"
                )
            log.info(
                "all {limit} slots of {pattern!r} are taken; waiting for one to free",
                limit=self.limit,
                pattern=self.pattern.text,
            )
            # A registry change wakes us early; the lease is refreshed on the way round.
            self._wake = defer.Deferred()
            timer = self.reactor.callLater(max(1.0, self.lease_ttl / 3), self._wake.callback, None)
            try:
                yield self._wake
            finally:
                if timer.active():
                    timer.cancel()
                self._wake = None

    @defer.inlineCallbacks
    def _take_slot(self, lease):
        """
        Try free slots, best first, each in its own transaction; returns the
        name won and the revision it was won at, or C{(None, 0)}.

        A lost race returns a fresh view of every slot in the same
        transaction, so the next try goes straight to a slot that was free
        at that moment: no re-read, no sleep.
        """
        end = prefix_range_end(self.prefix)
        kvs, _ = yield self.client.range(self.prefix, end)
        for _ in range(2 * self.limit + 2):
            name, existing = self._best_slot({kv.key: kv for kv in kvs}, lease)
            if name is None:
                return None, 0
            if existing is not None and existing.lease == lease:
                # Won by an earlier try whose reply was lost.
                return name, existing.mod_revision
            result = yield self.client.create(
                self._key(name), self._value(name), lease=lease, replacing=existing,
                read_range=(self.prefix, end),
            )
            if result.succeeded:
                if existing is not None and existing.lease:
                    # Our crashed predecessor's lease: it holds nothing else.
                    yield self.client.lease_revoke(existing.lease).addErrback(lambda _: None)
                return name, result.revision
            log.debug("lost the race for {name}", name=name)
            kvs = result.kvs
        return None, 0

    def _best_slot(self, holders, lease):
        """
        The slot to try next and the key now holding it, if any: the
        preferred slot when free or still held by this node's crashed
        predecessor, else the lowest free one.
        """
        if self.preferred in self._slots:
            kv = holders.get(self._key(self.preferred))
            if kv is None or kv.lease == lease or self._is_mine(kv):
                return self.preferred, kv
        for name in self._names:
            kv = holders.get(self._key(name))
            if kv is None or kv.lease == lease:
                return name, kv
        return None, None

    def _key(self, name):
        return self.prefix + name.encode("ascii")

    def _value(self, name):
        return attr.evolve(self.identity, name=name).to_value()

    def _is_mine(self, kv):
        if kv is None or not self.identity.node:
            return False
        try:
            return Member.from_value("", kv.value).node == self.identity.node
        except ValueError:
            return False

    def _claimed(self, result):
        self._task = None
        self._claim_lease = None
        self.name, self.lease, self.claim_revision, deadline, ttl = result
        self.preferred = self.name
        log.info(
            "claimed {name} (slot {slot}) with lease {lease:x} (TTL {ttl}s)",
            name=self.name,
            lease=self.lease,
            slot=self.slot,
            ttl=ttl,
        )
        self._schedule(deadline)
        if self.on_claimed is not None:
            self.on_claimed(self.name)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.name)

    def _claim_failed(self, failure):
        self._task = None
        if failure.check(defer.CancelledError):
            return
        waiters, self._waiters = self._waiters, []
        if not waiters:
            log.failure("claim failed", failure)
        for d in waiters:
            d.errback(failure)

    def _schedule(self, deadline):
        """
        Keep the lease alive every third of its TTL, and give the name up
        when C{deadline} passes without a renewal.
        """
        now = self.reactor.seconds()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = self.reactor.callLater(max(0, deadline - now), self._lost, "lease not renewed in time")
        self._keepalive_call = self.reactor.callLater(self.lease_ttl / 3, self._keepalive)

    def _keepalive(self):
        self._keepalive_call = None
        sent = self.reactor.seconds()
        self._keepalive_request = d = self.client.lease_keepalive(self.lease)
        d.addCallbacks(lambda ttl: self._schedule(sent + ttl), self._keepalive_failed)
        d.addBoth(self._keepalive_done, d)

    def _keepalive_done(self, _, d):
        if self._keepalive_request is d:
            self._keepalive_request = None

    def _keepalive_failed(self, failure):
        if failure.check(defer.CancelledError) or not self.running:
            return
        if failure.check(LeaseNotFound):
            self._lost("lease is gone from etcd")
            return
        log.warn(
            "lease keepalive for {name} failed ({error}); retrying",
            name=self.name,
            error=failure.getErrorMessage(),
        )
        self._keepalive_call = self.reactor.callLater(
            min(1.0, self.lease_ttl / 6), self._keepalive
        )

    def _registry_changed(self):
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)
        registry = self.registry
        if self.name is None or registry.revision < self.claim_revision:
            return
        member = registry.members.get(self.name)
        if member is None or member.node != self.identity.node:
            self._lost("its key was deleted or taken over in etcd")

    def _lost(self, why):
        if self.name is None or not self.running:
            return
        log.warn(
            "no longer holding {name}: {why}; claiming again",
            name=self.name,
            why=why,
        )
        self._stop_timers()
        lease, self.name, self.lease = self.lease, None, None
        self._reclaiming = True
        self.client.lease_revoke(lease).addErrback(lambda _: None)
        self._start_claim()
