"""
An etcd in memory for tests of code that uses idetcd's etcd client, as
treq's C{StubTreq} is for HTTP: L{FakeEtcd} is etcd's JSON gateway as a
twisted.web resource, and L{FakeEtcd.client} an L{idetcd.etcd.EtcdClient}
whose requests reach it through the client's real HTTP stack, with no
socket and no reactor turn.  Leases run on the clock it is given (a
L{twisted.internet.task.Clock} in tests): advance it to make them expire.

Its behaviour is etcd 3.5's as the client sees it (revisions, ranges,
transactions, leases, watches, compaction, auth errors, the NOSPACE
alarm), checked by a contract suite that runs the same cases against it
and against real etcd 3.4 and 3.5 (C{tests/test_contract.py}).

What etcd never does by itself, a test makes it do through
L{FakeEtcd.faults}: a reply lost after the write was applied
(L{LoseReply}), a connection cut before it (L{Cut}), an error status
(L{Refuse}, L{NO_LEADER}), a request held in flight until released, or
slowed on the clock (L{Hold}), a watch answered with lines of the test's
(L{Stream}); and through L{FakeEtcd.watch_streams}, a watch stream
garbled, ended or cut.
"""

import collections

import attr

from idetcd.etcd import EtcdClient
from idetcd.testing._faults import NO_LEADER, Cut, Hold, LoseReply, Refuse, Stream
from idetcd.testing._gateway import VERSION, Gateway
from idetcd.testing._memory import memory_http_client
from idetcd.testing._store import MAX_TXN_OPS, MIN_LEASE_TTL, PROGRESS_INTERVAL, Store


@attr.s(eq=False)
class _MemoryClient(EtcdClient):
    """
    An L{EtcdClient} whose connections go to C{resource} in memory.
    """

    resource = attr.ib(kw_only=True)

    def __attrs_post_init__(self):
        EtcdClient.__attrs_post_init__(self)
        # The one difference from a client of a real etcd: the HTTP client
        # under it, which the client builds for itself.
        self._pool, self._http = memory_http_client(self.resource)


@attr.s(eq=False)
class FakeEtcd:
    """
    One etcd member in memory, timed by C{clock} (an C{IReactorTime}),
    telling watchers that ask for it their progress every
    C{progress_interval} seconds, as etcd does every 10 minutes by default.

    Tests switch its failures on and off: L{enable_auth} and
    L{expire_tokens} for users and tokens, C{no_space} for the NOSPACE
    alarm; L{compact} compacts its history as C{etcdctl compact} does;
    C{faults} plans what befalls a request beyond that
    (C{etcd.faults.once("/v3/kv/txn", LoseReply())}).
    """

    clock = attr.ib()
    progress_interval = attr.ib(default=PROGRESS_INTERVAL, kw_only=True)
    _store = attr.ib(init=False)
    resource = attr.ib(init=False)

    def __attrs_post_init__(self):
        self._store = Store(self.clock, self.progress_interval)
        self.resource = Gateway(self._store)

    def client(self, endpoints=("http://etcd.invalid:2379",), **kwargs):
        """
        An L{EtcdClient} of this etcd, on the fake's clock; C{kwargs} go to
        L{EtcdClient} (C{timeout}, C{credentials}, C{on_call}).  Every
        endpoint reaches this etcd.
        """
        return _MemoryClient(list(endpoints), self.clock, resource=self.resource, **kwargs)

    @property
    def revision(self):
        """
        The store's revision.
        """
        return self._store.revision

    def served(self, path):
        """
        How many requests for C{path} (such as C{"/v3/kv/range"}) it has
        answered: what a change costs etcd, whatever the client believes
        it sent.  A request a fault cut or refused before it reached etcd
        is not counted; one whose reply was lost is.
        """
        return self.resource.served[path.encode("ascii")]

    @property
    def faults(self):
        """
        The L{idetcd.testing._faults.Faults} planned for requests:
        C{once(path, fault)}, C{always(path, fault)}, C{clear(path)}.
        """
        return self.resource.faults

    def requests(self, path, host=None):
        """
        The JSON body of every request for C{path} it received (sent to
        C{host}, such as C{"etcd.invalid:2379"}, if given), oldest first; a
        request cut or refused by a fault too.  A GET has none: C{None}.
        """
        received = self.resource.received[path.encode("ascii")]
        return [body for sent_to, body in received if host in (None, sent_to)]

    def paths(self, host=None):
        """
        How many requests for each path it received (sent to C{host}, if
        given), as a L{collections.Counter}: everything a client asked of
        it, GETs and requests cut or refused by a fault too.
        """
        counts = collections.Counter()
        for path, received in self.resource.received.items():
            for sent_to, _ in received:
                if host in (None, sent_to):
                    counts[path.decode("ascii")] += 1
        return counts

    @property
    def watch_streams(self):
        """
        Every watch stream it was asked for, oldest first, each with its
        C{create} request, C{host}, C{token}, and whether it is C{closed};
        an open one can be sent raw bytes (C{write}), ended (C{end}) or
        cut (C{cut}).
        """
        return list(self.resource.streams)

    @property
    def no_space(self):
        """
        Whether the NOSPACE alarm is raised: puts, lease grants and
        transactions with a put are refused with "etcdserver: mvcc:
        database space exceeded".
        """
        return self._store.no_space

    @no_space.setter
    def no_space(self, raised):
        self._store.no_space = raised

    def compact(self, revision):
        """
        Forget the history before C{revision}.
        """
        self._store.compact(revision)

    def enable_auth(self, users):
        """
        Turn authentication on, for C{users} (names to passwords).
        """
        self.resource.enable_auth(users)

    def expire_tokens(self):
        """
        Forget every token handed out, as etcd does after
        C{--auth-token-ttl} idle seconds or a restart.
        """
        self.resource.expire_tokens()

    def close(self):
        """
        Stop the fake's timers (lease expiries, progress notifications).
        """
        self._store.close()


__all__ = [
    "Cut",
    "FakeEtcd",
    "Hold",
    "LoseReply",
    "MAX_TXN_OPS",
    "MIN_LEASE_TTL",
    "NO_LEADER",
    "PROGRESS_INTERVAL",
    "Refuse",
    "Stream",
    "VERSION",
]
