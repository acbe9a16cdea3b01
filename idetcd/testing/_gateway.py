"""
etcd's gRPC JSON gateway as a twisted.web resource over a L{Store}: the
paths, the error objects with their HTTP statuses, the header every reply
carries, users and tokens, and the watch stream, as etcd 3.5 sends them.
"""

import collections
import json
import secrets

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from idetcd.testing._faults import Faults, cut_connection
from idetcd.testing._store import GatewayError

#: What the fake says it is, on C{/version} and C{/v3/maintenance/status}.
VERSION = "3.5.1"
_CLUSTER_ID = "7801232528081817440"
_MEMBER_ID = "13458989633860879742"
_RAFT_TERM = "2"


def _filled(header):
    """
    A reply's header as the gateway sends it: the member's identity
    around the revision (none in a watch's cancellation).
    """
    filled = {"cluster_id": _CLUSTER_ID, "member_id": _MEMBER_ID}
    if "revision" in header:
        filled["revision"] = header["revision"]
    filled["raft_term"] = _RAFT_TERM
    return filled


def _error_body(error):
    return {"error": error.message, "code": error.code, "message": error.message}


class Gateway(Resource):
    """
    The JSON gateway of one etcd member holding C{store}.  C{users} maps
    user names to passwords once L{enable_auth} turned authentication on.
    """

    isLeaf = True

    def __init__(self, store):
        super().__init__()
        self.store = store
        self.users = None
        #: How many requests of each path (bytes) it answered, as etcd's
        #: own metrics count them.
        self.served = collections.Counter()
        #: The host and JSON body (C{None} for a GET) of every request, by
        #: path, in the order received.
        self.received = collections.defaultdict(list)
        #: What befalls requests beyond etcd's own behaviour.
        self.faults = Faults()
        #: Every watch stream asked for, oldest first.
        self.streams = []
        self._tokens = {}
        self._routes = {
            b"/v3/kv/range": store.range,
            b"/v3/kv/put": store.put,
            b"/v3/kv/deleterange": store.delete_range,
            b"/v3/kv/txn": store.txn,
            b"/v3/kv/compaction": lambda body: store.compact(int(body.get("revision") or 0)),
            b"/v3/lease/grant": store.grant,
            b"/v3/lease/revoke": store.revoke,
            b"/v3/kv/lease/revoke": store.revoke,
            b"/v3/lease/keepalive": store.keepalive,
            b"/v3/lease/timetolive": store.time_to_live,
            b"/v3/kv/lease/timetolive": store.time_to_live,
            b"/v3/lease/leases": lambda body: store.leases(),
            b"/v3/maintenance/status": self._status,
        }

    # Users and tokens.

    def enable_auth(self, users):
        self.users = dict(users)

    def expire_tokens(self):
        self._tokens.clear()

    def _authenticate(self, body):
        if self.users is None:
            raise GatewayError(9, "etcdserver: authentication is not enabled", 400)
        name = body.get("name") or ""
        if self.users.get(name) != body.get("password") or not name:
            raise GatewayError(3, "etcdserver: authentication failed, invalid user ID or password", 400)
        token = f"{secrets.token_hex(8)}.{len(self._tokens) + 1}"
        self._tokens[token] = name
        return {"header": {"revision": str(self.store.revision)}, "token": token}

    def _check_token(self, request):
        if self.users is None:
            return
        token = (request.getHeader(b"authorization") or b"").decode("ascii", "replace")
        if not token:
            raise GatewayError(3, "etcdserver: user name is empty", 400)
        if token not in self._tokens:
            raise GatewayError(16, "etcdserver: invalid auth token", 401)

    def _status(self, body):
        return {
            "header": {"revision": str(self.store.revision)},
            "version": VERSION,
            "leader": _MEMBER_ID,
            "raftTerm": _RAFT_TERM,
        }

    # HTTP.

    def render_GET(self, request):
        host = (request.getHeader(b"host") or b"").decode("ascii", "replace")
        self.received[request.path].append((host, None))
        self.served[request.path] += 1
        if request.path == b"/version":
            return self._json(request, 200, {"etcdserver": VERSION, "etcdcluster": "3.5.0"})
        if request.path == b"/health":
            return self._json(request, 200, {"health": "true", "reason": ""})
        return self._not_found(request)

    def render_POST(self, request):
        try:
            body = json.loads(request.content.read() or b"{}")
        except ValueError:
            return self._json(request, 400, {"error": "bad JSON", "code": 3, "message": "bad JSON"})
        host = (request.getHeader(b"host") or b"").decode("ascii", "replace")
        self.received[request.path].append((host, body))
        stream = None
        if request.path == b"/v3/watch":
            stream = WatchStream(request, body.get("create_request") or {}, self.store)
            self.streams.append(stream)
        fault = self.faults.take(request.path, host)
        if fault is None:
            return self._answer(request, body, stream)
        return fault.befall(request, body, lambda: self._answer(request, body, stream))

    def _answer(self, request, body, stream):
        self.served[request.path] += 1
        if stream is not None:
            return self._watch(request, stream)
        if request.path == b"/v3/auth/authenticate":
            route = self._authenticate
        elif request.path in self._routes:
            route = self._routes[request.path]
        else:
            return self._not_found(request)
        try:
            if route != self._authenticate:
                self._check_token(request)
            reply = route(body)
        except GatewayError as e:
            return self._json(request, e.status, _error_body(e))
        # A keepalive's reply is wrapped, as a stream's results are.
        inner = reply.get("result", reply)
        inner["header"] = _filled(inner["header"])
        return self._json(request, 200, reply)

    @staticmethod
    def _not_found(request):
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"404 page not found\n"

    @staticmethod
    def _json(request, code, body):
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    def _watch(self, request, stream):
        """
        A watch stream: one JSON result per line, for as long as the
        client keeps the connection.
        """
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")

        def send(result):
            result = {**result, "header": _filled(result["header"])}
            request.write(json.dumps({"result": result}, separators=(",", ":")).encode("utf-8") + b"\n")

        try:
            self._check_token(request)
        except GatewayError:
            send(
                {
                    "header": {"revision": str(self.store.revision)},
                    "created": True,
                    "canceled": True,
                    "cancel_reason": "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
                }
            )
            return NOT_DONE_YET
        stream.watcher = self.store.watch(stream.create, send)
        if stream.watcher is not None:
            request.notifyFinish().addBoth(lambda _: self.store.unwatch(stream.watcher))
        return NOT_DONE_YET


class WatchStream:
    """
    One watch stream as the gateway serves it, for a test to break: its
    C{create} request, the C{host} the client sent it to (which of its
    endpoints), the C{token} it was opened with, whether it is C{closed}.
    """

    def __init__(self, request, create, store):
        self._request = request
        self.create = create
        self.host = (request.getHeader(b"host") or b"").decode("ascii", "replace")
        self.token = (request.getHeader(b"authorization") or b"").decode("ascii", "replace") or None
        self.closed = False
        #: The store's watcher behind it, once etcd took the watch.
        self.watcher = None
        self._store = store
        request.notifyFinish().addBoth(self._closed)

    def _closed(self, _):
        self.closed = True

    def pause(self):
        """
        Hold the stream's events back (a slow link, a busy member), as etcd
        holds back a slow watcher's, until L{resume}.
        """
        self._store.pause(self._taken())

    def resume(self, revision=None):
        """
        Send the events held back, up to C{revision} (the stream stays
        paused then) or all of them, in one result; or, if a compaction
        passed them meanwhile, the watch's cancellation, as etcd does.
        """
        watcher = self._taken()
        with self._request.channel.transport.held():
            self._store.resume(watcher, revision)

    def _taken(self):
        """
        The store's watcher, which only a watch etcd took has.
        """
        if self.watcher is None:
            raise AssertionError(
                "this watch stream has no watcher to pause or resume: etcd has not taken"
                " its watch (held by a fault, refused, or cancelled at its start)"
            )
        return self.watcher

    def write(self, data):
        """
        Send C{data} (bytes: a line garbled, an error object, half a
        result) down the stream, as it is.
        """
        with self._request.channel.transport.held():
            self._request.write(data)

    def end(self, last=b""):
        """
        End the stream as etcd ends a watch it gives up on: C{last} (its
        error object, with no line end), then the end of the body.
        """
        with self._request.channel.transport.held():
            if last:
                self._request.write(last)
            self._request.finish()

    def cut(self):
        """
        Cut the stream's connection in the middle of its body.
        """
        cut_connection(self._request)

