"""
Log lines that repeat, at most one per interval: hostile traffic, or an etcd
that does not answer for an hour, must not flood the node's log.
"""

import attr
from twisted.logger import LogLevel


@attr.s(eq=False)
class RateLimitedLog:
    """
    Logs at most one event of each kind per C{interval} seconds, at
    C{level} (or the one an event gives) on C{log} (the caller's L{twisted.logger.Logger}, so the line
    names the module it is about); each event says how many were left out.
    """

    clock = attr.ib()
    log = attr.ib()
    interval = attr.ib(default=60.0)
    level = attr.ib(default=LogLevel.info)
    _last = attr.ib(init=False, factory=dict)

    def __call__(self, kind, format, level=None, **fields):
        now = self.clock.seconds()
        last, skipped = self._last.get(kind, (None, 0))
        if last is not None and now - last < self.interval:
            self._last[kind] = (last, skipped + 1)
            return
        self._last[kind] = (now, 0)
        self.log.emit(level or self.level, format + " ({skipped} more not logged)", kind=kind, skipped=skipped, **fields)

    def reset(self, kind):
        """
        The trouble of C{kind} is over: its next event is logged at once.
        """
        self._last.pop(kind, None)
