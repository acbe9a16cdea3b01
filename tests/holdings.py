"""
Who holds which name, as etcd's own event stream tells it, for tests that
trust nothing the claimers say (L{Holdings}).
"""

from twisted.internet import defer

from idetcd.etcd import prefix_range_end
from idetcd.members._registry import BOOKKEEPING
from tests.memberdata import PREFIX


class Holdings:
    """
    Which lease holds which key, rebuilt from etcd's own event stream: a
    put on a key that another lease still holds is a collision, and so is
    a lease holding two keys.  C{puts} is every (key, lease) ever put.
    """

    def __init__(self):
        self.holder = {}
        self.collisions = []
        self.claims = 0
        self.deletes = []
        self.puts = set()

    def events(self, events, revision):
        for event in events:
            key = event.kv.key
            if key.startswith(PREFIX + BOOKKEEPING):
                continue  # idetcd's bookkeeping (claim queue, dead marks, rounds): not a name
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
            self.puts.add((key, lease))

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
