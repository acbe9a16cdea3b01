"""
Tests on idetcd.testing's etcd: a clock, an etcd in memory timed by it,
and a client of that etcd; and a client whose requests the test lets
through one at a time.
"""

import collections
from urllib.parse import urlsplit

from twisted.internet.task import Clock
from twisted.trial import unittest

from idetcd.testing import FakeEtcd, Hold

#: How far the clock moves at a time: timers run at about the times they
#: asked for, as on a reactor.
STEP = 0.1


class FakeEtcdCase(unittest.TestCase):
    """
    A test with C{clock}, C{etcd} (a L{FakeEtcd} on it) and C{client}.
    Requests are answered by the time they return; time passes only when
    the test moves the clock.
    """

    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd(self.clock)
        self.addCleanup(self.etcd.close)
        self.client = self.etcd.client(timeout=2.0)
        self.addCleanup(self.client.close)

    def advance(self, seconds):
        """
        Move the clock on by C{seconds}, a step at a time.
        """
        for _ in range(round(seconds / STEP)):
            self.clock.advance(STEP)

    def advance_until(self, predicate, timeout=10.0):
        """
        Move the clock on until C{predicate()} holds; fail after C{timeout}
        seconds of it.
        """
        for _ in range(round(timeout / STEP)):
            if predicate():
                return
            self.clock.advance(STEP)
        self.fail(f"not so after {timeout}s")

    def settled(self, d, timeout=30.0):
        """
        C{d}, once the clock has moved on until it fired.
        """
        self.advance_until(lambda: d.called, timeout)
        return d


def _transaction(body):
    compare = body.get("compare") or [{}]
    return compare[0].get("target")


#: What a held client's requests do, by the name tests give them: the
#: gateway path and, for its transactions, which kind (the client's
#: create-if-absent compares CREATE or MOD; its delete-on-lease, LEASE).
CALLS = {
    "grant": ("/v3/lease/grant", None),
    "keepalive": ("/v3/lease/keepalive", None),
    "timetolive": ("/v3/lease/timetolive", None),
    "range": ("/v3/kv/range", None),
    "put": ("/v3/kv/put", None),
    "create": ("/v3/kv/txn", lambda body: _transaction(body) != "LEASE"),
    "delete": ("/v3/kv/txn", lambda body: _transaction(body) == "LEASE"),
}


class HeldClient:
    """
    A client of C{etcd} whose every request but revocations is held in
    flight until the test lets it through (L{release}; L{reach} lets it
    reach etcd and holds its reply), loses its reply (L{lose}) or cuts it
    (L{cut}): etcd's answers are etcd's, their timing the test's.  Its
    endpoint is C{host}, then the C{spares} (unhindered); other clients of
    the same etcd go unhindered.  Its requests wait for the test, not for
    a timeout, unless they carry one of their own (keepalives do).
    """

    def __init__(self, etcd, host="held", spares=()):
        self.etcd = etcd
        self.host = f"{host}:2379"
        self._hosts = [self.host, *(urlsplit(spare).netloc for spare in spares)]
        # Spare endpoints are where the client sends again what failed.
        self.client = etcd.client([f"http://{self.host}", *spares], timeout=3600.0)
        self._holds = {}
        for path, _ in CALLS.values():
            if path not in self._holds:
                self._holds[path] = etcd.faults.always(path, Hold(), host=self.host)

    def _hold(self, call):
        path, matching = CALLS[call]
        return self._holds[path], matching

    def pending(self, call):
        """
        The bodies of the requests of C{call} held now, oldest first.
        """
        hold, matching = self._hold(call)
        return [body for body in hold.bodies if matching is None or matching(body)]

    def release(self, call):
        """
        Let the oldest held request of C{call} through; returns its body.
        """
        hold, matching = self._hold(call)
        return hold.release(matching)

    def reach(self, call):
        """
        Let the oldest held request of C{call} reach etcd, its reply held.
        """
        hold, matching = self._hold(call)
        return hold.reach(matching)

    def lose(self, call):
        """
        Let the oldest held request of C{call} reach etcd, its reply lost.
        """
        hold, matching = self._hold(call)
        return hold.lose(matching)

    def cut(self, call):
        """
        Cut the oldest held request of C{call} before it reaches etcd.
        """
        hold, matching = self._hold(call)
        return hold.cut(matching)

    def sent(self):
        """
        How many requests it sent, by path: every path, to every one of its
        endpoints.
        """
        sent = collections.Counter()
        for host in self._hosts:
            sent += self.etcd.paths(host)
        return sent

    def revoked(self):
        """
        The leases it revoked, in order.
        """
        return [int(body["ID"]) for body in self.etcd.requests("/v3/lease/revoke", host=self.host)]
