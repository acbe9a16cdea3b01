"""
An etcd client whose every reply a test gives, for the timing of what the
claimer and the lease keeper do on a L{twisted.internet.task.Clock}.
"""

from twisted.internet import defer


class ScriptedClient:
    """
    An etcd client whose every reply the test gives, in order, for the
    claimer's transitions on a L{Clock}.
    """

    def __init__(self):
        self.calls = []
        self.revoked = []

    def _call(self, method, *args):
        d = defer.Deferred()
        self.calls.append((method, args, d))
        return d

    def pending(self, method):
        return [args for m, args, d in self.calls if m == method and not d.called]

    def answer(self, method, result):
        """
        Answer the oldest unanswered call of C{method} with C{result} (an
        exception fails it).
        """
        for m, args, d in self.calls:
            if m == method and not d.called:
                if isinstance(result, Exception):
                    d.errback(result)
                else:
                    d.callback(result)
                return args
        raise AssertionError(f"no {method} call waits for an answer: {self.calls}")

    def lease_grant(self, ttl, lease=0):
        return self._call("grant", ttl)

    def lease_keepalive(self, lease, timeout=None):
        return self._call("keepalive", lease, timeout)

    def lease_time_to_live(self, lease, keys=False, timeout=None):
        return self._call("timetolive", lease, keys)

    def range(self, key, range_end=None):
        return self._call("range", key)

    def put(self, key, value, lease=0):
        return self._call("put", key, lease)

    def create(self, key, value, lease=0, replacing=None, also_delete=None):
        return self._call("create", key, lease)

    def delete_on_lease(self, key, lease):
        return self._call("delete", key, lease)

    def lease_revoke(self, lease):
        self.revoked.append(lease)
        return defer.succeed({})
