"""
Talking to one upstream of C{forward}: a try over UDP or over TCP, TCP
connections kept for reuse until they have been idle for C{expire}, and
the upstream's health (C{max_fails}, C{health_check}), as CoreDNS's
forward keeps them.

A try is made for an owner (a client's query, or a health probe) that says
which reply it C{accepts}, and hears that the try C{answered} or C{failed}.
"""

import os
import secrets
import socket
import struct

import attr
from twisted.internet import defer, protocol

from idetcd.dns import _wire as wire

#: Datagrams read from one upstream socket per reactor turn.
READ_BATCH = 4
#: Seconds a health probe waits for its answer (CoreDNS's).
PROBE_WAIT = 1.0
_SHORT = struct.Struct("!H")
#: The health probe: ". IN NS", recursion desired, as CoreDNS sends it.
_PROBE_QUESTION = b"\x00" + struct.pack("!HH", 2, 1)


class UDPAttempt:
    """
    One try over UDP, from a connected socket of its own: the kernel picks
    a random source port, delivers only the upstream's datagrams, and
    reports an ICMP unreachable as an error.  A reader for the reactor.
    """

    tcp = False

    def __init__(self, owner, upstream, id, reactor, report):
        self.owner = owner
        self.upstream = upstream
        self.id = id
        self.reactor = reactor
        self.report = report
        self.socket = None
        self._reading = False

    def start(self, message, wait):
        family = socket.AF_INET6 if ":" in self.upstream.host else socket.AF_INET
        try:
            self.socket = socket.socket(family, socket.SOCK_DGRAM)
            self.socket.setblocking(False)
            self.socket.connect((self.upstream.host, self.upstream.port))
            self.reactor.addReader(self)
            self._reading = True
            self.socket.send(message)
        except OSError as e:
            self.owner.failed(self, e.strerror or str(e))

    def fileno(self):
        return -1 if self.socket is None else self.socket.fileno()

    def logPrefix(self):
        return "forward"

    def doRead(self):
        for _ in range(READ_BATCH):
            try:
                reply = self.socket.recv(wire.MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError as e:
                self.owner.failed(self, e.strerror or str(e))
                return
            if self.owner.accepts(reply, self.id):
                self.owner.answered(self, reply)
                return
            self.report(
                "forward-mismatch", "ignored a datagram from {upstream}: not the reply to our query",
                upstream=str(self.upstream),
            )

    def connectionLost(self, reason):
        # The reactor saw an error on the socket (an ICMP unreachable) and
        # stopped reading it.
        self._reading = False
        error = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if self.socket else 0
        self.owner.failed(self, os.strerror(error) if error else reason.getErrorMessage())

    def close(self):
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)
        if self.socket is not None:
            self.socket.close()
            self.socket = None


class TCPAttempt:
    """
    One try over TCP: one query and its reply, on a connection from
    C{pool} (an idle one to the same upstream if there is one).  A reused
    connection the upstream closed while it was idle is replaced by a new
    one, once, without counting as a failure.
    """

    tcp = True

    def __init__(self, owner, upstream, id, pool):
        self.owner = owner
        self.upstream = upstream
        self.id = id
        self.pool = pool
        self._message = None
        self._wait = None
        self._connection = None
        self._reused = False

    def start(self, message, wait):
        self._message, self._wait = message, wait
        self._connection = self.pool.take(self.upstream)
        self._reused = self._connection is not None
        if self._reused:
            self._connection.use(self, message)
        else:
            self._connection = self.pool.connect(self.upstream, self, message, wait)

    def replied(self, connection, reply):
        if connection is not self._connection:
            return
        self._connection = None
        if self.owner.accepts(reply, self.id):
            self.pool.give(connection)
            self.owner.answered(self, reply)
        else:
            connection.abort()
            self.owner.failed(self, "its reply does not answer our query")

    def lost(self, connection, why):
        if connection is not self._connection:
            return
        self._connection = None
        if self._reused:
            # The upstream closed the idle connection as we took it.
            self._reused = False
            self._connection = self.pool.connect(self.upstream, self, self._message, self._wait)
            return
        self.owner.failed(self, why)

    def close(self):
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()  # its reply, if it ever comes, is nobody's


class _TCPConnection(protocol.Protocol):
    """
    A TCP connection to an upstream, carrying one query at a time for the
    attempt that C{use}s it.
    """

    def __init__(self, pool, upstream):
        self.pool = pool
        self.upstream = upstream
        self.closed = defer.Deferred()
        self.expiry = None  # the timer that closes it while idle
        self._user = None
        self._pending = None
        self._buffer = b""
        self._connector = None

    def use(self, attempt, message):
        self._user = attempt
        if self.transport is not None:
            self.transport.write(_SHORT.pack(len(message)) + message)
        else:
            self._pending = message

    def connectionMade(self):
        if self._pending is not None:
            message, self._pending = self._pending, None
            self.transport.write(_SHORT.pack(len(message)) + message)

    def dataReceived(self, data):
        self._buffer += data
        if len(self._buffer) < 2:
            return
        (length,) = _SHORT.unpack_from(self._buffer)
        if len(self._buffer) < 2 + length:
            return
        reply = self._buffer[2 : 2 + length]
        self._buffer = self._buffer[2 + length :]
        user, self._user = self._user, None
        if user is None:
            self.abort()  # nobody asked: the upstream is not speaking DNS to us
        else:
            user.replied(self, reply)

    def connectionLost(self, reason):
        self._lost(reason.getErrorMessage())

    def connection_failed(self, connector, reason):
        self._lost(reason.getErrorMessage())

    def _lost(self, why):
        self.pool.forget(self)
        user, self._user = self._user, None
        if user is not None:
            user.lost(self, why)
        if not self.closed.called:
            self.closed.callback(None)

    def abort(self):
        self._user = None
        if self.transport is not None:
            self.transport.abortConnection()
        elif self._connector is not None and self._connector.state == "connecting":
            self._connector.stopConnecting()


@attr.s(eq=False)
class TCPPool:
    """
    TCP connections to upstreams: an idle one is kept for C{expire}
    seconds for the next query to the same upstream (CoreDNS's C{expire};
    0 keeps none).  C{closing(d)} is told of each connection's C{closed}
    Deferred, so the forwarder can wait for them on stop.
    """

    reactor = attr.ib()
    expire = attr.ib()
    closing = attr.ib()
    #: Connections opened, and queries sent on a reused connection.
    opened = attr.ib(init=False, default=0)
    reused = attr.ib(init=False, default=0)
    _idle = attr.ib(init=False, factory=dict)  # upstream -> [connection]

    def connect(self, upstream, attempt, message, wait):
        connection = _TCPConnection(self, upstream)
        connection.use(attempt, message)
        factory = protocol.ClientFactory.forProtocol(lambda: connection)
        factory.noisy = False
        factory.clientConnectionFailed = connection.connection_failed
        self.closing(connection.closed)
        self.opened += 1
        connection._connector = self.reactor.connectTCP(upstream.host, upstream.port, factory, timeout=wait)
        return connection

    def take(self, upstream):
        """
        An idle connection to C{upstream}, no longer idle, or None.
        """
        idle = self._idle.get(upstream)
        while idle:
            connection = idle.pop()
            self._stop_expiry(connection)
            if connection.transport is not None and connection.transport.connected:
                self.reused += 1
                return connection
        return None

    def give(self, connection):
        """
        Keep C{connection}, done with, for reuse until it expires.
        """
        if self.expire <= 0:
            connection.abort()
            return
        connection.expiry = self.reactor.callLater(self.expire, self._expired, connection)
        self._idle.setdefault(connection.upstream, []).append(connection)

    def _expired(self, connection):
        connection.expiry = None
        self.forget(connection)
        connection.abort()

    def forget(self, connection):
        self._stop_expiry(connection)
        idle = self._idle.get(connection.upstream)
        if idle and connection in idle:
            idle.remove(connection)

    def _stop_expiry(self, connection):
        if connection.expiry is not None and connection.expiry.active():
            connection.expiry.cancel()
        connection.expiry = None

    def close(self):
        """
        Close every idle connection.
        """
        for idle in list(self._idle.values()):
            for connection in list(idle):
                self.forget(connection)
                connection.abort()
        self._idle.clear()


@attr.s(eq=False)
class Health:
    """
    An upstream's health, as CoreDNS's forward keeps it: each failure (a
    try that timed out or failed, or a probe that did) counts, any reply
    clears the count, and with C{max_fails} failures in a row the upstream
    is down: not used while another is up (0: never down, never probed).
    From its first failure it is probed every C{interval} seconds with an
    C{. IN NS} query until one is answered.  C{attempt(owner, id)} makes
    the try a probe is sent with (over TCP with C{force_tcp}).
    """

    upstream = attr.ib()
    max_fails = attr.ib()
    interval = attr.ib()
    reactor = attr.ib()
    attempt = attr.ib()
    fails = attr.ib(init=False, default=0)
    #: Probes that failed (CoreDNS's healthcheck failures).
    probe_failures = attr.ib(init=False, default=0)
    _timer = attr.ib(init=False, default=None)  # the next probe
    _probe = attr.ib(init=False, default=None)  # the probe in flight

    @property
    def down(self):
        return self.max_fails > 0 and self.fails >= self.max_fails

    def failure(self):
        """
        A try of a query failed.
        """
        if self.max_fails > 0:
            self.fails += 1
            self._probe_later()

    def success(self):
        """
        The upstream replied.
        """
        self.fails = 0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.end()

    def _probe_later(self):
        if self._timer is None and self._probe is None:
            self._timer = self.reactor.callLater(self.interval, self._send_probe)

    def _send_probe(self):
        self._timer = None
        probe = self._probe = _Probe(self, secrets.randbits(16))
        probe.attempt = self.attempt(probe, probe.id)
        probe.timer = self.reactor.callLater(PROBE_WAIT, probe.failed, probe.attempt, "no answer in time")
        probe.attempt.start(wire.HEADER.pack(probe.id, wire.RD, 1, 0, 0, 0) + _PROBE_QUESTION, PROBE_WAIT)

    def probed(self, probe, answered):
        if probe is not self._probe:
            return
        if answered:
            self.success()
            return
        self._probe = None
        probe.end()
        self.probe_failures += 1
        self.fails += 1
        self._probe_later()

    def stop(self):
        self.success()
        self.fails = 0


class _Probe:
    """
    The owner of a health probe's try.
    """

    def __init__(self, health, id):
        self.health = health
        self.id = id
        self.attempt = None
        self.timer = None

    def accepts(self, reply, id):
        return len(reply) >= wire.HEADER.size and _SHORT.unpack_from(reply)[0] == id and reply[2] & 0x80

    def answered(self, attempt, reply):
        self.health.probed(self, True)

    def failed(self, attempt, why):
        self.health.probed(self, False)

    def end(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.attempt is not None:
            self.attempt.close()
