"""
The waiters of an event (L{idetcd.common.Waiters}).
"""

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial import unittest

from idetcd.common import Waiters


class WaitersTests(unittest.TestCase):
    def test_fire_fires_every_waiter_once(self):
        waiters = Waiters()
        first, second = waiters.wait(), waiters.wait()
        waiters.fire("worker1.tf.local.")
        self.assertEqual(
            [self.successResultOf(first), self.successResultOf(second)],
            ["worker1.tf.local.", "worker1.tf.local."],
        )
        self.assertEqual(len(waiters), 0)
        later = waiters.wait()
        self.assertNoResult(later)

    def test_a_failure_fails_them(self):
        waiters = Waiters()
        d = waiters.wait()
        waiters.fire(Failure(ValueError("every slot taken")))
        self.assertEqual(str(self.failureResultOf(d, ValueError).value), "every slot taken")

    def test_a_cancelled_waiter_leaves_the_others(self):
        waiters = Waiters()
        gone, staying = waiters.wait(), waiters.wait()
        gone.cancel()
        self.failureResultOf(gone, defer.CancelledError)
        self.assertEqual(len(waiters), 1)
        waiters.fire(1)
        self.assertEqual(self.successResultOf(staying), 1)

    def test_cancel_cancels_them_all(self):
        waiters = Waiters()
        ds = [waiters.wait() for _ in range(3)]
        waiters.cancel()
        for d in ds:
            self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(waiters), 0)
