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


@attr.s(eq=False)
class LinesPerSecond:
    """
    At most C{limit} lines in any window of a second, so a flood cannot
    fill a disk: L{allow} says whether the next line may go out, and at
    the end of a window in which lines were held back, C{summarise(held,
    limit)} is called once with how many.  L{stop} says it at once.
    """

    clock = attr.ib()
    limit = attr.ib()
    summarise = attr.ib()
    _window_end = attr.ib(init=False, default=float("-inf"))
    _lines = attr.ib(init=False, default=0)
    _held = attr.ib(init=False, default=0)
    _summary = attr.ib(init=False, default=None)

    def allow(self):
        now = self.clock.seconds()
        if now >= self._window_end:
            self._window_end = now + 1.0
            self._lines = 0
        if self._lines < self.limit:
            self._lines += 1
            return True
        self._held += 1
        if self._summary is None:
            self._summary = self.clock.callLater(self._window_end - now, self._say)
        return False

    def _say(self):
        self._summary = None
        held, self._held = self._held, 0
        if held:
            self.summarise(held, self.limit)

    def stop(self):
        if self._summary is not None:
            self._summary.cancel()
            self._say()
