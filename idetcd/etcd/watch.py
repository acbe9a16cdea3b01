"""
etcd watches: a never-ending stream of results, read line by line, that
resumes where it broke.
"""

import json

import attr
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from idetcd.common import Backoff, RateLimitedLog
from idetcd.etcd.auth import watch_refused
from idetcd.etcd.errors import Compacted, EtcdError, ResyncNeeded
from idetcd.etcd.values import Event, KeyValue, _range_body

log = Logger()

#: A watch line longer than this is a broken stream, not a result.
MAX_WATCH_LINE = 64 * 1024 * 1024


class WatchStream:
    """
    Reads a watch's never-ending body: newline-separated JSON objects that a
    TCP read may split anywhere.
    """

    def __init__(self, on_result):
        self._on_result = on_result
        self._pieces = []
        self._size = 0
        self.transport = None
        #: The auth token the stream was opened with, if any.
        self.token = None
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

    A watch whose auth token etcd refused (it expired while the watch was
    away) resumes once with a new token before it gives up.

    C{on_contact(live)}, if given, hears when the watch loses etcd (its
    stream broke: C{False}) and when a new stream delivers again (C{True}).
    """

    client = attr.ib()
    key = attr.ib()
    range_end = attr.ib()
    next_revision = attr.ib()
    on_events = attr.ib()
    backoff = attr.ib(factory=lambda: Backoff(maximum=2.0))
    on_contact = attr.ib(default=None)
    done = attr.ib(factory=defer.Deferred, init=False)
    _stream = attr.ib(default=None, init=False)
    _opening = attr.ib(default=None, init=False)
    _retry = attr.ib(default=None, init=False)
    #: Consecutive streams that broke, and when to log that.
    _breaks = attr.ib(default=0, init=False)
    _warn = attr.ib(default=None, init=False)
    #: Whether the stream now opening follows one whose token was refused.
    _new_token = attr.ib(default=False, init=False)

    def __attrs_post_init__(self):
        self._warn = RateLimitedLog(self.client.reactor, log, 30.0)

    def start(self):
        if self.done.called:
            return
        self._retry = None
        body = {
            "create_request": {
                **_range_body(self.key, self.range_end),
                # From the revision before: etcd accepts a watch from its
                # compaction revision but has dropped the deletions made
                # there, so only a start below it hears of the compaction.
                # What that revision delivers again is skipped.
                "start_revision": str(max(1, self.next_revision - 1)),
                "progress_notify": True,
            }
        }
        index = self.client.current_index
        stream = self._stream = WatchStream(lambda line: self._line(stream, index, line))
        self._opening = self.client.open_watch_stream(index, body, stream)
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
        if result.get("canceled") and self._token_refused(stream, result):
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
        if result.get("created"):
            self._new_token = False
        fresh = [event for event in events if event.kv.mod_revision >= self.next_revision]
        if fresh:
            revision = max(event.kv.mod_revision for event in fresh)
            self.next_revision = revision + 1
            self.on_events(fresh, revision)
        elif not events and not result.get("created"):
            # A progress notification: everything up to here was delivered.
            self.next_revision = max(self.next_revision, current + 1)

    def _token_refused(self, stream, result):
        """
        If etcd cancelled the watch for its token, and a new token may help
        (the last one was not new already), resume with one; returns
        whether it did.
        """
        reason = result.get("cancel_reason") or ""
        if not watch_refused(reason) or self._new_token or not self.client.forget_token(stream.token):
            return False
        log.info(
            "etcd refused the watch's token ({why}); resuming from revision {revision} with a new one",
            why=reason,
            revision=self.next_revision,
        )
        self._new_token = True
        self._stream = None
        stream.stop()
        self._retry = self.client.reactor.callLater(0, self.start)
        return True

    def _working(self, index):
        self.backoff.reset()
        self._warn.reset("broken")
        if self._breaks:
            log.info(
                "etcd watch resumed on {endpoint} from revision {revision} after {breaks} broken streams",
                endpoint=self.client.endpoints[index],
                revision=self.next_revision,
                breaks=self._breaks,
            )
            self._breaks = 0
            if self.on_contact is not None:
                self.on_contact(True)

    def _broken(self, stream, index, failure):
        """
        The stream on endpoint C{index} ended or failed: resume on the next
        endpoint, after a backoff.
        """
        if stream is not self._stream or self.done.called:
            return None
        self._stream = None
        self.client.next_endpoint(index)
        delay = self.backoff.next()
        self._breaks += 1
        if self._breaks == 1 and self.on_contact is not None:
            self.on_contact(False)
        self._warn(
            "broken",
            "etcd watch on {endpoint} ended ({why}); resuming from revision {revision}"
            " on {next} in {delay:.2f}s ({breaks} broken streams in a row)",
            endpoint=self.client.endpoints[index],
            why=failure.getErrorMessage() if failure else "closed",
            revision=self.next_revision,
            next=self.client.endpoint,
            delay=delay,
            breaks=self._breaks,
            level=LogLevel.warn if failure is not None and failure.check(EtcdError) else LogLevel.info,
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
