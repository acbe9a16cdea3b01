"""
Tests for L{tests.faultproxy}, against a real echo server on loopback.
"""

from twisted.internet import defer, protocol, reactor
from twisted.protocols.wire import Echo
from twisted.trial import unittest

from tests.faultproxy import FaultProxy
from tests.waiting import sleep, wait_for


class _Client(protocol.Protocol):
    def __init__(self):
        self.received = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(None)


class FaultProxyTests(unittest.TestCase):
    def setUp(self):
        factory = protocol.Factory.forProtocol(Echo)
        echo = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        self.proxy = FaultProxy(echo.getHost().port)
        self.proxy.start()
        self.addCleanup(self.proxy.close)

    @defer.inlineCallbacks
    def connect(self):
        client = yield protocol.ClientCreator(reactor, _Client).connectTCP("127.0.0.1", self.proxy.port)
        self.addCleanup(lambda: client.lost if client.transport.abortConnection() is None else None)
        return client

    @defer.inlineCallbacks
    def test_pass(self):
        client = yield self.connect()
        client.transport.write(b"hello")
        yield wait_for(lambda: client.received == b"hello")

    @defer.inlineCallbacks
    def test_delay_both_ways_in_order(self):
        client = yield self.connect()
        self.proxy.delay(0.2)
        sent = reactor.seconds()
        client.transport.write(b"one ")
        yield wait_for(lambda: client.received == b"one ")
        # Delayed on its way there and on its way back.
        self.assertGreaterEqual(reactor.seconds() - sent, 0.4)
        client.transport.write(b"two ")
        yield sleep(0.1)
        # Restored while "two" is on its way: "three" waits behind it.
        self.proxy.restore()
        client.transport.write(b"three")
        yield wait_for(lambda: client.received == b"one two three")

    @defer.inlineCallbacks
    def test_blackhole_holds_until_restored(self):
        client = yield self.connect()
        self.proxy.blackhole()
        client.transport.write(b"held")
        yield sleep(0.3)
        self.assertEqual(client.received, b"")
        self.assertFalse(client.lost.called)
        late = yield self.connect()
        late.transport.write(b"late")
        yield sleep(0.1)
        self.assertEqual(late.received, b"")
        self.proxy.restore()
        yield wait_for(lambda: (client.received, late.received) == (b"held", b"late"))

    @defer.inlineCallbacks
    def test_cut_and_restore(self):
        client = yield self.connect()
        self.proxy.cut()
        yield client.lost
        refused = yield self.connect()
        yield refused.lost
        self.proxy.restore()
        again = yield self.connect()
        again.transport.write(b"back")
        yield wait_for(lambda: again.received == b"back")

    @defer.inlineCallbacks
    def test_reset_keeps_the_mode(self):
        self.proxy.delay(0.2)
        client = yield self.connect()
        client.transport.write(b"lost")
        self.proxy.reset()
        yield client.lost
        self.assertEqual(self.proxy.mode, ("delay", 0.2))
        again = yield self.connect()
        again.transport.write(b"x")
        yield wait_for(lambda: again.received == b"x")
