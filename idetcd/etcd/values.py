"""
etcd's keys, values and replies as Python values: the JSON gateway sends
keys and values base64-encoded and int64 fields as JSON strings, turned here
into L{bytes} and L{int}.
"""

import base64

import attr


def _range_body(key, range_end=None):
    # etcd reads an empty key as "no key given"; "\0" with a range end
    # means the same start: the very first key.
    body = {"key": b64_text(key or b"\0")}
    if range_end is not None:
        body["range_end"] = b64_text(range_end)
    return body


def b64_text(data):
    """
    C{data} (bytes) as the JSON gateway takes keys and values: base64 text.
    """
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
