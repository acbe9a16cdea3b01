"""
Counts of the answers a DNS server gives, kept in one plain dict.

The fast path answers a query in about a microsecond; a prometheus_client
counter would cost it several, and so would reading the clock twice per
query.  Here each answer becomes one int, its L{key} (the question's type,
the response code, protocol, family, the request's and the response's
size buckets, looked up in tables), and the keys of a batch of queries
handled in one go (the datagrams one read of a UDP socket takes, the
queries of one TCP read) are counted at its end, each answer timed as
their mean: the clock is read once per batch, and one dict increment per
answer holds every label of every metric (a forwarded query, answered
later, is timed on its own).  L{idetcd.node._metrics} sums the counts into
metrics only when Prometheus asks.
"""

from bisect import bisect_left
from collections import Counter, defaultdict
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

#: The upper bounds of the request and response size buckets, in bytes
#: (CoreDNS's plugin.SizeBuckets); a bucket holds sizes up to its bound.
SIZE_BOUNDS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16000, 32000, 48000, 64000)

# Where each part of a key lies: L{kind} takes the low 20 bits (type << 12
# | rcode, the type at most 255).
_REQUEST_SIZE = 20
_RESPONSE_SIZE = 24
_DURATION = 28
_SIZE_MASK = 0xF
_DURATION_MASK = 0x3F  # room for every bucket an int64 of nanoseconds gives
KIND_MASK = (1 << _REQUEST_SIZE) - 1
#: Key bits: an answer to an IPv6 client; an answer over TCP.
IPV6 = 1 << 34
TCP = 1 << 35
#: What L{key}s carry about the client, by (proto, family) as CoreDNS
#: labels them.
LANES = {("udp", "1"): 0, ("udp", "2"): IPV6, ("tcp", "1"): TCP, ("tcp", "2"): TCP | IPV6}
#: A UDP protocol returns an answer's L{kind} with the length of its reply
#: shifted by this much, in one int.
LENGTH = 40


def _size_table(shift):
    shifted = [bucket << shift for bucket in range(len(SIZE_BOUNDS) + 1)]
    return [shifted[bisect_left(SIZE_BOUNDS, size)] for size in range(65536)]


#: The key bits of a request, or of a response, of each length (one list
#: lookup on the fast path): the index of the first of L{SIZE_BOUNDS} it
#: does not exceed, len(SIZE_BOUNDS) past them all.
REQUEST_SIZES = _size_table(_REQUEST_SIZE)
RESPONSE_SIZES = _size_table(_RESPONSE_SIZE)

#: The clock durations are measured with, in nanoseconds.
now = perf_counter_ns


def kind(qtype, rcode):
    """
    The question's type (if counted by name) and the response code of an
    answer, in one int.
    """
    return (qtype if qtype in TYPES else NO_TYPE) << 12 | rcode


def key(answer_kind, lane, request_length, response_length):
    """
    What an answer is counted under, but for its duration: its L{kind},
    its L{LANES} bits, and the size buckets of its request and response.
    """
    return answer_kind | lane | REQUEST_SIZES[request_length] | RESPONSE_SIZES[response_length]


def type_label(answer_key):
    return TYPES.get(answer_key >> 12 & 0xFF, "other")


def rcode_label(answer_key):
    rcode = answer_key & 0xFFF
    return RCODES.get(rcode, f"RCODE{rcode}")


def _cumulative(buckets, reported):
    running, out = 0, []
    for index in range(reported):
        running += buckets.get(index, 0)
        out.append(running)
    return out


class DnsTally:
    """
    The answers of one DNS server for C{zone}: how many of each L{key}, in
    C{answers}, the nanoseconds they took by type, and the bytes read and
    written by protocol.
    """

    def __init__(self, zone):
        self.zone = zone
        self.answers = defaultdict(int)
        self.spent = [0] * 256  # nanoseconds, by the type bits of a key
        self.received = {"udp": 0, "tcp": 0}  # request bytes, by protocol
        self.sent = {"udp": 0, "tcp": 0}  # response bytes, by protocol

    def settle(self, keys, elapsed, proto, received, sent):
        """
        The answers of C{keys} (from L{key}), handled in one go over
        C{proto}, took C{elapsed} nanoseconds in all, each counted as
        taking their mean; their requests held C{received} bytes and
        their responses C{sent}.
        """
        mean = elapsed // len(keys)
        duration = (mean >> SHIFT).bit_length() << _DURATION
        answers, spent = self.answers, self.spent
        for answer_key in keys:
            answers[answer_key | duration] += 1
            spent[answer_key >> 12 & 0xFF] += mean
        self.received[proto] += received
        self.sent[proto] += sent

    def requests(self):
        """
        Answers by (proto, family, type label).
        """
        out = Counter()
        for answer_key, count in self.answers.items():
            proto = "tcp" if answer_key & TCP else "udp"
            out[proto, "2" if answer_key & IPV6 else "1", type_label(answer_key)] += count
        return out

    def responses(self):
        """
        Answers by rcode label.
        """
        out = Counter()
        for answer_key, count in self.answers.items():
            out[rcode_label(answer_key)] += count
        return out

    def durations(self):
        """
        How long answers took, by type label: the cumulative count under
        each of L{BOUNDS}, the count of all, and their sum in seconds.
        """
        buckets = defaultdict(Counter)
        seconds = Counter()
        for answer_key, count in self.answers.items():
            buckets[type_label(answer_key)][answer_key >> _DURATION & _DURATION_MASK] += count
        for type_bits, spent in enumerate(self.spent):
            if spent:
                seconds[TYPES.get(type_bits, "other")] += spent / 1e9
        return {
            label: (_cumulative(counts, BUCKETS), sum(counts.values()), seconds[label])
            for label, counts in buckets.items()
        }

    def sizes(self):
        """
        The sizes of requests and of responses, by protocol: for each, the
        cumulative count under each of L{SIZE_BOUNDS}, the count of all,
        and their sum in bytes.
        """
        requests, responses = defaultdict(Counter), defaultdict(Counter)
        for answer_key, count in self.answers.items():
            proto = "tcp" if answer_key & TCP else "udp"
            requests[proto][answer_key >> _REQUEST_SIZE & _SIZE_MASK] += count
            responses[proto][answer_key >> _RESPONSE_SIZE & _SIZE_MASK] += count
        reported = len(SIZE_BOUNDS)
        return (
            {
                proto: (_cumulative(counts, reported), sum(counts.values()), self.received[proto])
                for proto, counts in requests.items()
            },
            {
                proto: (_cumulative(counts, reported), sum(counts.values()), self.sent[proto])
                for proto, counts in responses.items()
            },
        )


def lane(proto, host):
    """
    The L{LANES} bits of a client at address C{host} over C{proto}.
    """
    return LANES[proto, family(host)]


def family(host):
    """
    CoreDNS's family of a client address: "1" for IPv4, also when it
    arrives mapped into IPv6 (on a socket bound to "::"), else "2".
    """
    return "2" if ":" in host and not host.lower().startswith("::ffff:") else "1"
