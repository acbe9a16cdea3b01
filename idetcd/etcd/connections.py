"""
The HTTP connections to etcd: persistent, quiet in the log, and probed with
TCP keepalive so a vanished peer is noticed.
"""

import socket

from twisted.web.client import _HTTP11ClientFactory


#: TCP keepalive on etcd connections: a watch on a peer that vanished
#: without a reset (host down, partition) is noticed in about 11 s, where
#: etcd's own progress notifications come every 10 minutes.
KEEPALIVE = (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))


def _keep_alive(transport):
    sock = transport.getHandle()
    if not isinstance(sock, socket.socket):
        return  # TLS: the handle is the TLS connection, left as it is
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE:
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class _EtcdConnections(_HTTP11ClientFactory):
    # One log line per etcd connection would drown the node's own log.
    noisy = False

    def buildProtocol(self, addr):
        protocol = _HTTP11ClientFactory.buildProtocol(self, addr)
        made = protocol.connectionMade

        def connectionMade():
            _keep_alive(protocol.transport)
            made()

        protocol.connectionMade = connectionMade
        return protocol
