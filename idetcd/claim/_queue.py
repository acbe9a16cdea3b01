"""
The queue in which nodes wait their turn to claim a slot.

A node that cannot have its preferred slot puts a key below the prefix's
C{_claims/<pattern tag>/}, on its lease, and claims the slot the queue
assigns it; the registry's watch feeds the queue (L{Registry.follow}), so
reading it costs etcd nothing.
"""

import attr

#: Below the prefix, where nodes queue to claim a slot; "_" (idetcd's
#: bookkeeping) is never in a host name.
QUEUE = b"_claims/"


def assign(queued, names, is_free):
    """
    Which of C{names} (a pattern's names, lowest slot first) each of the
    C{queued} leases (first queued first) should claim: the k-th queued
    gets the k-th lowest free name.  Every node computes the same matching
    from the same revision, and a node that claims its name deletes its
    queue key in the same transaction, which leaves everyone else's share
    unchanged: racing nodes do not collide.  Returns {lease: name}.
    """
    return dict(zip(queued, (name for name in names if is_free(name))))


@attr.s(eq=False)
class ClaimQueue:
    """
    The queue below C{registry}'s prefix, by pattern tag, as the registry
    follows it.  The claimers sharing a registry share its queue too, so
    the assignment is computed once per revision, not once per claimer.
    """

    registry = attr.ib()
    _entries = attr.ib(factory=dict, init=False)  # key -> (create_revision, lease)
    _assignments = attr.ib(factory=dict, init=False)  # tag -> (applied, {lease: name})

    def __attrs_post_init__(self):
        self.registry.follow(QUEUE, self._apply)

    def _apply(self, key, kv):
        if kv is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = (kv.create_revision, kv.lease)

    def key(self, tag, lease):
        """
        The key under which a node with C{lease} queues for a slot of the
        pattern C{tag}.
        """
        return self.registry.prefix + QUEUE + tag + b"/%016x" % lease

    def queue(self, tag):
        """
        The leases of the nodes queued for a slot of the pattern C{tag},
        first queued first.
        """
        start = self.registry.prefix + QUEUE + tag + b"/"
        queued = sorted(entry for key, entry in self._entries.items() if key.startswith(start))
        return [lease for _, lease in queued]

    def assignment(self, tag, names):
        """
        L{assign} over the queue of pattern C{tag} and the registry's free
        names, computed once per revision the registry applied.
        """
        applied = self.registry.applied
        cached = self._assignments.get(tag)
        if cached is not None and cached[0] == applied:
            return cached[1]
        matching = assign(self.queue(tag), names, self.registry.is_free)
        self._assignments[tag] = (applied, matching)
        return matching
