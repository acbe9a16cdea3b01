"""
HTTP connections that live in memory: the client's real HTTP/1.1 stack on
one side, a twisted.web L{Site} on the other, bytes handed across at once
(no reactor turn), so a test on a L{twisted.internet.task.Clock} sees each
request answered by the time the call returns, and a watch's results as
soon as the server writes them.
"""

import collections
import contextlib

import treq
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint, ITransport
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from twisted.web.server import Site
from zope.interface import implementer


@implementer(IBodyProducer)
class _Body:
    """
    A request body written whole at once (treq's default producer writes
    from the global reactor's cooperator, which a clock never turns).
    """

    def __init__(self, data):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return defer.succeed(None)

    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


@implementer(ITransport, IConsumer)
class _End:
    """
    One end of an in-memory connection.
    """

    disconnecting = False

    def __init__(self, wire, protocol, host, peer):
        self._wire = wire
        self.protocol = protocol
        self._host = host
        self._peer = peer
        self.other = None
        self.producer = None

    def write(self, data):
        if not self.disconnecting and data:
            self._wire.send(self.other, data)

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseConnection(self):
        if not self.disconnecting:
            self.disconnecting = True
            self._wire.send(self, None)

    abortConnection = loseConnection
    stopProducing = loseConnection

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def registerProducer(self, producer, streaming):
        self.producer = producer
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    def getPeer(self):
        return self._peer

    def held(self):
        """
        A block whose writes (and close) reach the other end only once it
        is over, as one write does on a real connection: a test writing
        to a server's request from outside a delivery must not have the
        client answer (and close) in the middle of it.
        """
        return self._wire.held()

    def getHost(self):
        return self._host


class _Wire:
    """
    Hands bytes and closes to protocols in the order they were sent, one at
    a time: what a protocol sends while it is being handed something, or
    while a request is being issued (L{held}), waits for its turn, as on a
    real connection.
    """

    def __init__(self):
        self._queue = collections.deque()
        self._delivering = False
        self._held = 0

    @contextlib.contextmanager
    def held(self):
        """
        Deliver nothing until the block is over: the HTTP client reads
        replies only once it has finished issuing its request.
        """
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            self._deliver()

    def send(self, end, data):
        self._queue.append((end, data))
        self._deliver()

    def _deliver(self):
        if self._delivering or self._held:
            return
        self._delivering = True
        try:
            while self._queue:
                end, data = self._queue.popleft()
                if data is None:
                    self._close(end)
                elif end.protocol is not None:
                    end.protocol.dataReceived(data)
        finally:
            self._delivering = False

    @staticmethod
    def _close(end):
        for side in (end, end.other):
            side.disconnecting = True
            protocol, side.protocol = side.protocol, None
            if protocol is not None:
                protocol.connectionLost(Failure(ConnectionDone()))


@implementer(IStreamClientEndpoint)
class _Endpoint:
    def __init__(self, site, wire, port):
        self._site = site
        self._wire = wire
        self._port = port

    def connect(self, factory):
        server_address = IPv4Address("TCP", "127.0.0.1", self._port)
        client_address = IPv4Address("TCP", "127.0.0.1", 40000)
        client = factory.buildProtocol(server_address)
        server = self._site.buildProtocol(client_address)
        client_end = _End(self._wire, client, client_address, server_address)
        server_end = _End(self._wire, server, server_address, client_address)
        client_end.other, server_end.other = server_end, client_end
        server.makeConnection(server_end)
        client.makeConnection(client_end)
        return defer.succeed(client)


@implementer(IAgent)
class _Agent:
    """
    An agent that issues each request whole before the server sees it.
    """

    def __init__(self, agent, wire):
        self._agent = agent
        self._wire = wire

    def request(self, method, uri, headers=None, bodyProducer=None):
        with self._wire.held():
            return self._agent.request(method, uri, headers, bodyProducer)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, site, wire):
        self._site = site
        self._wire = wire

    def endpointForURI(self, uri):
        return _Endpoint(self._site, self._wire, uri.port)


def memory_http_client(resource):
    """
    A treq client whose every request, whatever its URL, goes to
    C{resource} in memory, and its connection pool.
    """
    reactor = MemoryReactorClock()
    site = Site(resource, reactor=reactor)
    site.timeOut = None  # a watch may stay quiet for as long as a test wants
    pool = HTTPConnectionPool(reactor, persistent=False)
    wire = _Wire()
    agent = Agent.usingEndpointFactory(reactor, _Endpoints(site, wire), pool=pool)
    return pool, treq.client.HTTPClient(_Agent(agent, wire), data_to_body_producer=_Body)
