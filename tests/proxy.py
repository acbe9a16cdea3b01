"""
A loopback TCP proxy that a test can cut and restore, to put a network
partition between one client and etcd while the test still reaches etcd.
"""

from twisted.internet import defer, reactor
from twisted.protocols import portforward


class _Server(portforward.ProxyServer):
    def connectionMade(self):
        self.factory.cuttable.connections.add(self)
        portforward.ProxyServer.connectionMade(self)

    def connectionLost(self, reason):
        self.factory.cuttable.connections.discard(self)
        portforward.ProxyServer.connectionLost(self, reason)


class LoopbackProxy:
    """
    A proxy on a loopback port of its own (C{port}, kept across restarts)
    to 127.0.0.1:C{target_port}.
    """

    def __init__(self, target_port):
        self.target_port = target_port
        self.port = None
        self._listening = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def listen(self, factory):
        self._listening = reactor.listenTCP(self.port or 0, factory, interface="127.0.0.1")
        self.port = self._listening.getHost().port


class CuttableProxy(LoopbackProxy):
    def __init__(self, target_port):
        super().__init__(target_port)
        self.connections = set()

    def start(self):
        factory = portforward.ProxyFactory("127.0.0.1", self.target_port)
        factory.protocol = _Server
        factory.cuttable = self
        self.listen(factory)

    def cut(self):
        """
        Refuse new connections and drop the open ones.
        """
        for connection in list(self.connections):
            connection.transport.abortConnection()
            if connection.peer is not None:
                connection.peer.transport.abortConnection()
        return defer.maybeDeferred(self._listening.stopListening)

    @defer.inlineCallbacks
    def close(self):
        yield self.cut()
        # Let the aborted connections finish closing.
        d = defer.Deferred()
        reactor.callLater(0.05, d.callback, None)
        yield d
