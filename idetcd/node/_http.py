"""
The operator's HTTP endpoints, with CoreDNS's conventions: ``GET /health``
answers 200 while the process runs; ``GET /ready`` answers 200 once the node
has read etcd and holds its name, else 503 with what it is waiting for;
``GET /ready/dns`` answers 200 once the node answers DNS from a read of
etcd, as CoreDNS's ``ready``, and stays 200 while it serves what it read;
``GET /metrics`` gives the node's Prometheus metrics.
"""

import json

import attr
from prometheus_client.exposition import generate_latest
from twisted.application.service import Service
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server

from idetcd.etcd import NoSpace

log = Logger()

#: What generate_latest() writes for idetcd's metric names: Prometheus's
#: classic text format, which every Prometheus reads (CoreDNS serves it).
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


def readiness(node):
    """
    What C{/ready} reports for C{node} (an L{idetcd.node._service.IdetcdService}):
    its name, slot and lease (hex, as etcd's tools print it) when ready,
    else the reasons it is not.
    """
    waiting = []
    if not node.registry.ready:
        waiting.append("registry: first read from etcd")
    name = node.held_name
    if name is None:
        waiting.append("name: claiming")
        if node.claimer.nospace:
            waiting.append(f"etcd is out of space (NOSPACE alarm): an operator must {NoSpace.FIX}")
    if waiting:
        return {"ready": False, "waiting": waiting}
    claimer = node.claimer
    return {"ready": True, "name": name, "slot": claimer.slot, "lease": f"{claimer.lease:x}"}


def dns_readiness(node):
    """
    What C{/ready/dns} reports for C{node}: whether it answers DNS from a
    read of etcd, with how many members and at which revision.  A node cut
    off from etcd, or one whose etcd lost its quorum, answers from what it
    read and stays ready, as CoreDNS's etcd-backed servers do: a load
    balancer keeps sending it queries.
    """
    registry = node.registry
    if not registry.ready:
        return {"ready": False, "waiting": ["registry: first read from etcd"]}
    return {"ready": True, "members": len(registry.members), "revision": registry.revision}


class _Page(resource.Resource):
    """
    One path answering GET (and HEAD) with a body and status made on demand;
    paths below it are not found.
    """

    def __init__(self, content_type, render):
        super().__init__()
        self._content_type = content_type
        self._render = render

    def render_GET(self, request):
        code, body = self._render()
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", self._content_type)
        request.setHeader(b"Cache-Control", b"no-store")
        return body


def _root(path, page):
    root = resource.Resource()
    root.putChild(path, page)
    return root


def health_site():
    """
    C{/health}: 200 C{OK} whenever the process can answer at all.
    """
    return _root(b"health", _Page(b"text/plain; charset=utf-8", lambda: (200, b"OK")))


def _readiness_page(report):
    """
    A page answering 200 or 503, as C{report()} says, with it as JSON.
    """

    def render():
        state = report()
        return (200 if state["ready"] else 503), json.dumps(state).encode("utf-8") + b"\n"

    return _Page(b"application/json", render)


def ready_site(node):
    """
    C{/ready} (L{readiness} of C{node}) and C{/ready/dns} (its
    L{dns_readiness}): 200 or 503, with JSON.
    """
    page = _readiness_page(lambda: readiness(node))
    page.putChild(b"dns", _readiness_page(lambda: dns_readiness(node)))
    return _root(b"ready", page)


def metrics_site(registry):
    """
    C{/metrics}: what the collectors of C{registry} (a prometheus_client
    CollectorRegistry) report, in Prometheus's text format, made in the
    reactor's thread (they read the node's state) when asked for.
    """
    return _root(b"metrics", _Page(PROMETHEUS_TEXT, lambda: (200, generate_latest(registry))))


class _QuietSite(server.Site):
    """
    A site that does not log each request: probes every few seconds would
    fill the node's log.
    """

    noisy = False

    def log(self, request):
        pass


@attr.s(eq=False)
class HttpEndpoint(Service):
    """
    Serves C{root} (a resource) at C{address} (an
    L{idetcd.node.HttpAddress}) while running.  C{port} is the port
    bound, for an address with port 0.  Stopping closes the port and drops
    open connections.
    """

    name = attr.ib()
    address = attr.ib()
    root = attr.ib()
    reactor = attr.ib()
    port = attr.ib(default=None, init=False)
    _listening = attr.ib(default=None, init=False)
    _connections = attr.ib(default=None, init=False)

    def privilegedStartService(self):
        if self._listening is not None:
            return
        # WrappingFactory keeps the open connections, to drop them on stop.
        self._connections = WrappingFactory(_QuietSite(self.root))
        self._connections.noisy = False
        self._listening = self.reactor.listenTCP(
            self.address.port, self._connections, interface=self.address.interface
        )
        self.port = self._listening.getHost().port
        log.info(
            "{endpoint} endpoint on http://{address}/{endpoint}",
            endpoint=self.name,
            address=str(attr.evolve(self.address, host=self.address.interface, port=self.port)),
        )

    def startService(self):
        self.privilegedStartService()
        Service.startService(self)

    def stopService(self):
        Service.stopService(self)
        listening, self._listening = self._listening, None
        if listening is None:
            return None  # it never listened: its port was taken
        for connection in list(self._connections.protocols):
            connection.transport.abortConnection()
        return listening.stopListening()
