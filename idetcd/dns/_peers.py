"""
Records that list peers: the SRV RRset of a role (``_worker._tcp.ZONE``)
and the PTR RRset of an address (``1.0.0.10.in-addr.arpa``).

Both hold one record per member, so a role of 10,000 members holds 10,000
records: more than one reply can carry, and too many to build again at
every change.  A L{PeerRRset} is kept sorted as members come and go (a
binary search per change) and turned into a response only when it is
asked for, once per change at most, holding the first records in order
that a 65,535-byte TCP reply has room for.
"""

import bisect
import ipaddress
import re

import attr
from twisted.names import dns

from idetcd.dns import _wire as wire

#: Where reverse names live (RFC 1035 section 3.5, RFC 3596 section 2.5).
REVERSE_TREES = _IN_ADDR, _IP6 = ((b"in-addr", b"arpa"), (b"ip6", b"arpa"))
# A role becomes the label "_ROLE" (RFC 2782), at most 63 bytes.
_ROLE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,60}[a-z0-9])?\Z")


def service_labels(role, apex):
    """
    The owner of the SRV RRset of C{role} in the zone C{apex}
    (C{_worker._tcp.tf.local}), or L{None} for a role that cannot be a
    label.
    """
    role = role.lower()
    if not _ROLE.match(role):
        return None
    return (b"_" + role.encode("ascii"), b"_tcp") + apex


def reverse_labels(address):
    """
    The labels of the reverse name of C{address}, an IPv4 or IPv6 address
    in the text form members hold (dotted quad, or IPv6 in any form).
    """
    if ":" in address:
        address = ipaddress.ip_address(address).exploded.replace(":", "")
        return tuple(digit.encode("ascii") for digit in reversed(address)) + _IP6
    return tuple(address.encode("ascii").split(b".")[::-1]) + _IN_ADDR


def holds_reverse_names(labels):
    """
    Whether the zone C{labels} (not the root) holds reverse names: it lies
    in a reverse tree, or a reverse tree lies in it (C{arpa}).
    """
    return bool(labels) and any(
        is_reverse(labels, tree) or (len(labels) <= len(tree) and tree[-len(labels) :] == labels)
        for tree in REVERSE_TREES
    )


def is_reverse(labels, tree=None):
    """
    Whether C{labels} lie in a reverse tree (or in C{tree}).
    """
    return any(labels[-len(tree) :] == tree for tree in ((tree,) if tree else REVERSE_TREES))


def reverse_zones(zones):
    """
    The zones among a server block's C{zones} (absolute, as text) that
    serve reverse names: the root, and those that hold reverse names.
    """
    return tuple(
        zone
        for zone in zones
        if zone == "." or holds_reverse_names(tuple(zone.lower().encode("ascii").split(b"."))[:-1])
    )


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Entry:
    """
    One member's record in a L{PeerRRset}: C{key} orders it (and is unique
    in its RRset), C{extra} goes to the additional section (the member's
    addresses, for an SRV target) when there is room, C{size} and
    C{extra_size} bound their bytes.
    """

    key: tuple
    record: dns.RRHeader
    size: int
    extra: tuple = ()
    extra_size: int = 0


@attr.s(eq=False, slots=True)
class PeerRRset:
    """
    One owner's records, one per member (see the module docstring).
    C{response} is for its owner to fill from L{fitting}; every change
    empties it.
    """

    labels = attr.ib()
    type = attr.ib()
    response = attr.ib(default=None, init=False)
    _entries = attr.ib(factory=list, init=False)  # sorted by key
    _keys = attr.ib(factory=list, init=False)  # their keys, for bisect (Python 3.9 has no key=)

    def __len__(self):
        return len(self._entries)

    def add(self, entry, ordered=True):
        """
        Add C{entry}; with C{ordered} false it goes last, and L{sort} must
        follow before the next L{fitting} (a rebuild adds many, then sorts
        once).
        """
        index = bisect.bisect_left(self._keys, entry.key) if ordered else len(self._keys)
        self._keys.insert(index, entry.key)
        self._entries.insert(index, entry)
        self.response = None

    def sort(self):
        self._entries.sort(key=lambda entry: entry.key)
        self._keys = [entry.key for entry in self._entries]
        self.response = None

    def remove(self, key):
        index = bisect.bisect_left(self._keys, key)
        del self._keys[index]
        del self._entries[index]
        self.response = None

    def records(self):
        """
        Every record, in order: what a zone transfer carries.
        """
        return tuple(entry.record for entry in self._entries)

    def fitting(self):
        """
        The first records in order that fit a reply, and the extra records
        of as many of them as fit after them: (answers, additional).
        """
        room = wire.answer_room(self.labels)
        used = 0
        taken = []
        for entry in self._entries:
            if used + entry.size > room:
                break
            used += entry.size
            taken.append(entry)
        additional = []
        for entry in taken:
            if used + entry.extra_size > room:
                break
            used += entry.extra_size
            additional.extend(entry.extra)
        return tuple(entry.record for entry in taken), tuple(additional)
