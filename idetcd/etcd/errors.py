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
