"""
One idetcd node, from one Corefile server block: a tree of services (the
embedded etcd, the etcd client, the registry, the DNS listeners, the HTTP
endpoints, the node's identity and the claimer) started and stopped in the
order that keeps answers right.
"""

import os

import attr
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from idetcd.claim import Claimer, ClaimQueue, NodeIdentity, NodeState, state_path
from idetcd.common import Waiters
from idetcd.config import CorefileError
from idetcd.dns import (
    DNSServer,
    DnsTally,
    Forwarder,
    Freshness,
    ZoneAuthority,
    ZoneTransfer,
    query_log,
    reverse_zones,
)
from idetcd.etcd import EtcdClient
from idetcd.members import JOBS, Registry, when_members
from idetcd.node._corefile import load, parse
from idetcd.node._embedded import EtcdProcess
from idetcd.node._http import HttpEndpoint, health_site, metrics_site, ready_site
from idetcd.node._metrics import EtcdCalls, node_registry
from idetcd.node._ordered import OrderedMultiService
from idetcd.training.liveness import LookAfter, look_after_period
from idetcd.training.rounds import RoundKeeper, round_of

log = Logger()

DEFAULT_BINDS = ("0.0.0.0",)


@attr.s(eq=False)
class EtcdConnection(Service):
    """
    The etcd client as a part of the node: open while the node runs, every
    watch and request ended when it stops.  It has started once etcd is
    known to work for C{prefix}: a wrong URL, an etcd older than 3.4, a
    wrong password or certificate fails the start here, while an etcd not
    answering yet is waited for.  With an embedded etcd, the client was
    made to ask it where it listens (its ports may change at start).
    """

    client = attr.ib()
    prefix = attr.ib()
    etcd = attr.ib(default=None)
    #: Called with the embedded etcd's URL, once it is known for sure.
    on_embedded = attr.ib(default=None)

    def startService(self):
        if self.etcd is not None:
            self.on_embedded(self.etcd.client_url)
        self.client.open()
        Service.startService(self)
        return self.client.check(self.prefix)

    def stopService(self):
        Service.stopService(self)
        return self.client.close()


@attr.s(eq=False)
class IdetcdService(OrderedMultiService):
    """
    A node of an idetcd cluster, from one Corefile server block.

    Its children, in start order (each named, for
    C{getServiceNamed}): C{etcd} (with C{endpoint embedded}),
    C{etcd-client}, C{registry}, C{dns}, C{health} and C{ready} (when in
    the Corefile), C{identity}, C{claimer}, C{freshness} (how far the
    node's answers can be vouched for: see L{idetcd.dns._freshness}),
    C{look-after} (which marks the
    member before this one dead when it is: see
    L{idetcd.training.liveness}).  They stop in the reverse order: the
    claimer gives the name back while etcd is still there.

    Starting it binds the DNS and HTTP ports at once (so a port in use
    fails the start), then claims a name in the background:
    C{when_claimed()} fires with it.  C{members} holds every known name, by
    name.
    """

    block = attr.ib()
    reactor = attr.ib()
    port = attr.ib(default=None)
    interfaces = attr.ib(default=None)
    state_dir = attr.ib(default=None)
    settings = attr.ib(init=False)
    etcd = attr.ib(default=None, init=False)
    client = attr.ib(init=False)
    registry = attr.ib(init=False)
    claimer = attr.ib(init=False)
    freshness = attr.ib(init=False)
    dns = attr.ib(init=False)
    state = attr.ib(init=False)
    _starting = attr.ib(default=None, init=False)
    _waiters = attr.ib(factory=Waiters, init=False)
    _failure = attr.ib(default=None, init=False)
    _member_waits = attr.ib(factory=set, init=False)

    def __attrs_post_init__(self):
        OrderedMultiService.__init__(self)
        self.settings = settings = self.block.idetcd
        if settings is None:
            raise CorefileError(self.block.filename, self.block.line, "server block has no idetcd directive")
        port = self.block.port if self.port is None else self.port
        self.state = NodeState(state_path(self.block, port, self.state_dir))
        # What /metrics reads, counted from the first request on.
        metrics = self.block.prometheus is not None
        tally = DnsTally(settings.pattern.zone) if metrics else None
        calls = EtcdCalls() if metrics else None
        if settings.endpoints == ("embedded",):
            self.etcd = EtcdProcess(self.reactor, os.path.join(self.state.path, "etcd"))
            self._add("etcd", self.etcd)
            endpoints = self.etcd.client_urls
        else:
            endpoints = settings.endpoints
        self.client = EtcdClient(
            endpoints, self.reactor, tls=settings.tls, credentials=settings.credentials, on_call=calls
        )
        prefix = settings.prefix.encode("utf-8")
        self._add("etcd-client", EtcdConnection(self.client, prefix, self.etcd, self.state.remember_etcd_url))
        self.registry = self._add("registry", Registry(self.client, prefix, self.reactor))
        authority = ZoneAuthority(
            settings.pattern.zone,
            self.registry,
            settings.ttl,
            settings.nameservers,
            reverse=reverse_zones(self.block.zones),
        )
        self.dns = self._add(
            "dns",
            DNSServer(
                authority,
                port,
                interfaces=tuple(self.interfaces or self.block.binds or DEFAULT_BINDS),
                reactor=self.reactor,
                forwarder=None if self.block.forward is None else Forwarder(
                    self.block.forward, settings.pattern.zone, self.block.zones, self.reactor,
                    cache_settings=self.block.cache, tally=tally,
                ),
                tally=tally,
                transfer=None if self.block.transfer is None else ZoneTransfer(
                    authority, self.block.transfer.allowed, self.block.transfer.targets
                ),
                querylog=query_log(self.block, self.reactor),
            ),
        )
        # Each HTTP endpoint listens only when its directive is present.
        if self.block.health is not None:
            self._add("health", HttpEndpoint("health", self.block.health, health_site(), self.reactor))
        if self.block.ready is not None:
            self._add("ready", HttpEndpoint("ready", self.block.ready, ready_site(self), self.reactor))
        if metrics:
            site = metrics_site(node_registry(self, tally, calls))
            self._add("metrics", HttpEndpoint("metrics", self.block.prometheus, site, self.reactor))
        identity = NodeIdentity(
            settings, self.state, self.dns, self.client, self.reactor, embedded=self.etcd is not None
        )
        self.claimer = Claimer(
            self.client,
            settings.pattern,
            settings.limit,
            prefix,
            announcer=identity.announcement,
            lease_ttl=settings.lease,
            reactor=self.reactor,
            wait=settings.wait,
            registry=self.registry,
            queue=ClaimQueue(self.registry),
            on_claimed=self._claimed,
            on_identity=self._identity_replaced,
        )
        self.freshness = Freshness(
            self.registry, self.claimer, self.reactor, settings.lease, settings.stale,
            on_view=self.dns.set_view,
        )
        self._add("identity", identity)
        self._add("claimer", self.claimer)
        self._add("freshness", self.freshness)
        self._add(
            "look-after",
            LookAfter(
                self.client, self.registry, self.claimer, self.reactor, settings.pattern.role,
                settings.pattern.zone, look_after_period(settings.lease),
            ),
        )

    def _add(self, name, child):
        if child.name is None:
            child.setName(name)
        child.setServiceParent(self)
        return child

    @classmethod
    def from_corefile(cls, reactor, path=None, text=None, **kwargs):
        """
        Build the node from a Corefile, by C{path} or by C{text}; it must
        hold exactly one idetcd server block.
        """
        blocks = load(path) if text is None else parse(text)
        blocks = [block for block in blocks if block.idetcd is not None]
        if len(blocks) != 1:
            raise CorefileError(
                path or "Corefile", 0, f"expected exactly one server block with idetcd, found {len(blocks)}"
            )
        return cls(blocks[0], reactor, **kwargs)

    def prepare_reload(self, block):
        """
        Get ready to run on C{block}, this node's server block reloaded,
        whose changes are all live ones (L{idetcd.node._reload.LIVE}): returns
        the function that applies them.  Raises L{CorefileError}, applying
        nothing, when C{forward}'s upstreams cannot be had.
        """
        forwarder = self.dns.forwarder
        upstreams = None if block.forward is None else forwarder.upstreams_for(block.forward)

        def apply():
            answers = (block.idetcd.ttl, block.idetcd.nameservers)
            if answers != (self.settings.ttl, self.settings.nameservers):
                # Every reply is made again: worth it only for a change.
                self.dns.reconfigure(*answers)
            self.block, self.settings = block, block.idetcd
            if upstreams is not None and (block.forward, upstreams) != (forwarder.settings, forwarder.upstreams):
                forwarder.use(block.forward, upstreams)

        return apply

    @property
    def held_name(self):
        """
        The name this node holds now on a live lease, or C{None}.
        """
        return self.claimer.held_name

    @property
    def slot(self):
        """
        The slot of the name held now (3 for C{worker3.tf.local.}), or
        C{None}; a node restarted with its state directory takes it back.
        """
        return self.claimer.slot

    @property
    def members(self):
        return self.registry.members

    def when_members(self, count, role=None):
        """
        Fires with the live members of C{role} (of every role for C{None})
        in this node's zone, by role then slot, once at least C{count} are
        present and alive: a member whose holder stopped renewing its lease
        does not count (see L{idetcd.training.liveness}).  Cancel it to stop
        waiting; stopping the node cancels it.
        """
        d = when_members(self.registry, count, role, self.settings.pattern.zone)
        self._member_waits.add(d)
        return d.addBoth(lambda result: (self._member_waits.discard(d), result)[1])

    def when_round(self, low, high=None, job=None, settle=10.0, after=0):
        """
        Fires with the agreed L{Round} of C{job} (default: this node's
        role): C{low} to C{high} (default C{low}) live members of this
        node's role, as C{idetcd env --nnodes LOW:HIGH} agrees it, numbered
        above C{after}.  Whether this node is in it is for the caller to
        see (C{round.rank(member)}).  Cancel it to stop waiting; stopping
        the node cancels it.
        """
        role = self.settings.pattern.role
        keeper = RoundKeeper(
            self.client, self.registry, self.reactor, self.registry.prefix, job or role, role,
            self.settings.pattern.zone,
        )
        d = keeper.agree(low, low if high is None else high, settle, after, own=self.held_name)
        self._member_waits.add(d)
        return d.addBoth(lambda result: (self._member_waits.discard(d), result)[1])

    def subscribe_rounds(self, callback):
        """
        Call C{callback(job, round)} whenever a job's round changes in etcd:
        C{round} is the new L{Round}, or C{None} when the job's record was
        deleted.  A running job learns this way that a new round was agreed
        (a member died or left) and that it must re-form.  Returns a
        function that ends the subscription.
        """

        def changed(key, kv):
            job = key[len(self.registry.prefix + JOBS) :].decode("utf-8", "replace")
            found = None if kv is None else round_of(job, kv)
            if kv is None or found is not None:
                callback(job, found)

        return self.registry.subscribe_jobs(changed)

    def subscribe(self, callback):
        """
        Call C{callback(names)} after every change to C{members}, with the
        set of names that came, changed or left (look each up in
        C{members}: a name not there has left).  Returns a function that
        ends the subscription.
        """
        return self.registry.subscribe_changes(lambda names: callback(names) if names else None)

    def when_claimed(self):
        """
        Fires with this node's name once it holds one; fails if the node
        cannot take part (every slot taken, no address to announce).
        """
        if self.claimer.held_name is not None:
            return defer.succeed(self.claimer.held_name)
        if self._failure is not None:
            return defer.fail(self._failure)
        return self._waiters.wait()

    def startService(self):
        self._failure = None
        self.state.acquire()
        try:
            OrderedMultiService.startService(self)
        except BaseException:
            self.state.release()
            raise
        self._starting = self._start()
        self._starting.addBoth(self._started)

    @defer.inlineCallbacks
    def _start(self):
        yield self.when_started()
        name = yield self.claimer.when_claimed()
        # Fire when_claimed() once this node's own DNS answers for the name.
        yield self.registry.when_caught_up(self.claimer.claim_revision)
        log.info(
            "{name} answers DNS on port {port} for zone {zone}",
            name=name,
            port=self.dns.port,
            zone=self.settings.pattern.zone,
        )

    def _started(self, result):
        self._starting = None
        if isinstance(result, Failure) and not result.check(defer.CancelledError):
            self._failure = result
        if isinstance(result, Failure) and not self._waiters and not result.check(defer.CancelledError):
            log.failure("node could not start", result)
        self._waiters.fire(result if isinstance(result, Failure) else self.claimer.held_name)

    def _claimed(self, name, lease):
        self.state.remember_claim(name, lease)
        self.freshness.check()

    def _identity_replaced(self, node):
        if not self.settings.node:
            self.state.replace_node_id(node)

    @defer.inlineCallbacks
    def stopService(self):
        if self._starting is not None:
            self._starting.cancel()
        for d in list(self._member_waits):
            d.cancel()
        try:
            yield OrderedMultiService.stopService(self)
        finally:
            if self.etcd is not None:
                self.state.forget_etcd_url()
            self.state.release()
