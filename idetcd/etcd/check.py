"""
What a node makes sure of before it relies on etcd: every endpoint that
answers is the JSON gateway of etcd 3.4 or later, etcd takes the configured
user, and that user may read and write idetcd's prefix.  Each way this fails is an
L{EtcdSetupError} whose one-line message says what to fix; while no
endpoint answers at all, the check waits and tries again, as the rest of
the node does; but an endpoint that answers the other scheme (C{http://}
pointed at a TLS port, or C{https://} at a plain one) is a setup error.
An etcd out of space (NOSPACE alarm) refuses the write
check; the node starts anyway, as it can still read and answer, and says
what the operator must do.
"""

import re

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.web.client import ResponseFailed

from idetcd.common import Backoff, RateLimitedLog
from idetcd.etcd.errors import (
    AuthenticationFailed,
    EtcdError,
    EtcdSetupError,
    EtcdTooOld,
    EtcdUnavailable,
    NoSpace,
    NotEtcdGateway,
    PermissionDenied,
    describe,
)
from idetcd.etcd.replies import EXPECTED
from idetcd.etcd.scheme import check_scheme
from idetcd.etcd.values import b64_text

log = Logger()

#: The first etcd whose JSON gateway answers on /v3.
MINIMUM_VERSION = (3, 4)
_PERMISSION_DENIED = 7


def parse_version(text):
    """
    C{(major, minor)} of an etcd version such as C{"3.5.1"}, or C{None}.
    """
    match = re.match(r"(\d+)\.(\d+)", text) if isinstance(text, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


@defer.inlineCallbacks
def server_version(client, index):
    """
    The version of the etcd at endpoint C{index}, from its C{/version};
    L{NotEtcdGateway} or L{EtcdTooOld} when it is not one idetcd can use.
    """
    endpoint = client.endpoints[index]
    code, data = yield client.get_once(index, "/version")
    server = data.get("etcdserver") if isinstance(data, dict) else None
    if code != 200 or parse_version(server) is None:
        raise NotEtcdGateway(
            f"{endpoint}/version answered HTTP {code} without etcd's version: 'endpoint' must be {EXPECTED}"
        )
    if parse_version(server) < MINIMUM_VERSION:
        raise EtcdTooOld(
            f"etcd at {endpoint} is version {server}; idetcd needs etcd 3.4 or later,"
            " whose JSON gateway answers on /v3: upgrade etcd"
        )
    return server


@defer.inlineCallbacks
def _check_once(client, prefix):
    versions = {}
    unreachable = []
    for index, endpoint in enumerate(client.endpoints):
        try:
            versions[endpoint] = yield server_version(client, index)
        except (EtcdSetupError, defer.CancelledError):
            raise
        except Exception as e:
            if isinstance(e, ResponseFailed):
                # Connected, and no reply: an endpoint that speaks the other
                # scheme fails so.  Ask it, rather than retry for ever.
                yield check_scheme(client.reactor, endpoint)
            unreachable.append(f"{endpoint}: {describe(e)}")
    if not versions:
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(unreachable))
    try:
        yield client.range(prefix)
    except EtcdError as e:
        anonymous = client.credentials is None
        # Without a token, etcd says "user name is empty", or, when it wants
        # client certificates, "permission denied" (its gateway's own
        # certificate names no user).
        if anonymous and (e.code == _PERMISSION_DENIED or "user name is empty" in e.message):
            raise AuthenticationFailed(
                f"etcd at {client.endpoint} has authentication on and wants a user ({e.message}):"
                " add 'credentials USER PASSWORD' to the idetcd block"
            ) from None
        if e.code == _PERMISSION_DENIED:
            raise _denied(
                f"etcd at {client.endpoint} denies user {client.credentials.user!r} the prefix", prefix, e
            ) from None
        raise
    try:
        yield client.call("/v3/kv/txn", _write_probe(prefix))
    except NoSpace:
        # etcd checks its quota before the user's permissions: whether the
        # user may write is unknown until the alarm is over, but reads,
        # watches and keepalives work, and the node can answer from them.
        log.warn(
            "etcd at {endpoint} is out of space (NOSPACE alarm): cannot check that this node may"
            " write its prefix; starting anyway, to read the members and answer DNS",
            endpoint=client.endpoint,
        )
    except EtcdError as e:
        if e.code != _PERMISSION_DENIED:
            raise
        user = "the client certificate's user" if client.credentials is None else f"user {client.credentials.user!r}"
        raise _denied(f"etcd at {client.endpoint} lets {user} read but not write the prefix", prefix, e) from None
    return versions, unreachable


def _denied(what, prefix, error):
    """
    L{PermissionDenied}: C{what} etcd did about C{prefix}, its C{error},
    and the fix.
    """
    readable = prefix.decode("utf-8", "replace")
    return PermissionDenied(
        f"{what} {readable!r} ({error.message}):"
        f" grant it a role with readwrite permission on that prefix"
        f" (etcdctl role grant-permission ROLE --prefix=true readwrite {readable})"
    )


def _write_probe(prefix):
    """
    A transaction that may write C{prefix} but never does: etcd checks the
    permission of every operation in it before it compares, and the
    comparison (a version below 0) never holds.
    """
    key = b64_text(prefix)
    return {
        "compare": [{"key": key, "target": "VERSION", "result": "LESS", "version": "0"}],
        "success": [{"request_put": {"key": key, "value": ""}}],
    }


@defer.inlineCallbacks
def check(client, prefix):
    """
    Fires once C{client}'s etcd can be relied on for the keys under
    C{prefix} (bytes); fails with an L{EtcdSetupError} when it cannot be
    as configured.  While no endpoint answers it tries again, with a
    backoff and a warning every 30 s at most.
    """
    backoff = Backoff()
    warn = RateLimitedLog(client.reactor, log, 30.0, LogLevel.warn)
    tries = 0
    while True:
        tries += 1
        try:
            versions, unreachable = yield _check_once(client, prefix)
        except EtcdSetupError:
            raise
        except (EtcdUnavailable, EtcdError, defer.TimeoutError) as e:
            delay = backoff.next()
            warn(
                "unreachable",
                "cannot reach etcd yet ({error}); trying again in {delay:.2f}s ({tries} tries so far)",
                error=str(e),
                delay=delay,
                tries=tries,
            )
            yield deferLater(client.reactor, delay, lambda: None)
            continue
        log.info(
            "etcd {versions} answers{others}",
            versions=", ".join(f"{version} at {endpoint}" for endpoint, version in versions.items()),
            others=f" ({len(unreachable)} endpoints not yet)" if unreachable else "",
        )
        return versions
