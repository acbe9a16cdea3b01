"""
A node's HTTP endpoints in tests: nodes embedded in-process with the
endpoints a test gives, reaching a real etcd through a fault proxy
(L{NodeHttpTestCase}, on C{COREFILE}), and an HTTP client that leaves
nothing open between requests (L{HttpGetter}); a metrics page read into
its samples.
"""

import os

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.web.client import HTTPConnectionPool

from idetcd import IdetcdService
from tests.etcdserver import EtcdTestCase
from tests.faultproxy import FaultProxy

COREFILE = """\
.:0 {{
    bind 127.0.0.1
    {http}
    idetcd {{
        endpoint {endpoint}
        limit 3
        pattern worker{{{{.ID}}}}.tf.local.
        lease 3
        address 127.0.0.1
    }}
}}
"""


class HttpGetter:
    """
    GETs on a pool of its own, one connection per request, so nothing is
    left open between requests (a stopped server simply does not answer).
    """

    def __init__(self, timeout):
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    @defer.inlineCallbacks
    def get(self, url, method="GET"):
        """
        Fires with (status, body bytes).
        """
        response = yield treq.request(method, url, pool=self.pool, timeout=self.timeout)
        body = yield treq.content(response)
        return response.code, body

    def close(self):
        return self.pool.closeCachedConnections()


class NodeHttpTestCase(EtcdTestCase):
    """
    Nodes of C{COREFILE} with the endpoints a test gives, reaching a real
    etcd through a fault proxy, and an HTTP client.
    """

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        yield EtcdTestCase.setUp(self)
        self.http = HttpGetter(timeout=5)
        self.addCleanup(self.http.close)
        self.proxy = FaultProxy(int(self.etcd.client_url.rsplit(":", 1)[1]))
        self.proxy.start()
        self.addCleanup(self.proxy.close)

    def node(self, http):
        text = COREFILE.format(http=http, endpoint=self.proxy.url)
        node = IdetcdService.from_corefile(reactor, text=text, state_dir=os.path.abspath(self.mktemp()))
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        return node

    def url(self, node, endpoint, path=None):
        """
        The URL of C{path} (default: the endpoint's own) on C{node}'s endpoint.
        """
        port = node.getServiceNamed(endpoint).port
        return f"http://127.0.0.1:{port}/{endpoint if path is None else path}"


def samples(text):
    """
    Every sample of a metrics page: {(name, sorted label pairs): value}.
    """
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(page, metric, /, **labels):
    """
    One sample of C{page} (from L{samples}); 0 when absent.
    """
    return page.get((metric, tuple(sorted(labels.items()))), 0)
