"""
L{RateLimitedLog}: repeated log lines, at most one per interval.
"""

from twisted.internet import task
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.trial import unittest

from idetcd.common._ratelimit import RateLimitedLog


class RateLimitedLogTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.clock = task.Clock()

    def logged(self, namespace):
        return [e for e in self.events if e.get("log_namespace") == namespace]

    def test_one_line_per_kind_per_interval(self):
        """
        Within an interval only the first event of a kind is logged; the next
        logged one counts those left out.  Lines carry the caller's
        namespace.
        """
        report = RateLimitedLog(self.clock, Logger(namespace="test.caller"), interval=10)
        for _ in range(5):
            report("a", "event a {n}", n=1)
            report("b", "event b")
        self.clock.advance(10)
        report("a", "event a {n}", n=2)
        ours = self.logged("test.caller")
        self.assertEqual([(e["kind"], e["skipped"]) for e in ours], [("a", 0), ("b", 0), ("a", 4)])
        self.assertEqual({e["log_level"] for e in ours}, {LogLevel.info})

    def test_reset_ends_a_run(self):
        """
        After C{reset} (the trouble is over) the next event of that kind is
        logged at once, at the chosen level.
        """
        report = RateLimitedLog(self.clock, Logger(namespace="test.reset"), 30, LogLevel.warn)
        report("etcd", "down")
        report("etcd", "down")
        report.reset("etcd")
        self.clock.advance(1)
        report("etcd", "down again")
        ours = self.logged("test.reset")
        self.assertEqual([(e["log_format"], e["skipped"]) for e in ours], [
            ("down ({skipped} more not logged)", 0),
            ("down again ({skipped} more not logged)", 0),
        ])
        self.assertEqual({e["log_level"] for e in ours}, {LogLevel.warn})
