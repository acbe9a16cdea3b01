"""
etcd's v3 API, spoken through its JSON gateway with treq.

All etcd I/O of idetcd lives here.  The gateway answers on ``/v3`` from etcd
3.4 on; keys and values travel base64-encoded and int64 fields come back as
JSON strings, so this module turns them into L{bytes} and L{int}.
"""

import base64
import json
import socket
import attr
import treq
from twisted.internet import defer
from twisted.internet.error import ConnectingCancelledError
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory

from idetcd.backoff import Backoff

log = Logger()

#: etcd's gRPC codes that say "this member cannot serve now, another may".
_UNAVAILABLE_CODES = frozenset({4, 14})  # DEADLINE_EXCEEDED, UNAVAILABLE
_NOT_FOUND = 5
#: Keys per request of L{EtcdClient.range_paged}: about 250 KB of JSON
#: for idetcd's members.
RANGE_PAGE = 1000
#: A watch line longer than this is a broken stream, not a result.
MAX_WATCH_LINE = 64 * 1024 * 1024

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


#: TCP keepalive on etcd connections: a watch on a peer that vanished
#: without a reset (host down, partition) is noticed in about 11 s, where
#: etcd's own progress notifications come every 10 minutes.
KEEPALIVE = (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))


def _keep_alive(transport):
    sock = transport.getHandle()
    if not isinstance(sock, socket.socket):
        return  # TLS: the handle is the TLS connection, left as it is
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE:
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class _EtcdConnections(_HTTP11ClientFactory):
    # One log line per etcd connection would drown the node's own log.
    noisy = False

    def buildProtocol(self, addr):
        protocol = _HTTP11ClientFactory.buildProtocol(self, addr)
        made = protocol.connectionMade

        def connectionMade():
            _keep_alive(protocol.transport)
            made()

        protocol.connectionMade = connectionMade
        return protocol


class EtcdError(Exception):
    """
    etcd refused a request; C{code} is its gRPC status code.
    """

    def __init__(self, code, message):
        super().__init__(f"etcd error {code}: {message}")
        self.code = code
        self.message = message


class LeaseNotFound(EtcdError):
    """
    The lease named in a request does not exist (any more).
    """


class EtcdUnavailable(Exception):
    """
    No endpoint answered.
    """


class ResyncNeeded(Exception):
    """
    A watch cannot go on from where it was: the caller must read everything
    again and start a new one.
    """


class Compacted(ResyncNeeded):
    """
    A watch asked for revisions that etcd has compacted away.
    """

    def __init__(self, compact_revision):
        super().__init__(f"revisions before {compact_revision} are compacted")
        self.compact_revision = compact_revision


def _cancelled(failure):
    """
    Whether C{failure} comes from cancelling the request, directly or
    wrapped by the HTTP client.
    """
    if failure.check(defer.CancelledError, ConnectingCancelledError):
        return True
    return any(_cancelled(reason) for reason in getattr(failure.value, "reasons", ()))


def _range_body(key, range_end=None):
    # etcd reads an empty key as "no key given"; "\0" with a range end
    # means the same start: the very first key.
    body = {"key": _b64(key or b"\0")}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return body


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def prefix_range_end(prefix):
    """
    The C{range_end} that makes a range or watch cover every key starting
    with C{prefix}; for the empty prefix, every key.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


@attr.s(frozen=True, slots=True, auto_attribs=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def from_json(cls, kv):
        return cls(
            key=base64.b64decode(kv.get("key", "")),
            value=base64.b64decode(kv.get("value", "")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            lease=int(kv.get("lease", 0)),
        )


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Event:
    """
    One change seen by a watch; C{deleted} tells a delete from a put.
    """

    deleted: bool
    kv: KeyValue


@attr.s(frozen=True, slots=True, auto_attribs=True)
class TxnResult:
    """
    The outcome of a create: whether it won, and if not, what holds the key.
    """

    succeeded: bool
    revision: int
    existing: "KeyValue | None"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class LeaseInfo:
    """
    A lease as etcd reports it: seconds left, the TTL it was granted with,
    and (when asked for) the keys attached to it.
    """

    ttl: int
    granted_ttl: int
    keys: frozenset
    revision: int


@attr.s(eq=False)
class EtcdClient:
    """
    A Deferred-based etcd v3 client that moves to the next endpoint when one
    does not answer.  C{on_call}, if set, is told of every settled L{call}
    as C{on_call(path, result)}, with the reply or the failure (metrics).
    """

    endpoints = attr.ib(converter=tuple)
    reactor = attr.ib()
    timeout = attr.ib(default=5.0)
    on_call = attr.ib(default=None, kw_only=True)
    _current = attr.ib(default=0, init=False)
    _pool = attr.ib(default=None, init=False)
    _http = attr.ib(default=None, init=False)
    _pending = attr.ib(factory=set, init=False)
    _watches = attr.ib(factory=set, init=False)
    _closed = attr.ib(default=False, init=False)

    def __attrs_post_init__(self):
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._pool._factory = _EtcdConnections
        self._pool.retryAutomatically = False
        self._http = treq.client.HTTPClient(Agent(self.reactor, pool=self._pool))

    @property
    def endpoint(self):
        """
        The endpoint requests go to now.
        """
        return self.endpoints[self._current]

    def _next_endpoint(self, failed_index):
        # Only move on if nobody else moved on in the meantime.
        if self._current == failed_index:
            self._current = (failed_index + 1) % len(self.endpoints)

    def _track(self, d):
        self._pending.add(d)

        def untrack(result):
            self._pending.discard(d)
            return result

        return d.addBoth(untrack)

    def _post_once(self, index, path, body, timeout):
        url = self.endpoints[index].rstrip("/") + path
        d = self._http.post(
            url,
            data=json.dumps(body).encode("ascii"),
            headers=_HEADERS,
        )
        d.addCallback(lambda response: treq.json_content(response).addCallback(
            lambda data: (response.code, data)
        ))
        return self._track(self._bounded(d, timeout))

    def _bounded(self, d, timeout=None):
        """
        Fail C{d} with L{defer.TimeoutError} after C{timeout} (default: the
        client's); a cancel from the caller fails it with
        L{defer.CancelledError}, however deep in the HTTP stack the cancel
        was turned into another error, so that a cancelled call never moves
        on to the next endpoint.
        """
        timeout = self.timeout if timeout is None else timeout
        timer = self.reactor.callLater(timeout, d.cancel)

        def settle(result):
            if not timer.active():
                if isinstance(result, Failure):
                    raise defer.TimeoutError(f"no answer in {timeout}s")
                return result
            timer.cancel()
            if isinstance(result, Failure) and _cancelled(result):
                raise defer.CancelledError()
            return result

        return d.addBoth(settle)

    def call(self, path, body, timeout=None):
        """
        POST C{body} to C{path} (e.g. C{/v3/kv/range}) and return the decoded
        reply, trying each endpoint once, starting with the current one,
        each try bounded by C{timeout} (default: the client's).
        """
        d = self._call(path, body, timeout)
        if self.on_call is not None:
            d.addBoth(self._observed, path)
        return d

    def _observed(self, result, path):
        self.on_call(path, result)
        return result

    @defer.inlineCallbacks
    def _call(self, path, body, timeout):
        errors = []
        for _ in range(len(self.endpoints)):
            if self._closed:
                raise defer.CancelledError()
            index = self._current
            try:
                code, data = yield self._post_once(index, path, body, timeout)
            except defer.CancelledError:
                raise
            except Exception as e:
                if self._closed:
                    raise defer.CancelledError()
                errors.append(f"{self.endpoints[index]}: {e.__class__.__name__}: {e}")
                self._next_endpoint(index)
                continue
            if not isinstance(data, dict):
                raise EtcdError(-1, f"unexpected reply from {self.endpoints[index]}")
            if "error" in data or code != 200:
                error_code = data.get("code", -1)
                message = data.get("message") or data.get("error") or f"HTTP {code}"
                if error_code in _UNAVAILABLE_CODES or code >= 500:
                    errors.append(f"{self.endpoints[index]}: {message}")
                    self._next_endpoint(index)
                    continue
                if error_code == _NOT_FOUND and "lease" in message:
                    raise LeaseNotFound(error_code, message)
                raise EtcdError(error_code, message)
            return data
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(errors))

    def healthy(self):
        """
        Whether the current endpoint says it is healthy; never fails.
        """
        d = self._bounded(self._http.get(self.endpoint.rstrip("/") + "/health"))
        d.addCallback(treq.json_content)
        d.addCallbacks(
            lambda body: isinstance(body, dict) and body.get("health") == "true",
            lambda failure: False,
        )
        return self._track(d)

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
            body["key"] = _b64(found[-1].key + b"\0")

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
            compare = {"key": _b64(key), "target": "CREATE", "create_revision": "0"}
        else:
            compare = {
                "key": _b64(key),
                "target": "MOD",
                "mod_revision": str(replacing.mod_revision),
            }
        put = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        data = yield self.call(
            "/v3/kv/txn",
            {
                "compare": [compare],
                "success": [{"request_put": put}]
                + ([{"request_delete_range": {"key": _b64(also_delete)}}] if also_delete else []),
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
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = yield self.call("/v3/kv/put", body)
        return int(data["header"]["revision"])

    @defer.inlineCallbacks
    def delete(self, key, range_end=None):
        data = yield self.call("/v3/kv/deleterange", _range_body(key, range_end))
        return int(data.get("deleted", 0))

    @defer.inlineCallbacks
    def lease_grant(self, ttl):
        """
        Returns the new lease's ID and the TTL etcd granted.
        """
        data = yield self.call("/v3/lease/grant", {"TTL": str(ttl)})
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
        ttl = int(data.get("TTL", -1))
        if ttl < 0:  # 0 is a lease with under a second left
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
                "compare": [{"key": _b64(key), "target": "LEASE", "lease": str(lease)}],
                "success": [{"request_delete_range": {"key": _b64(key)}}],
            },
        )
        return bool(data.get("succeeded", False))

    def lease_revoke(self, lease):
        """
        Drop C{lease} and every key attached to it, at once.
        """
        return self.call("/v3/lease/revoke", {"ID": str(lease)})

    def watch(self, key, range_end, start_revision, on_events):
        """
        Start a L{Watch} over C{[key, range_end)} from C{start_revision}.
        """
        watch = Watch(self, key, range_end, start_revision, on_events)
        self._watches.add(watch)
        watch.done.addBoth(lambda result: (self._watches.discard(watch), result)[1])
        watch.start()
        return watch

    def _open_watch_stream(self, index, body, protocol):
        """
        Open one watch stream on endpoint C{index} and feed its body to
        C{protocol}; fires when the stream is open (headers received).
        """
        url = self.endpoints[index].rstrip("/") + "/v3/watch"
        d = self._http.post(
            url,
            data=json.dumps(body).encode("ascii"),
            headers=_HEADERS,
            unbuffered=True,
        )
        d = self._bounded(d)

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


class _WatchStream:
    """
    Reads a watch's never-ending body: newline-separated JSON objects that a
    TCP read may split anywhere.
    """

    def __init__(self, on_result):
        self._on_result = on_result
        self._pieces = []
        self._size = 0
        self.transport = None
        self.finished = defer.Deferred()

    def makeConnection(self, transport):
        self.transport = transport

    def dataReceived(self, data):
        # Look for line ends only in the new data, so a long line costs
        # linear time however many pieces it arrives in.
        while self.transport is not None:
            end = data.find(b"\n")
            if end < 0:
                break
            line = b"".join(self._pieces) + data[:end]
            self._pieces, self._size, data = [], 0, data[end + 1 :]
            if line.strip():
                self._on_result(line)
        if data:
            self._pieces.append(data)
            self._size += len(data)
            if self._size > MAX_WATCH_LINE:
                self._pieces, self._size = [], 0
                self.stop()

    def connectionLost(self, reason):
        self.transport = None
        if reason.check(ResponseDone) and self._pieces:
            # etcd ends a watch with an error object and no line end.
            line, self._pieces, self._size = b"".join(self._pieces), [], 0
            if line.strip():
                self._on_result(line)
        self.finished.callback(None)

    def stop(self):
        if self.transport is not None:
            self.transport.stopProducing()


def _watch_result(line):
    """
    The C{result} object of one watch line; raises L{EtcdError} for the
    error object etcd (3.4, 3.5) sends, as the stream's last chunk and with
    no line end, when it ends a watch; L{ValueError} for anything else that
    is not a result.
    """
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object: {line[:100]!r}")
    result = data.get("result")
    if isinstance(result, dict):
        return result
    error = data.get("error")
    if isinstance(error, dict):
        # The gateway's stream error: {"error": {"grpc_code", "http_code",
        # "message", "http_status"}}.
        raise EtcdError(error.get("grpc_code", -1), error.get("message") or "watch failed")
    if error is not None:
        raise EtcdError(data.get("code", -1), data.get("message") or str(error))
    raise ValueError(f"neither a result nor an error: {line[:100]!r}")


@attr.s(eq=False)
class Watch:
    """
    A watch over a key range that, when its stream breaks or etcd ends it
    (as it does a few seconds after the member loses its leader), resumes on
    the client's next endpoint after the last revision it delivered, so no
    change is lost or seen twice across an etcd restart or a member cut off
    from its peers.

    C{on_events(events, revision)} gets each batch of L{Event}s.  C{done}
    fires when the watch is stopped, and fails with L{ResyncNeeded} (or its
    L{Compacted}) when it cannot resume: etcd no longer has the revisions,
    or cancelled the watch.  The caller must then read everything again.
    """

    client = attr.ib()
    key = attr.ib()
    range_end = attr.ib()
    next_revision = attr.ib()
    on_events = attr.ib()
    backoff = attr.ib(factory=lambda: Backoff(maximum=2.0))
    done = attr.ib(factory=defer.Deferred, init=False)
    _stream = attr.ib(default=None, init=False)
    _opening = attr.ib(default=None, init=False)
    _retry = attr.ib(default=None, init=False)
    #: Consecutive streams that broke, and when that was last logged.
    _breaks = attr.ib(default=0, init=False)
    _logged_at = attr.ib(default=0.0, init=False)
    log_interval = 30.0

    def start(self):
        if self.done.called:
            return
        self._retry = None
        body = {
            "create_request": {
                **_range_body(self.key, self.range_end),
                "start_revision": str(self.next_revision),
                "progress_notify": True,
            }
        }
        index = self.client._current
        stream = self._stream = _WatchStream(lambda line: self._line(stream, index, line))
        self._opening = self.client._open_watch_stream(index, body, stream)
        self._opening.addErrback(lambda failure: self._broken(stream, index, failure))
        stream.finished.addCallback(lambda _: self._broken(stream, index, None))

    def _line(self, stream, index, line):
        if stream is not self._stream:
            return  # more of a stream already given up
        try:
            result = _watch_result(line)
            compact_revision = int(result.get("compact_revision", 0))
            current = int(result.get("header", {}).get("revision", 0))
            events = [
                Event(raw.get("type") == "DELETE", KeyValue.from_json(raw.get("kv", {})))
                for raw in result.get("events", ())
            ]
        except (EtcdError, ValueError, TypeError, AttributeError) as e:
            # etcd ended the watch ("no leader": this member is cut off from
            # its peers), or the stream is garbled and a line with events
            # may be lost.  Either way, resume from the last revision
            # delivered, elsewhere.
            stream.stop()
            self._broken(stream, index, Failure(e))
            return
        self._working(index)
        if compact_revision:
            self._finish(Compacted(compact_revision))
            return
        if result.get("created") and current < self.next_revision - 1:
            # The store went back in time (restored from a snapshot, or a new
            # cluster): the revisions we resume from are not the same ones.
            self._finish(ResyncNeeded(f"etcd's revision went back to {current}"))
            return
        if result.get("canceled"):
            # etcd gave up on this watch for a reason of its own.
            self._finish(ResyncNeeded(result.get("cancel_reason") or "etcd cancelled the watch"))
            return
        if events:
            revision = max(event.kv.mod_revision for event in events)
            self.next_revision = revision + 1
            self.on_events(events, revision)
        elif not result.get("created"):
            # A progress notification: everything up to here was delivered.
            self.next_revision = max(self.next_revision, current + 1)

    def _working(self, index):
        self.backoff.reset()
        if self._breaks:
            log.info(
                "etcd watch resumed on {endpoint} from revision {revision} after {breaks} broken streams",
                endpoint=self.client.endpoints[index],
                revision=self.next_revision,
                breaks=self._breaks,
            )
            self._breaks = 0

    def _broken(self, stream, index, failure):
        """
        The stream on endpoint C{index} ended or failed: resume on the next
        endpoint, after a backoff.
        """
        if stream is not self._stream or self.done.called:
            return None
        self._stream = None
        self.client._next_endpoint(index)
        delay = self.backoff.next()
        self._breaks += 1
        now = self.client.reactor.seconds()
        if self._breaks == 1 or now - self._logged_at >= self.log_interval:
            # The first break of a run, then one line per interval at most.
            self._logged_at = now
            log.emit(
                LogLevel.warn if failure is not None and failure.check(EtcdError) else LogLevel.info,
                "etcd watch on {endpoint} ended ({why}); resuming from revision {revision}"
                " on {next} in {delay:.2f}s ({breaks} broken streams in a row)",
                endpoint=self.client.endpoints[index],
                why=failure.getErrorMessage() if failure else "closed",
                revision=self.next_revision,
                next=self.client.endpoint,
                delay=delay,
                breaks=self._breaks,
            )
        self._retry = self.client.reactor.callLater(delay, self.start)
        return None

    def _finish(self, result):
        if self.done.called:
            return
        stream, self._stream = self._stream, None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._opening is not None and not self._opening.called:
            self._opening.cancel()
        if stream is not None:
            stream.stop()
        if isinstance(result, Exception):
            self.done.errback(result)
        else:
            self.done.callback(result)

    def stop(self):
        """
        End the watch; C{done} fires with C{None}.
        """
        self._finish(None)
