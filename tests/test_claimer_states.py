"""
The claimer's typed states: the data each state holds, its table of
moves, the announcement it is given at each start, and callers that react
to it from inside its news (a waiter that stops it, a registry subscriber
reading its name while idetcd.testing's etcd answers at once), on a
L{Clock}.
"""

import attr
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from idetcd.claim import Announcement, Claimer, ClaimQueue, NodeIdentity, NodeState
from idetcd.claim._claimer import _ClaimerMachine
from idetcd.etcd import prefix_range_end
from idetcd.members import Member, Registry
from idetcd.names import Pattern
from idetcd.node import parse
from tests.memoryetcd import FakeEtcdCase

PREFIX = b"/idetcd/"
PATTERN = Pattern.parse("worker{{.ID}}.tf.local.")


def member(node):
    return Member(name="", ipv4=("127.0.0.1",), port="53", node=node)


class ClaimerStateTests(FakeEtcdCase):
    """
    A claimer on its own registry of idetcd.testing's etcd.
    """

    def setUp(self):
        super().setUp()
        self.registry = Registry(self.client, PREFIX, self.clock)
        self.registry.startService()
        self.addCleanup(self.registry.stopService)
        self.announced = []

    def claimer(self, announcements, limit=3, wait=False):
        """
        A claimer given each of C{announcements} in turn, one per start.
        """
        announcements = iter(announcements)

        def announcer():
            self.announced.append(next(announcements))
            return self.announced[-1]

        claimer = Claimer(
            self.client, PATTERN, limit, PREFIX, announcer, 3, self.clock,
            self.registry, ClaimQueue(self.registry), wait=wait,
        )
        self.addCleanup(lambda: claimer.stopService() if claimer.running else None)
        return claimer

    @defer.inlineCallbacks
    def keys(self):
        kvs, _ = yield self.client.range(PREFIX, prefix_range_end(PREFIX))
        return sorted(kv.key[len(PREFIX):].decode() for kv in kvs if not kv.key.startswith(PREFIX + b"_"))

    @defer.inlineCallbacks
    def test_holding_holds_the_name_and_its_revision(self):
        claimer = self.claimer([Announcement(member("a"))])
        self.assertIsNone(claimer._machine.held())  # idle
        claimer.startService()
        name = yield self.settled(claimer.when_claimed())
        kvs, _ = yield self.client.range(PREFIX + name.encode())
        self.assertEqual((claimer._machine.held(), claimer.claim_revision), (name, kvs[0].mod_revision))
        yield claimer.stopService()
        self.assertIsNone(claimer._machine.held())

    @defer.inlineCallbacks
    def test_failed_holds_why(self):
        for node in ("a", "b"):
            other = self.claimer([Announcement(member(node))], limit=2)
            other.startService()
            yield self.settled(other.when_claimed())
        late = self.claimer([Announcement(member("late"))], limit=2)
        late.startService()
        self.advance(1)
        self.assertIn("all 2 slots", str(late._machine.failure()))
        self.assertIsNone(late._machine.held())
        self.assertIsNone(other._machine.failure())

    @defer.inlineCallbacks
    def test_each_start_claims_with_the_announcement_given_then(self):
        """
        The announcer is asked at every start: a restart claims with what
        it gives then (here, another preferred slot).
        """
        claimer = self.claimer([
            Announcement(member("a")),
            Announcement(member("a2"), preferred="worker3.tf.local."),
        ])
        claimer.startService()
        first = yield self.settled(claimer.when_claimed())
        self.assertEqual(claimer.announcement, Announcement(member("a"), preferred=first))
        yield claimer.stopService()
        claimer.startService()
        second = yield self.settled(claimer.when_claimed())
        self.assertEqual((first, second), ("worker1.tf.local.", "worker3.tf.local."))
        self.assertEqual(len(self.announced), 2)
        kvs, _ = yield self.client.range(PREFIX + b"worker3.tf.local.")
        self.assertEqual(Member.from_value(second, kvs[0].value).node, "a2")

    @defer.inlineCallbacks
    def test_a_waiter_may_stop_the_claimer(self):
        """
        A caller told the name may stop the claimer there and then: it
        stops once the claim's transition is over, and gives the name back.
        """
        claimer = self.claimer([Announcement(member("a"))])
        stopped = []
        claimer.when_claimed().addCallback(lambda name: stopped.append(claimer.stopService()))
        claimer.startService()
        self.advance_until(lambda: stopped)
        yield self.settled(stopped[0])
        self.assertEqual((yield self.keys()), [])
        self.assertIsNone(claimer.held_name)

    @defer.inlineCallbacks
    def test_readers_see_the_name_from_inside_the_claims_news(self):
        """
        The name is readable from the claim's report, its waiters, and a
        registry subscriber called while etcd answers at once.
        """
        seen = {}
        claimer = self.claimer([Announcement(member("a"))])
        claimer.on_claimed = lambda name, lease: seen.setdefault("reported", claimer.held_name)
        self.addCleanup(self.registry.subscribe(lambda: seen.setdefault("registry", []).append(claimer.held_name)))
        claimer.when_claimed().addCallback(lambda name: seen.setdefault("waiter", claimer.held_name))
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        claimer.startService()
        yield self.settled(claimer.when_claimed())
        self.assertEqual((seen["reported"], seen["waiter"]), ("worker1.tf.local.",) * 2)
        # Called as the claim's writes came back, before it was won.
        self.assertTrue(seen["registry"])
        self.assertEqual(set(seen["registry"]), {None})
        self.assertFalse([formatEvent(e) for e in events if e.get("log_failure")])

    @defer.inlineCallbacks
    def test_stop_while_waiting_cancels_the_wake_up(self):
        first = self.claimer([Announcement(member("a"))], limit=1)
        first.startService()
        yield self.settled(first.when_claimed())
        waiting = self.claimer([Announcement(member("b"))], limit=1, wait=True)
        waiting.startService()
        self.advance(0.5)
        calls = len(self.clock.getDelayedCalls())
        yield waiting.stopService()
        self.assertEqual(len(self.clock.getDelayedCalls()), calls - 1)
        self.assertEqual((yield self.keys()), ["worker1.tf.local."])


class AnnouncementTests(FakeEtcdCase):
    """
    What the node's identity gives its claimer at each start.
    """

    def test_the_identity_gives_its_member_and_the_state_directorys_claim(self):
        block = parse(
            ". {\n    idetcd {\n        endpoint http://127.0.0.1:2379\n"
            "        pattern worker{{.ID}}.tf.local.\n        address 10.0.0.7\n        node n1\n    }\n}\n"
        )[0]
        state = NodeState(self.mktemp())
        state.acquire()
        self.addCleanup(state.release)
        state.remember_claim("worker2.tf.local.", 0x99)
        dns = attr.make_class("DNS", {"port": attr.ib(default=1053)})()
        found = NodeIdentity(block.idetcd, state, dns, self.client, self.clock)
        self.assertIsNone(self.successResultOf(found.startService()))
        announcement = found.announcement()
        self.assertEqual(
            announcement,
            Announcement(found.member, "worker2.tf.local.", state.predecessor_lease()),
        )
        self.assertEqual(
            (found.member.ipv4, found.member.port, found.member.node), (("10.0.0.7",), "1053", "n1")
        )


class TableTests(unittest.TestCase):
    """
    The claimer's transition table, as Automat holds it.
    """

    def test_every_input_in_every_state_and_the_moves(self):
        """
        Every input is handled in every state; those that change the state
        are the claimer's moves (an input absent here leaves it where it
        is: late news, a question, or work in the same state).
        """
        automaton = _ClaimerMachine.__automat_automaton__
        moves = set()
        for state in automaton.states():
            for given in automaton.inputAlphabet():
                new, _ = automaton.outputForInput(state, given)
                if new is not state:
                    moves.add((state.name, given, new.name))
        self.assertEqual(moves, {
            ("idle", "start", "claiming"), ("idle", "stop", "stopped"),
            ("claiming", "stop", "stopped"), ("claiming", "won", "holding"),
            ("claiming", "won_unsure", "unsure"), ("claiming", "no_slot", "failed"),
            ("claiming", "no_slot_wait", "waiting"),
            ("waiting", "stop", "stopped"), ("waiting", "wake", "claiming"),
            ("holding", "stop", "stopped"), ("holding", "suspend", "unsure"),
            ("holding", "lease_gone", "claiming"), ("holding", "key_lost", "claiming"),
            ("unsure", "stop", "stopped"), ("unsure", "key_confirmed", "holding"),
            ("unsure", "key_missing", "claiming"), ("unsure", "lease_gone", "claiming"),
            ("failed", "stop", "stopped"),
            ("stopped", "start", "claiming"),
        })
