"""
Relaying queries for names outside the served zone to upstream servers
(the Corefile's C{forward}), for allowed clients only, keeping their
answers when the block has C{cache} (L{idetcd.dns._answer_cache}).

The work is bounded: a query in flight holds one socket and one timer,
and at most C{max_concurrent} are in flight; beyond that queries are
dropped, so a flood cannot take the reactor from the lease keepalive.
Each try over UDP leaves from a socket of its own, connected to the
upstream (a random source port, only the upstream's datagrams delivered),
with a random id, and only a reply with that id and the same question is
taken (RFC 5452); over TCP, connections are reused until idle for
C{expire}.  Upstreams that keep failing are left aside until a health probe
is answered (L{idetcd.dns._upstream}).
"""

from __future__ import annotations

import collections
import ipaddress
import random
import secrets
import socket
import struct

import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns

from idetcd.config import CorefileError
from idetcd.dns import _tally as tally
from idetcd.dns import _wire as wire
from idetcd.dns._answer_cache import AnswerCache
from idetcd.dns._authority import domain_labels
from idetcd.dns._forward_settings import Upstream
from idetcd.dns._upstream import Health, TCPAttempt, TCPPool, UDPAttempt

log = Logger()

#: Seconds one upstream gets to answer one try, at most; the C{timeout}
#: setting bounds all the tries of a query together.
ATTEMPT = 2.0
#: A try with less time than this left is not started: the time is up.
MIN_ATTEMPT = 0.05
#: Client addresses whose verdict (allowed or not) is remembered.
VERDICTS = 4096
#: The most of a resolv.conf file that is read.
RESOLV_CONF_SIZE = 65536
RA = 0x0080
_SHORT = struct.Struct("!H")
_SERVFAIL = wire.Encoded(dns.ESERVER, auth=False)
# An upstream's answer with one of these rcodes sends the query on to the
# next upstream, if there is one left.
_TRY_NEXT = (dns.ESERVER, dns.EREFUSED)


def resolv_conf(text):
    """
    The name servers a resolv.conf C{text} lists, in order, and the words
    after C{nameserver} that are not IP addresses (skipped, as the C library
    skips them).
    """
    upstreams, bad = [], []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                upstreams.append(Upstream(ipaddress.ip_address(words[1]).compressed))
            except ValueError:
                bad.append(words[1])
    return upstreams, bad


def _local(host):
    """
    Whether C{host} is an address of this machine: one a socket can bind.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, 0))
        except OSError:
            return False
    return True


def reaches_itself(upstream, port, interfaces):
    """
    Whether queries sent to C{upstream} would come to a server that listens
    on C{port} of C{interfaces}.
    """
    if upstream.port != port:
        return False
    address = ipaddress.ip_address(upstream.host)
    for interface in interfaces:
        bound = ipaddress.ip_address(interface)
        if bound == address:
            return True
        # A wildcard takes every address of the machine in its family, and
        # "::" takes IPv4 too (Linux's default).
        if bound.is_unspecified and bound.version in (address.version, 6) and _local(upstream.host):
            return True
    return False


def _fail(settings, message):
    raise CorefileError(settings.filename, settings.line, message)


def _under(labels, apex):
    cut = len(labels) - len(apex)
    return cut >= 0 and labels[cut:] == apex


@attr.s(eq=False)
class Forwarder:
    """
    Relays queries for names outside C{zone}, and inside one of the server
    block's C{scope} zones, to the upstreams of C{settings} (a
    L{idetcd.dns.ForwardSettings}), for clients in its allowed
    networks, answering from a L{AnswerCache} when given C{cache_settings}.
    L{start} reads the resolv.conf files it names.
    """

    settings = attr.ib()
    zone = attr.ib()
    scope = attr.ib(converter=tuple)
    reactor = attr.ib()
    #: The block's C{cache} (an L{idetcd.dns.CacheSettings}), or None.
    cache_settings = attr.ib(default=None)
    #: Where the server counts its answers (a L{tally.DnsTally}), or None:
    #: the replies relayed to clients are counted there too.
    tally = attr.ib(default=None)
    #: The answers kept, when the block has C{cache}.
    cache = attr.ib(init=False, default=None)
    #: Each upstream's L{Health}, by upstream.
    health = attr.ib(init=False, factory=dict)
    #: TCP connections to upstreams (a L{TCPPool}), once started.
    pool = attr.ib(init=False, default=None)
    #: How long upstreams took to answer a try: by upstream (as text), the
    #: count in each L{tally} duration bucket, and nanoseconds in all.
    latency = attr.ib(init=False, factory=lambda: collections.defaultdict(collections.Counter))
    latency_ns = attr.ib(init=False, factory=collections.Counter)
    #: The upstreams, once prepared.
    upstreams = attr.ib(init=False, default=())
    #: The client queries in flight upstream.
    in_flight = attr.ib(init=False, factory=set)
    #: Queries dropped because C{max_concurrent} were in flight.
    dropped = attr.ib(init=False, default=0)
    #: Tries sent, by upstream (as text).
    tries = attr.ib(init=False, factory=collections.Counter)
    #: Upstream replies taken, by (upstream, rcode label).
    replies = attr.ib(init=False, factory=collections.Counter)
    report = attr.ib(init=False, default=None)
    _closing = attr.ib(init=False, factory=set)  # TCP connections not yet closed
    _verdicts = attr.ib(init=False, factory=dict)  # client address -> allowed
    _turn = attr.ib(init=False, default=0)
    _server = attr.ib(init=False, default=None)  # (port, interfaces) of the server relaying
    _random = attr.ib(init=False, factory=random.Random)

    def __attrs_post_init__(self):
        self._apex = domain_labels(self.zone)
        self._scopes = tuple(domain_labels(zone) for zone in self.scope)
        self.pool = TCPPool(self.reactor, self.settings.expire, self.closing)
        if self.cache_settings is not None:
            self.cache = AnswerCache(self.cache_settings, self.reactor, self.prefetch)

    def prepare(self, port, interfaces):
        """
        Find the upstreams for a server on C{port} of C{interfaces} (see
        L{upstreams_for}) before it listens: a mistake stops the start
        before any port is bound.
        """
        self._server = (port, tuple(interfaces))
        self.upstreams = self.upstreams_for(self.settings)

    def start(self, port, interfaces, report):
        """
        Relay to the upstreams for a server on C{port} of C{interfaces}:
        those L{prepare} found, unless the server listens elsewhere than it
        was told (a port 0 became a port).  C{report} is the server's
        rate-limited log.
        """
        self.report = report
        if not self.upstreams or self._server != (port, tuple(interfaces)):
            self.prepare(port, interfaces)
        self.use(self.settings, self.upstreams)

    def upstreams_for(self, settings):
        """
        The upstreams of C{settings} for this server: those of resolv.conf
        files that are this server are skipped; an upstream named outright
        that is this server, an unreadable file or no upstream at all is a
        L{CorefileError}.
        """
        port, interfaces = self._server
        upstreams = []
        for target in settings.upstreams:
            if isinstance(target, Upstream):
                if reaches_itself(target, port, interfaces):
                    _fail(
                        settings,
                        f"forward to {target} would reach this server itself"
                        f" (it listens on port {port} of {', '.join(interfaces)})",
                    )
                found = [target]
            else:
                found = self._read(settings, target, port, interfaces)
            upstreams.extend(upstream for upstream in found if upstream not in upstreams)
        if not upstreams:
            _fail(
                settings,
                "forward has no upstream: "
                + ", ".join(map(str, settings.upstreams))
                + " lists no name server but this one",
            )
        return tuple(upstreams)

    def use(self, settings, upstreams):
        """
        Relay new queries to C{upstreams} (from L{upstreams_for}) by
        C{settings}; queries in flight finish as they started.
        """
        self.settings, self.upstreams = settings, upstreams
        self._verdicts.clear()
        self.pool.expire = settings.expire
        for upstream in set(self.health) - set(upstreams):
            self.health.pop(upstream).stop()
        for upstream in upstreams:
            health = self.health.get(upstream)
            if health is not None:
                health.max_fails, health.interval = settings.max_fails, settings.health_check
            else:
                self.health[upstream] = Health(
                    upstream, settings.max_fails, settings.health_check, self.reactor,
                    lambda owner, id, upstream=upstream: self.attempt(owner, upstream, id, self.settings.force_tcp),
                )
        log.info(
            "forwarding names outside {zone} to {upstreams} for clients in {allowed}",
            zone=self.zone,
            upstreams=" ".join(map(str, upstreams)),
            allowed=" ".join(map(str, settings.allowed)),
        )

    def _read(self, settings, path, port, interfaces):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(RESOLV_CONF_SIZE)
        except OSError as e:
            _fail(settings, f"forward cannot read {path}: {e.strerror or e}")
        found, bad = resolv_conf(text)
        for word in bad:
            log.warn("{path}: nameserver {word!r} is not an IP address; skipped", path=path, word=word)
        kept = []
        for upstream in found:
            if reaches_itself(upstream, port, interfaces):
                log.info("{path}: skipping nameserver {upstream}: it is this server", path=path, upstream=str(upstream))
            else:
                kept.append(upstream)
        return kept

    def covers(self, query):
        """
        Whether C{query} (a L{wire.Query}) is one to forward: its name lies
        outside the served zone and inside the server block's; zone
        transfers are never forwarded.
        """
        if query.type in (dns.AXFR, dns.IXFR):
            return False
        labels = tuple(label.lower() for label in query.labels)
        return not _under(labels, self._apex) and any(_under(labels, zone) for zone in self._scopes)

    def allows(self, peer):
        """
        Whether the client at address C{peer} may have its queries forwarded.
        """
        verdict = self._verdicts.get(peer)
        if verdict is None:
            if len(self._verdicts) >= VERDICTS:
                self._verdicts.clear()
            verdict = self._verdicts[peer] = self._judge(peer)
        return verdict

    def _judge(self, peer):
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.settings.allowed)

    def attempt(self, owner, upstream, id, tcp):
        """
        A try for C{owner} to C{upstream}, with C{id}, over TCP if C{tcp}.
        """
        if tcp:
            return TCPAttempt(owner, upstream, id, self.pool)
        return UDPAttempt(owner, upstream, id, self.reactor, self.report)

    def relay(self, data, query, send, tcp, peer):
        """
        Forward the message C{data} (read as C{query}) of the client at
        address C{peer} and hand the reply, with the client's id, to
        C{send}; over TCP if C{tcp}.  A kept answer is handed at once.
        With C{max_concurrent} queries in flight it is dropped instead.
        """
        if self.cache is not None and self._from_cache(data, query, send, tcp, peer):
            return
        if len(self.in_flight) >= self.settings.max_concurrent:
            self.dropped += 1
            self.report(
                "forward-full",
                "dropped a query to forward: {limit} already in flight upstream",
                limit=self.settings.max_concurrent,
            )
            return
        exchange = _Exchange(self, data, query, send, tcp, self._order())
        if self.tally is not None:
            exchange.lane = tally.lane("tcp" if tcp else "udp", peer)
        self.in_flight.add(exchange)
        exchange.start()

    def _from_cache(self, data, query, send, tcp, peer):
        started = tally.now()
        limit = wire.MAX_MESSAGE if tcp else max(wire.MIN_PAYLOAD, query.edns.payload if query.edns else 0)
        reply = self.cache.answer(data, query, limit)
        if reply is None:
            return False
        send(reply)
        if self.tally is not None:
            proto = "tcp" if tcp else "udp"
            answer = tally.kind(query.type, reply[3] & 0x0F)
            self.tally.settle(
                [tally.key(answer, tally.lane(proto, peer), len(data), len(reply))],
                tally.now() - started, proto, len(data), len(reply),
            )
        return True

    def prefetch(self, query, data):
        """
        Ask upstream again for the kept answer to C{query} (the client
        message C{data}), for the cache only, unless C{max_concurrent}
        queries are in flight.
        """
        if len(self.in_flight) < self.settings.max_concurrent:
            exchange = _Exchange(self, data, query, None, False, self._order())
            self.in_flight.add(exchange)
            exchange.start()

    def _order(self):
        """
        The upstreams to try, in order, by the policy: those not down, or,
        when all are down, one of them at random (as CoreDNS does).
        """
        upstreams = list(self.upstreams)
        if self.settings.policy == "random":
            self._random.shuffle(upstreams)
        elif self.settings.policy == "round_robin":
            self._turn = (self._turn + 1) % len(upstreams)
            upstreams = upstreams[self._turn :] + upstreams[: self._turn]
        up = [upstream for upstream in upstreams if not self.health[upstream].down]
        return collections.deque(up or [self._random.choice(upstreams)])

    def closing(self, closed):
        """
        Wait for the Deferred C{closed} on L{stop}.
        """
        self._closing.add(closed)
        closed.addBoth(lambda _: self._closing.discard(closed))

    def stop(self):
        """
        Give up every query in flight, unanswered; fires once every socket
        is closed.
        """
        for exchange in list(self.in_flight):
            exchange.end()
        for health in self.health.values():
            health.stop()
        self.pool.close()
        return defer.gatherResults(list(self._closing)).addCallback(lambda _: None)


@attr.s(eq=False)
class _Exchange:
    """
    One client query, tried on the upstreams in C{order} until one answers
    or its time is up.  An upstream that times out goes to the back of the
    order (its datagram may have been lost); one that fails at once, or
    answers SERVFAIL or REFUSED, is not tried again.  Over TCP when the
    client asked over TCP (over UDP first with C{prefer_udp}: a truncated
    reply is asked again over TCP), always with C{force_tcp}.  C{send} is
    None for a prefetch: the reply is only kept.
    """

    forwarder = attr.ib()
    data = attr.ib()
    query = attr.ib()
    send = attr.ib()
    tcp = attr.ib()
    order = attr.ib()
    #: The L{tally.LANES} bits the reply to the client is counted with, or
    #: None when it is not counted.
    lane = attr.ib(init=False, default=None)
    _started = attr.ib(init=False, default=0)  # tally.now() when read
    _fallback = attr.ib(init=False, default=None)  # an upstream's SERVFAIL or REFUSED
    _deadline = attr.ib(init=False, default=None)  # when the time is up
    _attempt = attr.ib(init=False, default=None)
    _attempt_started = attr.ib(init=False, default=0)  # tally.now() when the try was sent
    _timer = attr.ib(init=False, default=None)  # the one timer: the try's
    _over_tcp = attr.ib(init=False, default=False)  # the next try goes over TCP

    def start(self):
        self._started = tally.now()
        settings = self.forwarder.settings
        self._over_tcp = settings.force_tcp or (self.tcp and not settings.prefer_udp)
        self._deadline = self.forwarder.reactor.seconds() + settings.timeout
        self._next()

    def _next(self):
        self._stop_attempt()
        clock = self.forwarder.reactor
        wait = min(ATTEMPT, self._deadline - clock.seconds())
        if wait < MIN_ATTEMPT:
            self.forwarder.report(
                "forward-expired", "no answer from any upstream within {timeout} s",
                timeout=self.forwarder.settings.timeout,
            )
            return self._finish(None)
        if not self.order:
            return self._finish(None)
        upstream = self.order.popleft()
        id = secrets.randbits(16)
        attempt = self.forwarder.attempt(self, upstream, id, self._over_tcp)
        self._attempt = attempt
        self._timer = clock.callLater(wait, self._timed_out, attempt)
        self.forwarder.tries[str(upstream)] += 1
        self._attempt_started = tally.now()
        attempt.start(_SHORT.pack(id) + self.data[2:], wait)

    def accepts(self, reply, id):
        """
        Whether C{reply} answers the try with C{id}: a response with that
        id and our question (the name in any case).
        """
        question = self.query.question
        end = wire.HEADER.size + len(question)
        if len(reply) < end:
            return False
        reply_id, flags, count = struct.unpack_from("!HHH", reply)
        return (
            reply_id == id
            and flags & wire.QR
            and count == 1
            and reply[wire.HEADER.size : end - 4].lower() == question[:-4].lower()
            and reply[end - 4 : end] == question[-4:]
        )

    def answered(self, attempt, reply):
        if attempt is not self._attempt:
            return
        forwarder, upstream = self.forwarder, attempt.upstream
        forwarder.health[upstream].success()
        took = tally.now() - self._attempt_started
        forwarder.latency[str(upstream)][(took >> tally.SHIFT).bit_length()] += 1
        forwarder.latency_ns[str(upstream)] += took
        forwarder.replies[str(upstream), tally.rcode_label(reply[3] & 0x0F)] += 1
        if reply[2] & 0x02 and not attempt.tcp and self.tcp:
            # Truncated over UDP for a client on TCP (prefer_udp): the same
            # upstream again, over TCP.
            self._over_tcp = True
            self.order.appendleft(upstream)
            self._next()
        elif reply[3] & 0x0F in _TRY_NEXT and self.order:
            self._fallback = reply
            self._next()
        else:
            self._finish(reply, kept=True)

    def failed(self, attempt, why):
        if attempt is not self._attempt:
            return
        self.forwarder.health[attempt.upstream].failure()
        self.forwarder.report(
            "forward-failed", "forwarding to {upstream} failed: {why}",
            upstream=str(attempt.upstream), why=why,
        )
        self._next()

    def _timed_out(self, attempt):
        self._timer = None
        self.forwarder.health[attempt.upstream].failure()
        self.order.append(attempt.upstream)
        self.forwarder.report(
            "forward-timeout", "no answer from {upstream} in time", upstream=str(attempt.upstream)
        )
        self._next()

    def _finish(self, reply, kept=False):
        """
        Send C{reply} (or the fallback, or SERVFAIL) to the client; an
        upstream's answer (C{kept}) goes to the cache first.
        """
        self.end()
        cache = self.forwarder.cache
        if kept and cache is not None:
            reply = cache.keep(self.query, reply)
        reply = reply or self._fallback or self._servfail()
        if self.send is None:
            return
        self.send(self.data[:2] + reply[2:])
        if self.lane is not None:
            answer = tally.kind(self.query.type, reply[3] & 0x0F)
            self.forwarder.tally.settle(
                [tally.key(answer, self.lane, len(self.data), len(reply))],
                tally.now() - self._started, "tcp" if self.tcp else "udp", len(self.data), len(reply),
            )

    def _servfail(self):
        query = self.query
        head, tail = wire.template(
            _SERVFAIL, query.flags, len(query.question), wire.MAX_MESSAGE, query.edns
        )
        (flags,) = _SHORT.unpack_from(head)
        return self.data[:2] + _SHORT.pack(flags | RA) + head[2:] + query.question + tail

    def end(self):
        """
        Stop the timer and close every socket of this query.
        """
        self._stop_attempt()
        self.forwarder.in_flight.discard(self)

    def _stop_attempt(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.close()
