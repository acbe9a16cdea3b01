"""
An etcd endpoint written with the wrong scheme: C{http://} pointed at a
real etcd's TLS port, C{https://} at a plain one.  The start-up check says
so in one line, at once, and a node exits with status 78 instead of
retrying for ever.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from idetcd.common import EXIT_CONFIG
from idetcd.etcd import EtcdClient, SchemeMismatch, TlsSettings
from tests.etcdserver import start_etcd, start_secure_etcd
from tests.logevents import logged
from tests.nodes import COREFILE, spawn_node


def _swap(url, scheme):
    return scheme + url[url.index("://") :]


class SchemeCheckTests(unittest.TestCase):
    """
    The check of an L{EtcdClient}, against real etcd servers.
    """

    timeout = 300

    def client(self, url, **kwargs):
        client = EtcdClient([url], reactor, **kwargs)
        client.open()
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_http_to_a_tls_port(self):
        etcd = yield start_secure_etcd(self)
        url = _swap(etcd.client_url, "http")
        events = logged(self, "idetcd.etcd.check")
        error = yield self.assertFailure(self.client(url).check(b"/idetcd/"), SchemeMismatch)
        self.assertEqual(
            str(error),
            f"endpoint {url} is a TLS port: write it as https://{url[len('http://'):]}"
            " (with 'tls' for etcd's CA and a client certificate, if it wants one)",
        )
        # On the first try: no warning that it tries again.
        self.assertEqual([e["log_format"] for e in events if e["log_level"].name == "warn"], [])

    @defer.inlineCallbacks
    def test_https_to_a_plain_port(self):
        etcd = yield start_etcd(self)
        url = _swap(etcd.client_url, "https")
        error = yield self.assertFailure(
            self.client(url, tls=TlsSettings()).check(b"/idetcd/"), SchemeMismatch
        )
        self.assertIn(f"endpoint {url} answers plain HTTP, not TLS: write it as http://", str(error))

    @defer.inlineCallbacks
    def test_right_schemes_pass(self):
        plain = yield start_etcd(self)
        secure = yield start_secure_etcd(self)
        yield self.client(plain.client_url).check(b"/idetcd/")
        yield self.client(secure.client_url, tls=secure.tls).check(b"/idetcd/")


class NodeTests(unittest.TestCase):
    """
    Real nodes on a Corefile whose endpoint has the wrong scheme.
    """

    timeout = 300

    @defer.inlineCallbacks
    def fails(self, url, words):
        corefile = os.path.abspath(self.mktemp())
        with open(corefile, "w") as f:
            f.write(COREFILE)
        node = spawn_node(corefile, os.path.abspath(self.mktemp()), {"NODE_PORT": "0", "ETCD_URL": url})
        self.addCleanup(lambda: None if node.ended.called else node.process.signalProcess("KILL"))
        yield node.ended
        output = node.output.decode("utf-8", "replace")
        self.assertEqual(node.status, EXIT_CONFIG, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "cannot start: " in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn(f"cannot start: endpoint {url} {words}", lines[0])
        # Within the start-up check's first try, not after retries.
        self.assertNotIn("trying again", output)

    @defer.inlineCallbacks
    def test_http_to_a_tls_port(self):
        etcd = yield start_secure_etcd(self)
        yield self.fails(_swap(etcd.client_url, "http"), "is a TLS port: write it as https://")

    @defer.inlineCallbacks
    def test_https_to_a_plain_port(self):
        etcd = yield start_etcd(self)
        yield self.fails(_swap(etcd.client_url, "https"), "answers plain HTTP, not TLS: write it as http://")
