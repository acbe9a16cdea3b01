"""
Tests on idetcd.testing's etcd: a clock, an etcd in memory timed by it,
and a client of that etcd.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from idetcd.testing import FakeEtcd

#: How far the clock moves at a time: timers run at about the times they
#: asked for, as on a reactor.
STEP = 0.1


class FakeEtcdCase(unittest.TestCase):
    """
    A test with C{clock}, C{etcd} (a L{FakeEtcd} on it) and C{client}.
    Requests are answered by the time they return; time passes only when
    the test moves the clock.
    """

    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd(self.clock)
        self.addCleanup(self.etcd.close)
        self.client = self.etcd.client(timeout=2.0)
        self.addCleanup(self.client.close)

    def advance(self, seconds):
        """
        Move the clock on by C{seconds}, a step at a time.
        """
        for _ in range(round(seconds / STEP)):
            self.clock.advance(STEP)

    def advance_until(self, predicate, timeout=10.0):
        """
        Move the clock on until C{predicate()} holds; fail after C{timeout}
        seconds of it.
        """
        for _ in range(round(timeout / STEP)):
            if predicate():
                return
            self.clock.advance(STEP)
        self.fail(f"not so after {timeout}s")

    def settled(self, d, timeout=30.0):
        """
        C{d}, once the clock has moved on until it fired.
        """
        self.advance_until(lambda: d.called, timeout)
        return d
