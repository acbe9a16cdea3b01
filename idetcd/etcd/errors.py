"""
What goes wrong talking to etcd, as exceptions callers can tell apart.
"""


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


class TokenRefused(EtcdError):
    """
    etcd refused the request's auth token (it expired, or users and roles
    changed since); the request was not applied.
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


class EtcdSetupError(EtcdUnavailable):
    """
    An endpoint answers, but cannot be used as configured (not etcd, too
    old, a wrong password or certificate): no retry helps until someone
    fixes it.  The message is one line that says what to fix.

    It is a kind of L{EtcdUnavailable}, so that code that retries etcd
    trouble retries it too, while a node runs; a node's start-up check
    fails on it instead.
    """


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
