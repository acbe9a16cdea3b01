"""
The examples in C{examples/} run for real across hosts (network
namespaces, L{checks.netns}): real etcd, a real C{twistd idetcd} node per
host, real torchrun, TensorFlow and Open MPI, started as the examples say.
"""

import os

from twisted.internet import defer
from twisted.trial import unittest

from checks.netns import ip, network

WORKERS = 3


class HostsTests(unittest.TestCase):
    """
    The hosts are what the examples need: names resolve through each
    host's own node, and nothing is left once a test ends.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_names_resolve_on_every_host(self):
        """
        Once the nodes hold names, C{getent} (glibc, C{hosts: files dns})
        on every host finds every worker at its host's address.
        """
        hosts = yield network(self, WORKERS)
        nodes = [hosts.start_node(host, srv=2222) for host in hosts.hosts]
        yield defer.gatherResults([node.when_ready() for node in nodes])
        for host in hosts.hosts:
            found = {}
            for i in range(1, WORKERS + 1):
                lookup = host.run(["getent", "hosts", f"worker{i}.tf.local"])
                status = yield lookup.when_ended(30)
                self.assertEqual(status, 0, lookup.describe())
                address, name = lookup.output.split()[:2]
                found[name] = address
            self.assertEqual(set(found.values()), {h.address for h in hosts.hosts})

    @defer.inlineCallbacks
    def test_close_leaves_nothing(self):
        """
        Closing takes away the namespaces, their files, the route and the
        scratch directory, and kills what runs on the hosts.
        """
        hosts = yield network(self, 1)
        sleeper = hosts.hosts[0].run(["sleep", "600"])
        yield hosts.close()
        self.assertTrue(sleeper.ended)
        self.assertNotIn(f"-{hosts.tag}-", ip("netns", "list"))
        self.assertNotIn(f"metric {hosts.tag}", ip("route", "show", "type", "blackhole"))
        self.assertEqual(
            [p for p in ["/etc/netns/" + h.namespace for h in hosts.hosts] + [hosts.directory] if os.path.exists(p)],
            [],
        )
