"""
The DNS front end: one zone served over UDP and TCP.

Replies to the questions the zone has data for are prepared as bytes each
time the registry changes, so a UDP query for a known name costs a few
slices and one dict lookup.  Everything else is read strictly, answered
through L{idetcd.authority.ZoneAuthority.respond} and kept in bounded caches
until the next change.
"""

from __future__ import annotations

import collections
import struct

import attr
from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.names import dns
from twisted.protocols import policies

from idetcd import wire

log = Logger()

# Query flag words whose replies are prepared: RD set (stub resolvers,
# dnsperf, dnspython) or nothing set.  Other flags take the slow path once,
# then hit the cache.
PREPARED_FLAGS = (wire.RD, 0)
CACHE_SIZE = 10000
# Queries bigger than this (real ones are under 100 bytes) are answered but
# not cached, so a full cache stays a few megabytes even under attack.
CACHEABLE_QUERY = 512
LOG_INTERVAL = 60.0
PORT_ATTEMPTS = 20
# Twisted's default of 50 pending connections overflows in a burst of new
# clients, whose SYNs are then retried only after a second or more.
TCP_BACKLOG = 511

_FLAGS = struct.Struct("!H")
_BADVERS = wire.Encoded(dns.EBADVERSION, auth=False)


@attr.s(eq=False)
class RateLimitedLog:
    """
    Logs at most one event of each kind per C{interval} seconds, so hostile
    traffic cannot flood the log; each event says how many were left out.
    """

    clock = attr.ib()
    interval = attr.ib(default=LOG_INTERVAL)
    _last = attr.ib(init=False, factory=dict)

    def __call__(self, kind, format, **fields):
        now = self.clock.seconds()
        last, skipped = self._last.get(kind, (None, 0))
        if last is not None and now - last < self.interval:
            self._last[kind] = (last, skipped + 1)
            return
        self._last[kind] = (now, 0)
        log.info(format + " ({skipped} more not logged)", kind=kind, skipped=skipped, **fields)


@attr.s(eq=False)
class _Cache:
    """
    A dict of prepared entries plus at most C{size} cached ones; the oldest
    cached entry makes room for a new one.
    """

    size = attr.ib()
    table = attr.ib(init=False, factory=dict)
    _order = attr.ib(init=False, factory=collections.deque)

    def reset(self, prepared):
        self.table.clear()
        self.table.update(prepared)
        self._order.clear()

    def put(self, key, value):
        if key in self.table:
            return
        if len(self._order) >= self.size:
            del self.table[self._order.popleft()]
        self.table[key] = value
        self._order.append(key)


class _Unanswered(Exception):
    """
    The message gets C{reply} (bytes, or L{None} for no reply at all) and
    no lookup.
    """

    def __init__(self, reply):
        Exception.__init__(self, reply)
        self.reply = reply


def _udp_limit(edns):
    if edns is None:
        return wire.MIN_PAYLOAD
    return min(max(edns.payload, wire.MIN_PAYLOAD), wire.PAYLOAD)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Prepared:
    response: object
    encoded: wire.Encoded
    fast: tuple


def _prepare(labels, type, response):
    """
    The encoded response to (C{labels}, C{type}, IN) and its entries for the
    fast table, one per flag word in L{PREPARED_FLAGS}.
    """
    question = wire.name(labels) + wire.TYPE_CLASS.pack(type, dns.IN)
    encoded = wire.encode(labels, question, response)
    fast = []
    for flags in PREPARED_FLAGS:
        head, tail = wire.template(encoded, flags, len(question), wire.MIN_PAYLOAD, None)
        key = wire.HEAD.pack(flags, 1, 0, 0, 0) + question
        fast.append((key, (head, wire.HEADER.size + len(question), tail)))
    return _Prepared(response, encoded, tuple(fast))


@attr.s(eq=False)
class _Replies:
    """
    Wire replies for one zone.

    C{fast.table} maps the fast key of a UDP query (see L{_UDP}) to (head,
    question end, tail): prepared for every question with data, filled from
    the slow path for the rest.
    """

    authority = attr.ib()
    report = attr.ib()
    fast = attr.ib(init=False, factory=lambda: _Cache(CACHE_SIZE))
    _encoded = attr.ib(init=False, factory=lambda: _Cache(CACHE_SIZE))
    _prepared = attr.ib(init=False, factory=dict)

    def rebuild(self):
        """
        Prepare every positive reply again; called by the registry on each
        change, so answers follow membership at once.  Replies whose response
        did not change are kept, which makes a change cost little more than
        the names it touched.
        """
        prepared = {}
        fast = {}
        for labels, type, response in self.authority.positive():
            entry = self._prepared.get((labels, type))
            if entry is None or entry.response != response:
                entry = _prepare(labels, type, response)
            prepared[labels, type] = entry
            fast.update(entry.fast)
        self._prepared = prepared
        self._encoded.reset(
            {(labels, type, dns.IN): entry.encoded for (labels, type), entry in prepared.items()}
        )
        self.fast.reset(fast)

    def udp(self, data, key, peer):
        """
        The reply to a datagram the fast table missed; a reply to a query
        goes into that table under C{key}.
        """
        try:
            query = self._read(data, peer)
        except _Unanswered as e:
            return e.reply
        head, tail = self._template(query, _udp_limit(query.edns))
        if len(data) <= CACHEABLE_QUERY:
            self.fast.put(key, (head, wire.HEADER.size + len(query.question), tail))
        return data[:2] + head + query.question + tail

    def tcp(self, data, peer):
        """
        The reply to one message from a TCP stream, or L{None}.
        """
        try:
            query = self._read(data, peer)
        except _Unanswered as e:
            return e.reply
        head, tail = self._template(query, wire.MAX_MESSAGE)
        return data[:2] + head + query.question + tail

    def _read(self, data, peer):
        if len(data) < wire.HEADER.size:
            self.report(
                "short", "dropped {size} bytes from {peer}: no header", size=len(data), peer=peer
            )
            raise _Unanswered(None)
        (flags,) = _FLAGS.unpack_from(data, 2)
        if flags & wire.QR:
            self.report("response", "dropped a response from {peer}", peer=peer)
            raise _Unanswered(None)
        try:
            query = wire.read_query(data)
        except wire.FormatError as e:
            if flags & wire.OPCODE:
                raise _Unanswered(self._not_implemented(data, flags, peer, e.edns))
            self.report("malformed", "malformed query from {peer}: {why}", why=str(e), peer=peer)
            raise _Unanswered(wire.header_only(data, dns.EFORMAT, e.edns))
        if flags & wire.OPCODE:
            raise _Unanswered(self._not_implemented(data, flags, peer, query.edns))
        if query.signed is not None:
            self.report("tsig", "TSIG-signed query from {peer}: no keys here, BADKEY", peer=peer)
            raise _Unanswered(wire.badkey(data, query))
        return query

    def _not_implemented(self, data, flags, peer, edns):
        self.report(
            "opcode", "opcode {opcode} from {peer}: not implemented",
            opcode=(flags & wire.OPCODE) >> 11, peer=peer,
        )
        return wire.header_only(data, dns.ENOTIMP, edns)

    def _template(self, query, limit):
        if query.edns is not None and query.edns.version > 0:
            entry = _BADVERS
        else:
            labels = tuple(label.lower() for label in query.labels)
            key = (labels, query.type, query.cls)
            entry = self._encoded.table.get(key)
            if entry is None:
                question = wire.name(labels) + query.question[-wire.TYPE_CLASS.size :]
                response = self.authority.respond(labels, query.cls, query.type)
                entry = wire.encode(labels, question, response)
                self._encoded.put(key, entry)
        return wire.template(entry, query.flags, len(query.question), limit, query.edns)


class _UDP(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, replies):
        self._replies = replies
        self._fast = replies.fast.table
        self._sendto = None

    def startProtocol(self):
        # Addresses come from recvfrom, so the checks transport.write makes
        # on each of them (a few microseconds) buy nothing here.
        self._sendto = self.transport.getHandle().sendto

    def datagramReceived(self, data, address):
        # The fast key: the message after its id, with the first name
        # lower-cased.  Equal keys get equal replies, up to the id and the
        # echoed question.
        zero = data.find(b"\x00", 12)
        key = data[2:12] + data[12:zero].lower() + data[zero:]
        hit = self._fast.get(key)
        if hit is None:
            reply = self._replies.udp(data, key, address[0])
            if reply is None:
                return
        else:
            head, end, tail = hit
            reply = data[:2] + head + data[12:end] + tail
        try:
            self._sendto(reply, address)
        except OSError as e:
            # A full socket buffer or an unreachable source loses one reply.
            self._replies.report(
                "send", "reply to {peer} lost: {why}", peer=address[0], why=str(e)
            )


class _TCP(protocol.Protocol, policies.TimeoutMixin):
    """
    One client on TCP (RFC 7766): pipelined queries answered in order,
    closed when idle, and not read from while it does not read its replies.
    """

    def __init__(self, factory):
        self.factory = factory
        self.callLater = factory.clock.callLater
        self.lost = defer.Deferred()
        self._buffer = b""
        self._paused = False
        self._peer = None

    def connectionMade(self):
        self._peer = self.transport.getPeer().host
        self.factory.connections.add(self)
        self.transport.registerProducer(self, True)
        self.setTimeout(self.factory.idle_timeout)

    def dataReceived(self, data):
        self._buffer += data
        self._answer()

    def _answer(self):
        buffer = self._buffer
        offset = 0
        while not self._paused and len(buffer) - offset >= 2:
            (length,) = _FLAGS.unpack_from(buffer, offset)
            end = offset + 2 + length
            if len(buffer) < end:
                break
            self.resetTimeout()
            reply = self.factory.replies.tcp(buffer[offset + 2 : end], self._peer)
            offset = end
            if reply is not None:
                self.transport.write(_FLAGS.pack(len(reply)) + reply)
        self._buffer = buffer[offset:]

    def pauseProducing(self):
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        self.transport.resumeProducing()
        self._answer()

    def stopProducing(self):
        self._paused = True

    def timeoutConnection(self):
        self.factory.replies.report(
            "tcp-idle", "closed TCP connection from {peer}: idle", peer=self._peer
        )
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.setTimeout(None)
        self.factory.connections.discard(self)
        self.lost.callback(None)


@attr.s(eq=False)
class _TCPFactory(protocol.Factory):
    noisy = False

    replies = attr.ib()
    clock = attr.ib()
    idle_timeout = attr.ib()
    max_connections = attr.ib()
    connections = attr.ib(init=False, factory=set)

    def buildProtocol(self, address):
        if len(self.connections) >= self.max_connections:
            # Returning None makes the port close the connection at once.
            self.replies.report(
                "tcp-full", "refused TCP connection from {peer}: {limit} already open",
                peer=address.host, limit=self.max_connections,
            )
            return None
        return _TCP(self)


@attr.s(eq=False)
class DNSServer(service.Service):
    """
    Serves C{authority} over UDP and TCP on C{port} of every interface.
    """

    authority = attr.ib()
    port = attr.ib()
    interfaces = attr.ib(default=("127.0.0.1",), converter=tuple)
    reactor = attr.ib(default=None)
    tcp_idle_timeout = attr.ib(default=10.0)
    max_tcp_connections = attr.ib(default=1000)
    _replies = attr.ib(init=False, default=None)
    _tcp = attr.ib(init=False, default=None)
    _listening = attr.ib(init=False, factory=list)
    _unsubscribe = attr.ib(init=False, default=None)

    def __attrs_post_init__(self):
        if not self.tcp_idle_timeout > 0:
            raise ValueError(f"tcp_idle_timeout must be positive, not {self.tcp_idle_timeout!r}")
        if not self.max_tcp_connections >= 1:
            raise ValueError(
                f"max_tcp_connections must be at least 1, not {self.max_tcp_connections!r}"
            )
        if not self.interfaces:
            raise ValueError("no interface to listen on")
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor

    def startService(self):
        """
        Listen on UDP and TCP; L{CannotListenError} if a port is taken.
        """
        report = RateLimitedLog(self.reactor)
        self._replies = _Replies(self.authority, report)
        self._replies.rebuild()
        self._tcp = _TCPFactory(
            self._replies, self.reactor, self.tcp_idle_timeout, self.max_tcp_connections
        )
        attempts = PORT_ATTEMPTS if self.port == 0 else 1
        for attempt in range(attempts):
            try:
                self.port, self._listening = self._listen(self.port)
                break
            except CannotListenError:
                if attempt + 1 == attempts:
                    raise
        self._unsubscribe = self.authority.registry.subscribe(self._replies.rebuild)
        service.Service.startService(self)
        log.info(
            "serving {zone} on port {port} of {interfaces}",
            zone=self.authority.zone, port=self.port, interfaces=self.interfaces,
        )

    def _listen(self, port):
        """
        Listen on C{port} (0: the one the first UDP socket gets) everywhere,
        or on nothing.
        """
        ports = []
        try:
            for interface in self.interfaces:
                udp = self.reactor.listenUDP(port, _UDP(self._replies), interface=interface)
                ports.append(udp)
                port = port or udp.getHost().port
                tcp = self.reactor.listenTCP(
                    port, self._tcp, backlog=TCP_BACKLOG, interface=interface
                )
                ports.append(tcp)
        except CannotListenError:
            for listening in ports:
                listening.stopListening()
            raise
        return port, ports

    def stopService(self):
        """
        Stop listening and close every TCP connection; fires when all are
        gone.
        """
        service.Service.stopService(self)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        waiting = [defer.maybeDeferred(port.stopListening) for port in self._listening]
        self._listening = []
        for connection in list(self._tcp.connections if self._tcp else ()):
            waiting.append(connection.lost)
            connection.transport.abortConnection()
        return defer.gatherResults(waiting).addCallback(lambda _: None)
