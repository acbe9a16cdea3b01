"""
What a claim attempt does next, decided apart from doing it.

Each step of a claim reads etcd or the registry, then acts; the choice in
between is a pure function here, over the preferred slot's key, the queue,
the members marked dead and this node's lease, so every case is a row of a
table test (tests/test_decision.py), with no etcd and no reactor.
"""

import attr


@attr.s(frozen=True)
class Won:
    """
    The slot is this lease's already, since C{revision}: a try whose reply
    was lost went through.
    """

    revision = attr.ib()


@attr.s(frozen=True)
class Take:
    """
    Create C{name}'s key on this node's lease, in place of C{replacing}
    (C{None}: only if absent; else the key of this node's provably ended
    previous process, which is taken over).
    """

    name = attr.ib()
    replacing = attr.ib(default=None)


@attr.s(frozen=True)
class Probe:
    """
    C{kv} carries this node's identity on a lease it cannot prove its own:
    watch that lease until it ends (or is renewed, by a live twin).
    """

    kv = attr.ib()


@attr.s(frozen=True)
class Queue:
    """
    The preferred slot cannot be had: queue for one.
    """


@attr.s(frozen=True)
class WaitTurn:
    """
    Every free slot is the share of a node queued earlier: wait for it to
    claim, or for its lease to end.
    """


@attr.s(frozen=True)
class Full:
    """
    No slot is free.
    """


@attr.s(frozen=True)
class MakeWay:
    """
    Alone in the queue, with members below C{name} (its share) marked dead:
    leave the queue and wait for one of C{dead} (lowest slot first) to free,
    so a machine replacing a dead one takes the dead one's slot.
    """

    name = attr.ib()
    dead = attr.ib()


def for_preferred(preferred, kv, lease, predecessor_lease, ours_by_identity):
    """
    What to do about the C{preferred} slot, whose key is C{kv} (C{None}:
    absent), with this node's C{lease}; C{predecessor_lease} is the lease of
    this node's provably ended previous process (or C{None}), and
    C{ours_by_identity} whether C{kv} carries this node's identity.
    """
    if kv is not None and kv.lease == lease:
        # First: the lease adopted from the previous process is both.
        return Won(kv.mod_revision)
    if kv is None or kv.lease == predecessor_lease:
        return Take(preferred, replacing=kv)
    if kv.lease and ours_by_identity:
        return Probe(kv)
    return Queue()


def for_queued(share, names, is_free):
    """
    What a queued node does, given its C{share} of the free slots (see
    L{idetcd.claim.ClaimQueue.assignment}; C{None}: none is left for it)
    and whether each of C{names}, the pattern's, C{is_free}.
    """
    if share is not None:
        return Take(share)
    if any(is_free(name) for name in names):
        return WaitTurn()
    return Full()


def make_way(share, queue, lease, slots, dead):
    """
    Whether a node just queued waits for a dead member's slot rather than
    take its C{share}: only when alone in the C{queue} (a crowd of starters
    takes its slots at once) and some of C{dead} (names whose members are
    marked dead on their current lease) are below C{share}, by C{slots}
    (name to slot number).  Returns a L{MakeWay}, or C{None} to go on.
    """
    if share is None or list(queue) != [lease]:
        return None
    below = sorted((slots[name], name) for name in dead if slots.get(name, slots[share]) < slots[share])
    if not below:
        return None
    return MakeWay(share, tuple(name for _, name in below))
