"""
Counts of the answers a DNS server gives, kept in plain dicts and lists.

The fast path answers a query in about a microsecond; a prometheus_client
counter would cost it several, and so would reading the clock twice per
query.  Here an answer costs one dict increment, and time is taken once
per batch of queries handled in one go (the datagrams one read of a UDP
socket takes, the queries of one TCP read), each answer of the batch
counted as taking their mean (a forwarded query, answered later, is timed
on its own).  L{idetcd.node._metrics} turns the counts into
metrics only when Prometheus asks.
"""

from collections import Counter, defaultdict
from itertools import accumulate
from time import perf_counter_ns

#: Query types counted by name, as CoreDNS counts them; every other type
#: counts as "other", so a client cannot make the counts grow without end.
TYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 64: "SVCB",
    65: "HTTPS", 251: "IXFR", 252: "AXFR", 255: "ANY",
}
#: Response codes by name, as CoreDNS (miekg/dns) spells them; 16 is only
#: ever BADVERS here (TSIG is answered with NOTAUTH), so it is named so.
RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS",
    17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG", 22: "BADTRUNC",
    23: "BADCOOKIE",
}
#: The type of an answer whose question could not be read.
NO_TYPE = 0

#: A duration of d nanoseconds falls in bucket (d >> SHIFT).bit_length():
#: bucket k holds durations under 2 ** (k + SHIFT) ns, so the bounds double
#: from 1.024 µs; BUCKETS of them (up to 8.6 s) are reported, longer ones
#: count only towards +Inf.
SHIFT = 10
BUCKETS = 24
#: Upper bounds of the reported buckets, in seconds.
BOUNDS = tuple(2 ** (k + SHIFT) / 1e9 for k in range(BUCKETS))
# Room for every bucket index an int64 of nanoseconds can give.
_SLOTS = 64 - SHIFT + 1

#: The clock durations are measured with, in nanoseconds.
now = perf_counter_ns


def kind(qtype, rcode):
    """
    What the count of an answer is kept under: the question's type (if
    counted by name) and the response code, in one int.
    """
    return (qtype if qtype in TYPES else NO_TYPE) << 12 | rcode


def type_label(answer_kind):
    return TYPES.get(answer_kind >> 12, "other")


def rcode_label(answer_kind):
    rcode = answer_kind & 0xFFF
    return RCODES.get(rcode, f"RCODE{rcode}")


class Lane:
    """
    The answers given over one protocol to one address family: how many of
    each L{kind}, in C{answers}.
    """

    __slots__ = ("proto", "family", "answers")

    def __init__(self, proto, family):
        self.proto = proto
        self.family = family
        self.answers = defaultdict(int)


class DnsTally:
    """
    The answers of one DNS server for C{zone}: how many, by protocol and
    family (L{lane}), and how long they took (L{timed}).
    """

    def __init__(self, zone):
        self.zone = zone
        self.lanes = {}
        self.buckets = [0] * _SLOTS
        self.nanoseconds = 0

    def lane(self, proto, family):
        """
        The lane for C{proto} ("udp" or "tcp") and C{family} ("1" for IPv4,
        "2" for IPv6, as CoreDNS labels them).
        """
        found = self.lanes.get((proto, family))
        if found is None:
            found = self.lanes[proto, family] = Lane(proto, family)
        return found

    def timed(self, count, elapsed):
        """
        C{count} answers, handled in one go, took C{elapsed} nanoseconds in
        all: each counts as taking their mean.
        """
        self.buckets[((elapsed // count) >> SHIFT).bit_length()] += count
        self.nanoseconds += elapsed

    def requests(self):
        """
        Answers by (proto, family, type label).
        """
        out = Counter()
        for lane in self.lanes.values():
            for answer_kind, count in lane.answers.items():
                out[lane.proto, lane.family, type_label(answer_kind)] += count
        return out

    def responses(self):
        """
        Answers by rcode label.
        """
        out = Counter()
        for lane in self.lanes.values():
            for answer_kind, count in lane.answers.items():
                out[rcode_label(answer_kind)] += count
        return out

    def durations(self):
        """
        How long answers took: the cumulative count under each of L{BOUNDS},
        the count of all, and their sum in seconds.
        """
        cumulative = list(accumulate(self.buckets[:BUCKETS]))
        return cumulative, sum(self.buckets), self.nanoseconds / 1e9


def family(host):
    """
    CoreDNS's family of a client address: "1" for IPv4, also when it
    arrives mapped into IPv6 (on a socket bound to "::"), else "2".
    """
    return "2" if ":" in host and not host.lower().startswith("::ffff:") else "1"
