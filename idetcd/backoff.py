"""
Capped exponential backoff with jitter, for everything that retries etcd,
and a throttle for the warnings those retries log.
"""

import random

import attr


@attr.s(eq=False)
class Backoff:
    """
    Delays that double from C{initial} up to C{maximum}, each scaled by a
    random factor in [0.5, 1] so that many nodes retrying after one etcd
    outage do not come back in lock step.
    """

    initial = attr.ib(default=0.05)
    maximum = attr.ib(default=5.0)
    random = attr.ib(default=random.random)
    _failures = attr.ib(default=0, init=False)

    def next(self):
        delay = min(self.maximum, self.initial * 2 ** self._failures)
        self._failures = min(self._failures + 1, 64)
        return delay * (0.5 + self.random() / 2)

    def reset(self):
        self._failures = 0


@attr.s(eq=False)
class LogThrottle:
    """
    When a warning repeated on every retry is due: the first of a run of
    failures, then one per C{interval} seconds, so an outage of an hour
    logs a hundred lines rather than thousands.
    """

    clock = attr.ib()
    interval = attr.ib(default=30.0)
    _logged_at = attr.ib(default=None, init=False)

    def due(self):
        now = self.clock.seconds()
        if self._logged_at is not None and now - self._logged_at < self.interval:
            return False
        self._logged_at = now
        return True

    def reset(self):
        """
        The run of failures is over: the next one is logged at once.
        """
        self._logged_at = None
