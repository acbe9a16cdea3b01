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
    Which lease holds which key, rebuilt from etcd's own event stream: a
    put on a key that another lease still holds is a collision, and so is
    a lease holding two keys.
    """

    def __init__(self):
        self.holder = {}
        self.collisions = []
        self.claims = 0
        self.deletes = []

    def events(self, events, revision):
        for event in events:
            key = event.kv.key
            if event.deleted:
                self.holder.pop(key, None)
                self.deletes.append((key, event.kv.mod_revision))
                continue
            lease = event.kv.lease
            previous = self.holder.get(key)
            if previous is not None and previous != lease:
                self.collisions.append((key, previous, lease, event.kv.mod_revision))
            others = [other for other, held in self.holder.items() if held == lease and other != key]
            if lease and others:
                self.collisions.append((key, lease, "also holds", others))
            if previous != lease:
                self.claims += 1
            self.holder[key] = lease

    @classmethod
    @defer.inlineCallbacks
    def watch(cls, case, client, prefix=PREFIX):
        """
        Start watching C{prefix} from now on, for the length of C{case}.
        """
        holdings = cls()
        _, revision = yield client.range(prefix, prefix_range_end(prefix))
        watch = client.watch(prefix, prefix_range_end(prefix), revision + 1, holdings.events)
        case.addCleanup(watch.stop)
        return holdings


class RaceTests(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_simultaneous_starts_never_share_a_name(self):
        etcd = yield start_etcd(self)
        watcher = EtcdClient([etcd.client_url], reactor)
        self.addCleanup(watcher.close)
        holdings = yield Holdings.watch(self, watcher)
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
            # A wide bound: CI is a loaded 2-core box (1-2 s when quiet).
            self.assertLess(took, 30.0, f"round {round_}: claiming took {took:.2f}s")
            yield wait_for(lambda: not holdings.holder, timeout=10)

        self.assertEqual(holdings.collisions, [])
        self.assertEqual(holdings.claims, NODES * ROUNDS)
