"""
The DNS front end: one zone served over UDP and TCP.

Replies to the questions the zone has data for are prepared as bytes each
time the registry changes, so a UDP query for a known name costs a few
slices and one dict lookup.  Everything else is read strictly, answered
through L{idetcd.dns._authority.ZoneAuthority.respond} and kept in bounded caches
until the next change.
"""

from __future__ import annotations

import collections
import errno
import functools
import ipaddress
import socket
import struct
import sys

import attr
from twisted.application import service
from twisted.internet import defer, protocol, udp
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.names import dns
from twisted.protocols import policies

from idetcd.common import RateLimitedLog
from idetcd.dns import _tally as tally
from idetcd.dns import _wire as wire

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
# Fair shares of one reactor turn, which the etcd keepalive shares with DNS:
# a UDP port reads at most UDP_BATCH datagrams and a TCP connection answers
# at most TCP_BATCH queries before the reactor serves its other sockets and
# timers; whatever is left waits for the next turn.
# All TCP connections together answer at most TCP_TURN queries per turn,
# taking turns in order, so many connections cannot crowd UDP out.
UDP_BATCH = 128
# A read that finds nothing (or was interrupted), and the refusal a UDP
# socket reports for an earlier send: the errors udp.Port.doRead stops
# reading on without raising (Twisted keeps its list private).
_UDP_READ_DONE = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNREFUSED)
TCP_BATCH = 16
TCP_TURN = 128
# A TCP connection reads at most this much at once, and stops being read
# while more than this many reply bytes wait for a client that does not
# read them (one reply of up to 64 KB may go past it).
TCP_BUFFER = 16384
# Open TCP connections one client address may hold, so no one can take
# every slot from clients that retry over TCP after a truncated answer.
MAX_TCP_PER_CLIENT = 32
# UDP receive buffer: a few megabytes absorb bursts the default 208 KB
# drops; the kernel may clamp it (net.core.rmem_max), which is logged.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
_LINUX = sys.platform.startswith("linux")
# Linux's values; Python 3.11's socket module names neither.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if _LINUX else None)
_PKTINFO_SPACE = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(12)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, local address, destination

_FLAGS = struct.Struct("!H")
_now = tally.now
_LENGTH, _KIND, _IPV6 = tally.LENGTH, tally.KIND_MASK, tally.IPV6
_REQUEST_SIZES, _RESPONSE_SIZES = tally.REQUEST_SIZES, tally.RESPONSE_SIZES
_BADVERS = wire.Encoded(dns.EBADVERSION, auth=False)


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

    def drop_cached(self):
        """
        Forget the cached entries and keep the prepared ones: the cost is
        the cache's size, not the table's.
        """
        table = self.table
        for key in self._order:
            table.pop(key, None)
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
    The message gets C{reply} (bytes, or L{None} for no reply at all), of
    L{tally.kind} C{kind}, and no lookup.
    """

    def __init__(self, reply, kind=None):
        Exception.__init__(self, reply)
        self.reply = reply
        self.kind = kind


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
    kind = tally.kind(type, encoded.rcode)
    fast = []
    for flags in PREPARED_FLAGS:
        head, tail = wire.template(encoded, flags, len(question), wire.MIN_PAYLOAD, None)
        key = wire.HEAD.pack(flags, 1, 0, 0, 0) + question
        fast.append((key, (head, wire.HEADER.size + len(question), tail, kind)))
    return _Prepared(response, encoded, tuple(fast))


@attr.s(eq=False)
class _Replies:
    """
    Wire replies for one zone.

    C{fast.table} maps the fast key of a UDP query (see L{_UDP}) to (head,
    question end, tail, L{tally.kind}): prepared for every question with
    data (the SRV and PTR RRsets when first asked), filled from the slow
    path for the rest.
    """

    authority = attr.ib()
    report = attr.ib()
    #: Relays queries outside the zone, or None (they are refused).
    forwarder = attr.ib(default=None)
    #: Answers zone transfers (an L{idetcd.dns._transfer.ZoneTransfer}),
    #: or None (they are refused).
    transfer = attr.ib(default=None)
    fast = attr.ib(init=False, factory=lambda: _Cache(CACHE_SIZE))
    #: How many replies were encoded for the prepared tables so far.
    encoded_count = attr.ib(init=False, default=0)
    _encoded = attr.ib(init=False, factory=lambda: _Cache(CACHE_SIZE))
    _prepared = attr.ib(init=False, factory=dict)  # (labels, type) -> _Prepared
    _types = attr.ib(init=False, factory=dict)  # labels -> the types prepared for them

    def rebuild(self):
        """
        Prepare every positive reply again.  Replies whose response did not
        change are kept, so only the names that changed are encoded.
        """
        self._follow(self.authority.update(None))
        prepared = {}
        types = collections.defaultdict(set)
        for labels, type, response in self.authority.positive():
            prepared[labels, type] = self._entry(labels, type, response)
            types[labels].add(type)
        self._prepared = prepared
        self._types = dict(types)
        self._encoded.reset(
            {(labels, type, dns.IN): entry.encoded for (labels, type), entry in prepared.items()}
        )
        self.fast.reset(item for entry in prepared.values() for item in entry.fast)

    def changed(self, names):
        """
        Follow a registry change to the members C{names}: only the replies
        of the nodes it touched (and the apex) are prepared again, and the
        cached ones dropped, so answers follow membership at once at a cost
        that grows with the change, not the zone.  Should that fail, every
        table is rebuilt, or, failing that, emptied for the slow path.
        """
        try:
            nodes = self.authority.update(names)
            if nodes is None:
                self.rebuild()
            else:
                self._update(nodes)
                self._follow(nodes)
        except Exception as e:
            self.report(
                "update", "updating prepared replies failed ({why}); rebuilding them all",
                why=repr(e),
            )
            self._prepared, self._types = {}, {}
            self.fast.reset({})
            self._encoded.reset({})
            self.rebuild()

    def _follow(self, nodes):
        """
        Let the zone transfer follow an update that touched C{nodes}.
        """
        if self.transfer is not None:
            self.transfer.changed(nodes)

    def _update(self, nodes):
        self.fast.drop_cached()
        self._encoded.drop_cached()
        for labels in nodes:
            current = {type: response for _, type, response in self.authority.positive(labels)}
            for type in self._types.pop(labels, ()):
                if type not in current:
                    self._forget(self._prepared.pop((labels, type)), labels, type)
            for type, response in current.items():
                old = self._prepared.get((labels, type))
                entry = self._entry(labels, type, response, old)
                if entry is not old:
                    if old is not None:
                        self._forget(old, labels, type)
                    self._prepared[labels, type] = entry
                    self._encoded.table[labels, type, dns.IN] = entry.encoded
                    self.fast.table.update(entry.fast)
            if current:
                self._types[labels] = set(current)

    def _entry(self, labels, type, response, old=None):
        """
        The prepared reply for C{response}: C{old} (or the one prepared
        before) while its response is unchanged, else a new encoding.
        """
        if old is None:
            old = self._prepared.get((labels, type))
        if old is not None and (old.response is response or old.response == response):
            return old
        self.encoded_count += 1
        return _prepare(labels, type, response)

    def _prepare_late(self, labels, type, response):
        """
        Prepare a positive reply the authority builds only when asked (an
        SRV or PTR RRset that grows with the members): like the others it
        stays until a change touches its node, whatever the cache evicts,
        so it is encoded once per change at most.
        """
        entry = self._entry(labels, type, response)
        self._prepared[labels, type] = entry
        self._types.setdefault(labels, set()).add(type)
        self._encoded.table[labels, type, dns.IN] = entry.encoded
        self.fast.table.update(entry.fast)
        return entry.encoded

    def _forget(self, entry, labels, type):
        self._encoded.table.pop((labels, type, dns.IN), None)
        for key, _ in entry.fast:
            self.fast.table.pop(key, None)

    def udp(self, data, key, peer, send):
        """
        The reply to a datagram the fast table missed (or L{None}) and its
        L{tally.kind}; a reply to a query goes into that table under C{key}.
        A forwarded query's reply goes to C{send} later.
        """
        try:
            query = self._read(data, peer, send, tcp=False)
        except _Unanswered as e:
            return e.reply, e.kind
        transferred = self._transfer(query, peer, tcp=False)
        if transferred is not None:
            rcode, messages = transferred
            return next(messages), tally.kind(query.type, rcode)
        head, tail, kind = self._template(query, _udp_limit(query.edns))
        if len(data) <= CACHEABLE_QUERY:
            self.fast.put(key, (head, wire.HEADER.size + len(query.question), tail, kind))
        return data[:2] + head + query.question + tail, kind

    def tcp(self, data, peer, send, stream):
        """
        The reply to one message from a TCP stream (or L{None}) and its
        L{tally.kind}; a forwarded query's reply goes to C{send} later,
        and the messages of a zone transfer to C{stream}, as an iterator.
        """
        try:
            query = self._read(data, peer, send, tcp=True)
        except _Unanswered as e:
            return e.reply, e.kind
        transferred = self._transfer(query, peer, tcp=True)
        if transferred is not None:
            rcode, messages = transferred
            stream(messages)
            return None, tally.kind(query.type, rcode)
        head, tail, kind = self._template(query, wire.MAX_MESSAGE)
        return data[:2] + head + query.question + tail, kind

    def _read(self, data, peer, send, tcp):
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
                raise self._not_implemented(data, flags, peer, e.edns, tally.NO_TYPE)
            self.report("malformed", "malformed query from {peer}: {why}", why=str(e), peer=peer)
            raise _Unanswered(
                wire.header_only(data, dns.EFORMAT, e.edns), tally.kind(tally.NO_TYPE, dns.EFORMAT)
            )
        if flags & wire.OPCODE:
            raise self._not_implemented(data, flags, peer, query.edns, query.type)
        if query.signed is not None:
            self.report("tsig", "TSIG-signed query from {peer}: no keys here, BADKEY", peer=peer)
            raise _Unanswered(wire.badkey(data, query), tally.kind(query.type, wire.NOTAUTH))
        forwarder = self.forwarder
        if forwarder is not None and forwarder.covers(query):
            if forwarder.allows(peer):
                forwarder.relay(data, query, send, tcp, peer)
                raise _Unanswered(None)
            # REFUSED, as without forward, but never cached: an allowed
            # client asking the same gets an answer.
            head, tail, kind = self._template(query, wire.MAX_MESSAGE)
            raise _Unanswered(data[:2] + head + query.question + tail, kind)
        return query

    def _transfer(self, query, peer, tcp):
        """
        The (rcode, messages) of a zone transfer's answer to C{query}, or
        L{None} for a query that is not a transfer this server gives,
        which is then refused as any.
        """
        transfer = self.transfer
        if transfer is None or query.type not in (dns.AXFR, dns.IXFR):
            return None
        labels = tuple(label.lower() for label in query.labels)
        if not transfer.serves(labels):
            return None
        qtype = "AXFR" if query.type == dns.AXFR else "IXFR"
        if not transfer.allows(peer):
            self.report(
                "transfer-refused", "{qtype} refused to {peer}: not listed in transfer",
                qtype=qtype, peer=peer,
            )
            return None
        rcode, messages = transfer.respond(query, tcp)
        self.report(
            "transfer", "{qtype} of {zone} at serial {serial} to {peer} over {protocol}: {rcode}",
            qtype=qtype, zone=self.authority.zone, serial=transfer.serial, peer=peer,
            protocol="TCP" if tcp else "UDP", rcode=tally.RCODES.get(rcode, rcode),
        )
        return rcode, messages

    def _not_implemented(self, data, flags, peer, edns, qtype):
        self.report(
            "opcode", "opcode {opcode} from {peer}: not implemented",
            opcode=(flags & wire.OPCODE) >> 11, peer=peer,
        )
        return _Unanswered(wire.header_only(data, dns.ENOTIMP, edns), tally.kind(qtype, dns.ENOTIMP))

    def _template(self, query, limit):
        if query.edns is not None and query.edns.version > 0:
            entry = _BADVERS
        else:
            labels = tuple(label.lower() for label in query.labels)
            key = (labels, query.type, query.cls)
            entry = self._encoded.table.get(key)
            if entry is None:
                response = self.authority.respond(labels, query.cls, query.type)
                if response.answers:
                    entry = self._prepare_late(labels, query.type, response)
                else:
                    question = wire.name(labels) + query.question[-wire.TYPE_CLASS.size :]
                    entry = wire.encode(labels, question, response)
                    self._encoded.put(key, entry)
        head, tail = wire.template(entry, query.flags, len(query.question), limit, query.edns)
        return head, tail, tally.kind(query.type, entry.rcode)


def _reply_pktinfo(ancillary):
    """
    The ancillary data that sends a reply from the address the query was
    sent to, from the query's IP_PKTINFO or IPV6_PKTINFO.
    """
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            _, _, destination = _IN_PKTINFO.unpack_from(data)
            return [(level, kind, _IN_PKTINFO.pack(0, destination, bytes(4)))]
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            return [(level, kind, data)]
    return []


class _UDPPort(udp.Port):
    """
    A UDP port that reads at most L{UDP_BATCH} datagrams per reactor turn,
    with a receive buffer sized for bursts.  Bound to a wildcard address it
    asks the kernel for each datagram's destination, so the reply leaves
    from the address the client asked (a client drops a reply from any
    other), on hosts with several addresses.

    With a C{tally} (a L{tally.DnsTally}) it counts the answers its
    protocol gives, by the L{tally.kind} and reply length it returns, and
    times each batch.
    """

    def __init__(self, port, proto, interface, maxPacketSize, reactor, tally=None):
        udp.Port.__init__(self, port, proto, interface, maxPacketSize, reactor)
        self._tally = tally
        # On IPv6, IPv4 clients arrive as mapped addresses and count with
        # IPv4.
        self._ipv6 = ":" in interface

    def createInternetSocket(self):
        skt = udp.Port.createInternetSocket(self)
        _size_receive_buffer(skt, self.interface)
        self.wildcard = ipaddress.ip_address(self.interface or "0.0.0.0").is_unspecified
        if self.wildcard:
            # On "::" IPv4 clients arrive as mapped addresses, with IP_PKTINFO.
            skt.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            if self.addressFamily == socket.AF_INET6:
                skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        return skt

    def doRead(self):
        receive = self.socket.recvmsg
        space = _PKTINFO_SPACE if self.wildcard else 0
        answer = self.protocol.datagramReceived
        counting = self._tally is not None
        ipv6 = self._ipv6
        requests, responses = _REQUEST_SIZES, _RESPONSE_SIZES
        shift, mask, ipv6_bit = _LENGTH, _KIND, _IPV6
        started = _now() if counting else 0
        keys = []
        received = sent = 0
        try:
            for _ in range(UDP_BATCH):
                try:
                    data, ancillary, flags, address = receive(self.maxPacketSize, space)
                except OSError as e:
                    if e.errno in _UDP_READ_DONE:
                        return
                    raise
                try:
                    outcome = answer(data, address, _reply_pktinfo(ancillary), flags)
                except BaseException:
                    log.failure("UDP datagram from {peer}", peer=address[0])
                    continue
                if counting and outcome is not None:
                    length = outcome >> shift
                    key = outcome & mask | requests[len(data)] | responses[length]
                    if ipv6 and not address[0].startswith("::ffff:"):
                        key |= ipv6_bit
                    keys.append(key)
                    received += len(data)
                    sent += length
        finally:
            if keys:
                self._tally.settle(keys, _now() - started, "udp", received, sent)


def _size_receive_buffer(skt, interface):
    wanted = UDP_RECEIVE_BUFFER
    try:
        # Past net.core.rmem_max, for a process allowed to (CAP_NET_ADMIN).
        skt.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
    except (TypeError, OSError):
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    granted = skt.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if _LINUX:
        granted //= 2  # Linux reports twice the size asked, for its overhead
    if granted < wanted:
        log.warn(
            "UDP receive buffer on {interface} is {granted} bytes, not {wanted}: "
            "the kernel's limit (sysctl net.core.rmem_max) clamped it; "
            "bursts of queries may be dropped",
            interface=interface, granted=granted, wanted=wanted,
        )


class _UDP(protocol.DatagramProtocol):
    """
    Answers the datagrams of one UDP socket; each call returns the
    L{tally.kind} of the answer sent with the reply's length shifted by
    L{tally.LENGTH}, or L{None} when none was.
    """

    noisy = False

    def __init__(self, replies):
        self._replies = replies
        self._fast = replies.fast.table
        self._sendmsg = None

    def startProtocol(self):
        # Addresses come from recvmsg, so the checks transport.write makes
        # on each of them (a few microseconds) buy nothing here.
        self._sendmsg = self.transport.getHandle().sendmsg

    def datagramReceived(self, data, address, pktinfo=(), flags=0):
        if flags & socket.MSG_TRUNC:
            self._replies.report(
                "long", "dropped a datagram from {peer}: longer than {limit} bytes",
                peer=address[0], limit=len(data),
            )
            return None
        # The fast key: the message after its id, with the first name
        # lower-cased.  Equal keys get equal replies, up to the id and the
        # echoed question.
        zero = data.find(b"\x00", 12)
        key = data[2:12] + data[12:zero].lower() + data[zero:]
        hit = self._fast.get(key)
        if hit is None:
            reply, kind = self._replies.udp(data, key, address[0], self._later(pktinfo, address))
            if reply is None:
                return None
        else:
            head, end, tail, kind = hit
            reply = data[:2] + head + data[12:end] + tail
        self._send(pktinfo, address, reply)
        return kind | len(reply) << _LENGTH

    def _send(self, pktinfo, address, reply):
        try:
            self._sendmsg((reply,), pktinfo, 0, address)
        except OSError as e:
            # A full socket buffer or an unreachable source loses one reply.
            self._replies.report(
                "send", "reply to {peer} lost: {why}", peer=address[0], why=str(e)
            )

    def _later(self, pktinfo, address):
        """
        Where the reply to a query answered later (forwarded) goes.
        """
        return functools.partial(self._send, pktinfo, address)


class _LoggedUDP(_UDP):
    """
    L{_UDP} that gives each query and its reply to C{querylog} (a
    L{idetcd.dns._querylog.QueryLog}): a protocol of its own, so that
    without C{log} or C{errors} the fast path has no check to make.
    """

    def __init__(self, replies, querylog):
        _UDP.__init__(self, replies)
        self._querylog = querylog
        self._query = None  # (data, when it came) of the query being answered

    def datagramReceived(self, data, address, pktinfo=(), flags=0):
        self._query = (data, _now())
        try:
            return _UDP.datagramReceived(self, data, address, pktinfo, flags)
        finally:
            self._query = None

    def _send(self, pktinfo, address, reply, query=None):
        _UDP._send(self, pktinfo, address, reply)
        data, started = query or self._query
        self._querylog(data, reply, address, "udp", started)

    def _later(self, pktinfo, address):
        return functools.partial(self._send, pktinfo, address, query=self._query)


class _TCP(protocol.Protocol, policies.TimeoutMixin):
    """
    One client on TCP (RFC 7766): pipelined queries answered in order, at
    most L{TCP_BATCH} per reactor turn and within the turn's budget for all
    connections, closed when idle.  It is not read
    from while queries it sent wait for their turn, nor while more than
    L{TCP_BUFFER} bytes of replies wait for it to read them.
    """

    def __init__(self, factory):
        self.factory = factory
        self.callLater = factory.clock.callLater
        self.lost = defer.Deferred()
        self._buffer = b""
        self._blocked = False  # the transport holds too many unread replies
        self._holding = False  # reading stopped until the buffer is answered
        self._waiting = False  # in the factory's queue for the next turn
        self._peer = None
        self._address = None  # (host, port) of the client
        self._lane = None  # the tally.LANES bits of its answers, if counted
        self._streaming = None  # the messages of a zone transfer being sent
        self._pump = None  # the timer that sends its next message
        self._closing = None  # the timer that aborts a connection closing

    def connectionMade(self):
        peer = self.transport.getPeer()
        self._peer = peer.host
        self._address = (peer.host, peer.port)
        if self.factory.tally is not None:
            self._lane = tally.lane("tcp", self._peer)
        self.factory.opened(self)
        # The size of one read, and of the reply backlog that pauses us.
        self.transport.bufferSize = TCP_BUFFER
        self.transport.registerProducer(self, True)
        self.setTimeout(self.factory.idle_timeout)

    def dataReceived(self, data):
        self._buffer += data
        self._answer()

    def _answer(self):
        self._waiting = False
        if self._streaming is not None:
            return  # the next queries wait until the transfer is sent
        buffer = self._buffer
        offset = 0
        answered = 0
        budget = self.factory.budget()
        lane = self._lane
        querylog = self.factory.querylog
        started = _now() if lane is not None else 0
        keys = []
        received = sent = 0
        while answered < budget:
            if self._blocked or self._streaming is not None or len(buffer) - offset < 2:
                break
            (length,) = _FLAGS.unpack_from(buffer, offset)
            end = offset + 2 + length
            if len(buffer) < end:
                break
            self.resetTimeout()
            message = buffer[offset + 2 : end]
            if querylog is None:
                send = self._send
            else:
                came = _now()
                send = functools.partial(self._send_logged, message, came)
            reply, kind = self.factory.replies.tcp(message, self._peer, send, self._stream)
            answered += 1
            offset = end
            if reply is not None:
                self.transport.write(_FLAGS.pack(len(reply)) + reply)
                if querylog is not None:
                    querylog(message, reply, self._address, "tcp", came)
            if kind is not None and lane is not None:
                # A zone transfer streams its reply later: its size is not counted.
                size = 0 if reply is None else len(reply)
                keys.append(kind | lane | _REQUEST_SIZES[length] | _RESPONSE_SIZES[size])
                received += length
                sent += size
        if keys:
            self.factory.tally.settle(keys, _now() - started, "tcp", received, sent)
        self._buffer = buffer = buffer[offset:]
        self.factory.spend(answered)
        if self._streaming is not None:
            # Nothing more is read until the transfer is sent.
            if not self._holding:
                self._holding = True
                self.transport.pauseProducing()
            return
        if self._blocked:
            return  # resumeProducing goes on once the client reads
        if len(buffer) >= 2 and len(buffer) >= 2 + _FLAGS.unpack_from(buffer)[0]:
            # A whole query is still waiting: the next batch, next turn.
            if not self._holding:
                self._holding = True
                self.transport.pauseProducing()
            if not self._waiting:
                self._waiting = True
                self.factory.wait(self, starved=not answered)
        elif self._holding:
            self._holding = False
            self.transport.resumeProducing()

    def _stream(self, messages):
        """
        Send the messages of a zone transfer, one per reactor turn, each
        built only when the client has read enough of the ones before.
        """
        self._streaming = messages
        self._next_message()

    def _next_message(self):
        self._pump = None
        if self._streaming is None or self._blocked:
            return  # resumeProducing goes on once the client reads
        message = next(self._streaming, None)
        if message is None:
            self._streaming = None
            self._answer()
            return
        self.resetTimeout()
        self.transport.write(_FLAGS.pack(len(message)) + message)
        self._pump = self.callLater(0, self._next_message)

    def _send(self, reply):
        """
        Send a reply that came later (RFC 7766 allows any order), unless
        the client has gone.
        """
        if self.transport.connected and not self.transport.disconnecting:
            self.resetTimeout()
            self.transport.write(_FLAGS.pack(len(reply)) + reply)

    def _send_logged(self, message, started, reply):
        self._send(reply)
        self.factory.querylog(message, reply, self._address, "tcp", started)

    def pauseProducing(self):
        self._blocked = True
        self.transport.pauseProducing()

    def resumeProducing(self):
        self._blocked = False
        if not self._holding:
            self.transport.resumeProducing()
        if self._streaming is not None:
            # A client that reads a long transfer slowly is not idle.
            self.resetTimeout()
            if self._pump is None:
                self._next_message()
        elif not self._waiting:
            self._answer()

    def stopProducing(self):
        self._blocked = True

    def timeoutConnection(self):
        self.factory.replies.report(
            "tcp-idle", "closed TCP connection from {peer}: idle", peer=self._peer
        )
        if self._streaming is not None or self._blocked:
            self.transport.abortConnection()
            return
        # No more than TCP_BUFFER bytes of replies wait here, the rest is
        # with the kernel: close as TCP does, so that the end of a long zone
        # transfer, which a client may still be reading, is not thrown
        # away; abort if the client does not take it within another idle
        # time.
        self.transport.loseConnection()
        self._closing = self.callLater(self.factory.idle_timeout, self.transport.abortConnection)

    def connectionLost(self, reason):
        self.setTimeout(None)
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        self._streaming = None
        self._blocked = True  # so a turn that still lists it does nothing
        self.factory.closed(self)
        self.lost.callback(None)


@attr.s(eq=False)
class _TCPFactory(protocol.Factory):
    noisy = False

    replies = attr.ib()
    clock = attr.ib()
    idle_timeout = attr.ib()
    max_connections = attr.ib()
    max_per_client = attr.ib()
    tally = attr.ib(default=None)
    #: A L{idetcd.dns._querylog.QueryLog} for every query, or None.
    querylog = attr.ib(default=None)
    connections = attr.ib(init=False, factory=set)
    _per_client = attr.ib(init=False, factory=collections.Counter)
    _spent = attr.ib(init=False, default=0)  # queries answered this turn
    _waiting = attr.ib(init=False, factory=collections.deque)
    _turn = attr.ib(init=False, default=None)

    def buildProtocol(self, address):
        # Returning None makes the port close the connection at once.
        if len(self.connections) >= self.max_connections:
            self.replies.report(
                "tcp-full", "refused TCP connection from {peer}: {limit} already open",
                peer=address.host, limit=self.max_connections,
            )
            return None
        if self._per_client[address.host] >= self.max_per_client:
            self.replies.report(
                "tcp-client-full",
                "refused TCP connection from {peer}: {limit} already open from there",
                peer=address.host, limit=self.max_per_client,
            )
            return None
        return _TCP(self)

    def budget(self):
        """
        How many queries one connection may answer now.
        """
        return max(0, min(TCP_BATCH, TCP_TURN - self._spent))

    def spend(self, answered):
        if answered:
            self._spent += answered
            self._next_turn()

    def wait(self, connection, starved):
        """
        Answer more of C{connection}'s queries next turn: after those
        already waiting, or, when it was C{starved} of the budget this
        turn, before those that had a share.
        """
        if starved:
            self._waiting.appendleft(connection)
        else:
            self._waiting.append(connection)
        self._next_turn()

    def _next_turn(self):
        if self._turn is None:
            self._turn = self.clock.callLater(0, self._new_turn)

    def _new_turn(self):
        self._turn = None
        self._spent = 0
        waiting, self._waiting = self._waiting, collections.deque()
        while waiting and self._spent < TCP_TURN:
            waiting.popleft()._answer()
        # Those the budget did not reach go first next turn.
        waiting.extend(self._waiting)
        self._waiting = waiting

    def stop(self):
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        self._waiting.clear()

    def opened(self, connection):
        self.connections.add(connection)
        self._per_client[connection._peer] += 1

    def closed(self, connection):
        if connection in self.connections:
            self.connections.discard(connection)
            self._per_client[connection._peer] -= 1
            if not self._per_client[connection._peer]:
                del self._per_client[connection._peer]


@attr.s(eq=False)
class DNSServer(service.Service):
    """
    Serves C{authority} over UDP and TCP on C{port} of every interface,
    counting its answers in C{tally} (a L{tally.DnsTally}) if given, and
    making its prepared replies again as the authority tells of changes to
    the members it answers from.
    """

    authority = attr.ib()
    port = attr.ib()
    interfaces = attr.ib(default=("127.0.0.1",), converter=tuple)
    reactor = attr.ib(default=None)
    tcp_idle_timeout = attr.ib(default=10.0)
    max_tcp_connections = attr.ib(default=1000)
    max_tcp_per_client = attr.ib(default=MAX_TCP_PER_CLIENT)
    #: An L{idetcd.dns._forward.Forwarder} for names outside the zone, or None.
    forwarder = attr.ib(default=None)
    tally = attr.ib(default=None)
    #: An L{idetcd.dns._transfer.ZoneTransfer} for AXFR and IXFR, or None.
    transfer = attr.ib(default=None)
    #: A L{idetcd.dns._querylog.QueryLog} (C{log}, C{errors}), or None.
    querylog = attr.ib(default=None)
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
        if not self.max_tcp_per_client >= 1:
            raise ValueError(
                f"max_tcp_per_client must be at least 1, not {self.max_tcp_per_client!r}"
            )
        if not self.interfaces:
            raise ValueError("no interface to listen on")
        if self.forwarder is not None:
            if self.forwarder.tally is not self.tally:
                raise ValueError("the forwarder must count its answers in the server's tally")
            # A mistake in its upstreams is found now, before any port is bound.
            self.forwarder.prepare(self.port, self.interfaces)
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor

    def privilegedStartService(self):
        """
        Listen on UDP and TCP; L{CannotListenError} if a port is taken.
        Queries are answered from the registry from now on.
        """
        if self._listening:
            return
        report = RateLimitedLog(self.reactor, log, LOG_INTERVAL)
        self._replies = _Replies(self.authority, report, self.forwarder, self.transfer)
        self._replies.rebuild()
        self._tcp = _TCPFactory(
            self._replies,
            self.reactor,
            self.tcp_idle_timeout,
            self.max_tcp_connections,
            self.max_tcp_per_client,
            self.tally,
            self.querylog,
        )
        attempts = PORT_ATTEMPTS if self.port == 0 else 1
        for attempt in range(attempts):
            try:
                self.port, self._listening = self._listen(self.port)
                break
            except CannotListenError:
                if attempt + 1 == attempts:
                    raise
        if self.forwarder is not None:
            try:
                self.forwarder.start(self.port, self.interfaces, report)
            except BaseException:
                for listening in self._listening:
                    listening.stopListening()
                self._listening = []
                raise

    def startService(self):
        """
        Listen, unless L{privilegedStartService} has, and follow the
        registry's changes.
        """
        self.privilegedStartService()
        # What the registry learnt since the ports were bound.
        self._replies.rebuild()
        self._unsubscribe = self.authority.subscribe_changes(self._replies.changed)
        if self.transfer is not None:
            self.transfer.start(self.reactor, self._replies.report)
        service.Service.startService(self)
        log.info(
            "serving {zone} on port {port} of {interfaces}",
            zone=self.authority.zone, port=self.port, interfaces=self.interfaces,
        )

    def reconfigure(self, ttl, nameservers):
        """
        Answer with C{ttl} and C{nameservers} from now on: every prepared
        reply is made again, cached ones dropped (a Corefile reload).
        """
        self.authority.configure(ttl, nameservers)
        if self._replies is not None:
            self._replies.rebuild()

    def set_view(self, view):
        """
        Answer as the L{idetcd.dns._freshness.View} C{view} allows: the
        authority follows it and every prepared reply is made again, so
        the fast path stays one lookup whatever the view.
        """
        self.authority.set_view(view)
        if self._replies is not None:
            self._replies.changed(None)

    def _listen(self, port):
        """
        Listen on C{port} (0: the one the first UDP socket gets) everywhere,
        or on nothing.
        """
        ports = []
        try:
            for interface in self.interfaces:
                if self.querylog is None:
                    answering = _UDP(self._replies)
                else:
                    answering = _LoggedUDP(self._replies, self.querylog)
                udp = _UDPPort(
                    port, answering, interface, wire.MAX_MESSAGE, self.reactor,
                    self.tally,
                )
                udp.startListening()
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
        if self.transfer is not None:
            waiting.append(self.transfer.stop())
        if self.forwarder is not None:
            waiting.append(self.forwarder.stop())
        self._listening = []
        if self._tcp is not None:
            self._tcp.stop()
        if self.querylog is not None:
            self.querylog.stop()
        for connection in list(self._tcp.connections if self._tcp else ()):
            waiting.append(connection.lost)
            connection.transport.abortConnection()
        return defer.gatherResults(waiting).addCallback(lambda _: None)
