"""
A loopback TCP proxy to one port whose faults a test switches at any time:
pass, delay every chunk (both directions, order kept), blackhole (hold
everything, keep connections open), cut (drop connections, refuse new ones),
and restore.  Like L{tests.proxy.CuttableProxy}, one per client, so one
node's path to etcd can fail while every other path works.
"""

import collections

from twisted.internet import protocol, reactor

from tests.proxy import LoopbackProxy

#: Modes; a delay is C{("delay", seconds)}.
PASS = ("pass", 0.0)
BLACKHOLE = ("blackhole", 0.0)
CUT = ("cut", 0.0)

_CLOSE = object()  # queued after the data of a side that closed


class _Pipe:
    """
    One direction of one connection: chunks wait in order until they are
    due, then go to C{destination} (a transport, or C{None} until the
    upstream connection is made).
    """

    def __init__(self, proxy):
        self.proxy = proxy
        self.destination = None
        self.queue = collections.deque()  # [due time or None (held), chunk]
        self.timer = None

    def send(self, chunk):
        kind, delay = self.proxy.mode
        now = reactor.seconds()
        self.queue.append([None if kind == "blackhole" else now + delay, chunk])
        self.pump()

    def release(self):
        """
        Make every held chunk due now (the blackhole is over).
        """
        now = reactor.seconds()
        for item in self.queue:
            if item[0] is None:
                item[0] = now
        self.pump()

    def pump(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.proxy.mode == BLACKHOLE or self.destination is None:
            return
        now = reactor.seconds()
        while self.queue and self.queue[0][0] is not None and self.queue[0][0] <= now:
            _, chunk = self.queue.popleft()
            if chunk is _CLOSE:
                self.destination.loseConnection()
            else:
                self.destination.write(chunk)
        if self.queue and self.queue[0][0] is not None:
            self.timer = reactor.callLater(self.queue[0][0] - now, self.pump)

    def drop(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.queue.clear()


class _Link:
    """
    One proxied connection: the client's side, etcd's side and a pipe each
    way.
    """

    def __init__(self, proxy):
        self.proxy = proxy
        self.upward = _Pipe(proxy)  # client -> target
        self.downward = _Pipe(proxy)  # target -> client
        self.client = None
        self.upstream = None

    def pipes(self):
        return (self.upward, self.downward)

    def abort(self):
        for pipe in self.pipes():
            pipe.drop()
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()


class _Side(protocol.Protocol):
    def __init__(self, link, outgoing, incoming):
        self.link = link
        self.outgoing = outgoing  # the pipe this side's data goes into
        self.incoming = incoming  # the pipe that writes to this side

    def connectionMade(self):
        self.incoming.destination = self.transport
        self.incoming.pump()

    def dataReceived(self, data):
        self.outgoing.send(data)

    def connectionLost(self, reason):
        self.incoming.destination = None
        self.incoming.drop()
        self.outgoing.send(_CLOSE)
        self.link.proxy.links.discard(self.link)


class _Upstream(protocol.ClientFactory):
    def __init__(self, link):
        self.link = link

    def buildProtocol(self, addr):
        link = self.link
        link.upstream = _Side(link, link.downward, link.upward)
        return link.upstream

    def clientConnectionFailed(self, connector, reason):
        self.link.abort()


class _Refused(protocol.Protocol):
    def connectionMade(self):
        self.transport.abortConnection()


class _Listener(protocol.Factory):
    def __init__(self, proxy):
        self.proxy = proxy

    def buildProtocol(self, addr):
        proxy = self.proxy
        if proxy.mode == CUT:
            return _Refused()
        link = _Link(proxy)
        link.client = _Side(link, link.upward, link.downward)
        proxy.links.add(link)
        reactor.connectTCP("127.0.0.1", proxy.target_port, _Upstream(link), timeout=5)
        return link.client


class FaultProxy(LoopbackProxy):
    """
    Forwards 127.0.0.1:C{port} to 127.0.0.1:C{target_port}, with the fault
    of C{mode}.  In C{CUT} mode a new connection is accepted and aborted at
    once, so the listening port is never given up.
    """

    def __init__(self, target_port):
        super().__init__(target_port)
        self.mode = PASS
        self.links = set()

    def start(self):
        self.listen(_Listener(self))

    def restore(self):
        """
        Pass everything again; held chunks go on, in order.
        """
        self.mode = PASS
        for link in list(self.links):
            for pipe in link.pipes():
                pipe.release()

    def delay(self, seconds):
        """
        Delay every chunk from now on by C{seconds}, each way.
        """
        self.restore()
        self.mode = ("delay", float(seconds))

    def blackhole(self):
        """
        Hold every chunk, forward nothing, keep connections open.
        """
        self.mode = BLACKHOLE

    def cut(self):
        """
        Abort every connection and every new one.
        """
        self.mode = CUT
        self.reset()

    def reset(self):
        """
        Abort the open connections and drop what they hold, as when the
        client's host dies; the mode stays.
        """
        for link in list(self.links):
            link.abort()
        self.links.clear()

    def close(self):
        self.reset()
        return self._listening.stopListening()
