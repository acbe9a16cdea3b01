"""
DNS messages as bytes: reading queries strictly, assembling replies.

A reply is kept as two pieces around the question, C{head} (flags and
counts) and C{tail} (the records), so a server sends C{query id + head +
question as received + tail}: the client's spelling of the name comes back
unchanged, and the records, compressed against the question at offset 12,
stay valid whatever case the client used.
"""

from __future__ import annotations

import io
import struct
from typing import Optional

import attr
from twisted.names import dns

HEADER = struct.Struct("!6H")
HEAD = struct.Struct("!5H")  # the header after the id
TYPE_CLASS = struct.Struct("!HH")
_RECORD = struct.Struct("!HHIH")
_OPTION = struct.Struct("!HH")
_EDE = struct.Struct("!HHH")  # option code, length, INFO-CODE (RFC 8914)
EDE = 15
_OPT = struct.Struct("!BHHBBHH")
_FLAGS = struct.Struct("!H")

QR = 0x8000
OPCODE = 0x7800
AA = 0x0400
TC = 0x0200
RD = 0x0100
CD = 0x0010

# RFC 6891 section 6.2.5 and DNS flag day 2020: what a UDP reply may use.
MIN_PAYLOAD = 512
PAYLOAD = 1232
MAX_MESSAGE = 65535


# A name may follow this many compression pointers (RFC 1035 section 4.1.4
# sets no limit; real messages need one or two), so one name costs at most
# a few hundred bytes of work whatever the message holds.
MAX_POINTERS = 16
# A query carries its question and a few records at most (OPT, TSIG).  One
# with more is refused before any record is read, so no message, however
# long, costs more than a few records' worth of work (NSD refuses records
# in the answer and authority sections too).
MAX_RECORDS = 8
TSIG = 250
BADKEY = 17  # RFC 8945 section 5.2: the TSIG error for an unknown key
NOTAUTH = 9
_TSIG_TIMES = 8  # bytes of time signed and fudge
_TSIG_TAIL = struct.Struct("!HHH")  # original id, error, other length


class FormatError(ValueError):
    """
    The message breaks the wire format; the text says where.  C{edns} is
    the query's OPT, when it was read before the fault was found, so the
    FORMERR can carry one (RFC 6891 section 7).
    """

    def __init__(self, why, edns=None):
        ValueError.__init__(self, why)
        self.edns = edns


@attr.s(frozen=True, slots=True, auto_attribs=True)
class EDNS:
    payload: int
    version: int
    dnssec_ok: bool


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Query:
    """
    A standard query: C{question} and C{labels} exactly as received.
    C{cls} is the class to answer from: IN for a question of class ANY
    (RFC 1035 section 3.2.5; this server holds nothing else).  C{signed},
    for a query with a TSIG, is the unsigned BADKEY TSIG record to answer
    it with: this server holds no keys (RFC 8945 section 5.2).  C{serial}
    is the serial of the SOA an IXFR query carries in its authority section
    (RFC 1995 section 3): the version of the zone the client holds.
    """

    id: int
    flags: int
    question: bytes
    labels: tuple
    type: int
    cls: int
    edns: Optional[EDNS]
    signed: Optional[bytes] = None
    serial: Optional[int] = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Encoded:
    """
    The records of a reply as bytes, with the end of every RRset in C{cuts}
    as (offset in C{body}, answer count, authority count, additional count,
    section), so the reply can be cut short on an RRset boundary.  C{ede}
    is the Extended DNS Error INFO-CODE an EDNS reply carries, if any.
    """

    rcode: int
    auth: bool
    body: bytes = b""
    cuts: tuple = ()
    ede: Optional[int] = None


def _read_name(data, offset, follow=True):
    """
    The labels at C{offset} and the offset just past the name.  Compression
    pointers must point before the labels that hold them, which rules out
    loops, and not into the header; at most L{MAX_POINTERS} are followed.
    With C{follow} false a pointer ends the name unread and the labels are
    L{None}: the cost of skipping a name is its own bytes, never more.
    """
    labels = []
    size = 1
    end = None
    start = offset
    pointers = 0
    while True:
        if offset >= len(data):
            raise FormatError("name runs past the end of the message")
        length = data[offset]
        if length == 0:
            return tuple(labels), offset + 1 if end is None else end
        if length >= 0xC0:
            if offset + 1 >= len(data):
                raise FormatError("compression pointer cut short")
            if not follow:
                return None, offset + 2
            target = (length & 0x3F) << 8 | data[offset + 1]
            if not 12 <= target < start:
                raise FormatError("compression pointer does not point back")
            pointers += 1
            if pointers > MAX_POINTERS:
                raise FormatError(f"more than {MAX_POINTERS} compression pointers in a name")
            if end is None:
                end = offset + 2
            offset = start = target
            continue
        if length > 63:
            raise FormatError("label longer than 63 bytes, or of an unknown type")
        size += length + 1
        if size > 255:
            raise FormatError("name longer than 255 bytes")
        label = data[offset + 1 : offset + 1 + length]
        if len(label) < length:
            raise FormatError("label runs past the end of the message")
        labels.append(label)
        offset += 1 + length


def _read_record(data, offset):
    """
    One record at C{offset}, its owner skipped, not read: (owner offset,
    owner labels or L{None} if compressed, type, class, TTL, data start,
    data end).
    """
    owner = offset
    labels, offset = _read_name(data, offset, follow=False)
    if offset + _RECORD.size > len(data):
        raise FormatError("record header cut short")
    type, cls, ttl, length = _RECORD.unpack_from(data, offset)
    start = offset + _RECORD.size
    if start + length > len(data):
        raise FormatError("record data cut short")
    return owner, labels, type, cls, ttl, start, start + length


def _read_edns(labels, cls, ttl, data, start, end):
    if labels != ():
        raise FormatError("OPT owner is not the root")
    while start < end:
        if start + _OPTION.size > end:
            raise FormatError("EDNS option cut short")
        _, length = _OPTION.unpack_from(data, start)
        start += _OPTION.size + length
    if start != end:
        raise FormatError("EDNS option runs past its record")
    # RFC 6891 section 6.2.5: sizes below 512 mean 512.
    return EDNS(max(cls, MIN_PAYLOAD), (ttl >> 16) & 0xFF, bool(ttl & 0x8000))


def _badkey(data, owner, start, end):
    """
    The unsigned TSIG record that answers the TSIG at C{owner}, whose data
    is C{data[start:end]}, with BADKEY: its key name, algorithm, time and
    fudge, and original id (RFC 8945 sections 4.2 and 5.2).
    """
    key, _ = _read_name(data, owner)
    algorithm, offset = _read_name(data, start)
    if offset + _TSIG_TIMES + _FLAGS.size > end:
        raise FormatError("TSIG cut short")
    times = data[offset : offset + _TSIG_TIMES]
    (mac_size,) = _FLAGS.unpack_from(data, offset + _TSIG_TIMES)
    offset += _TSIG_TIMES + _FLAGS.size + mac_size
    if offset + _TSIG_TAIL.size > end:
        raise FormatError("TSIG cut short")
    original, _, other = _TSIG_TAIL.unpack_from(data, offset)
    if offset + _TSIG_TAIL.size + other != end:
        raise FormatError("TSIG data does not fill its record")
    rdata = name(algorithm) + times + _FLAGS.pack(0) + _TSIG_TAIL.pack(original, BADKEY, 0)
    return name(key) + _RECORD.pack(TSIG, dns.ANY, 0, len(rdata)) + rdata


_SERIAL = struct.Struct("!I")


def _soa_serial(data, start, end):
    """
    The serial of the SOA whose data is C{data[start:end]}; its names are
    skipped over, not followed.
    """
    for _ in range(2):
        _, start = _read_name(data, start, follow=False)
    if start + _SOA_TIMES.size != end:
        raise FormatError("SOA data is not two names and five numbers")
    return _SERIAL.unpack_from(data, start)[0]


def _read_records(data, offset, ancount, nscount, arcount):
    """
    The OPT, the BADKEY answer to a TSIG (or L{None}s), the serial of an
    SOA alone in the authority section (or L{None}) and the end of the
    records at C{offset}.  Only the owners of OPT and TSIG are read.
    """
    edns = signed = serial = None
    records = ancount + nscount + arcount
    try:
        for index in range(records):
            owner, labels, rtype, rcls, ttl, start, offset = _read_record(data, offset)
            if index == ancount and nscount == 1 and rtype == dns.SOA:
                serial = _soa_serial(data, start, offset)
            elif rtype == dns.OPT:
                if index < ancount + nscount:
                    raise FormatError("OPT record outside the additional section")
                if edns is not None:
                    raise FormatError("more than one OPT record")
                edns = _read_edns(labels, rcls, ttl, data, start, offset)
            elif rtype == TSIG:
                if index != records - 1:
                    raise FormatError("TSIG is not the last record")
                signed = _badkey(data, owner, start, offset)
    except FormatError as e:
        e.edns = edns
        raise
    return edns, signed, serial, offset


def read_query(data):
    """
    The query in C{data}, a message whose header says it is a standard
    query; L{FormatError} if anything in it is malformed.  The work done is
    linear in at most L{MAX_RECORDS} records, however long C{data} is.
    """
    id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if qdcount > 1:
        raise FormatError(f"QDCOUNT is {qdcount}, not 1")
    if ancount + nscount + arcount > MAX_RECORDS:
        raise FormatError(f"more than {MAX_RECORDS} records in a query")
    offset = HEADER.size
    labels = question = None
    if qdcount:
        labels, offset = _read_name(data, offset)
        if offset + TYPE_CLASS.size > len(data):
            raise FormatError("question cut short")
        type, cls = TYPE_CLASS.unpack_from(data, offset)
        offset += TYPE_CLASS.size
        question = data[HEADER.size : offset]
    edns, signed, serial, offset = _read_records(data, offset, ancount, nscount, arcount)
    if offset != len(data):
        raise FormatError("bytes after the last record", edns)
    if question is None:
        raise FormatError("QDCOUNT is 0, not 1", edns)
    # RFC 1995 section 3: an IXFR query carries the client's SOA there.
    ixfr = type == dns.IXFR and not ancount and serial is not None
    if (ancount or nscount) and not ixfr:
        raise FormatError("records in the answer or authority section of a query", edns)
    if cls == dns.ANY:
        cls = dns.IN
    return Query(id, flags, question, labels, type, cls, edns, signed, serial if ixfr else None)


def name(labels):
    """
    The uncompressed wire form of a name.
    """
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def _rrsets(records):
    rrset = []
    for record in records:
        if rrset and (record.name, record.type) != (rrset[0].name, rrset[0].type):
            yield rrset
            rrset = []
        rrset.append(record)
    if rrset:
        yield rrset


# A compression pointer holds a 14-bit offset (RFC 1035 section 4.1.4):
# names written at or past this offset cannot be pointed at.
_POINTABLE = 0x4000
_POINTER = struct.Struct("!H")
_SOA_TIMES = struct.Struct("!5I")


class Message:
    """
    A reply's bytes from the question on, with name compression that only
    ever points back to offsets a pointer can hold.
    """

    def __init__(self, labels, question):
        self.data = bytearray(question)
        self._pointers = {}
        offset = HEADER.size
        for index, label in enumerate(labels):
            self._pointers.setdefault(labels[index:], offset)
            offset += 1 + len(label)

    def name(self, labels):
        data = self.data
        for index, label in enumerate(labels):
            suffix = labels[index:]
            pointer = self._pointers.get(suffix)
            if pointer is not None:
                data += _POINTER.pack(0xC000 | pointer)
                return
            offset = HEADER.size + len(data)
            if offset < _POINTABLE:
                self._pointers[suffix] = offset
            data.append(len(label))
            data += label
        data.append(0)

    def raw(self, labels, type, ttl, rdata):
        """
        Append one IN record whose data is the bytes C{rdata}.
        """
        self.name(labels)
        self.data += _RECORD.pack(type, dns.IN, ttl, len(rdata)) + rdata

    def record(self, record):
        """
        Append one L{dns.RRHeader}; the names of NS and SOA data are
        compressed (RFC 3597 section 4 allows it for them), other data is
        written as twisted.names spells it, uncompressed.
        """
        self.name(_labels(record.name.name))
        data = self.data
        data += _RECORD.pack(record.type, record.cls, record.ttl, 0)
        start = len(data)
        payload = record.payload
        if record.type in (dns.A, dns.AAAA):
            data += payload.address
        elif record.type == dns.NS:
            self.name(_labels(payload.name.name))
        elif record.type == dns.SOA:
            self.name(_labels(payload.mname.name))
            self.name(_labels(payload.rname.name))
            data += _SOA_TIMES.pack(
                payload.serial, payload.refresh, payload.retry, payload.expire, payload.minimum
            )
        else:
            out = io.BytesIO()
            payload.encode(out, None)
            data += out.getvalue()
        length = len(data) - start
        if length > 0xFFFF:
            raise ValueError(f"record data of {length} bytes")
        _POINTER.pack_into(data, start - 2, length)


def rdata(payload):
    """
    The data of the record C{payload} as bytes, names uncompressed: what
    tells two records of one owner and type apart.
    """
    if payload.TYPE in (dns.A, dns.AAAA):
        return payload.address
    out = io.BytesIO()
    payload.encode(out, None)
    return out.getvalue()


def _labels(text):
    return tuple(text.split(b".")) if text else ()


def record_size(record, pointer=False):
    """
    The most bytes C{record} takes in a reply: its owner written out, or,
    with C{pointer}, a pointer to the question; its data as L{Message}
    writes it (names in NS and SOA data may take fewer, compressed).
    """
    payload = record.payload
    if record.type in (dns.A, dns.AAAA):
        data = len(payload.address)
    elif record.type == dns.SRV:
        data = 6 + _name_size(payload.target.name)
    elif record.type in (dns.PTR, dns.NS):
        data = _name_size(payload.name.name)
    else:
        out = io.BytesIO()
        payload.encode(out, None)
        data = len(out.getvalue())
    return (2 if pointer else _name_size(record.name.name)) + _RECORD.size + data


def _name_size(text):
    # The wire form of the name "a.b" is 1 a 1 b 0: two bytes more.
    return len(text) + 2 if text else 1


def answer_room(labels):
    """
    The bytes a TCP reply to a question for C{labels} has for its records,
    our OPT and an Extended DNS Error in it included.
    """
    return MAX_MESSAGE - HEADER.size - len(name(labels)) - TYPE_CLASS.size - _OPT.size - _EDE.size


def encode(labels, question, response):
    """
    Encode the records of C{response} (an L{idetcd.dns._authority.Response}) for
    a reply to C{question}, the lower-case wire question for C{labels}.
    """
    message = Message(labels, question)
    counts = [0, 0, 0]
    cuts = []
    sections = (response.answers, response.authority, response.additional)
    for section, records in enumerate(sections):
        for rrset in _rrsets(records):
            for record in rrset:
                message.record(record)
            counts[section] += len(rrset)
            cuts.append((len(message.data) - len(question), *counts, section))
    body = bytes(message.data[len(question) :])
    return Encoded(response.rCode, response.auth, body, tuple(cuts), response.ede)


def _fit(encoded, room):
    """
    The longest run of whole RRsets that fits in C{room} bytes, its counts,
    and whether answer or authority data had to go (RFC 2181 section 9: only
    then is the reply truncated; missing additional data is not).
    """
    kept = (0, (0, 0, 0))
    for end, an, ns, ar, section in encoded.cuts:
        if end > room:
            return encoded.body[: kept[0]], kept[1], section < 2
        kept = (end, (an, ns, ar))
    return encoded.body, kept[1], False


def template(encoded, flags, question_length, limit, edns):
    """
    The (head, tail) of a reply of at most C{limit} bytes to a query with
    C{flags}, a question of C{question_length} bytes and C{edns} (or L{None}).
    """
    opt = b"" if edns is None else opt_record(encoded.rcode, edns, encoded.ede)
    body, (an, ns, ar), truncated = _fit(
        encoded, limit - HEADER.size - question_length - len(opt)
    )
    reply_flags = (
        QR
        | flags & (OPCODE | RD | CD)
        | (AA if encoded.auth else 0)
        | (TC if truncated else 0)
        | encoded.rcode & 0xF
    )
    return HEAD.pack(reply_flags, 1, an, ns, ar + (1 if opt else 0)), body + opt


def opt_record(rcode, edns, ede=None):
    """
    Our OPT record for a reply with C{rcode} to a query with C{edns}, with
    the Extended DNS Error C{ede} (RFC 8914), if any.
    """
    option = b"" if ede is None else _EDE.pack(EDE, 2, ede)
    # RFC 6891 section 6.1.3: the top 8 bits of a 12-bit rcode go in the
    # OPT; DO is copied (RFC 3225 section 3).
    flags = 0x8000 if edns.dnssec_ok else 0
    return _OPT.pack(0, dns.OPT, PAYLOAD, rcode >> 4, 0, flags, len(option)) + option


def header_only(data, rcode, edns=None):
    """
    A reply that echoes nothing but the header of C{data}: for queries whose
    question cannot be trusted or is not understood.  With C{edns} (the
    query's OPT) it carries our OPT (RFC 6891 section 7).
    """
    id, flags = struct.unpack_from("!HH", data)
    head = HEADER.pack(id, QR | flags & (OPCODE | RD | CD) | rcode, 0, 0, 0, 0 if edns is None else 1)
    return head if edns is None else head + opt_record(rcode, edns)


def badkey(data, query):
    """
    The NOTAUTH reply to a TSIG-signed C{query} (read from C{data}): its
    question, our OPT if it had one, and its unsigned BADKEY TSIG.
    """
    opt = b"" if query.edns is None else opt_record(NOTAUTH, query.edns)
    flags = QR | query.flags & (OPCODE | RD | CD) | NOTAUTH
    head = HEADER.pack(query.id, flags, 1, 0, 0, 1 + (1 if opt else 0))
    return head + query.question + opt + query.signed
