"""
Waiting on the reactor in tests: a pause, and polling until a condition
holds, bounded in time.
"""

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_for(predicate, timeout=10.0, step=0.02):
    """
    Poll C{predicate} on the reactor until it holds; fail after C{timeout}.
    """
    for _ in range(int(timeout / step)):
        if predicate():
            return
        yield sleep(step)
    raise AssertionError(f"condition not met in {timeout}s")
