"""
Hosts for the checks, made of Linux network namespaces: an etcd host and K
hosts on one bridge, with addresses in 10.77.0.0/24, a real etcd on the
first and a real C{twistd idetcd} node on each of the others, serving DNS
on its own address, port 53.  A process run on a host resolves the
workers' names through that host's node, as on a real machine
(C{/etc/netns/NS/resolv.conf}).  The hosts share the machine's hostname,
which /etc/hosts maps to 127.0.0.1, as on stock hosts and in containers:
the trap training frameworks meet, kept on purpose.

Needs root and iproute2.  The root namespace blackholes 10.77.0.0/24 before
anything else is made, so nothing sent to a host address leaves the
machine.  What a run makes is named with its tag (C{idetcdfw-TAG-…}), its
process id times 1000 plus a random part, also the metric of its blackhole
route: parallel runs do not collide, and a run removes what runs whose
process is gone left behind.
"""

import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import attr
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater

from idetcd.node._embedded import find_etcd

PREFIX = "idetcdfw-"
SUBNET = "10.77.0.0/24"
ETCD_ADDRESS = "10.77.0.1"
ETCD_URL = f"http://{ETCD_ADDRESS}:2379"
# The environment running the checks has twistd, idetcd and torchrun: the
# hosts run the same.
BIN = os.path.dirname(os.path.abspath(sys.executable))


class NetnsError(Exception):
    """
    Setting up or taking down the hosts failed.
    """


def ip(*args, check=True):
    """
    Run C{ip ARGS} and return its output; raise L{NetnsError} with what it
    said when it fails.
    """
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if check and done.returncode:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _tag_of(name):
    rest = name[len(PREFIX):].split("-", 1)[0]
    return int(rest) if name.startswith(PREFIX) and rest.isdigit() else None


def _route_tags():
    return [
        int(line.split("metric", 1)[1].split()[0])
        for line in ip("route", "show", "type", "blackhole", "root", SUBNET).splitlines()
        if line.split()[1:2] == [SUBNET] and "metric" in line
    ]


def _kill_all(namespace):
    """
    Kill every process in C{namespace}.
    """
    for pid in ip("netns", "pids", namespace, check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _remove_namespace(name):
    """
    Kill every process in namespace C{name}, then remove it and its
    C{/etc/netns} files; its links go with it.
    """
    _kill_all(name)
    ip("netns", "del", name, check=False)
    shutil.rmtree(os.path.join("/etc/netns", name), ignore_errors=True)


def sweep():
    """
    Remove what runs whose process is gone left behind: their namespaces
    (and processes), routes and directories.
    """
    dead = lambda tag: tag is not None and not _alive(tag // 1000)  # noqa: E731
    for line in ip("netns", "list").splitlines():
        name = line.split()[0]
        if dead(_tag_of(name)):
            _remove_namespace(name)
    for tag in _route_tags():
        if dead(tag):
            ip("route", "del", "blackhole", SUBNET, "metric", str(tag), check=False)
    for path in glob.glob(os.path.join(tempfile.gettempdir(), PREFIX + "*")):
        if dead(_tag_of(os.path.basename(path))):
            shutil.rmtree(path, ignore_errors=True)


def _claim_tag():
    """
    Blackhole L{SUBNET} in the root namespace under a metric of this run's
    own, its tag; C{ip} refuses a route that exists, which makes the tag
    unique among live runs.
    """
    for _ in range(20):
        tag = os.getpid() * 1000 + random.randrange(1000)
        try:
            ip("route", "add", "blackhole", SUBNET, "metric", str(tag))
        except NetnsError as e:
            if "File exists" not in str(e):
                raise
        else:
            return tag
    raise NetnsError("no free tag for a blackhole route")


class _Collector(protocol.ProcessProtocol):
    """
    Keeps a process's output lines (stdout and stderr), each with the
    monotonic time it came.
    """

    def __init__(self):
        self.lines = []
        self.status = None
        self.ended = False
        self._partial = {}
        self._waiters = []

    def childDataReceived(self, fd, data):
        now = time.monotonic()
        *whole, self._partial[fd] = (self._partial.get(fd, b"") + data).split(b"\n")
        self.lines.extend((now, line.decode("utf-8", "replace")) for line in whole)

    def processEnded(self, reason):
        now = time.monotonic()
        self.lines.extend((now, rest.decode("utf-8", "replace")) for rest in self._partial.values() if rest)
        self.status = reason.value.exitCode  # None when a signal ended it
        self.ended = True
        for waiter in self._waiters:
            waiter.callback(self.status)
        del self._waiters[:]

    def when_ended(self):
        if self.ended:
            return defer.succeed(self.status)
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        return waiter


@attr.s(eq=False)
class Process:
    """
    A process run on a host, the leader of a process group of its own.
    """

    label = attr.ib()
    pid = attr.ib()
    _collector = attr.ib(repr=False)

    @property
    def status(self):
        """
        The exit status once ended (C{None} if a signal ended it).
        """
        return self._collector.status

    @property
    def ended(self):
        return self._collector.ended

    @property
    def lines(self):
        """
        C{(time, text)} for every output line so far.
        """
        return list(self._collector.lines)

    @property
    def output(self):
        return "\n".join(text for _, text in self._collector.lines)

    def when_ended(self, timeout=None):
        """
        A Deferred that fires with the exit status; with C{timeout}, it
        fails with L{defer.TimeoutError} after that many seconds.
        """
        ended = self._collector.when_ended()
        if timeout is not None and not ended.called:
            ended.addTimeout(timeout, reactor)
        return ended

    def kill(self, sig=signal.SIGKILL):
        """
        Send C{sig} to the process's group, or to the process if it has
        not made its group yet.
        """
        if not self.ended:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                os.kill(self.pid, sig)

    def describe(self, tail=40):
        """
        Its label, status and last output lines, for a failure message.
        """
        lines = self.output.splitlines()[-tail:]
        state = f"exit status {self.status}" if self.ended else "running"
        return f"--- {self.label} ({state}):\n" + "\n".join(lines)


class _Notified(protocol.DatagramProtocol):
    """
    systemd's end of C{$NOTIFY_SOCKET}: fires C{ready} on C{READY=1}.
    """

    def __init__(self):
        self.ready = defer.Deferred()

    def datagramReceived(self, data, address):
        if b"READY=1" in data.split(b"\n") and not self.ready.called:
            self.ready.callback(None)


@attr.s(eq=False)
class Node:
    """
    A host's C{twistd idetcd} node.
    """

    corefile = attr.ib()
    state = attr.ib()
    process = attr.ib()
    _ready = attr.ib(repr=False)

    @property
    def options(self):
        """
        What C{idetcd} commands need to find this node.
        """
        return ["--corefile", self.corefile, "--state", self.state]

    def when_ready(self, timeout=60):
        """
        Fires once the node holds a name (it sent C{READY=1}); fails if it
        exits first or takes longer than C{timeout}.
        """
        ready = defer.Deferred()
        self._ready.addCallback(lambda _: ready.called or ready.callback(None))
        self.process.when_ended().addCallback(
            lambda status: ready.called or ready.errback(NetnsError(f"node exited first\n{self.process.describe()}"))
        )
        return ready.addTimeout(timeout, reactor)


@attr.s(eq=False)
class Host:
    """
    One host: a namespace with one address on the bridge, on C{eth0}.
    """

    network = attr.ib(repr=False)
    role = attr.ib()
    namespace = attr.ib()
    address = attr.ib()
    node = attr.ib(default=None)

    def run(self, argv, env=None, label=None):
        """
        Start C{argv} on this host; a L{Process}.
        """
        return self.network.spawn(self, argv, env, label or f"{self.role}: {' '.join(argv)}")


@attr.s(eq=False)
class Network:
    """
    The etcd host and C{count} hosts (C{hosts}), tagged C{tag}, with a
    scratch directory of their own.  L{close} takes it all away.
    """

    tag = attr.ib()
    directory = attr.ib()
    switch = attr.ib(default=None)
    etcd_host = attr.ib(default=None)
    hosts = attr.ib(factory=list)
    etcd = attr.ib(default=None)
    _namespaces = attr.ib(factory=list, repr=False)
    _processes = attr.ib(factory=list, repr=False)
    _listening = attr.ib(factory=list, repr=False)

    @classmethod
    def create(cls, count):
        """
        Build the hosts: leftovers of dead runs swept, the blackhole route,
        then the namespaces, bridge, links and resolvers.
        """
        sweep()
        tag = _claim_tag()
        network = cls(tag, os.path.join(tempfile.gettempdir(), f"{PREFIX}{tag}"))
        try:
            os.makedirs(network.directory)
            network.switch = network._namespace("sw")
            ip("-n", network.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", network.switch, "link", "set", "br0", "up")
            network.etcd_host = network._plug("etcd", ETCD_ADDRESS)
            network.hosts = [network._plug(f"h{i}", f"10.77.0.{10 + i}") for i in range(1, count + 1)]
        except BaseException:
            network._dismantle()
            raise
        return network

    def _namespace(self, role):
        name = f"{PREFIX}{self.tag}-{role}"
        ip("netns", "add", name)
        self._namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def _plug(self, role, address):
        namespace = self._namespace(role)
        # Made in place: no link ever exists in the root namespace.
        ip("link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", role, "netns", self.switch)
        ip("-n", self.switch, "link", "set", role, "master", "br0", "up")
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        # ip netns exec binds this over /etc/resolv.conf: the host's node resolves.
        os.makedirs(os.path.join("/etc/netns", namespace))
        with open(os.path.join("/etc/netns", namespace, "resolv.conf"), "w") as f:
            f.write(f"nameserver {address}\noptions timeout:2 attempts:2\n")
        return Host(self, role, namespace, address)

    @property
    def environ(self):
        """
        The environment of processes on the hosts: this one, with L{BIN}
        first on C{PATH}.
        """
        return dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"))

    def spawn(self, host, argv, env=None, label=None):
        """
        Start C{argv} in C{host}'s namespace, in a session of its own (so
        L{close} can kill it with everything it started).
        """
        collector = _Collector()
        transport = reactor.spawnProcess(
            collector,
            shutil.which("setsid"),
            ["setsid", "ip", "netns", "exec", host.namespace, *argv],
            env=self.environ if env is None else env,
        )
        transport.closeStdin()
        process = Process(label or " ".join(argv), transport.pid, collector)
        self._processes.append(process)
        return process

    @defer.inlineCallbacks
    def start_etcd(self, timeout=30):
        """
        Start etcd on the etcd host, with its data in the scratch
        directory; fires once it answers C{/health}.
        """
        peer = f"http://{ETCD_ADDRESS}:2380"
        # fmt: off
        self.etcd = self.etcd_host.run([
            find_etcd(), "--name", "etcd", "--data-dir", os.path.join(self.directory, "etcd"),
            "--listen-client-urls", ETCD_URL, "--advertise-client-urls", ETCD_URL,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"etcd={peer}",
        ], label="etcd")
        # fmt: on
        probe = f"import urllib.request; urllib.request.urlopen({ETCD_URL + '/health'!r}, timeout=1)"
        deadline = time.monotonic() + timeout
        while True:
            answered = yield self.etcd_host.run([sys.executable, "-c", probe], label="etcd probe").when_ended(10)
            if answered == 0:
                return
            if self.etcd.ended or time.monotonic() > deadline:
                raise NetnsError(f"etcd did not answer within {timeout}s\n{self.etcd.describe()}")
            yield deferLater(reactor, 0.2, lambda: None)

    def start_node(self, host, srv, pattern="worker{{.ID}}.tf.local."):
        """
        Start a C{twistd idetcd} node on C{host}: DNS on its address, port
        53, for the zone and the hosts' reverse names (torch looks its
        peers' names up); that address announced; C{srv} as its job's
        port; readiness reported on a notification socket of its own.
        """
        directory = os.path.join(self.directory, host.role)
        os.makedirs(directory)
        corefile = os.path.join(directory, "Corefile")
        with open(corefile, "w") as f:
            f.write(
                f"tf.local 0.77.10.in-addr.arpa:53 {{\n    bind {host.address}\n    idetcd {{\n"
                f"        endpoint {ETCD_URL}\n        pattern {pattern}\n"
                f"        address {host.address}\n        srv {srv}\n    }}\n}}\n"
            )
        notified = _Notified()
        socket = os.path.join(directory, "notify")
        self._listening.append(reactor.listenUNIXDatagram(socket, notified))
        state = os.path.join(directory, "state")
        process = host.run(
            [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "idetcd", "--corefile", corefile, "--state", state],
            env=dict(self.environ, NOTIFY_SOCKET=socket),
            label=f"{host.role} idetcd",
        )
        host.node = Node(corefile, state, process, notified.ready)
        return host.node

    def rsh_agent(self):
        """
        Write an rsh agent for C{mpirun --mca plm_rsh_agent}, in place of
        ssh: it runs the command it is given for a host in the namespace
        that holds the host's address.  Returns its path.
        """
        path = os.path.join(self.directory, "rsh")
        cases = "".join(f"    {host.address}) namespace={host.namespace} ;;\n" for host in self.hosts)
        # The hosts share the machine's hostname and /tmp: each host's Open
        # MPI daemon gets a session directory of its own, or they collide.
        sessions = os.path.join(self.directory, "ompi")
        with open(path, "w") as f:
            f.write(
                "#!/bin/sh\n"
                "# rsh agent: HOST COMMAND... runs COMMAND on the namespace host with HOST's address.\n"
                "address=$(getent hosts \"$1\" | awk '{ print $1; exit }')\n"
                f'case "$address" in\n{cases}'
                '    *) echo "$0: no host $1 here" >&2; exit 255 ;;\n'
                "esac\n"
                "shift\n"
                f'mkdir -p "{sessions}/$namespace"\n'
                f'export OMPI_MCA_orte_tmpdir_base="{sessions}/$namespace"\n'
                'exec ip netns exec "$namespace" /bin/sh -c "$*"\n'
            )
        os.chmod(path, 0o755)
        return path

    @defer.inlineCallbacks
    def close(self):
        """
        Kill every process started here (its whole group, and whatever it
        left in the namespaces: torchrun starts its workers in sessions of
        their own), wait for them, and take the hosts away.
        """
        try:
            for process in self._processes:
                process.kill()
            for namespace in self._namespaces:
                _kill_all(namespace)
            yield defer.gatherResults([p.when_ended(10) for p in self._processes], consumeErrors=True)
        finally:
            yield defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in self._listening])
            self._dismantle()

    def _dismantle(self):
        for namespace in reversed(self._namespaces):
            _remove_namespace(namespace)
        del self._namespaces[:]
        ip("route", "del", "blackhole", SUBNET, "metric", str(self.tag), check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


@defer.inlineCallbacks
def network(case, count):
    """
    A L{Network} of C{count} hosts with etcd running, for trial test
    C{case}; taken away when the test ends, whatever its outcome.
    """
    hosts = Network.create(count)
    case.addCleanup(hosts.close)
    yield hosts.start_etcd()
    return hosts
