"""
What goes wrong talking to etcd, as exceptions callers can tell apart.
"""

from idetcd.common import EXIT_CONFIG, EXIT_UNAVAILABLE


class EtcdError(Exception):
    """
    etcd refused a request; C{code} is its gRPC status code.
    """

    exit_status = EXIT_CONFIG

    def __init__(self, code, message):
        super().__init__(f"etcd error {code}: {message}")
        self.code = code
        self.message = message


class LeaseNotFound(EtcdError):
    """
    The lease named in a request does not exist (any more).
    """


class LeaseExists(EtcdError):
    """
    A lease with the ID asked for exists already.
    """


class NoSpace(EtcdError):
    """
    etcd raised its NOSPACE alarm: its database reached its quota
    (C{--quota-backend-bytes}), and it refuses every write (puts, lease
    grants, transactions) until an operator frees space and disarms the
    alarm.  Reads, watches and keepalives go on.
    """

    #: What the operator must do, said wherever a node reports the alarm.
    FIX = (
        "compact its history (etcdctl compact REVISION), defragment every member"
        " (etcdctl defrag) and disarm the alarm (etcdctl alarm disarm)"
    )


class TokenRefused(EtcdError):
    """
    etcd refused the request's auth token (it expired, or users and roles
    changed since); the request was not applied.
    """


def describe(error):
    """
    One line for C{error}: its class and message.  The HTTP client's
    wrappers of other failures (they have C{reasons}) are told by what they
    wrap, not by the reprs of Twisted failures.
    """
    reasons = getattr(error, "reasons", None)
    if reasons:
        inner = "; ".join(describe(reason.value) for reason in reasons)
        return f"{error.__class__.__name__}: {inner}"
    message = str(error)
    return f"{error.__class__.__name__}: {message}" if message else error.__class__.__name__


class EtcdUnavailable(Exception):
    """
    No endpoint answered.
    """

    exit_status = EXIT_UNAVAILABLE


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


class EtcdSetupError(EtcdUnavailable):
    """
    An endpoint answers, but cannot be used as configured (not etcd, too
    old, a wrong password or certificate): no retry helps until someone
    fixes it.  The message is one line that says what to fix.

    It is a kind of L{EtcdUnavailable}, so that code that retries etcd
    trouble retries it too, while a node runs; a node's start-up check
    fails on it instead.
    """

    # etcd answers, and refuses what the Corefile says.
    exit_status = EXIT_CONFIG


class NotEtcdGateway(EtcdSetupError):
    """
    The endpoint answers HTTP, but not as etcd's JSON gateway does.
    """


class EtcdTooOld(EtcdSetupError):
    """
    The endpoint is an etcd older than 3.4, which has no C{/v3} gateway.
    """


class AuthenticationFailed(EtcdSetupError):
    """
    etcd refused the user name and password, or wants a user and none is
    configured.
    """


class PermissionDenied(EtcdSetupError):
    """
    The user may not use idetcd's key prefix.
    """


class TlsFailed(EtcdSetupError):
    """
    TLS does not work with this etcd: its certificate did not verify, or it
    refused ours (in the handshake, or on its gateway for having a Common
    Name while users are on).
    """


class SchemeMismatch(EtcdSetupError):
    """
    An endpoint answers the other scheme than its URL says: C{http://} to a
    TLS port, or C{https://} to a plain one.
    """
