"""
One idetcd node: the etcd client, the registry, the claimer and the DNS
listeners of one Corefile server block, started and stopped in the order
that keeps answers right.
"""

import errno
import fcntl
import ipaddress
import json
import os
import socket
import uuid
from urllib.parse import urlsplit

import attr
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from idetcd.authority import ZoneAuthority
from idetcd.claimer import Claimer
from idetcd.corefile import CorefileError, load, parse
from idetcd.embedded import EtcdProcess
from idetcd.etcd import EtcdClient
from idetcd.http import HttpEndpoint, health_site, metrics_site, ready_site
from idetcd.members import Member
from idetcd.metrics import node_registry
from idetcd.registry import Registry
from idetcd.server import DNSServer

log = Logger()

DEFAULT_BINDS = ("0.0.0.0",)


class StateDirectoryBusy(Exception):
    """
    Another running node uses this state directory (and so its identity).
    """


def default_state_dir(block, port):
    """
    Where a node keeps its identity and embedded etcd data by default: one
    directory per DNS port, so nodes sharing a machine stay distinct.
    """
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    zone = block.idetcd.pattern.zone.rstrip(".") or "root"
    return os.path.join(base, "idetcd", f"{zone}-{port}")


def _boot_id():
    """
    This kernel's boot, or C{None} where the system does not say.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


@attr.s(eq=False)
class NodeState:
    """
    The files a node keeps between runs: its identity, the name and lease it
    held last, and a lock so two live processes never share them.
    """

    path = attr.ib()
    _lock = attr.ib(default=None, init=False)

    def acquire(self):
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        lock = open(os.path.join(self.path, "lock"), "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            lock.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise StateDirectoryBusy(
                    f"state directory {self.path} is in use by another idetcd; "
                    "give each node on one machine its own 'state' directory"
                ) from None
            raise
        self._lock = lock

    def release(self):
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _read(self, filename):
        try:
            with open(os.path.join(self.path, filename)) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def _write(self, filename, text):
        target = os.path.join(self.path, filename)
        with open(target + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(target + ".tmp", target)

    def node_id(self):
        """
        This node's identity, made once and kept.
        """
        node = self._read("node-id")
        if node is None:
            node = uuid.uuid4().hex
            self._write("node-id", node)
        return node

    def replace_node_id(self, node):
        self._write("node-id", node)

    def last_name(self):
        return self._read("name")

    def _incarnation(self):
        """
        What tells this directory, on this boot, from a copy of it (a cloned
        machine image, a copied volume) or from a run before a reboot.
        """
        stat = os.stat(self.path)
        return {"boot": _boot_id(), "dir": [stat.st_dev, stat.st_ino]}

    def remember_claim(self, name, lease):
        self._write("name", name)
        self._write("lease", json.dumps({"lease": lease, **self._incarnation()}))

    def predecessor_lease(self):
        """
        The lease the previous process of this directory held, if that
        process provably ended: the lock is ours now, and the record was
        written on this boot, in this very directory (not in a copy).  A
        live process elsewhere that shares a copy of this directory proves
        nothing, so its lease is never returned.
        """
        try:
            record = json.loads(self._read("lease") or "null")
            incarnation = self._incarnation()
        except (ValueError, OSError):
            return None
        if (
            self._lock is None
            or not isinstance(record, dict)
            or incarnation["boot"] is None
            or any(record.get(k) != v for k, v in incarnation.items())
            or not isinstance(record.get("lease"), int)
        ):
            return None
        return record["lease"]


#: Documentation addresses (RFC 5737, RFC 3849): connecting a UDP socket
#: to one picks the default route's source address, and sends nothing.
_ELSEWHERE = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


def _source_address(host, family):
    """
    The local address this machine uses to reach C{host}: what a UDP
    socket gets bound to when connected there (no packet is sent).
    """
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return s.getsockname()[0]


def announced_address(host, family):
    """
    The address to announce for a node that reaches etcd at C{host}: the
    one it reaches etcd from, unless that is loopback (etcd, or a proxy to
    it, on this machine), where other nodes need the default route's.
    """
    address = _source_address(host, family)
    if ipaddress.ip_address(address).is_loopback:
        try:
            address = _source_address(_ELSEWHERE[family], family)
        except OSError:
            pass  # no route out: loopback is all there is
    return address


@attr.s(eq=False)
class IdetcdService(MultiService):
    """
    A node of an idetcd cluster, from one Corefile server block.

    Starting it binds the DNS port at once (so a port in use fails the
    start), then claims a name in the background: C{when_claimed()} fires
    with it.  C{members} holds every known name, by name.
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
    dns = attr.ib(init=False)
    state = attr.ib(init=False)
    _starting = attr.ib(default=None, init=False)
    _waiters = attr.ib(factory=list, init=False)
    _failure = attr.ib(default=None, init=False)

    def __attrs_post_init__(self):
        MultiService.__init__(self)
        self.settings = settings = self.block.idetcd
        if settings is None:
            raise CorefileError(self.block.filename, self.block.line, "server block has no idetcd directive")
        port = self.block.port if self.port is None else self.port
        self.state = NodeState(
            self.state_dir or settings.state or default_state_dir(self.block, port)
        )
        if settings.endpoints == ("embedded",):
            self.etcd = EtcdProcess(self.reactor, os.path.join(self.state.path, "etcd"))
            endpoints = [self.etcd.client_url]
        else:
            endpoints = settings.endpoints
        self.client = EtcdClient(endpoints, self.reactor)
        prefix = settings.prefix.encode("utf-8")
        self.registry = Registry(self.client, prefix, self.reactor)
        self.claimer = Claimer(
            self.client,
            settings.pattern,
            settings.limit,
            prefix,
            identity=None,
            lease_ttl=settings.lease,
            reactor=self.reactor,
            wait=settings.wait,
            registry=self.registry,
            on_claimed=self.state.remember_claim,
            on_identity=self._identity_replaced,
        )
        authority = ZoneAuthority(
            settings.pattern.zone, self.registry, settings.ttl, settings.nameservers
        )
        self.dns = DNSServer(
            authority,
            port,
            interfaces=tuple(self.interfaces or self.block.binds or DEFAULT_BINDS),
            reactor=self.reactor,
        )
        # Child services, each listening only when its directive is present.
        if self.block.health is not None:
            HttpEndpoint("health", self.block.health, health_site(), self.reactor).setServiceParent(self)
        if self.block.ready is not None:
            HttpEndpoint("ready", self.block.ready, ready_site(self), self.reactor).setServiceParent(self)
        if self.block.prometheus is not None:
            site = metrics_site(node_registry(self))
            HttpEndpoint("metrics", self.block.prometheus, site, self.reactor).setServiceParent(self)

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

    @property
    def held_name(self):
        """
        The name this node holds now on a live lease, or C{None}.
        """
        return self.claimer.held_name

    @property
    def members(self):
        return self.registry.members

    def when_claimed(self):
        """
        Fires with this node's name once it holds one; fails if the node
        cannot take part (every slot taken, no address to announce).
        """
        if self.claimer.held_name is not None:
            return defer.succeed(self.claimer.held_name)
        if self._failure is not None:
            return defer.fail(self._failure)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def startService(self):
        MultiService.startService(self)
        self._failure = None
        self.client.open()
        self.state.acquire()
        try:
            self.dns.startService()
        except BaseException:
            self.state.release()
            raise
        self._starting = self._start()
        self._starting.addBoth(self._started)

    @defer.inlineCallbacks
    def _start(self):
        self.claimer.identity = yield self._identity()
        self.claimer.preferred = self.state.last_name()
        self.claimer.predecessor_lease = self.state.predecessor_lease()
        if self.etcd is not None:
            yield self.etcd.startService()
        self.registry.startService()
        self.claimer.startService()
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
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure) and not waiters and not result.check(defer.CancelledError):
            log.failure("node could not start", result)
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(self.claimer.held_name)

    def _identity_replaced(self, node):
        if not self.settings.node:
            self.state.replace_node_id(node)

    @defer.inlineCallbacks
    def _identity(self):
        settings = self.settings
        node = settings.node or self.state.node_id()
        addresses = list(settings.addresses)
        if not addresses:
            addresses = yield self._detect_addresses()
        return Member(
            name="",
            ipv4=tuple(a for a in addresses if ":" not in a),
            ipv6=tuple(a for a in addresses if ":" in a),
            port=str(self.dns.port),
            node=node,
            srv=settings.srv,
        )

    @defer.inlineCallbacks
    def _detect_addresses(self):
        """
        The address this node reaches etcd from, found without blocking:
        the host name is resolved by the reactor's resolver.
        """
        if self.etcd is not None:
            return ["127.0.0.1"]
        errors = []
        for endpoint in self.client.endpoints:
            host = urlsplit(endpoint).hostname
            try:
                ip = yield self.reactor.resolve(host) if ":" not in host else defer.succeed(host)
                family = socket.AF_INET6 if ":" in ip else socket.AF_INET
                address = announced_address(ip, family)
            except Exception as e:
                errors.append(f"{host}: {e}")
                continue
            if address.lower().startswith("fe80:"):
                errors.append(f"{host}: only a link-local address reaches it")
                continue
            log.info("announcing {address} (set 'address' to choose)", address=address)
            return [address]
        raise RuntimeError(
            "cannot tell which address to announce (" + "; ".join(errors) + "); set 'address'"
        )

    @defer.inlineCallbacks
    def stopService(self):
        children = MultiService.stopService(self)
        if self._starting is not None:
            self._starting.cancel()
        # Release the name first, while etcd and the client are still up.
        yield self.claimer.stopService() if self.claimer.running else None
        yield self.dns.stopService()
        if self.registry.running:
            self.registry.stopService()
        yield self.client.close()
        if self.etcd is not None and self.etcd.running:
            yield self.etcd.stopService()
        self.state.release()
        yield children
