"""
The HTTP connections to etcd: persistent, quiet in the log, over TLS for
``https://`` endpoints, and probed with TCP keepalive so a vanished peer is
noticed.
"""

import socket

import attr
import treq
from hyperlink import EncodedURL
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from idetcd.etcd.tls import TlsSettings

#: TCP keepalive on etcd connections: a watch on a peer that vanished
#: without a reset (host down, partition) is noticed in about 11 s, where
#: etcd's own progress notifications come every 10 minutes.
KEEPALIVE = (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))


def _socket(transport):
    """
    The TCP socket under C{transport}: its own handle, or, over TLS, the
    handle of the TCP transport the TLS layer wraps.
    """
    for _ in range(2):
        handle = transport.getHandle()
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def _keep_alive(transport):
    sock = _socket(transport)
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE:
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


@implementer(IStreamClientEndpoint)
@attr.s(frozen=True)
class _QuietKeptAlive:
    """
    An endpoint that connects through C{endpoint}, quietly (one log line per
    etcd connection would drown the node's own log), and turns TCP
    keepalive on in each connection it makes.
    """

    endpoint = attr.ib()

    def connect(self, protocolFactory):
        protocolFactory.noisy = False

        def made(protocol):
            _keep_alive(protocol.transport)
            return protocol

        return self.endpoint.connect(protocolFactory).addCallback(made)


@implementer(IAgentEndpointFactory)
@attr.s(frozen=True)
class _EtcdEndpoints:
    """
    The endpoints of etcd connections: TCP for C{http://}, TLS under
    C{policy} for C{https://} (as L{Agent}'s own), each quiet and kept
    alive.
    """

    reactor = attr.ib()
    policy = attr.ib()

    def endpointForURI(self, uri):
        endpoint = HostnameEndpoint(self.reactor, uri.host.decode("ascii"), uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return _QuietKeptAlive(endpoint)


def http_client(reactor, tls=None):
    """
    A treq client for etcd and its connection pool, which the caller
    closes; C{tls} (a L{TlsSettings}) sets up ``https://`` endpoints, by
    default against the system's trust store.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.retryAutomatically = False
    endpoints = _EtcdEndpoints(reactor, (tls or TlsSettings()).policy())
    return pool, treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))


class _URL(EncodedURL):
    """
    An etcd URL for treq.  hyperlink IDNA-encodes the host on its way to
    the wire, which fails on an IPv6 literal such as C{[fd00::1]}
    (hyperlink#68) and on ASCII names IDNA forbids but resolvers take
    (C{etcd_1}, as container tools name hosts); only a host outside ASCII
    needs the encoding, so only such a host gets it.
    """

    def to_uri(self):
        return self if self.host.isascii() else EncodedURL.to_uri(self)


def request_url(url):
    """
    C{url} (text, such as C{http://[::1]:2379/v3/kv/range}) as treq should
    be given it.
    """
    return _URL.from_text(url)
