"""
etcd's multi-version key space, its leases and its watchers, in memory: the
rules of etcd's C{mvcc} and C{lease} packages that idetcd depends on, with
time taken from an injected clock.  Requests and replies are the JSON
gateway's dicts (base64 keys, int64 as strings), so that L{_gateway} only
routes.
"""

import base64
import bisect

import attr
from twisted.internet import task

from idetcd.etcd import b64_text

#: etcd's defaults: operations per transaction (C{--max-txn-ops}), and the
#: smallest TTL it grants (one and a half election timeouts, rounded up to
#: a second, with the default 1 s election timeout).
MAX_TXN_OPS = 128
MIN_LEASE_TTL = 2
#: How often etcd tells watchers that asked for it how far they are
#: (C{--experimental-watch-progress-notify-interval}), in seconds.
PROGRESS_INTERVAL = 600


class GatewayError(Exception):
    """
    etcd refused a request: its gRPC C{code}, C{message}, and the HTTP
    status the gateway answers with.
    """

    def __init__(self, code, message, status):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _error(code, text, status=400):
    return GatewayError(code, "etcdserver: " + text, status)


def _compacted():
    return _error(11, "mvcc: required revision has been compacted")


def _future():
    return _error(11, "mvcc: required revision is a future revision")


def lease_not_found():
    return _error(5, "requested lease not found", 404)


def no_space():
    return _error(8, "mvcc: database space exceeded", 429)


def _bytes(text):
    return base64.b64decode(text or "")



def _int(value):
    return int(value or 0)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Version:
    """
    One key as it was at a revision; C{version} 0 is a deletion.
    """

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def to_json(self, keys_only=False):
        """
        The gateway's C{KeyValue}: zero fields left out, as protobuf's JSON
        does.
        """
        fields = {
            "key": b64_text(self.key),
            "create_revision": str(self.create_revision),
            "mod_revision": str(self.mod_revision),
            "version": str(self.version),
            "value": "" if keys_only else b64_text(self.value),
            "lease": str(self.lease),
        }
        return {name: value for name, value in fields.items() if value not in ("", "0")}

    def event(self):
        """
        The watch event of this version: C{type} left out for a put (its
        enum's zero), C{"DELETE"} with only the key and revision for a
        deletion.
        """
        if self.version:
            return {"kv": self.to_json()}
        return {"type": "DELETE", "kv": {"key": b64_text(self.key), "mod_revision": str(self.mod_revision)}}


def _selector(body):
    """
    Which keys a request names: one key, or C{[key, range_end)}, where a
    C{range_end} of C{"\\0"} means every key from C{key} on.
    """
    key = _bytes(body.get("key"))
    if "range_end" not in body or not body["range_end"]:
        return key, None
    end = _bytes(body["range_end"])
    return key, (b"" if end == b"\0" else end)


def _in_range(candidate, key, end):
    if end is None:
        return candidate == key
    return candidate >= key and (end == b"" or candidate < end)


@attr.s(eq=False)
class _Lease:
    id = attr.ib()
    ttl = attr.ib()
    expiry = attr.ib()
    keys = attr.ib(factory=set)
    timer = attr.ib(default=None)


def _compacted_watch(revision):
    """
    The result by which etcd cancels a watch that would need the revisions
    compacted before C{revision}.
    """
    return {"header": {}, "canceled": True, "compact_revision": str(revision)}


@attr.s(eq=False)
class _Watcher:
    key = attr.ib()
    end = attr.ib()
    prev_kv = attr.ib()
    progress_notify = attr.ib()
    send = attr.ib()
    next_revision = attr.ib()
    #: Whether it was sent no events since the last progress tick.
    quiet = attr.ib(default=True)
    #: Whether it is behind (a slow link): sent nothing until caught up.
    paused = attr.ib(default=False)
    #: The compaction that cancelled it while it was behind, to tell it of
    #: when it catches up.
    compacted = attr.ib(default=0)


_COMPARE_RESULTS = {
    "EQUAL": lambda order: order == 0,
    "GREATER": lambda order: order > 0,
    "LESS": lambda order: order < 0,
    "NOT_EQUAL": lambda order: order != 0,
}
_COMPARE_TARGETS = {
    "VERSION": ("version", "version"),
    "CREATE": ("create_revision", "create_revision"),
    "MOD": ("mod_revision", "mod_revision"),
    "LEASE": ("lease", "lease"),
}
#: protobuf's JSON takes an enum by name or by number.
_RESULT_NUMBERS = ["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
_TARGET_NUMBERS = ["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]


def _enum(value, names):
    if value is None or value == "":
        return names[0]
    return names[value] if isinstance(value, int) else value


@attr.s(eq=False)
class Store:
    """
    The key space at every revision since the last compaction, its leases
    (timed on C{clock}) and its watchers.  C{no_space} raises etcd's
    NOSPACE alarm: puts, lease grants and transactions with a put are
    refused; reads, deletions, keepalives and revocations go on.  (A real
    etcd whose database file has grown to the quota also refuses the
    transactions without a put, until it is defragmented.)
    """

    clock = attr.ib()
    progress_interval = attr.ib(default=PROGRESS_INTERVAL)
    revision = attr.ib(default=1, init=False)
    compact_revision = attr.ib(default=0, init=False)
    no_space = attr.ib(default=False, init=False)
    #: Each key's versions, oldest first, back to the newest one at or
    #: before the compaction revision.
    _history = attr.ib(factory=dict, init=False)
    #: Every version since the compaction, in the order written.
    _log = attr.ib(factory=list, init=False)
    _leases = attr.ib(factory=dict, init=False)
    _watchers = attr.ib(factory=list, init=False)
    _next_lease = attr.ib(default=0x694D9A3E1C7B2A00, init=False)
    _progress = attr.ib(default=None, init=False)

    def __attrs_post_init__(self):
        self._progress = task.LoopingCall(self.progress)
        self._progress.clock = self.clock
        self._progress.start(self.progress_interval, now=False)

    # Reading.

    def _at(self, key, revision):
        """
        C{key}'s live version at C{revision}, or C{None}.
        """
        versions = self._history.get(key, ())
        index = bisect.bisect_right([v.mod_revision for v in versions], revision) - 1
        if index < 0 or not versions[index].version:
            return None
        return versions[index]

    def _keys(self, key, end):
        if end is None:
            return [key] if key in self._history else []
        return sorted(k for k in self._history if _in_range(k, key, end))

    def _live(self, key, end, revision):
        found = (self._at(k, revision) for k in self._keys(key, end))
        return [kv for kv in found if kv is not None]

    def _read_revision(self, requested, current):
        if requested <= 0:
            return current
        if requested > current:
            raise _future()
        if requested < self.compact_revision:
            raise _compacted()
        return requested

    def range(self, body, current=None):
        """
        A C{RangeRequest}: one key or a range, at a past C{revision} while
        it is not compacted, sorted by key (or as asked), with C{limit},
        C{keys_only} and C{count_only}.  C{current} is the newest revision
        the reader sees (a transaction's own, inside one).
        """
        current = self.revision if current is None else current
        key, end = _selector(body)
        at = self._read_revision(_int(body.get("revision")), current)
        kvs = self._live(key, end, at)
        kvs = self._sorted(kvs, body.get("sort_order"), body.get("sort_target"))
        reply = {"header": {"revision": str(current)}}
        if kvs and not body.get("count_only"):
            limit = _int(body.get("limit"))
            shown = kvs[:limit] if limit > 0 else kvs
            reply["kvs"] = [kv.to_json(keys_only=bool(body.get("keys_only"))) for kv in shown]
            if len(shown) < len(kvs):
                reply["more"] = True
        if kvs:
            reply["count"] = str(len(kvs))
        return reply

    @staticmethod
    def _sorted(kvs, order, target):
        order = _enum(order, ["NONE", "ASCEND", "DESCEND"])
        target = _enum(target, ["KEY", "VERSION", "CREATE", "MOD", "VALUE"])
        if order == "NONE":
            return kvs  # by key, as etcd keeps them
        field = {
            "KEY": "key",
            "VERSION": "version",
            "CREATE": "create_revision",
            "MOD": "mod_revision",
            "VALUE": "value",
        }[target]
        return sorted(kvs, key=lambda kv: getattr(kv, field), reverse=order == "DESCEND")

    # Writing: every change goes through _write, at the revision given.

    def _write(self, revision, key, value, lease):
        current = self._at(key, revision)
        if self._history.get(key) and self._history[key][-1].mod_revision == revision:
            raise _error(3, "duplicate key given in txn request")
        created = current.create_revision if current is not None else revision
        version = current.version + 1 if current is not None else 1
        if current is not None and current.lease and current.lease in self._leases:
            self._leases[current.lease].keys.discard(key)
        if lease:
            self._leases[lease].keys.add(key)
        self._append(_Version(key, value, created, revision, version, lease))
        return current

    def _delete(self, revision, key):
        current = self._at(key, revision)
        if current is None:
            return None
        if current.lease in self._leases:
            self._leases[current.lease].keys.discard(key)
        self._append(_Version(key, b"", 0, revision, 0, 0))
        return current

    def _append(self, version):
        self._history.setdefault(version.key, []).append(version)
        self._log.append(version)

    def _check_lease(self, lease):
        if lease and lease not in self._leases:
            raise lease_not_found()

    def put(self, body):
        self._refuse_writes()
        return self._in_revision(lambda revision: self._put(body, revision))

    def _put(self, body, revision):
        key = _bytes(body.get("key"))
        if not key:
            raise _error(3, "key is not provided")
        lease = _int(body.get("lease"))
        self._check_lease(lease)
        old = self._write(revision, key, _bytes(body.get("value")), lease)
        reply = {"header": {"revision": str(revision)}}
        if body.get("prev_kv") and old is not None:
            reply["prev_kv"] = old.to_json()
        return reply, True

    def delete_range(self, body):
        return self._in_revision(lambda revision: self._delete_range(body, revision))

    def _delete_range(self, body, revision):
        key, end = _selector(body)
        deleted = [old for old in (self._delete(revision, k) for k in self._keys(key, end)) if old is not None]
        reply = {"header": {"revision": str(revision if deleted else revision - 1)}}
        if deleted:
            reply["deleted"] = str(len(deleted))
            if body.get("prev_kv"):
                reply["prev_kvs"] = [old.to_json() for old in deleted]
        return reply, bool(deleted)

    def _in_revision(self, change):
        """
        Apply C{change(revision)} at the next revision; it returns its reply
        and whether it wrote, and the store moves on only if it did.
        """
        revision = self.revision + 1
        mark = len(self._log)
        try:
            reply, wrote = change(revision)
        except GatewayError:
            self._undo(mark)
            raise
        if wrote:
            self.revision = revision
            self._notify()
        return reply

    def _undo(self, mark):
        """
        Take back the versions written since the log was C{mark} long (a
        transaction failed half-way: etcd applies all or nothing).
        """
        while len(self._log) > mark:
            version = self._log.pop()
            versions = self._history[version.key]
            versions.pop()
            if version.lease in self._leases:
                self._leases[version.lease].keys.discard(version.key)
            previous = versions[-1] if versions else None
            if previous is not None and previous.version and previous.lease in self._leases:
                self._leases[previous.lease].keys.add(version.key)
            if not versions:
                del self._history[version.key]

    # Transactions.

    def txn(self, body):
        self._validate_txn(body)
        if self.no_space and self._txn_puts(body):
            raise no_space()
        return self._in_revision(lambda revision: self._txn(body, revision, [False]))

    def _validate_txn(self, body):
        """
        What etcd refuses before it looks at a transaction's comparisons:
        too many operations, a put without a key, a key put twice or put
        and deleted in one branch.
        """
        if max(len(body.get(part, ())) for part in ("compare", "success", "failure")) > MAX_TXN_OPS:
            raise _error(3, "too many operations in txn request")
        for branch in ("success", "failure"):
            puts, deletes = set(), []
            for op in body.get(branch, ()):
                if "request_put" in op:
                    key = _bytes(op["request_put"].get("key"))
                    if not key:
                        raise _error(3, "key is not provided")
                    if key in puts:
                        raise _error(3, "duplicate key given in txn request")
                    puts.add(key)
                elif "request_delete_range" in op:
                    deletes.append(_selector(op["request_delete_range"]))
                elif "request_txn" in op:
                    self._validate_txn(op["request_txn"])
            if any(_in_range(key, *deleted) for key in puts for deleted in deletes):
                raise _error(3, "duplicate key given in txn request")

    @staticmethod
    def _txn_puts(body):
        """
        Whether etcd's quota counts a cost for the transaction: it has a
        put in a branch of its own (deletions cost nothing, nor do the
        operations of a nested transaction).
        """
        return any("request_put" in op for op in [*body.get("success", ()), *body.get("failure", ())])

    def _compare(self, compare):
        key, end = _selector(compare)
        target = _enum(compare.get("target"), _TARGET_NUMBERS)
        holds = _COMPARE_RESULTS[_enum(compare.get("result"), _RESULT_NUMBERS)]
        kvs = self._live(key, end, self.revision)
        if not kvs:
            if target == "VALUE":
                return False
            kvs = [_Version(key, b"", 0, 0, 0, 0)]
        for kv in kvs:
            if target == "VALUE":
                wanted = _bytes(compare.get("value"))
                order = (kv.value > wanted) - (kv.value < wanted)
            else:
                field, name = _COMPARE_TARGETS[target]
                order = getattr(kv, field) - _int(compare.get(name))
                order = (order > 0) - (order < 0)
            if not holds(order):
                return False
        return True

    def _txn(self, body, revision, wrote):
        succeeded = all(self._compare(compare) for compare in body.get("compare", ()))
        responses = []
        for op in body.get("success" if succeeded else "failure", ()):
            responses.append(self._op(op, revision, wrote))
        reply = {"header": {"revision": str(revision if wrote[0] else revision - 1)}}
        if succeeded:
            reply["succeeded"] = True
        if responses:
            reply["responses"] = responses
        return reply, wrote[0]

    def _op(self, op, revision, wrote):
        """
        One operation of a transaction; the header of each carries the
        revision the transaction has reached at that point.
        """
        seen = revision if wrote[0] else revision - 1
        if "request_range" in op:
            return {"response_range": self.range(op["request_range"], current=seen)}
        if "request_put" in op:
            reply, _ = self._put(op["request_put"], revision)
            wrote[0] = True
            return {"response_put": reply}
        if "request_delete_range" in op:
            reply, deleted = self._delete_range(op["request_delete_range"], revision)
            wrote[0] = wrote[0] or deleted
            reply["header"]["revision"] = str(revision if wrote[0] else revision - 1)
            return {"response_delete_range": reply}
        if "request_txn" in op:
            reply, _ = self._txn(op["request_txn"], revision, wrote)
            reply["header"] = {}
            return {"response_txn": reply}
        raise _error(3, "unknown operation in txn request")

    # Compaction.

    def compact(self, revision):
        """
        Drop the versions older than C{revision} that are not its state.
        """
        if revision > self.revision:
            raise _future()
        if revision <= self.compact_revision:
            raise _compacted()
        self.compact_revision = revision
        # A watcher behind the compaction cannot catch up: etcd cancels it,
        # as it refuses a watch from before the compaction revision.
        for watcher in list(self._watchers):
            if watcher.next_revision < revision:
                self._watchers.remove(watcher)
                watcher.compacted = revision
        # What a watch from the compaction revision still hears: the puts
        # made there (each the newest version of its key), not deletions.
        self._log = [
            version
            for version in self._log
            if version.mod_revision > revision or (version.mod_revision == revision and version.version)
        ]
        for key in list(self._history):
            versions = self._history[key]
            keep = bisect.bisect_right([v.mod_revision for v in versions], revision) - 1
            del versions[: max(keep, 0)]
            if versions and versions[0].mod_revision <= revision and not versions[0].version:
                del versions[0]
            if not versions:
                del self._history[key]
        return {"header": {"revision": str(self.revision)}}

    # Leases.

    def _refuse_writes(self):
        if self.no_space:
            raise no_space()

    def grant(self, body):
        self._refuse_writes()
        lease = _int(body.get("ID"))
        if lease in self._leases:
            raise _error(9, "lease already exists")
        if not lease:
            self._next_lease += 1
            lease = self._next_lease
        ttl = max(_int(body.get("TTL")), MIN_LEASE_TTL)
        self._leases[lease] = _Lease(lease, ttl, self.clock.seconds() + ttl)
        self._schedule(self._leases[lease])
        return {"header": {"revision": str(self.revision)}, "ID": str(lease), "TTL": str(ttl)}

    def _schedule(self, lease):
        if lease.timer is not None and lease.timer.active():
            lease.timer.cancel()
        lease.timer = self.clock.callLater(lease.expiry - self.clock.seconds(), self._expire, lease.id)

    def _expire(self, lease):
        if lease in self._leases and self._leases[lease].expiry <= self.clock.seconds():
            self._revoke_lease(lease)

    def _revoke_lease(self, lease):
        """
        Drop C{lease} and delete its keys, all at one revision.
        """
        held = self._leases.pop(lease)
        if held.timer is not None and held.timer.active():
            held.timer.cancel()
        keys = sorted(held.keys)

        def delete(revision):
            for key in keys:
                self._delete(revision, key)
            return None, bool(keys)

        self._in_revision(delete)

    def revoke(self, body):
        lease = _int(body.get("ID"))
        if lease not in self._leases:
            raise lease_not_found()
        self._revoke_lease(lease)
        return {"header": {"revision": str(self.revision)}}

    def keepalive(self, body):
        lease = _int(body.get("ID"))
        result = {"header": {"revision": str(self.revision)}, "ID": str(lease)}
        held = self._leases.get(lease)
        if held is not None:
            held.expiry = self.clock.seconds() + held.ttl
            self._schedule(held)
            result["TTL"] = str(held.ttl)
        return {"result": result}

    def time_to_live(self, body):
        lease = _int(body.get("ID"))
        reply = {"header": {"revision": str(self.revision)}, "ID": str(lease)}
        held = self._leases.get(lease)
        if held is None:
            reply["TTL"] = "-1"
            return reply
        reply["TTL"] = str(int(max(held.expiry - self.clock.seconds(), 0)))
        reply["grantedTTL"] = str(held.ttl)
        if body.get("keys") and held.keys:
            reply["keys"] = [b64_text(key) for key in sorted(held.keys)]
        return {k: v for k, v in reply.items() if v != "0"}

    def leases(self):
        reply = {"header": {"revision": str(self.revision)}}
        if self._leases:
            reply["leases"] = [{"ID": str(lease)} for lease in sorted(self._leases)]
        return reply

    def close(self):
        """
        Stop every timer (the store is done with).
        """
        if self._progress.running:
            self._progress.stop()
        for held in self._leases.values():
            if held.timer is not None and held.timer.active():
                held.timer.cancel()

    # Watching.

    def watch(self, body, send):
        """
        Start a watch for a C{WatchCreateRequest}; C{send(result)} gets each
        C{result} object of its stream.  Returns the watcher, for
        L{unwatch}, L{pause} and L{resume}; C{None} for a watch cancelled
        at once.
        """
        key, end = _selector(body)
        start = _int(body.get("start_revision"))
        header = {"revision": str(self.revision)}
        send({"header": header, "created": True})
        if 0 < start < self.compact_revision:
            send(_compacted_watch(self.compact_revision))
            return None
        watcher = _Watcher(
            key,
            end,
            bool(body.get("prev_kv")),
            bool(body.get("progress_notify")),
            send,
            start if start > 0 else self.revision + 1,
        )
        self._watchers.append(watcher)
        self._catch_up(watcher)
        return watcher

    def unwatch(self, watcher):
        """
        Cancel C{watcher}'s watch.
        """
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    @staticmethod
    def pause(watcher):
        """
        Hold C{watcher}'s events back, as etcd does for a watcher it cannot
        send to as fast as the store changes, until L{resume}.
        """
        watcher.paused = True

    def resume(self, watcher, revision=None):
        """
        Send C{watcher} the events held back, up to C{revision} (then it
        stays paused) or all of them, in one result: how etcd catches a
        slow watcher up.  One a compaction cancelled meanwhile is told so
        instead, and hears nothing more.
        """
        if watcher.compacted:
            watcher.send(_compacted_watch(watcher.compacted))
            watcher.compacted = 0
            return
        if watcher not in self._watchers:
            return  # cancelled
        watcher.paused = revision is not None
        self._catch_up(watcher, self.revision if revision is None else revision)

    def progress(self):
        """
        What etcd sends, every C{progress_interval}, each watcher that
        asked for C{progress_notify} and heard nothing in that time: the
        revision, no events.
        """
        for watcher in list(self._watchers):
            if watcher.paused:
                continue
            if watcher.progress_notify and watcher.quiet:
                watcher.send({"header": {"revision": str(self.revision)}})
            watcher.quiet = True

    def _notify(self):
        for watcher in list(self._watchers):
            if not watcher.paused:
                self._catch_up(watcher)

    def _catch_up(self, watcher, revision=None):
        """
        Send C{watcher} the events it has not seen, up to C{revision} (by
        default the store's), in the order they were written, in one
        result.
        """
        last = self.revision if revision is None else min(revision, self.revision)
        start = bisect.bisect_left([version.mod_revision for version in self._log], watcher.next_revision)
        events = [
            self._event(version, watcher.prev_kv)
            for version in self._log[start:]
            if version.mod_revision <= last and _in_range(version.key, watcher.key, watcher.end)
        ]
        watcher.next_revision = max(watcher.next_revision, last + 1)
        if events:
            watcher.quiet = False
            watcher.send({"header": {"revision": str(self.revision)}, "events": events})

    def _event(self, version, prev_kv):
        event = version.event()
        if prev_kv:
            before = self._at(version.key, version.mod_revision - 1)
            if before is not None:
                event["prev_kv"] = before.to_json()
        return event
