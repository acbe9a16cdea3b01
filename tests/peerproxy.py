"""
Loopback proxies in front of etcd members' peer listeners, so that a test can
cut one member off from its peers while it still reaches every member's
client port.

Each member listens for peers on its own port and advertises its proxy's URL
instead, so every peer connection to it goes through its proxy.  etcd's raft
traffic (stream GETs, pipeline and snapshot POSTs) names its sender in the
C{X-Server-From} header (the member ID in hex); a proxy reads the head of
every request on a connection to learn whom the connection comes from.

Isolating member X drops every connection to X's proxy and every connection
from X at the others', and refuses them until healed.  Requests that name no
sender (version checks, health probes, lease forwarding) carry no raft
message, so they cannot give X a leader; they pass.
"""

from twisted.internet import defer, reactor
from twisted.protocols import portforward


class RequestHeads:
    """
    Follows the requests in the client side of an HTTP/1.1 connection, to
    read the head of each: bodies are skipped by C{Content-Length} or by
    chunk sizes.
    """

    max_head = 64 * 1024

    def __init__(self):
        self._buffer = b""
        self._in_chunks = False
        self._in_trailer = False
        self._skip = 0

    def feed(self, data):
        """
        The heads completed by C{data}, each a dict of lower-case header
        names to values.
        """
        heads = []
        data = self._buffer + data
        while data:
            if self._skip:
                skipped = min(self._skip, len(data))
                self._skip -= skipped
                data = data[skipped:]
            elif self._in_chunks:
                end = data.find(b"\r\n")
                if end < 0:
                    break
                line, data = data[:end], data[end + 2 :]
                if self._in_trailer:
                    self._in_chunks = self._in_trailer = bool(line)
                else:
                    size = int(line.split(b";")[0], 16)
                    self._in_trailer = size == 0
                    self._skip = size + 2 if size else 0  # the data and its CRLF
            else:
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    break
                head, data = data[:end], data[end + 4 :]
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                heads.append(headers)
                self._in_chunks = "chunked" in headers.get("transfer-encoding", "").lower()
                self._skip = 0 if self._in_chunks else int(headers.get("content-length", 0))
        if len(data) > self.max_head:
            raise ValueError("request head too long")
        self._buffer = data
        return heads


class _ToMember(portforward.ProxyClient):
    def connectionMade(self):
        if self.peer.lost:
            self.transport.abortConnection()  # the peer went while we connected
            return
        portforward.ProxyClient.connectionMade(self)


class _ToMemberFactory(portforward.ProxyClientFactory):
    protocol = _ToMember
    noisy = False


class _FromPeer(portforward.ProxyServer):
    clientProtocolFactory = _ToMemberFactory
    sender = None
    lost = False

    def connectionMade(self):
        self.proxy = self.factory.proxy
        self.heads = RequestHeads()
        self.proxy.connections.add(self)
        if self.proxy.network.refuses(self.proxy.name, None):
            self.abort()
            return
        portforward.ProxyServer.connectionMade(self)

    def dataReceived(self, data):
        if self.lost:
            return
        try:
            heads = self.heads.feed(data)
        except ValueError:
            self.abort()
            return
        for head in heads:
            self.sender = head.get("x-server-from") or self.sender
        if self.proxy.network.refuses(self.proxy.name, self.sender):
            self.abort()
            return
        portforward.ProxyServer.dataReceived(self, data)

    def abort(self):
        self.lost = True
        self.transport.abortConnection()
        if self.peer is not None:
            self.peer.transport.abortConnection()

    def connectionLost(self, reason):
        self.lost = True
        self.proxy.connections.discard(self)
        portforward.ProxyServer.connectionLost(self, reason)


class PeerProxy:
    """
    The proxy in front of member C{name}'s peer listener on C{target_port}.
    """

    def __init__(self, network, name, target_port):
        self.network = network
        self.name = name
        self.connections = set()
        factory = portforward.ProxyFactory("127.0.0.1", target_port)
        factory.protocol = _FromPeer
        factory.noisy = False
        factory.proxy = self
        self._port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    @property
    def url(self):
        return f"http://127.0.0.1:{self._port.getHost().port}"

    def enforce(self):
        """
        Drop the connections the network now refuses.
        """
        for connection in list(self.connections):
            if self.network.refuses(self.name, connection.sender):
                connection.abort()

    def close(self):
        for connection in list(self.connections):
            connection.abort()
        return self._port.stopListening()


class PeerNetwork:
    """
    The peer proxies of one cluster, by member name.
    """

    def __init__(self):
        self.proxies = {}
        self._senders = {}  # member name -> its ID as X-Server-From spells it
        self._isolated = set()

    def add(self, name, target_port):
        """
        Put a proxy in front of C{name}'s peer listener; returns the
        L{PeerProxy}, whose C{url} the member must advertise.
        """
        proxy = self.proxies[name] = PeerProxy(self, name, target_port)
        return proxy

    def identify(self, name, member_id):
        """
        Tell the network member C{name}'s ID (an L{int}), by which it knows
        that member's requests.
        """
        self._senders[name] = format(member_id, "x")

    def refuses(self, proxy_name, sender):
        """
        Whether the proxy of C{proxy_name} must drop a connection from
        C{sender} (an ID in hex, or C{None} while unknown).
        """
        if proxy_name in self._isolated:
            return True
        return sender is not None and sender in {self._senders[name] for name in self._isolated}

    def isolate(self, name):
        """
        Cut C{name} off from every other member, until L{heal}.
        """
        if name not in self._senders:
            raise KeyError(f"member {name} was not identified")
        self._isolated.add(name)
        for proxy in self.proxies.values():
            proxy.enforce()

    def heal(self):
        self._isolated.clear()

    def close(self):
        self.heal()
        return defer.gatherResults([defer.maybeDeferred(proxy.close) for proxy in self.proxies.values()])
