"""
Capped exponential backoff with jitter, for everything that retries etcd.
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
