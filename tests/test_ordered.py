"""
Tests for L{idetcd.node._ordered}: children that start one after another and stop
in reverse.
"""

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase

from idetcd.node._ordered import OrderedMultiService


class _Part(Service):
    """
    A child that records what happens to it; its start and stop wait for a
    Deferred the test fires.
    """

    def __init__(self, name, journal, slow_start=False, slow_stop=False, bind_error=None):
        self.setName(name)
        self.journal = journal
        self.slow_start = slow_start
        self.slow_stop = slow_stop
        self.bind_error = bind_error
        self.bound = False
        self.gate = None

    def privilegedStartService(self):
        if self.bind_error is not None:
            raise self.bind_error
        self.bound = True
        self.journal.append(("bind", self.name))

    def startService(self):
        Service.startService(self)
        self.journal.append(("start", self.name))
        if self.slow_start:
            self.gate = defer.Deferred()
            return self.gate

    def stopService(self):
        Service.stopService(self)
        self.bound = False
        self.journal.append(("stop", self.name))
        if self.slow_stop:
            self.gate = defer.Deferred()
            return self.gate


class OrderedMultiServiceTests(SynchronousTestCase):
    def tree(self, *parts):
        top = OrderedMultiService()
        for part in parts:
            part.setServiceParent(top)
        return top

    def test_children_start_in_order_each_after_the_one_before(self):
        journal = []
        a, b, c = _Part("a", journal), _Part("b", journal, slow_start=True), _Part("c", journal)
        top = self.tree(a, b, c)
        top.startService()
        started = top.when_started()
        self.assertEqual(
            journal, [("bind", "a"), ("bind", "b"), ("bind", "c"), ("start", "a"), ("start", "b")]
        )
        self.assertNoResult(started)
        b.gate.callback(None)
        self.assertEqual(journal[-1], ("start", "c"))
        self.assertIsNone(self.successResultOf(started))

    def test_children_stop_in_reverse_each_after_the_one_after(self):
        journal = []
        a, b, c = _Part("a", journal), _Part("b", journal, slow_stop=True), _Part("c", journal)
        top = self.tree(a, b, c)
        top.startService()
        del journal[:]
        stopped = top.stopService()
        self.assertEqual(journal, [("stop", "c"), ("stop", "b")])
        self.assertNoResult(stopped)
        b.gate.callback(None)
        self.assertEqual(journal, [("stop", "c"), ("stop", "b"), ("stop", "a")])
        self.successResultOf(stopped)

    def test_a_taken_port_fails_the_start_and_leaves_nothing_bound(self):
        journal = []
        taken = CannotListenError("127.0.0.1", 53, OSError("in use"))
        a, b, c = _Part("a", journal), _Part("b", journal), _Part("c", journal, bind_error=taken)
        top = self.tree(a, b, c)
        self.assertRaises(CannotListenError, top.startService)
        self.assertFalse(a.bound or b.bound)
        self.assertFalse(any(kind == "start" for kind, _ in journal))

    def test_bound_by_privileged_start_not_bound_again(self):
        journal = []
        top = self.tree(_Part("a", journal))
        top.privilegedStartService()
        top.startService()
        self.assertEqual(journal, [("bind", "a"), ("start", "a")])

    def test_stop_while_starting_stops_only_what_started(self):
        journal = []
        a, b, c = _Part("a", journal), _Part("b", journal, slow_start=True), _Part("c", journal)
        top = self.tree(a, b, c)
        top.startService()
        started = top.when_started()
        del journal[:]
        self.successResultOf(top.stopService())
        # c only bound its ports: it is stopped too, so it closes them.
        self.assertEqual(journal, [("stop", "c"), ("stop", "b"), ("stop", "a")])
        self.failureResultOf(started, defer.CancelledError)
        self.assertFalse(c.running or c.bound)

    def test_a_child_failing_to_start_fails_when_started(self):
        journal = []
        a, b, c = _Part("a", journal, slow_start=True), _Part("b", journal), _Part("c", journal)
        top = self.tree(a, b, c)
        top.startService()
        a.gate.errback(RuntimeError("no etcd binary"))
        failure = self.failureResultOf(top.when_started(), RuntimeError)
        self.assertEqual(str(failure.value), "no etcd binary")
        self.assertFalse(b.running)

    def test_starts_again_after_a_stop(self):
        journal = []
        top = self.tree(_Part("a", journal))
        top.startService()
        self.successResultOf(top.stopService())
        top.startService()
        self.successResultOf(top.when_started())
        self.assertEqual([kind for kind, _ in journal], ["bind", "start", "stop", "bind", "start"])
