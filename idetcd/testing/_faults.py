"""
What a faithful etcd never does by itself, done to one request when a test
asks: a reply lost after the request was applied, a connection cut before
it was, an error status, a request held in flight until the test (or the
clock) lets it through, a watch answered with the test's lines.  Each
fault is planned for a gateway path and befalls the next request for it
(L{Faults.once}) or every one (L{Faults.always}); the store under it stays
what etcd's would be, so a test scripts the event, not etcd's answer to it.
"""

import collections
import json

import attr
from twisted.web.server import NOT_DONE_YET


def cut_connection(request):
    """
    Cut the connection C{request} came on, whatever it was in the middle of.
    """
    request.channel.transport.loseConnection()


def _let_through(request, answer):
    """
    Have the gateway answer C{request} now, from outside a delivery, its
    reply sent whole (a watch's stream only begins).
    """
    with request.channel.transport.held():
        data = answer()
        if data is not NOT_DONE_YET:
            request.write(data)
            request.finish()


@attr.s(frozen=True)
class Refuse:
    """
    etcd refuses the request, without applying it: gRPC C{code},
    C{message} and the HTTP C{status} of the gateway's error object.
    """

    code = attr.ib()
    message = attr.ib()
    status = attr.ib(default=400)

    def befall(self, request, body, answer):
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        error = {"error": self.message, "code": self.code, "message": self.message}
        return json.dumps(error, separators=(",", ":")).encode("utf-8")


#: A member that lost its leader, as it answers a request that asks for one.
NO_LEADER = Refuse(14, "etcdserver: no leader", 503)


@attr.s(frozen=True)
class Cut:
    """
    The connection is cut before the request reaches etcd: nothing applied.
    """

    def befall(self, request, body, answer):
        cut_connection(request)
        return NOT_DONE_YET


@attr.s(frozen=True)
class LoseReply:
    """
    etcd applies the request, and the connection is cut before its reply
    gets back: the client cannot tell this from L{Cut}.
    """

    def befall(self, request, body, answer):
        answer()
        cut_connection(request)
        return NOT_DONE_YET


@attr.s(frozen=True)
class Stream:
    """
    A watch answered with C{data} (bytes: a refusal line, an error object)
    in place of etcd's stream, and ended there if C{end}: as etcd's
    gateway refuses a watch before it starts (a member with no leader, a
    token it will not take).
    """

    data = attr.ib()
    end = attr.ib(default=False)

    def befall(self, request, body, answer):
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.write(self.data)
        if self.end:
            request.finish()
        return NOT_DONE_YET


@attr.s(eq=False)
class _Held:
    request = attr.ib()
    answer = attr.ib()
    body = attr.ib()
    timer = attr.ib(default=None)
    #: Whether it reached etcd (L{Hold.reach}), its reply held.
    reached = attr.ib(default=False)

    def stop_timer(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


@attr.s(eq=False)
class Hold:
    """
    Requests held in flight, oldest first: each reaches etcd (is applied
    and answered) when L{release}d, reaches it with its reply held back
    when L{reach}ed, has its reply lost when L{lose}d, is lost on the way
    when L{cut}; one the client gave up on meanwhile (its timeout) is gone,
    never applied unless it had reached etcd.
    With C{clock} and C{delay}, each is released C{delay} seconds after it
    was sent: a slow etcd.
    """

    clock = attr.ib(default=None)
    delay = attr.ib(default=None)
    _held = attr.ib(factory=collections.deque, init=False)

    def __attrs_post_init__(self):
        if self.delay is not None and self.clock is None:
            raise TypeError("Hold(delay=...) needs the clock to count the delay on")

    def befall(self, request, body, answer):
        held = _Held(request, answer, body)
        self._held.append(held)
        request.notifyFinish().addErrback(lambda _: self._drop(held))
        if self.delay is not None:
            held.timer = self.clock.callLater(self.delay, self._pass, held)
        return NOT_DONE_YET

    @property
    def pending(self):
        """
        How many requests are held now.
        """
        return len(self._held)

    @property
    def bodies(self):
        """
        The JSON bodies of the requests held now, oldest first.
        """
        return [held.body for held in self._held]

    def _drop(self, held):
        if held in self._held:
            self._held.remove(held)
        held.stop_timer()

    def _pass(self, held):
        self._drop(held)
        _let_through(held.request, held.answer)

    def _oldest(self, matching, reached=True):
        """
        The oldest held request C{matching} accepts; one that already
        reached etcd only if C{reached}.
        """
        for held in self._held:
            if (reached or not held.reached) and (matching is None or matching(held.body)):
                return held
        raise AssertionError("no such request is held")

    def release(self, matching=None):
        """
        Let the oldest held request (whose body C{matching} accepts, if
        given) reach etcd; returns its body.
        """
        held = self._oldest(matching)
        self._pass(held)
        return held.body

    def reach(self, matching=None):
        """
        Let the oldest held request that has not reached etcd yet (as
        L{release}) reach it now, and hold its reply until it is
        L{release}d: a reply slow on the way back.
        """
        held = self._oldest(matching, reached=False)
        with held.request.channel.transport.held():
            reply = held.answer()
        held.answer = lambda: reply
        held.reached = True
        return held.body

    def lose(self, matching=None):
        """
        Let the oldest held request that has not reached etcd yet (as
        L{release}) reach it, and lose its reply: the connection is cut once
        it is applied.
        """
        held = self._oldest(matching, reached=False)
        self._drop(held)
        with held.request.channel.transport.held():
            held.answer()
            cut_connection(held.request)
        return held.body

    def cut(self, matching=None):
        """
        Cut the connection of the oldest held request that has not reached
        etcd yet (as L{release}), before it does; returns its body.
        """
        held = self._oldest(matching, reached=False)
        self._drop(held)
        cut_connection(held.request)
        return held.body


def _where(path, host):
    return path.encode("ascii"), host


@attr.s(eq=False)
class Faults:
    """
    The faults planned, by gateway path (such as C{"/v3/kv/txn"}) and,
    optionally, by the C{host} a request was sent to (one endpoint of a
    client, such as C{"claimer:2379"}: one client of several behind a
    fault).

    A fault is what has C{befall(request, body, answer)}: the gateway's
    twisted.web C{request}, its JSON C{body} as the gateway parsed it, and
    C{answer()}, which has etcd apply the request and returns the reply;
    it returns what the gateway's C{render} does.
    """

    _once = attr.ib(factory=lambda: collections.defaultdict(collections.deque), init=False)
    _always = attr.ib(factory=dict, init=False)

    def once(self, path, fault, host=None):
        """
        The next request for C{path} (to C{host}) not already given a fault
        suffers C{fault}; returns C{fault}.
        """
        self._once[_where(path, host)].append(fault)
        return fault

    def always(self, path, fault, host=None):
        """
        Every request for C{path} (to C{host}) suffers C{fault} until
        L{clear}; returns C{fault}.
        """
        self._always[_where(path, host)] = fault
        return fault

    def clear(self, path, host=None):
        """
        No more faults for C{path} (to C{host}).
        """
        self._once.pop(_where(path, host), None)
        self._always.pop(_where(path, host), None)

    def take(self, path, host):
        """
        The fault a request for C{path} (bytes) to C{host} (text) suffers
        now, or C{None}: one planned for that host first.
        """
        for where in ((path, host), (path, None)):
            planned = self._once.get(where)
            if planned:
                return planned.popleft()
        for where in ((path, host), (path, None)):
            if where in self._always:
                return self._always[where]
        return None
