"""
Upstream DNS servers for tests of forward, on loopback: a small
twisted.names authority that notes what it is asked, scripted misbehaving
ones, a port that refuses, and L{ForwardTestCase}, a server for tf.local.
that forwards everything else to them.
"""

import socket

import dns.message
import dns.query
import dns.rcode
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.error import CannotListenError
from twisted.names import common
from twisted.names import dns as tdns
from twisted.names import server as tserver
from twisted.names.error import AuthoritativeDomainError
from twisted.trial import unittest

from idetcd.dns import ForwardSettings, Upstream
from idetcd.dns._authority import ZoneAuthority
from idetcd.dns._forward import Forwarder
from idetcd.dns._server import DNSServer
from tests.dnsclient import HOST
from tests.fakeregistry import FakeRegistry, sample_members
from tests.waiting import wait_for

# What the upstream authority holds.
EXAMPLE = {b"example.com": "192.0.2.10", b"www.example.org": "192.0.2.20"}
# How long a client waits: far longer than any forward timeout in here.
CLIENT_WAIT = 10.0


def _has_opt(message):
    return any(record.type == tdns.OPT for record in message.additional)


class _Records(common.ResolverBase):
    def _lookup(self, name, cls, type, timeout):
        address = EXAMPLE.get(name.lower())
        if address is None or type != tdns.A:
            return defer.fail(AuthoritativeDomainError(name))
        record = tdns.Record_A(address, ttl=60)
        return defer.succeed(([tdns.RRHeader(name, tdns.A, tdns.IN, 60, record, auth=True)], [], []))


class _Authority(tserver.DNSServerFactory):
    """
    A stock twisted.names server that also answers EDNS with EDNS, and
    notes every query it gets: (id, had an OPT, "udp" or "tcp").
    """

    noisy = False

    def __init__(self):
        tserver.DNSServerFactory.__init__(self, authorities=[_Records()])
        self.received = []

    def messageReceived(self, message, proto, address=None):
        self.received.append((message.id, _has_opt(message), "tcp" if address is None else "udp"))
        return tserver.DNSServerFactory.messageReceived(self, message, proto, address)

    def _responseFromMessage(self, message, **kwargs):
        response = tserver.DNSServerFactory._responseFromMessage(self, message, **kwargs)
        if _has_opt(message):
            edns = tdns._EDNSMessage._fromMessage(response)
            edns.ednsVersion = 0
            edns.timeReceived = response.timeReceived
            return edns
        return response


def listen_both(case, udp_protocol, tcp_factory):
    """
    Listen with C{udp_protocol()} and C{tcp_factory} on one free loopback
    port; its number.
    """
    for _ in range(20):
        udp = reactor.listenUDP(0, udp_protocol(), interface=HOST)
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, tcp_factory, interface=HOST)
        except CannotListenError:
            udp.stopListening()
            continue
        case.addCleanup(udp.stopListening)
        case.addCleanup(tcp.stopListening)
        return port
    raise RuntimeError("no free port for both UDP and TCP")


def start_authority(case):
    """
    The upstream authority on loopback: (its factory, its port).
    """
    factory = _Authority()
    return factory, listen_both(case, lambda: tdns.DNSDatagramProtocol(factory), factory)


def closed_port():
    """
    A loopback UDP port nobody listens on: datagrams to it are refused.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class _Scripted(protocol.DatagramProtocol):
    """
    A misbehaving upstream: answers each query with the datagrams that
    C{script} makes from it (a list of dnspython messages).
    """

    noisy = False

    def __init__(self, script):
        self.script = script
        self.received = 0

    def datagramReceived(self, data, address):
        self.received += 1
        for message in self.script(dns.message.from_wire(data)):
            self.transport.write(message.to_wire(), address)


def forward_settings(upstreams, **kwargs):
    return ForwardSettings(tuple(upstreams), **kwargs)


class ForwardTestCase(unittest.TestCase):
    """
    A server for tf.local. that forwards everything else.
    """

    def setUp(self):
        self.registry = FakeRegistry(sample_members(), revision=100)
        self.authority, self.upstream_port = start_authority(self)

    def serve(self, *upstreams, zones=(".",), tally=None, cache=None, **settings):
        upstreams = upstreams or (Upstream(HOST, self.upstream_port),)
        self.forwarder = Forwarder(
            forward_settings(upstreams, **settings), "tf.local.", zones, reactor, cache_settings=cache, tally=tally
        )
        self.server = DNSServer(
            ZoneAuthority("tf.local.", self.registry, 30), 0, forwarder=self.forwarder, tally=tally
        )
        self.server.startService()
        self.addCleanup(self.server.stopService)
        return self.server

    def udp(self, query, source=None):
        return threads.deferToThread(
            dns.query.udp, query, HOST, port=self.server.port, timeout=CLIENT_WAIT, source=source
        )

    def tcp(self, query):
        return threads.deferToThread(
            dns.query.tcp, query, HOST, port=self.server.port, timeout=CLIENT_WAIT
        )

    def assertForwarded(self, response, query, address="192.0.2.10"):
        self.assertEqual(response.id, query.id)
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual([r.address for r in response.answer[0]], [address])

    def wait_idle(self):
        return wait_for(lambda: not self.forwarder.in_flight)

    def scripted(self, script):
        """
        A L{_Scripted} upstream on a free loopback port: (it, its address).
        """
        upstream = _Scripted(script)
        port = reactor.listenUDP(0, upstream, interface=HOST)
        self.addCleanup(port.stopListening)
        return upstream, Upstream(HOST, port.getHost().port)
