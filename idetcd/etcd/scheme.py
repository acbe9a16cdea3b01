"""
Whether an endpoint that did not answer speaks the other scheme: an
``http://`` URL pointed at etcd's TLS port (etcd closes the connection on
the plain request, and the client sees nothing but the close), or an
``https://`` URL pointed at a plain port (the handshake fails on a reply
that is no TLS).  The start-up check asks when an endpoint fails, and
turns a yes into one line that says which scheme to write.
"""

from urllib.parse import urlsplit

from OpenSSL import SSL
from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint

from idetcd.etcd.errors import SchemeMismatch

#: How long a probe may take: it runs only after the endpoint failed.
PROBE_TIMEOUT = 2.0
#: Enough of a reply to tell TLS from HTTP.
_ENOUGH = 5


def _client_hello(host):
    """
    The first bytes a TLS client sends to C{host}: a ClientHello, made by
    OpenSSL in memory (nothing is verified: only the reply's kind counts).
    """
    connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    connection.set_connect_state()
    if not host.replace(".", "").isdigit() and ":" not in host:
        connection.set_tlsext_host_name(host.encode("idna"))
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)


def _is_tls(reply):
    # A TLS record: handshake (22) or alert (21), protocol major version 3.
    return len(reply) >= 2 and reply[0] in (21, 22) and reply[1] == 3


def _is_http(reply):
    return reply.startswith(b"HTTP/")


class _FirstBytes(protocol.Protocol):
    """
    Send C{greeting}, keep the first bytes of the reply: C{received} fires
    with them when the connection closes.
    """

    def __init__(self, greeting):
        self.greeting = greeting
        self.reply = b""
        self.received = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.greeting)

    def dataReceived(self, data):
        self.reply += data
        if len(self.reply) >= _ENOUGH:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.received.callback(self.reply)


@defer.inlineCallbacks
def _first_bytes(reactor, host, port, greeting):
    """
    The first bytes C{host}:C{port} replies to C{greeting}, or C{b""}
    when it cannot be reached or says nothing in L{PROBE_TIMEOUT}.
    """
    exchange = _FirstBytes(greeting)
    factory = protocol.Factory.forProtocol(lambda: exchange)
    factory.noisy = False  # a probe at every retry would fill the log
    connecting = HostnameEndpoint(reactor, host, port, timeout=PROBE_TIMEOUT).connect(factory)
    try:
        yield connecting
    except Exception:
        return b""
    timer = reactor.callLater(PROBE_TIMEOUT, exchange.transport.abortConnection)
    reply = yield exchange.received
    if timer.active():
        timer.cancel()
    return reply


@defer.inlineCallbacks
def check_scheme(reactor, url):
    """
    Fails with L{SchemeMismatch} when the etcd endpoint C{url}, which did
    not answer as its scheme says, answers the other scheme; else fires
    with C{None}.
    """
    parts = urlsplit(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme == "http":
        reply = yield _first_bytes(reactor, host, port, _client_hello(host))
        if _is_tls(reply):
            raise SchemeMismatch(
                f"endpoint {url} is a TLS port: write it as https://{parts.netloc}"
                " (with 'tls' for etcd's CA and a client certificate, if it wants one)"
            )
    else:
        request = f"GET /version HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        reply = yield _first_bytes(reactor, host, port, request.encode("ascii"))
        if _is_http(reply):
            raise SchemeMismatch(
                f"endpoint {url} answers plain HTTP, not TLS: write it as http://{parts.netloc},"
                " or turn TLS on in etcd (--cert-file, --key-file)"
            )
