"""
Real etcd servers for tests: private, on loopback, on free ports, with their
data in the test's temporary directory.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from idetcd.embedded import EtcdProcess, free_ports
from idetcd.etcd import EtcdClient


@defer.inlineCallbacks
def start_etcd(case, member="idetcd"):
    """
    Start one etcd member for C{case}; it is stopped when the test ends.
    """
    etcd = EtcdProcess(reactor, os.path.abspath(case.mktemp()), member=member)
    case.addCleanup(etcd.stopService)
    yield etcd.startService()
    return etcd


@defer.inlineCallbacks
def start_etcd_cluster(case, size=3):
    """
    Start a C{size}-member etcd cluster for C{case}.
    """
    names = [f"m{i}" for i in range(size)]
    ports = free_ports(2 * size)
    peers = dict(zip(names, ports[size:]))
    clients = dict(zip(names, ports[:size]))
    cluster = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in peers.items())
    members = [
        EtcdProcess(
            reactor,
            os.path.abspath(case.mktemp()),
            client_port=clients[name],
            peer_port=peers[name],
            member=name,
            initial_cluster=cluster,
        )
        for name in names
    ]
    for etcd in members:
        case.addCleanup(etcd.stopService)
    # Members wait for each other before they report healthy: start together.
    yield defer.gatherResults([etcd.startService() for etcd in members], consumeErrors=True)
    return members


@defer.inlineCallbacks
def restart(etcd, sig=9):
    """
    Kill C{etcd} with C{sig} and start it again on the same ports and data.
    """
    yield etcd.kill(sig)
    etcd.running = 0
    yield etcd.startService()


class EtcdTestCase(unittest.TestCase):
    """
    A test with an etcd server of its own, C{etcd}, and a client to it.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.etcd = yield start_etcd(self)
        self.client = self.make_client([self.etcd.client_url])

    def make_client(self, endpoints):
        client = EtcdClient(endpoints, reactor, timeout=2.0)
        self.addCleanup(client.close)
        return client
