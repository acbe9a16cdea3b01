"""
Deferreds handed to everyone who waits for one event, fired together when
it happens: a node's name claimed, a token authenticated.
"""

import attr
from twisted.internet import defer
from twisted.python.failure import Failure


@attr.s(eq=False)
class Waiters:
    """
    The Deferreds of L{wait}, not yet fired.  A waiter that cancels its
    Deferred leaves the others waiting.
    """

    _waiting = attr.ib(factory=list, init=False)

    def wait(self):
        """
        A Deferred that fires with the result of the next L{fire}.
        """
        d = defer.Deferred(self._forget)
        self._waiting.append(d)
        return d

    def _forget(self, d):
        if d in self._waiting:
            self._waiting.remove(d)

    def fire(self, result):
        """
        Fire every waiter with C{result}, or fail it if C{result} is a
        L{Failure}.
        """
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def cancel(self):
        """
        Cancel every waiter (the event will not come).
        """
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.cancel()

    def __len__(self):
        return len(self._waiting)
