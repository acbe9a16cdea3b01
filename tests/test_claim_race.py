"""
Many nodes starting at once against one real etcd, checked by a watcher
that trusts nothing the claimers say.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from idetcd.claimer import Claimer
from idetcd.etcd import EtcdClient, prefix_range_end
from idetcd.members import Member
from idetcd.pattern import Pattern
from tests.etcdserver import start_etcd
from tests.test_etcd import wait_for

PREFIX = b"/idetcd/"
PATTERN = Pattern.parse("worker{{.ID}}.tf.local.")
NODES = 50
ROUNDS = 20


class Holdings:
    """
    Who holds which key, rebuilt from etcd's own event stream: a put on a
    key someone else holds is a collision.
    """

    def __init__(self):
        self.holder = {}
        self.collisions = []
        self.claims = 0

    def events(self, events, revision):
        for event in events:
            key = event.kv.key
            if event.deleted:
                self.holder.pop(key, None)
                continue
            node = Member.from_value("", event.kv.value).node
            previous = self.holder.get(key)
            if previous is not None and previous != node:
                self.collisions.append((key, previous, node, event.kv.mod_revision))
            self.holder[key] = node
            self.claims += 1


class RaceTests(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_simultaneous_starts_never_share_a_name(self):
        etcd = yield start_etcd(self)
        watcher = EtcdClient([etcd.client_url], reactor)
        self.addCleanup(watcher.close)
        holdings = Holdings()
        _, revision = yield watcher.range(PREFIX, prefix_range_end(PREFIX))
        watch = watcher.watch(PREFIX, prefix_range_end(PREFIX), revision + 1, holdings.events)
        self.addCleanup(watch.stop)
        clients = [EtcdClient([etcd.client_url], reactor) for _ in range(NODES)]
        for client in clients:
            self.addCleanup(client.close)
        expected = sorted(PATTERN.render(slot) for slot in range(1, NODES + 1))

        for round_ in range(ROUNDS):
            claimers = [
                Claimer(
                    client,
                    PATTERN,
                    NODES,
                    PREFIX,
                    Member(name="", ipv4=("127.0.0.1",), node=f"r{round_}n{i}"),
                    10,
                    reactor,
                )
                for i, client in enumerate(clients)
            ]
            started = reactor.seconds()
            for claimer in claimers:
                claimer.startService()
            try:
                names = yield defer.gatherResults([c.when_claimed() for c in claimers])
                took = reactor.seconds() - started
            finally:
                yield defer.gatherResults([c.stopService() for c in claimers])
            self.assertEqual(sorted(names), expected, f"round {round_}")
            self.assertLess(took, 5.0, f"round {round_}: claiming took {took:.2f}s")
            yield wait_for(lambda: not holdings.holder, timeout=10)

        self.assertEqual(holdings.collisions, [])
        self.assertEqual(holdings.claims, NODES * ROUNDS)
