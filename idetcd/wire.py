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
_OPT = struct.Struct("!BHHBBHH")

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


class FormatError(ValueError):
    """
    The message breaks the wire format; the text says where.
    """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class EDNS:
    payload: int
    version: int
    dnssec_ok: bool


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Query:
    """
    A standard query: C{question} and C{labels} exactly as received.
    """

    id: int
    flags: int
    question: bytes
    labels: tuple
    type: int
    cls: int
    edns: Optional[EDNS]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Encoded:
    """
    The records of a reply as bytes, with the end of every RRset in C{cuts}
    as (offset in C{body}, answer count, authority count, additional count,
    section), so the reply can be cut short on an RRset boundary.
    """

    rcode: int
    auth: bool
    body: bytes = b""
    cuts: tuple = ()


def _read_name(data, offset):
    """
    The labels at C{offset} and the offset just past the name.  Compression
    pointers must point before the labels that hold them, which rules out
    loops, and not into the header.
    """
    labels = []
    size = 1
    end = None
    start = offset
    while True:
        if offset >= len(data):
            raise FormatError("name runs past the end of the message")
        length = data[offset]
        if length == 0:
            return tuple(labels), offset + 1 if end is None else end
        if length >= 0xC0:
            if offset + 1 >= len(data):
                raise FormatError("compression pointer cut short")
            target = (length & 0x3F) << 8 | data[offset + 1]
            if not 12 <= target < start:
                raise FormatError("compression pointer does not point back")
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
    labels, offset = _read_name(data, offset)
    if offset + _RECORD.size > len(data):
        raise FormatError("record header cut short")
    type, cls, ttl, length = _RECORD.unpack_from(data, offset)
    start = offset + _RECORD.size
    if start + length > len(data):
        raise FormatError("record data cut short")
    return labels, type, cls, ttl, start, start + length


def _read_edns(labels, cls, ttl, data, start, end):
    if labels:
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


def read_query(data):
    """
    The query in C{data}, a message whose header says it is a standard
    query; L{FormatError} if anything in it is malformed.
    """
    id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if qdcount != 1:
        raise FormatError(f"QDCOUNT is {qdcount}, not 1")
    labels, offset = _read_name(data, HEADER.size)
    if offset + TYPE_CLASS.size > len(data):
        raise FormatError("question cut short")
    type, cls = TYPE_CLASS.unpack_from(data, offset)
    offset += TYPE_CLASS.size
    question = data[HEADER.size : offset]
    edns = None
    for index in range(ancount + nscount + arcount):
        owner, rtype, rcls, ttl, start, offset = _read_record(data, offset)
        if rtype == dns.OPT:
            if index < ancount + nscount:
                raise FormatError("OPT record outside the additional section")
            if edns is not None:
                raise FormatError("more than one OPT record")
            edns = _read_edns(owner, rcls, ttl, data, start, offset)
    if offset != len(data):
        raise FormatError("bytes after the last record")
    return Query(id, flags, question, labels, type, cls, edns)


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


class _Message:
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


def _labels(text):
    return tuple(text.split(b".")) if text else ()


def encode(labels, question, response):
    """
    Encode the records of C{response} (an L{idetcd.authority.Response}) for
    a reply to C{question}, the lower-case wire question for C{labels}.
    """
    message = _Message(labels, question)
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
    return Encoded(response.rCode, response.auth, body, tuple(cuts))


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
    opt = b""
    if edns is not None:
        # RFC 6891 section 6.1.3: the top 8 bits of a 12-bit rcode go in the
        # OPT; DO is copied (RFC 3225 section 3).
        opt = _OPT.pack(
            0, dns.OPT, PAYLOAD, encoded.rcode >> 4, 0, 0x8000 if edns.dnssec_ok else 0, 0
        )
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


def header_only(data, rcode):
    """
    A reply that echoes nothing but the header of C{data}: for queries whose
    question cannot be trusted or is not understood.
    """
    id, flags = struct.unpack_from("!HH", data)
    return HEADER.pack(id, QR | flags & (OPCODE | RD | CD) | rcode, 0, 0, 0, 0)
