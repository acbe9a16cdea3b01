"""
etcd authentication: a user name and password traded for a token at
C{/v3/auth/authenticate}, sent as the C{Authorization} header of every
request and watch, and traded again when etcd stops taking it (tokens
expire after C{--auth-token-ttl} idle seconds, or when etcd restarts).
"""

import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from idetcd.common import Waiters
from idetcd.etcd.errors import AuthenticationFailed, EtcdError

log = Logger()

#: What etcd answers to a request whose token it no longer takes: the
#: token expired, is empty, or predates a change of users and roles.  A
#: request refused so was not applied: the Go client also authenticates
#: again and retries it.
_TOKEN_REFUSED = (
    "invalid auth token",
    "user name is empty",
    "revision of auth store is old",
)
#: How a watch says its token was refused: it is cancelled at once, with a
#: reason that depends on the etcd version ("permission denied" on 3.5,
#: whatever the cause; "invalid auth token" on 3.4).
_WATCH_REFUSED = _TOKEN_REFUSED + ("permission denied",)


def token_refused(message):
    """
    Whether etcd's error C{message} says the request's token was refused.
    """
    return any(text in message for text in _TOKEN_REFUSED)


def watch_refused(reason):
    """
    Whether a watch's C{cancel_reason} may mean its token was refused.
    """
    return any(text in reason for text in _WATCH_REFUSED)


@attr.s(frozen=True, auto_attribs=True)
class Credentials:
    """
    An etcd user; the password stays out of C{repr}, and so out of logs.
    """

    user: str
    password: str = attr.ib(repr=False)


@attr.s(eq=False)
class TokenKeeper:
    """
    The one token of a client.  Many callers may want a token at once, when
    the client starts or the token expired: they share one authentication.

    C{authenticate()} returns a Deferred firing with a new token, or with
    C{""} when etcd has authentication off.
    """

    authenticate = attr.ib()
    authentications = attr.ib(default=0, init=False)
    _token = attr.ib(default=None, init=False)
    _in_flight = attr.ib(default=None, init=False)
    _waiters = attr.ib(factory=Waiters, init=False)

    def token(self):
        """
        A Deferred of the token to send: the one held, else a new one.
        Cancelling it leaves the shared authentication to the others.
        """
        if self._token is not None:
            return defer.succeed(self._token)
        waiter = self._waiters.wait()
        if self._in_flight is None:
            self._in_flight = defer.maybeDeferred(self.authenticate)
            self._in_flight.addBoth(self._settled)
        return waiter

    def forget(self, token):
        """
        etcd refused C{token}: the next L{token} authenticates again, unless
        another caller already did.
        """
        if token == self._token:
            self._token = None

    def _settled(self, result):
        self._in_flight = None
        if not isinstance(result, Failure):
            self._token = result
            self.authentications += 1
        self._waiters.fire(result)


@defer.inlineCallbacks
def authenticate(client, credentials):
    """
    A new token for C{credentials}, or C{""} when etcd has authentication
    off; L{AuthenticationFailed} when etcd refuses the user.
    """
    body = {"name": credentials.user, "password": credentials.password}
    try:
        data = yield client.call_with_token("/v3/auth/authenticate", body, None, None)
    except EtcdError as e:
        if "authentication is not enabled" in e.message:
            log.info(
                "etcd at {endpoint} has authentication off: sending no token for {user}",
                endpoint=client.endpoint,
                user=credentials.user,
            )
            return ""
        if e.code == 3 or "authentication failed" in e.message:
            raise AuthenticationFailed(
                f"etcd at {client.endpoint} refused user {credentials.user!r} ({e.message}):"
                " check the user name and password of 'credentials'"
            ) from None
        raise
    return data.get("token") or ""
