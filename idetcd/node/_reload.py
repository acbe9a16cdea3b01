"""
Reloading the Corefile while the nodes run, and the signals a node handles
besides twistd's SIGTERM and SIGINT: SIGHUP (what ``systemctl reload``
sends) reloads the Corefile, SIGUSR1 and SIGUSR2 log each node's state.  A
signal that killed the process would cost the cluster a name for a whole
lease.

A reload applies what can change under a running node (L{LIVE}) and keeps
the name and lease; any other change needs a restart, and a reload that
finds one applies nothing and says so in one line.  The C{reload} directive
also checks the Corefile's checksum now and then, as CoreDNS's does.
"""

import hashlib
import os
import random
import signal

import attr
from twisted.logger import Logger

from idetcd.config import CorefileError, read
from idetcd.node._corefile import parse

log = Logger()

#: Directives a reload applies to running nodes.  C{forward} is live while
#: the block keeps one: adding or removing it needs a restart.
LIVE = ("ttl", "nameservers", "forward", "reload")

#: Fields of the settings named otherwise in the Corefile.
_DIRECTIVES = {"binds": "bind", "endpoints": "endpoint", "addresses": "address"}


def _unplaced(value):
    """
    C{value} without where it was written: a directive that moved to
    another line has not changed.
    """
    if attr.has(type(value)) and hasattr(value, "line"):
        return attr.evolve(value, filename="", line=0)
    return value


def _differing(old, new, skip):
    return [
        _DIRECTIVES.get(field.name, field.name)
        for field in attr.fields(type(old))
        if field.name not in ("filename", "line", *skip)
        and _unplaced(getattr(old, field.name)) != _unplaced(getattr(new, field.name))
    ]


def differences(node, block):
    """
    The directives in which server block C{block} differs from the one
    C{node} (an L{idetcd.node._service.IdetcdService}) runs on, leaving out what
    twistd's C{--port} and C{--state} decide instead.
    """
    return _differing(node.block, block, ("idetcd",) + (("port",) if node.port is not None else ())) + _differing(
        node.settings, block.idetcd, ("state",) if node.state_dir is not None else ()
    )


def needs_restart(node, block, changed):
    """
    Which of the C{changed} directives of C{block} a reload cannot apply
    to C{node}.
    """
    added_or_removed = (node.block.forward is None) != (block.forward is None)
    return [name for name in changed if name not in LIVE or (name == "forward" and added_or_removed)]


def describe(node):
    """
    One line on what C{node} holds and knows, for an operator's SIGUSR1.
    """
    claimer, registry = node.claimer, node.registry
    # Each is None once the lease's deadline has passed, even between two reads.
    name, slot, lease, left = claimer.held_name, claimer.slot, claimer.lease, claimer.lease_left
    if None in (name, slot, lease, left):
        held = "holds no name (claiming, or waiting for etcd to confirm its lease)"
    else:
        held = f"holds {name} (slot {slot}) on lease {lease:x}, {left:.1f}s left unless renewed"
    if registry.ready:
        read_ = f"{len(node.members)} members at registry revision {registry.revision}"
    else:
        read_ = "has not read the members from etcd yet"
    return (
        f"{node.settings.pattern.zone} on DNS port {node.dns.port}: {held}; {read_};"
        f" etcd at {node.client.endpoint}; ttl {node.settings.ttl}, lease {node.settings.lease}s"
    )


def _checksum(path):
    """
    The checksum of the Corefile at C{path}; of why it cannot be read, when
    it cannot, so that the same trouble is not reported at every check.
    """
    try:
        seen = read(path)
    except CorefileError as e:
        seen = str(e)
    return hashlib.sha512(seen.encode("utf-8")).hexdigest()


@attr.s(eq=False)
class Reloader:
    """
    Reloads the Corefile at C{path} into C{nodes} (the
    L{idetcd.node._service.IdetcdService}s made from its idetcd blocks) on
    SIGHUP, and when its checksum changed if a block has C{reload}; logs
    the nodes' state on SIGUSR1 and SIGUSR2.

    L{start} installs the signal handlers, L{stop} ends the checks (SIGHUP
    then only says that the nodes are stopping), L{restore} puts back the
    handlers found at start.
    """

    path = attr.ib()
    nodes = attr.ib()
    reactor = attr.ib()
    _previous = attr.ib(factory=dict, init=False)  # signal -> handler found at start
    _checksum = attr.ib(default=None, init=False)
    _settings = attr.ib(default=None, init=False)  # the ReloadSettings in force
    _check = attr.ib(default=None, init=False)  # the next checksum check
    _stopped = attr.ib(default=False, init=False)
    _random = attr.ib(factory=random.Random, init=False)

    def start(self):
        for signum, act in ((signal.SIGHUP, self.reload), (signal.SIGUSR1, self.dump), (signal.SIGUSR2, self.dump)):
            previous = self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler(act, previous))
        self._checksum = _checksum(self.path)
        self._schedule(node.block for node in self.nodes)

    def _handler(self, act, previous):
        """
        A signal handler doing C{act} in the reactor's thread, after
        C{previous} if it is a function: twistd's own SIGUSR1 handler
        rotates its C{--logfile}.
        """

        def handle(signum, frame):
            if callable(previous):
                previous(signum, frame)
            self.reactor.callFromThread(act, signal.Signals(signum).name)

        return handle

    def stop(self):
        self._stopped = True
        self._schedule(())

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def dump(self, cause):
        """
        Log each node's state, one line each.
        """
        for node in self.nodes:
            log.info("{cause}: {state}", cause=cause, state=describe(node))

    def reload(self, cause):
        """
        Read the Corefile again and apply it if what changed can change
        live; else say in one line why nothing was applied.
        """
        if self._stopped:
            log.info("{cause}: stopping; the Corefile is not reloaded", cause=cause)
            return
        self._checksum = _checksum(self.path)
        try:
            blocks = [block for block in parse(read(self.path), os.fspath(self.path)) if block.idetcd is not None]
        except CorefileError as e:
            self._refuse(cause, str(e))
            return
        if len(blocks) != len(self.nodes):
            self._refuse(
                cause,
                f"{self.path}: it has {len(blocks)} server blocks with idetcd, the running process"
                f" {len(self.nodes)}; that needs a restart",
            )
            return
        changed, restart = [], []
        for node, block in zip(self.nodes, blocks):
            differing = differences(node, block)
            changed += [name for name in differing if name not in changed]
            restart += [name for name in needs_restart(node, block, differing) if name not in restart]
        if restart:
            self._refuse(cause, f"{self.path}: {', '.join(restart)} changed, which needs a restart")
            return
        try:
            # Every node checks its part before any applies it.
            applies = [node.prepare_reload(block) for node, block in zip(self.nodes, blocks)]
        except CorefileError as e:
            self._refuse(cause, str(e))
            return
        for apply in applies:
            apply()
        self._schedule(blocks)
        log.info(
            "{cause}: reloaded {path}: {changed}",
            cause=cause, path=os.fspath(self.path),
            changed=f"applied {', '.join(changed)}" if changed else "nothing changed",
        )

    def _refuse(self, cause, why):
        log.error("{cause}: cannot reload: {why}; running on as before", cause=cause, why=why)

    def _schedule(self, blocks):
        """
        Check the checksum as the first C{reload} of C{blocks} says, if
        any.
        """
        if self._check is not None:
            self._check.cancel()
            self._check = None
        self._settings = next((block.reload for block in blocks if block.reload is not None), None)
        if self._settings is not None and not self._stopped:
            self._next()

    def _next(self):
        jitter = self._settings.jitter
        delay = self._settings.interval + self._random.uniform(-jitter, jitter)
        self._check = self.reactor.callLater(delay, self._poll)

    def _poll(self):
        self._check = None
        if _checksum(self.path) != self._checksum:
            self.reload("reload")
        if self._check is None and self._settings is not None:
            self._next()
