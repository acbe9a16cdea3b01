"""
What a claim attempt does next (L{idetcd.claim._decision}): every case as
a table row, and properties over random queues and slots.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from idetcd.claim._decision import (
    Full,
    MakeWay,
    Probe,
    Queue,
    Take,
    WaitTurn,
    Won,
    for_preferred,
    for_queued,
    make_way,
)
from idetcd.etcd import KeyValue

OWN, PREDECESSOR, OTHER = 7, 5, 9
NAMES = [f"worker{slot}.tf.local." for slot in range(1, 6)]
SLOTS = {name: slot for slot, name in enumerate(NAMES, 1)}
W1, W2, W3, W4, W5 = NAMES


def kv(lease, mod_revision=4):
    return KeyValue(key=b"/idetcd/" + W2.encode(), value=b"{}", create_revision=3, mod_revision=mod_revision, lease=lease)


class PreferredTests(unittest.TestCase):
    """
    The preferred slot, by who holds its key.
    """

    def test_table(self):
        rows = [
            # (key, predecessor lease, carries this node's identity) -> step
            (None, None, False, Take(W2)),
            (None, PREDECESSOR, False, Take(W2)),
            (kv(OWN, 6), None, True, Won(6)),
            # The lease adopted from the previous process is this node's own.
            (kv(OWN, 6), OWN, True, Won(6)),
            (kv(PREDECESSOR), PREDECESSOR, True, Take(W2, replacing=kv(PREDECESSOR))),
            (kv(PREDECESSOR), PREDECESSOR, False, Take(W2, replacing=kv(PREDECESSOR))),
            (kv(OTHER), PREDECESSOR, False, Queue()),
            (kv(OTHER), None, False, Queue()),
            (kv(OTHER), None, True, Probe(kv(OTHER))),
            (kv(OTHER), PREDECESSOR, True, Probe(kv(OTHER))),
            # A key on no lease (written by hand) is not a twin's.
            (kv(0), None, True, Queue()),
            (kv(0), PREDECESSOR, False, Queue()),
        ]
        for key, predecessor, ours, step in rows:
            self.assertEqual(for_preferred(W2, key, OWN, predecessor, ours), step, (key, predecessor, ours))


class QueuedTests(unittest.TestCase):
    """
    A queued node's next step, by its share and the free slots.
    """

    def test_table(self):
        rows = [
            # (share, free names) -> step
            (W3, {W3}, Take(W3)),
            (W3, {W1, W3}, Take(W3)),
            (None, {W1}, WaitTurn()),
            (None, set(), Full()),
        ]
        for share, free, step in rows:
            self.assertEqual(for_queued(share, NAMES, free.__contains__), step, (share, free))

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from([None, *NAMES]), st.sets(st.sampled_from(NAMES)))
    def test_takes_only_its_share_and_is_full_only_when_nothing_is_free(self, share, free):
        step = for_queued(share, NAMES, free.__contains__)
        if share is not None:
            self.assertEqual(step, Take(share))
        else:
            self.assertEqual(step, WaitTurn() if free else Full())


class MakeWayTests(unittest.TestCase):
    """
    Waiting for a dead member's slot rather than taking a higher one.
    """

    def test_table(self):
        rows = [
            # (share, queue, dead) -> step
            (W3, [OWN], [W1], MakeWay(W3, (W1,))),
            (W3, [OWN], [W2, W1], MakeWay(W3, (W1, W2))),
            # Only those below the share.
            (W3, [OWN], [W4, W1], MakeWay(W3, (W1,))),
            (W3, [OWN], [W4, W5], None),
            (W3, [OWN], [], None),
            # Not alone: a crowd takes its slots at once.
            (W3, [OTHER, OWN], [W1], None),
            (W3, [OWN, OTHER], [W1], None),
            # Not queued yet as far as the registry knows, or no share.
            (W3, [], [W1], None),
            (None, [OWN], [W1], None),
            # A dead mark on a name outside the pattern.
            (W3, [OWN], ["other.example."], None),
        ]
        for share, queue, dead, step in rows:
            self.assertEqual(make_way(share, queue, OWN, SLOTS, dead), step, (share, queue, dead))

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.sampled_from([None, *NAMES]),
        st.lists(st.sampled_from([OWN, OTHER, PREDECESSOR]), max_size=3, unique=True),
        st.lists(st.sampled_from(NAMES), unique=True),
    )
    def test_waits_only_alone_and_only_for_lower_slots(self, share, queue, dead):
        step = make_way(share, queue, OWN, SLOTS, dead)
        lower_dead = share is not None and any(SLOTS[name] < SLOTS[share] for name in dead)
        self.assertEqual(step is not None, queue == [OWN] and lower_dead)
        if step is None:
            return
        self.assertEqual(step.name, share)
        self.assertTrue(step.dead)
        self.assertEqual(list(step.dead), sorted(step.dead, key=SLOTS.__getitem__))
        self.assertEqual(set(step.dead), {name for name in dead if SLOTS[name] < SLOTS[share]})
