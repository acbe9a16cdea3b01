"""
The request side of etcd's v3 API, spoken through its JSON gateway with
treq: each call goes to the current endpoint and moves on to the next one
when that one does not answer.
"""

import base64
import json

import attr
import treq
from twisted.internet import defer
from twisted.python.failure import Failure

from idetcd.etcd.auth import TokenKeeper, authenticate, token_refused
from idetcd.etcd.check import check
from idetcd.etcd.connections import http_client, request_url
from idetcd.etcd.errors import (
    EtcdError,
    EtcdSetupError,
    EtcdUnavailable,
    LeaseExists,
    LeaseNotFound,
    NoSpace,
    TokenRefused,
    describe,
)
from idetcd.etcd.replies import connection_error, json_reply
from idetcd.etcd.values import KeyValue, LeaseInfo, TxnResult, _range_body, b64_text
from idetcd.etcd.watch import Watch

#: etcd's gRPC codes that say "this member cannot serve now, another may".
_UNAVAILABLE_CODES = frozenset({4, 14})  # DEADLINE_EXCEEDED, UNAVAILABLE
_NOT_FOUND = 5
#: What etcd says to a write while its NOSPACE alarm is raised.
_NO_SPACE = "database space exceeded"
_FAILED_PRECONDITION = 9
#: Keys per request of L{EtcdClient.range_paged}: about 250 KB of JSON
#: for idetcd's members.
RANGE_PAGE = 1000

#: Every request asks etcd to refuse it (gRPC code 14, "etcdserver: no
#: leader") on a member that has lost its leader, before it is proposed:
#: such a member can serve none of our requests in time, and a refused
#: request is safe to send to the next endpoint, where a timed-out one may
#: have been applied.  On a watch, etcd also ends the stream a few seconds
#: after the member loses its leader, where it would otherwise stay open and
#: silent for as long as the member is cut off.
_HEADERS = {
    b"Content-Type": [b"application/json"],
    b"Grpc-Metadata-Hasleader": [b"true"],
}


def _headers(token):
    if not token:
        return _HEADERS
    return {**_HEADERS, b"Authorization": [token.encode("ascii")]}


@attr.s(eq=False)
class EtcdClient:
    """
    A Deferred-based etcd v3 client that moves to the next endpoint when one
    does not answer.

    C{tls} (a L{idetcd.etcd.tls.TlsSettings}) sets up C{https://} endpoints;
    with C{credentials} (a L{idetcd.etcd.auth.Credentials}) every request
    and watch carries a token, traded again when etcd refuses it.
    C{on_call}, if set, is told of every settled L{call} as
    C{on_call(path, result)}, with the reply or the failure (metrics).

    C{endpoints} are the URLs it tries, in order: a sequence, or a function
    that gives them as they are now, asked at every request (an embedded
    etcd may move to other ports while it starts).
    """

    _endpoints = attr.ib(converter=lambda endpoints: endpoints if callable(endpoints) else tuple(endpoints))
    reactor = attr.ib()
    timeout = attr.ib(default=5.0)
    tls = attr.ib(default=None)
    credentials = attr.ib(default=None)
    on_call = attr.ib(default=None, kw_only=True)
    _auth = attr.ib(default=None, init=False)
    _index = attr.ib(default=0, init=False)
    _pool = attr.ib(default=None, init=False)
    _http = attr.ib(default=None, init=False)
    _pending = attr.ib(factory=set, init=False)
    _watches = attr.ib(factory=set, init=False)
    _closed = attr.ib(default=False, init=False)

    def __attrs_post_init__(self):
        self._pool, self._http = http_client(self.reactor, self.tls)
        if self.credentials is not None:
            self._auth = TokenKeeper(lambda: authenticate(self, self.credentials))

    @property
    def endpoints(self):
        """
        The URLs of etcd's endpoints now, in the order they are tried.
        """
        if callable(self._endpoints):
            return tuple(self._endpoints())
        return self._endpoints

    @property
    def current_index(self):
        """
        The index in C{endpoints} of the endpoint requests go to now: taken
        round the list as it is now, which a function may have shortened
        since the client moved along it.
        """
        return self._index % len(self.endpoints)

    @property
    def endpoint(self):
        """
        The endpoint requests go to now.
        """
        return self.endpoints[self.current_index]

    def next_endpoint(self, failed_index):
        """
        Endpoint C{failed_index} failed: move on to the next one, unless
        someone else moved on in the meantime.
        """
        if self.current_index == failed_index:
            self._index = failed_index + 1

    def _track(self, d):
        self._pending.add(d)

        def untrack(result):
            self._pending.discard(d)
            return result

        return d.addBoth(untrack)

    def _request(self, index, method, path, read=None, timeout=None, **kwargs):
        """
        One request to endpoint C{index}; fires with the response, or with
        what C{read} makes of it, within C{timeout}, and fails with
        L{TlsFailed} when TLS does not work.
        """
        endpoint = self.endpoints[index].rstrip("/")
        d = self._http.request(method, request_url(endpoint + path), **kwargs)
        if read is not None:
            d.addCallback(read)
        d = self._bounded(d, timeout)
        d.addErrback(lambda failure: Failure(connection_error(endpoint, failure)))
        return self._track(d)

    def get_once(self, index, path):
        """
        GET C{path} from endpoint C{index}: the status and the JSON reply.
        C{on_call} hears of it as of any call: the start-up check's first
        requests are these, and a node stuck there shows them.
        """
        d = self._post_once(index, path, None, None, None, method="GET")
        if self.on_call is not None:
            d.addBoth(self._observed, path)
        return d

    def _post_once(self, index, path, body, timeout, token, method="POST"):
        endpoint = self.endpoints[index]

        def read(response):
            d = treq.content(response)
            d.addCallback(lambda content: (response.code, json_reply(endpoint, path, response, content)))
            return d

        data = {} if body is None else {"data": json.dumps(body).encode("ascii")}
        return self._request(index, method, path, read, timeout, headers=_headers(token), **data)

    def _bounded(self, d, timeout=None):
        """
        A Deferred that follows C{d}, failed with L{defer.TimeoutError} after
        C{timeout} (default: the client's).  A cancel from the caller fails it with
        L{defer.CancelledError}, whatever the HTTP stack made of the cancel
        (a connection cancelled while the host name resolves fails with
        C{DNSLookupError}), so that a cancelled call never moves on to the
        next endpoint.
        """
        timeout = self.timeout if timeout is None else timeout
        cancelled = False

        def cancel(_):
            nonlocal cancelled
            cancelled = True
            d.cancel()

        bounded = defer.Deferred(cancel)
        timer = self.reactor.callLater(timeout, d.cancel)

        def settle(result):
            if timer.active():
                timer.cancel()
            elif isinstance(result, Failure):
                result = Failure(defer.TimeoutError(f"no answer in {timeout}s"))
            if cancelled and isinstance(result, Failure):
                result = Failure(defer.CancelledError())
            if bounded.called:  # cancelled, and the HTTP stack settled later
                return
            if isinstance(result, Failure):
                bounded.errback(result)
            else:
                bounded.callback(result)

        d.addBoth(settle)
        return bounded

    def call(self, path, body, timeout=None):
        """
        POST C{body} to C{path} (e.g. C{/v3/kv/range}) and return the decoded
        reply, trying each endpoint once, starting with the current one,
        each try bounded by C{timeout} (default: the client's).  A request
        whose token etcd refused is sent again, once, with a new token.
        """
        d = self._call_authenticated(path, body, timeout)
        if self.on_call is not None:
            d.addBoth(self._observed, path)
        return d

    def _observed(self, result, path):
        self.on_call(path, result)
        return result

    @defer.inlineCallbacks
    def _call_authenticated(self, path, body, timeout):
        if self._auth is None:
            return (yield self.call_with_token(path, body, timeout, None))
        token = yield self._auth.token()
        try:
            return (yield self.call_with_token(path, body, timeout, token))
        except TokenRefused:
            self._auth.forget(token)
        token = yield self._auth.token()
        return (yield self.call_with_token(path, body, timeout, token))

    @defer.inlineCallbacks
    def call_with_token(self, path, body, timeout, token):
        """
        L{call} with C{token} (or none), as it is: each endpoint tried once,
        no new token traded when etcd refuses it (authenticating is such
        a call).
        """
        errors = []
        setup_error = None
        for _ in range(len(self.endpoints)):
            if self._closed:
                raise defer.CancelledError()
            index = self.current_index
            endpoint = self.endpoints[index]
            try:
                code, data = yield self._post_once(index, path, body, timeout, token)
            except defer.CancelledError:
                raise
            except Exception as e:
                if self._closed:
                    raise defer.CancelledError()
                if isinstance(e, EtcdSetupError):
                    setup_error = setup_error or e
                    errors.append(str(e))
                else:
                    errors.append(f"{endpoint}: {describe(e)}")
                self.next_endpoint(index)
                continue
            if not isinstance(data, dict):
                raise EtcdError(-1, f"unexpected reply from {endpoint}")
            if "error" in data or code != 200:
                error_code = data.get("code", -1)
                message = data.get("message") or data.get("error") or f"HTTP {code}"
                if error_code in _UNAVAILABLE_CODES or code >= 500:
                    errors.append(f"{endpoint}: {message}")
                    self.next_endpoint(index)
                    continue
                if error_code == _NOT_FOUND and "lease" in message:
                    raise LeaseNotFound(error_code, message)
                if _NO_SPACE in message:
                    raise NoSpace(error_code, message)
                if error_code == _FAILED_PRECONDITION and "lease already exists" in message:
                    raise LeaseExists(error_code, message)
                if self._auth is not None and token_refused(message):
                    raise TokenRefused(error_code, message)
                raise EtcdError(error_code, message)
            return data
        if setup_error is not None:
            # An endpoint answered, but is set up wrong: say that, not that
            # nothing answered.
            raise setup_error
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(errors))

    def healthy(self):
        """
        Whether the current endpoint says it is healthy; never fails.
        """
        d = self.get_once(self.current_index, "/health")
        d.addCallbacks(
            lambda reply: isinstance(reply[1], dict) and reply[1].get("health") == "true",
            lambda failure: False,
        )
        return d

    def check(self, prefix):
        """
        Fires once etcd can be relied on for C{prefix}; see
        L{idetcd.etcd.check.check}.
        """
        return check(self, prefix)

    @defer.inlineCallbacks
    def range(self, key, range_end=None):
        """
        Read C{key}, or every key in C{[key, range_end)}; returns the list of
        L{KeyValue} and the store revision they were read at.
        """
        data = yield self.call("/v3/kv/range", _range_body(key, range_end))
        kvs = [KeyValue.from_json(kv) for kv in data.get("kvs", ())]
        return kvs, int(data["header"]["revision"])

    @defer.inlineCallbacks
    def mod_revision(self, key):
        """
        The revision C{key} was last written at, 0 if it does not exist:
        a read that does not carry the value.
        """
        data = yield self.call("/v3/kv/range", {**_range_body(key), "keys_only": True})
        kvs = [KeyValue.from_json(kv) for kv in data.get("kvs", ())]
        return kvs[0].mod_revision if kvs else 0

    @defer.inlineCallbacks
    def range_paged(self, key, range_end, page=RANGE_PAGE):
        """
        Read every key in C{[key, range_end)} like L{range}, in requests of
        at most C{page} keys all read at the first one's revision, so a big
        prefix never comes back as one multi-megabyte reply.  Fails with
        L{EtcdError} if that revision is compacted away meanwhile.
        """
        body = {**_range_body(key, range_end), "limit": str(page)}
        kvs = []
        while True:
            data = yield self.call("/v3/kv/range", body)
            found = [KeyValue.from_json(kv) for kv in data.get("kvs", ())]
            kvs.extend(found)
            body.setdefault("revision", data["header"]["revision"])
            if not (data.get("more") and found):
                return kvs, int(body["revision"])
            body["key"] = b64_text(found[-1].key + b"\0")

    @defer.inlineCallbacks
    def create(self, key, value, lease=0, replacing=None, also_delete=None):
        """
        Put C{key} only if it does not exist, or, with C{replacing} (a
        L{KeyValue}), only if it is still exactly that version.  One
        transaction, so of many racing callers exactly one wins; a winner
        also deletes C{also_delete}, if given, in it.

        A loser learns who holds C{key}, read in the same transaction.
        """
        if replacing is None:
            compare = {"key": b64_text(key), "target": "CREATE", "create_revision": "0"}
        else:
            compare = {
                "key": b64_text(key),
                "target": "MOD",
                "mod_revision": str(replacing.mod_revision),
            }
        put = {"key": b64_text(key), "value": b64_text(value)}
        if lease:
            put["lease"] = str(lease)
        data = yield self.call(
            "/v3/kv/txn",
            {
                "compare": [compare],
                "success": [{"request_put": put}]
                + ([{"request_delete_range": {"key": b64_text(also_delete)}}] if also_delete else []),
                "failure": [{"request_range": _range_body(key)}],
            },
        )
        succeeded = bool(data.get("succeeded", False))
        kvs = []
        if not succeeded:
            for response in data.get("responses", ()):
                kvs.extend(
                    KeyValue.from_json(kv) for kv in response.get("response_range", {}).get("kvs", ())
                )
        existing = next((kv for kv in kvs if kv.key == key), None)
        return TxnResult(succeeded, int(data["header"]["revision"]), existing)


    @defer.inlineCallbacks
    def put(self, key, value, lease=0):
        body = {"key": b64_text(key), "value": b64_text(value)}
        if lease:
            body["lease"] = str(lease)
        data = yield self.call("/v3/kv/put", body)
        return int(data["header"]["revision"])

    @defer.inlineCallbacks
    def delete(self, key, range_end=None):
        data = yield self.call("/v3/kv/deleterange", _range_body(key, range_end))
        return int(data.get("deleted", 0))

    @defer.inlineCallbacks
    def lease_grant(self, ttl, lease=0):
        """
        Returns the new lease's ID and the TTL etcd granted.  With C{lease},
        etcd grants that ID or fails with L{LeaseExists}.
        """
        body = {"TTL": str(ttl)}
        if lease:
            body["ID"] = str(lease)
        data = yield self.call("/v3/lease/grant", body)
        if data.get("error"):
            raise EtcdError(-1, data["error"])
        return int(data["ID"]), int(data["TTL"])

    @defer.inlineCallbacks
    def lease_keepalive(self, lease, timeout=None):
        """
        Refresh C{lease}; returns its TTL, or raises L{LeaseNotFound} when
        etcd no longer has it.
        """
        data = yield self.call("/v3/lease/keepalive", {"ID": str(lease)}, timeout)
        ttl = int(data.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFound(_NOT_FOUND, f"lease {lease:x} has expired")
        return ttl

    @defer.inlineCallbacks
    def lease_time_to_live(self, lease, keys=False, timeout=None):
        """
        What etcd knows of C{lease}: a L{LeaseInfo}, with the keys attached
        to it when C{keys} is set; raises L{LeaseNotFound} when etcd no
        longer has the lease.
        """
        body = {"ID": str(lease), "keys": bool(keys)}
        data = yield self.call("/v3/lease/timetolive", body, timeout)
        # A lease that is gone says TTL -1; one with under a second left
        # has TTL 0, which the gateway leaves out, as it does every zero.
        ttl = int(data.get("TTL", 0))
        if ttl < 0:
            raise LeaseNotFound(_NOT_FOUND, f"lease {lease:x} has expired")
        return LeaseInfo(
            ttl=ttl,
            granted_ttl=int(data.get("grantedTTL", 0)),
            keys=frozenset(base64.b64decode(key) for key in data.get("keys", ())),
            revision=int(data["header"]["revision"]),
        )

    @defer.inlineCallbacks
    def delete_on_lease(self, key, lease):
        """
        Delete C{key} only while it is attached to C{lease}; returns whether
        it was.
        """
        data = yield self.call(
            "/v3/kv/txn",
            {
                "compare": [{"key": b64_text(key), "target": "LEASE", "lease": str(lease)}],
                "success": [{"request_delete_range": {"key": b64_text(key)}}],
            },
        )
        return bool(data.get("succeeded", False))

    def lease_revoke(self, lease):
        """
        Drop C{lease} and every key attached to it, at once.
        """
        return self.call("/v3/lease/revoke", {"ID": str(lease)})

    def watch(self, key, range_end, start_revision, on_events, on_contact=None):
        """
        Start a L{Watch} over C{[key, range_end)} from C{start_revision}.
        """
        watch = Watch(self, key, range_end, start_revision, on_events, on_contact=on_contact)
        self._watches.add(watch)
        watch.done.addBoth(lambda result: (self._watches.discard(watch), result)[1])
        watch.start()
        return watch

    def forget_token(self, token):
        """
        etcd refused C{token} (a watch's): the next request authenticates
        again.  Returns whether that can help: whether there are
        credentials.
        """
        if self._auth is None:
            return False
        self._auth.forget(token)
        return True

    def open_watch_stream(self, index, body, protocol):
        """
        Open one watch stream on endpoint C{index} and feed its body to
        C{protocol}, telling it the token it was opened with; fires when
        the stream is open (headers received).
        """
        d = self._auth.token() if self._auth is not None else defer.succeed(None)

        def post(token):
            protocol.token = token
            return self._request(
                index,
                "POST",
                "/v3/watch",
                headers=_headers(token),
                data=json.dumps(body).encode("ascii"),
                unbuffered=True,
            )

        d.addCallback(post)

        def opened(response):
            if response.code != 200:
                # Read and drop the error body so the connection is freed.
                return treq.content(response).addCallback(
                    lambda content: defer.fail(
                        EtcdError(response.code, content[:200].decode("utf-8", "replace"))
                    )
                )
            response.deliverBody(protocol)

        return self._track(d.addCallback(opened))

    def open(self):
        """
        Take requests again after L{close}.
        """
        self._closed = False

    def close(self):
        """
        Stop every watch, cancel every request and drop idle connections;
        L{open} makes the client usable again.
        """
        self._closed = True
        for watch in list(self._watches):
            watch.stop()
        for d in list(self._pending):
            d.cancel()
        return self._pool.closeCachedConnections()
