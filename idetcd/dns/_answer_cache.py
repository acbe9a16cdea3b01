"""
Forwarded answers kept for their TTL, as CoreDNS's C{cache} keeps them
(the Corefile's C{cache} directive; see L{idetcd.dns.CacheSettings}).

An upstream's reply is kept as it came, with where each record's TTL lies
in it, so a hit costs a copy and a few 4-byte writes: every TTL is set to
what is left of the entry's (CoreDNS does the same), the id and the
question's case are the client's.  Success (NOERROR with answers) and
denial (NXDOMAIN, or NOERROR without answers) have capacities and TTL caps
of their own; the entry's TTL is the smallest of its records' (for a
denial also the SOA's MINIMUM, RFC 2308), held within [minimum, maximum].
Truncated replies and other response codes are never kept.  A full kind
drops its oldest entry.
"""

import struct

import attr

from idetcd.dns import _wire as wire
from idetcd.dns._authority import domain_labels

#: The kinds of entry, as CoreDNS's metrics label them.
SUCCESS, DENIAL = "success", "denial"
#: The TTL of a denial without any record (CoreDNS's fail-safe).
FAILSAFE_TTL = 5
_NOERROR, _NXDOMAIN = 0, 3
_TTL = struct.Struct("!I")
_RECORD = struct.Struct("!HHIH")  # type, class, TTL, rdata length
_OPT, _SOA = 41, 6


def _skip_name(message, offset):
    """
    The offset after the name at C{offset} of C{message}; ValueError if
    it runs past the end.
    """
    while True:
        length = message[offset]
        if length >= 0xC0:
            return offset + 2
        if length > 63:
            raise ValueError("bad label")
        offset += 1 + length
        if length == 0:
            return offset


def ttl_fields(reply):
    """
    Where each record's TTL lies in C{reply} (but an OPT's, which holds
    flags), the smallest of them (None without records), and the MINIMUM
    of an SOA in the authority section (or None).  ValueError if the reply
    breaks the wire format.
    """
    try:
        _, _, questions, answers, authority, additional = wire.HEADER.unpack_from(reply)
        offset = wire.HEADER.size
        for _ in range(questions):
            offset = _skip_name(reply, offset) + 4
        offsets, smallest, minimum = [], None, None
        for index in range(answers + authority + additional):
            offset = _skip_name(reply, offset)
            type, _, ttl, length = _RECORD.unpack_from(reply, offset)
            rdata = offset + _RECORD.size
            if rdata + length > len(reply):
                raise ValueError("record past the end")
            if type != _OPT:
                offsets.append(offset + 4)
                smallest = ttl if smallest is None else min(smallest, ttl)
            if type == _SOA and answers <= index < answers + authority and length >= 20:
                (minimum,) = _TTL.unpack_from(reply, rdata + length - 4)
            offset = rdata + length
    except (IndexError, struct.error) as e:
        raise ValueError(f"malformed reply: {e}") from None
    return tuple(offsets), smallest, minimum


def cache_key(query):
    """
    What a query's answer is kept under: its question (the name in lower
    case), whether it has EDNS, and its DO and CD bits, all of which
    change the upstream's answer.
    """
    edns = query.edns
    return (
        query.question.lower(),
        edns is not None,
        edns is not None and edns.dnssec_ok,
        bool(query.flags & wire.CD),
    )


@attr.s(eq=False, slots=True)
class _Entry:
    reply = attr.ib()
    offsets = attr.ib()
    kind = attr.ib()
    ttl = attr.ib()
    stored = attr.ib()
    hits = attr.ib(default=0)  # in a row, no further apart than prefetch's duration
    last_hit = attr.ib(default=0.0)
    prefetching = attr.ib(default=False)


@attr.s(eq=False)
class AnswerCache:
    """
    Forwarded answers for the names under C{settings.zones}, by the
    settings (an L{idetcd.dns.CacheSettings}), on C{clock}.
    C{prefetch(query, data)} is called to ask upstream again for a
    popular entry about to expire.
    """

    settings = attr.ib()
    clock = attr.ib()
    prefetch = attr.ib(default=None)
    #: Answers given from here, and answers not found, by kind.
    hits = attr.ib(init=False, factory=lambda: {SUCCESS: 0, DENIAL: 0})
    misses = attr.ib(init=False, default=0)
    #: Entries dropped to make room, by kind; prefetches started.
    evictions = attr.ib(init=False, factory=lambda: {SUCCESS: 0, DENIAL: 0})
    prefetches = attr.ib(init=False, default=0)
    _entries = attr.ib(init=False, factory=lambda: {SUCCESS: {}, DENIAL: {}})

    def __attrs_post_init__(self):
        self._zones = tuple(domain_labels(zone) for zone in self.settings.zones)

    def sizes(self):
        """
        The entries held, by kind.
        """
        return {kind: len(entries) for kind, entries in self._entries.items()}

    def covers(self, query):
        labels = tuple(label.lower() for label in query.labels)
        return any(len(labels) >= len(zone) and labels[len(labels) - len(zone) :] == zone for zone in self._zones)

    def answer(self, data, query, limit):
        """
        The kept reply to the client message C{data} (read as C{query}),
        with its id, its question and the TTLs left, or None; a reply
        longer than C{limit} bytes is not given (the client cannot take
        it over UDP).
        """
        if not self.covers(query):
            return None
        key = cache_key(query)
        now = self.clock.seconds()
        for entries in self._entries.values():
            entry = entries.get(key)
            if entry is not None:
                break
        else:
            self.misses += 1
            return None
        left = entry.ttl - int(now - entry.stored)
        if left <= 0:
            del self._entries[entry.kind][key]
            self.misses += 1
            return None
        if len(entry.reply) > limit:
            self.misses += 1
            return None
        self.hits[entry.kind] += 1
        self._maybe_prefetch(entry, data, query, now, left)
        reply = _with_ttl(entry.reply, entry.offsets, left)
        reply[:2] = data[:2]
        reply[wire.HEADER.size : wire.HEADER.size + len(query.question)] = query.question
        return bytes(reply)

    def _maybe_prefetch(self, entry, data, query, now, left):
        settings = self.settings.prefetch
        if settings is None or self.prefetch is None:
            return
        amount, duration, fraction = settings
        entry.hits = entry.hits + 1 if now - entry.last_hit < duration else 1
        entry.last_hit = now
        if entry.prefetching or entry.hits < amount or left > max(1, entry.ttl * fraction):
            return
        entry.prefetching = True
        self.prefetches += 1
        self.prefetch(query, data)

    def keep(self, query, reply):
        """
        Keep the upstream C{reply} to C{query} if it may be kept; the reply
        to send: with every TTL set to the entry's, as CoreDNS does (so the
        client never sees a TTL longer than the cache's), or C{reply}
        itself when it is not kept.
        """
        if not self.covers(query) or len(reply) < wire.HEADER.size:
            return reply
        (flags,) = struct.unpack_from("!H", reply, 2)
        rcode = flags & 0x0F
        if flags & wire.TC or rcode not in (_NOERROR, _NXDOMAIN):
            return reply
        try:
            offsets, smallest, minimum = ttl_fields(reply)
        except ValueError:
            return reply
        (answers,) = struct.unpack_from("!H", reply, 6)
        settings = self.settings
        if rcode == _NOERROR and answers:
            kind, capacity, low, high = SUCCESS, settings.success, settings.success_min_ttl, settings.success_ttl
        else:
            kind, capacity, low, high = DENIAL, settings.denial, settings.denial_min_ttl, settings.denial_ttl
            if minimum is not None:
                smallest = minimum if smallest is None else min(smallest, minimum)
        ttl = min(max(FAILSAFE_TTL if smallest is None else smallest, low), high)
        if ttl <= 0:
            return reply
        key = cache_key(query)
        for entries in self._entries.values():
            entries.pop(key, None)
        entries = self._entries[kind]
        if len(entries) >= capacity:
            del entries[next(iter(entries))]
            self.evictions[kind] += 1
        entries[key] = _Entry(reply, offsets, kind, ttl, self.clock.seconds())
        return bytes(_with_ttl(reply, offsets, ttl))


def _with_ttl(reply, offsets, ttl):
    """
    C{reply} with every TTL at C{offsets} set to C{ttl}.
    """
    out = bytearray(reply)
    packed = _TTL.pack(ttl)
    for offset in offsets:
        out[offset : offset + 4] = packed
    return out
