"""
A service tree whose children depend on each other: each starts once the
one before it has, and each stops once the ones after it have.
"""

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.python.failure import Failure


class OrderedMultiService(MultiService):
    """
    A L{MultiService} whose children start in the order they were added,
    each after the Deferred the one before returned from C{startService}
    (if any) has fired, and stop in the reverse order, each after the ones
    after it have stopped.  Every child's C{stopService} must cope with
    a child that never started.

    Ports are bound in C{privilegedStartService} (as twistd calls it before
    dropping privileges); C{startService} binds them first if that has not
    happened, so a taken port fails the start at once, before any child runs,
    and leaves nothing bound.
    """

    _bound = False
    _children_starting = None
    _start_result = None

    def privilegedStartService(self):
        bound = []
        try:
            for child in self:
                child.privilegedStartService()
                bound.append(child)
        except BaseException:
            # Children that bound a port close it on stopService, running or not.
            for child in reversed(bound):
                child.stopService()
            raise
        self._bound = True

    def startService(self):
        """
        Start the children in order; L{when_started} says how that went.
        """
        if not self._bound:
            self.privilegedStartService()
        self._bound = False
        Service.startService(self)  # not MultiService's: the children start below
        self._start_result = None
        self._children_starting = self._start_children(list(self))

    @defer.inlineCallbacks
    def _start_children(self, children):
        try:
            for child in children:
                started = child.startService()
                if isinstance(started, defer.Deferred):
                    yield started
        except Exception:  # CancelledError too: stopped while starting
            self._start_result = Failure()
        else:
            self._start_result = True

    def when_started(self):
        """
        Fires once every child has started; fails with the first failure to
        start, or with L{defer.CancelledError} if stopped before.
        """
        if self._children_starting is None:
            return defer.fail(RuntimeError("not started"))
        d = defer.Deferred()

        def relay(_):
            result = self._start_result
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

        self._children_starting.addCallback(relay)
        return d

    @defer.inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        starting = self._children_starting
        if starting is not None and not starting.called:
            starting.cancel()
        # Every child, started or not: one that only bound its ports (the
        # start stopped, or failed, before its turn) closes them.
        for child in reversed(list(self)):
            yield child.stopService()
