"""
etcd as production runs it: TLS with client certificates, and users whose
tokens expire.  Real etcd servers with certificates the test makes, real
nodes answering real DNS queries; a tiny twisted.web server stands in for
endpoints that are not etcd, or not a usable one.
"""

import json
import os
import socket

import dns.rcode
from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial import unittest

from idetcd.etcd import EtcdClient, EtcdUnavailable, prefix_range_end
from idetcd.etcd.auth import Credentials, TokenKeeper
from idetcd.etcd.check import check
from idetcd.etcd.connections import _socket
from idetcd.etcd.errors import (
    AuthenticationFailed,
    EtcdTooOld,
    NotEtcdGateway,
    PermissionDenied,
    TlsFailed,
)
from idetcd.etcd.tls import TlsSettings
from tests.certs import make_certificates
from tests.dnsclient import query
from tests.etcdserver import enable_auth, handled, start_etcd, start_secure_etcd
from tests.inprocess import start_node
from tests.logevents import logged
from tests.waiting import sleep, wait_for
from tests.webstub import json_response, serve

PREFIX = b"/idetcd/"
PASSWORD = "node-password"


def tls_line(certs, ca=None):
    return f"tls {certs.client_cert} {certs.client_key} {ca or certs.ca}"


class OneLineErrors:
    def assertOneLine(self, error, *words):
        """
        C{error} is one line holding C{words}: what the operator reads.
        """
        text = str(error)
        self.assertNotIn("\n", text)
        for word in words:
            self.assertIn(word, text)


class Ipv6EndpointTests(unittest.TestCase):
    """
    An etcd reached at an IPv6 literal (C{http://[::1]:2379}), as on an
    IPv6-only cluster: the nodes claim, watch and answer as over IPv4, with
    and without TLS (whose certificate names the address).
    """

    timeout = 120

    @defer.inlineCallbacks
    def assert_nodes_meet(self, endpoint, *settings):
        nodes = [start_node(self, endpoint, *settings, address=i + 1) for i in range(2)]
        names = yield defer.gatherResults([node.when_claimed() for node in nodes])
        self.assertEqual(sorted(names), ["worker1.tf.local.", "worker2.tf.local."])
        yield wait_for(lambda: all(sorted(node.members) == sorted(names) for node in nodes))
        for i, name in enumerate(names):
            reply = yield query(nodes[1 - i].dns.port, name)
            self.assertEqual([rr.address for rr in reply.answer[0]], [f"127.0.0.{i + 1}"])

    @defer.inlineCallbacks
    def test_plain(self):
        etcd = yield start_etcd(self, host="::1")
        self.assertTrue(etcd.client_url.startswith("http://[::1]:"))
        yield self.assert_nodes_meet(etcd.client_url)

    @defer.inlineCallbacks
    def test_tls(self):
        etcd = yield start_secure_etcd(self, host="::1")
        self.assertTrue(etcd.client_url.startswith("https://[::1]:"))
        yield self.assert_nodes_meet(etcd.client_url, tls_line(etcd.certs))


class SecureNodeTests(OneLineErrors, unittest.TestCase):
    """
    Nodes against an etcd that wants client certificates and a user, with
    tokens that die after 2 idle seconds.
    """

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.etcd = yield start_secure_etcd(self, extra_args=("--auth-token-ttl", "2"))
        self.credentials = yield enable_auth(self.etcd, "node", PASSWORD)
        self.password_file = os.path.abspath(self.mktemp())
        with open(self.password_file, "w") as f:
            f.write(PASSWORD + "\n")

    def node(self, *settings, address=1):
        return start_node(self, self.etcd.client_url, *settings, address=address)

    def secure_node(self, address=1):
        return self.node(
            tls_line(self.etcd.certs), f"credentials node file {self.password_file}", address=address
        )

    @defer.inlineCallbacks
    def test_claims_and_answers(self):
        node = self.secure_node()
        name = yield node.when_claimed()
        self.assertEqual(name, "worker1.tf.local.")
        reply = yield query(node.dns.port, name)
        self.assertEqual(reply.rcode(), dns.rcode.NOERROR)
        self.assertEqual([rr.address for rr in reply.answer[0]], ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_keeps_lease_and_watch_while_tokens_expire(self):
        """
        For 15 s of 2 s tokens the node keeps its lease; its watch, whose
        stream breaks after the token died, comes back with a new token and
        sees a member another node adds at the end.
        """
        watch_log = logged(self, "idetcd.etcd.watch")
        node = self.secure_node()
        name = yield node.when_claimed()
        lease = node.claimer.lease
        yield sleep(5)
        node.registry._watch._stream.stop()
        yield sleep(10)
        other = self.secure_node(address=2)
        other_name = yield other.when_claimed()
        yield wait_for(lambda: other_name in node.members)
        self.assertEqual((node.held_name, node.claimer.lease), (name, lease))
        info = yield other.client.lease_time_to_live(lease, keys=True)
        self.assertEqual(info.keys, {PREFIX + name.encode()})
        refused = [e for e in watch_log if "refused the watch's token" in e["log_format"]]
        self.assertEqual(len(refused), 1)
        self.assertGreaterEqual(node.client._auth.authentications, 2)

    @defer.inlineCallbacks
    def test_wrong_ca(self):
        other = make_certificates(os.path.abspath(self.mktemp()), "another CA")
        node = self.node(tls_line(self.etcd.certs, ca=other.ca), f"credentials node {PASSWORD}")
        error = yield self.assertFailure(node.when_claimed(), TlsFailed)
        self.assertTrue(
            str(error).startswith(f"certificate verify failed for {self.etcd.client_url}: "), str(error)
        )
        self.assertOneLine(error, "give 'tls' the CA file")

    @defer.inlineCallbacks
    def test_wrong_password(self):
        node = self.node(tls_line(self.etcd.certs), "credentials node wrong-password")
        error = yield self.assertFailure(node.when_claimed(), AuthenticationFailed)
        self.assertOneLine(
            error,
            f"etcd at {self.etcd.client_url} refused user 'node'",
            "invalid user ID or password",
            "check the user name and password of 'credentials'",
        )
        self.assertNotIn("wrong-password", str(error))


class SecureClientTests(OneLineErrors, unittest.TestCase):
    """
    The client against an etcd with TLS and users: what each mistake of
    set-up says, and how tokens are shared and renewed.
    """

    timeout = 60
    binary = None

    @defer.inlineCallbacks
    def setUp(self):
        self.etcd = yield start_secure_etcd(
            self, extra_args=("--auth-token-ttl", "2"), binary=self.binary
        )
        self.credentials = yield enable_auth(self.etcd, "node", PASSWORD)

    def client(self, **kwargs):
        options = {"tls": self.etcd.tls, "credentials": self.credentials, **kwargs}
        client = EtcdClient([self.etcd.client_url], reactor, timeout=2.0, **options)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def watching(self, client):
        """
        A watch of C{client} over the prefix, once it saw a first put; and
        the events it saw.
        """
        seen = []
        watch = client.watch(PREFIX, prefix_range_end(PREFIX), 1, lambda events, rev: seen.extend(events))
        self.addCleanup(watch.stop)
        yield client.put(PREFIX + b"a", b"1")
        yield wait_for(lambda: seen)
        return watch, seen

    @defer.inlineCallbacks
    def test_check_passes(self):
        versions = yield self.client().check(PREFIX)
        self.assertEqual(list(versions), [self.etcd.client_url])

    @defer.inlineCallbacks
    def test_request_after_expiry_gets_a_new_token(self):
        client = self.client()
        yield client.put(PREFIX + b"a", b"1")
        yield sleep(3)
        kvs, _ = yield client.range(PREFIX + b"a")
        self.assertEqual([kv.value for kv in kvs], [b"1"])
        self.assertEqual(client._auth.authentications, 2)

    @defer.inlineCallbacks
    def test_concurrent_callers_share_one_authentication(self):
        client = self.client()
        yield client.range(PREFIX)
        yield sleep(3)
        before = yield handled(self.etcd, "Authenticate")
        replies = yield defer.gatherResults([client.range(PREFIX) for _ in range(20)])
        after = yield handled(self.etcd, "Authenticate")
        self.assertEqual(len(replies), 20)
        self.assertEqual(after - before, 1)
        self.assertEqual(client._auth.authentications, 2)

    @defer.inlineCallbacks
    def test_watch_resumes_with_a_new_token(self):
        """
        A watch stream that breaks after its token died is refused when it
        opens again; it resumes with a new token from where it was, and
        loses or repeats nothing.
        """
        watch_log = logged(self, "idetcd.etcd.watch")
        client = self.client()
        watch, seen = yield self.watching(client)
        yield sleep(3)
        watch._stream.stop()
        yield self.client().put(PREFIX + b"b", b"2")
        yield wait_for(lambda: len(seen) == 2)
        yield sleep(0.5)
        self.assertEqual([event.kv.key for event in seen], [PREFIX + b"a", PREFIX + b"b"])
        self.assertFalse(watch.done.called)
        refused = [e for e in watch_log if "refused the watch's token" in e["log_format"]]
        self.assertEqual(len(refused), 1)

    @defer.inlineCallbacks
    def test_no_credentials(self):
        error = yield self.assertFailure(self.client(credentials=None).check(PREFIX), AuthenticationFailed)
        self.assertOneLine(
            error,
            f"etcd at {self.etcd.client_url} has authentication on and wants a user",
            "add 'credentials USER PASSWORD'",
        )

    @defer.inlineCallbacks
    def test_prefix_not_granted(self):
        error = yield self.assertFailure(self.client().check(b"/elsewhere/"), PermissionDenied)
        self.assertOneLine(
            error,
            f"etcd at {self.etcd.client_url} denies user 'node' the prefix '/elsewhere/'",
            "readwrite",
        )

    @defer.inlineCallbacks
    def test_prefix_granted_read_only(self):
        """
        A user who may read the prefix but not write it could never claim a
        name: the check says so, and writes nothing.
        """
        client = self.client()
        error = yield self.assertFailure(client.check(b"/read-only/"), PermissionDenied)
        self.assertOneLine(
            error,
            f"etcd at {self.etcd.client_url} lets user 'node' read but not write the prefix '/read-only/'",
            "readwrite",
        )
        _, revision = yield client.range(PREFIX)
        yield client.check(PREFIX)
        kvs, after = yield client.range(PREFIX, prefix_range_end(PREFIX))
        self.assertEqual((kvs, after), ([], revision))

    @defer.inlineCallbacks
    def test_no_client_certificate(self):
        client = self.client(tls=TlsSettings(ca=self.etcd.certs.ca))
        error = yield self.assertFailure(client.check(PREFIX), TlsFailed)
        self.assertOneLine(error, f"etcd at {self.etcd.client_url} refused the TLS handshake", "tls CERT KEY")

    @defer.inlineCallbacks
    def test_client_certificate_with_a_common_name(self):
        certs = self.etcd.certs
        client = self.client(tls=TlsSettings(certs.named_client_cert, certs.named_client_key, certs.ca))
        error = yield self.assertFailure(client.check(PREFIX), TlsFailed)
        self.assertOneLine(error, "refuses client certificates that have a Common Name", "without one")

    @defer.inlineCallbacks
    def test_tls_connections_use_tcp_keepalive(self):
        client = self.client()
        watch, seen = yield self.watching(client)
        sock = _socket(watch._stream.transport._producer)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 5)


class Etcd34SecureClientTests(SecureClientTests):
    """
    The same against etcd 3.4, which refuses a watch's dead token in other
    words than 3.5.
    """

    binary = "/usr/bin/etcd"
    if not os.access(binary, os.X_OK):
        skip = "Debian's etcd 3.4 is not installed at /usr/bin/etcd"


class _PlainHttp(protocol.Protocol):
    """
    A plain HTTP server's answer to a TLS hello, as Go's gives it.
    """

    def dataReceived(self, data):
        self.transport.write(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
        self.transport.loseConnection()


VERSION_35 = json_response({"etcdserver": "3.5.1", "etcdcluster": "3.5.0"})


class EndpointCheckTests(OneLineErrors, unittest.TestCase):
    """
    An endpoint that answers, but is no etcd idetcd can use, is named with
    the fix instead of giving a JSON decoding error.
    """

    def client(self, url, **kwargs):
        client = EtcdClient([url], reactor, timeout=2.0, **kwargs)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_old_etcd(self):
        url = serve(self, {b"/version": json_response({"etcdserver": "3.3.0", "etcdcluster": "3.3.0"})})
        error = yield self.assertFailure(self.client(url).check(PREFIX), EtcdTooOld)
        self.assertEqual(
            str(error),
            f"etcd at {url} is version 3.3.0; idetcd needs etcd 3.4 or later,"
            " whose JSON gateway answers on /v3: upgrade etcd",
        )

    @defer.inlineCallbacks
    def test_old_etcd_stops_a_node(self):
        url = serve(self, {b"/version": json_response({"etcdserver": "3.3.0", "etcdcluster": "3.3.0"})})
        node = start_node(self, url)
        error = yield self.assertFailure(node.when_claimed(), EtcdTooOld)
        self.assertOneLine(error, f"etcd at {url} is version 3.3.0")

    @defer.inlineCallbacks
    def test_web_server(self):
        url = serve(self, {})
        error = yield self.assertFailure(self.client(url).check(PREFIX), NotEtcdGateway)
        self.assertOneLine(
            error,
            f"{url}/version answered HTTP 404 (text/html",
            "not etcd's JSON: 'endpoint' must be etcd's client URL (usually port 2379)",
        )

    @defer.inlineCallbacks
    def test_request_to_web_server(self):
        """
        Any request, not only the start-up check, says what is wrong.
        """
        url = serve(self, {})
        error = yield self.assertFailure(self.client(url).range(PREFIX), NotEtcdGateway)
        self.assertOneLine(error, f"{url}/v3/kv/range answered HTTP 404 (text/html")

    @defer.inlineCallbacks
    def test_version_but_no_gateway(self):
        """
        etcd's peer port answers /version too, but has no gateway.
        """
        url = serve(self, {b"/version": VERSION_35})
        error = yield self.assertFailure(self.client(url).check(PREFIX), NotEtcdGateway)
        self.assertOneLine(error, f"{url}/v3/kv/range answered HTTP 404")

    @defer.inlineCallbacks
    def test_host_name_is_checked(self):
        """
        etcd's certificate must name the endpoint's host: its IP address
        here, or its name.
        """
        certs = make_certificates(os.path.abspath(self.mktemp()))
        tls = TlsSettings(ca=certs.ca)
        for interface, host in [("127.0.0.1", "localhost"), ("127.0.0.1", "127.0.0.1")]:
            url = serve(self, {b"/version": VERSION_35}, interface, certs).replace(interface, host)
            code, data = yield self.client(url, tls=tls).get_once(0, "/version")
            self.assertEqual((code, data["etcdserver"]), (200, "3.5.1"))
        url = serve(self, {b"/version": VERSION_35}, "127.0.0.2", certs)
        error = yield self.assertFailure(self.client(url, tls=tls).check(PREFIX), TlsFailed)
        self.assertOneLine(error, f"certificate verify failed for {url}: its certificate does not name this host")

    @defer.inlineCallbacks
    def test_https_to_plain_http(self):
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(_PlainHttp), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"https://127.0.0.1:{port.getHost().port}"
        error = yield self.assertFailure(self.client(url).check(PREFIX), TlsFailed)
        self.assertOneLine(error, f"TLS to {url} failed", "write http://")


class _Unreachable:
    """
    The part of EtcdClient the check uses, for an etcd that does not answer
    until C{up} is set.
    """

    endpoints = ("http://127.0.0.1:2379",)
    endpoint = endpoints[0]
    credentials = None

    def __init__(self):
        self.reactor = Clock()
        self.up = False

    def get_once(self, index, path):
        if not self.up:
            return defer.fail(ConnectionRefusedError())
        return defer.succeed(VERSION_35[:1] + (json.loads(VERSION_35[2]),))

    def range(self, key):
        return defer.succeed(([], 1))

    def call(self, path, body):  # the write probe: etcd allowed it
        return defer.succeed({"succeeded": False})


class UnreachableTests(unittest.TestCase):
    def test_waits_with_rate_limited_warnings(self):
        """
        While no endpoint answers the check keeps trying, warning at once
        and then once per 30 s at most; it passes once etcd answers.
        """
        events = logged(self, "idetcd.etcd.check")
        client = _Unreachable()
        d = check(client, PREFIX)
        for _ in range(600):
            client.reactor.advance(1)
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertNoResult(d)
        self.assertGreaterEqual(len(warnings), 15)
        self.assertLessEqual(len(warnings), 1 + 600 // 30)
        self.assertGreater(warnings[-1]["tries"], 100)
        self.assertIn("Connection was refused", warnings[0]["error"])
        client.up = True
        client.reactor.advance(5)
        self.assertEqual(self.successResultOf(d), {client.endpoint: "3.5.1"})


class TokenKeeperTests(unittest.TestCase):
    """
    One authentication at a time, shared by every caller that needs it.
    """

    def setUp(self):
        self.attempts = []
        self.keeper = TokenKeeper(self._authenticate)

    def _authenticate(self):
        d = defer.Deferred()
        self.attempts.append(d)
        return d

    def test_shared(self):
        waiters = [self.keeper.token() for _ in range(5)]
        self.assertEqual(len(self.attempts), 1)
        waiters[0].cancel()
        self.attempts[0].callback("t1")
        self.failureResultOf(waiters[0], defer.CancelledError)
        self.assertEqual([self.successResultOf(w) for w in waiters[1:]], ["t1"] * 4)
        self.assertEqual(self.successResultOf(self.keeper.token()), "t1")
        self.assertEqual((len(self.attempts), self.keeper.authentications), (1, 1))

    def test_forget(self):
        """
        A refused token is traded once, however many callers had it
        refused; a refusal of a token already replaced changes nothing.
        """
        self.keeper.token()
        self.attempts[0].callback("t1")
        self.keeper.forget("t1")
        waiters = [self.keeper.token() for _ in range(3)]
        self.keeper.forget("t1")
        self.assertEqual(len(self.attempts), 2)
        self.attempts[1].callback("t2")
        self.keeper.forget("t1")
        self.assertEqual([self.successResultOf(w) for w in waiters], ["t2"] * 3)
        self.assertEqual(self.successResultOf(self.keeper.token()), "t2")
        self.assertEqual(len(self.attempts), 2)

    def test_failure_reaches_every_waiter_and_is_not_kept(self):
        waiters = [self.keeper.token() for _ in range(2)]
        self.attempts[0].errback(EtcdUnavailable("no etcd endpoint answered"))
        for waiter in waiters:
            self.failureResultOf(waiter, EtcdUnavailable)
        self.keeper.token()
        self.assertEqual(len(self.attempts), 2)

    def test_password_stays_out_of_repr(self):
        self.assertNotIn("s3cret", repr(Credentials("node", "s3cret")))
