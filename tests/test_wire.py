"""
L{idetcd.dns._wire}, checked with dnspython: replies the encoder writes, and
hostile messages the reader refuses with work bounded by a few records,
whatever their length.
"""

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.tsig
import dns.tsigkeyring
from twisted.names import dns as tdns
from twisted.trial import unittest

from idetcd.dns import _wire as wire
from idetcd.dns._authority import Response, domain_labels
from tests.dnsclient import reply
from tests.flood import pointer_chain


def ns_response(apex, count):
    """
    An NS RRset of C{count} names under C{apex}, with an A record as glue
    for each: about 60 bytes a name.
    """
    zone = b".".join(apex)
    answers, additional = [], []
    for index in range(count):
        target = b"worker%d.%s" % (index, zone)
        answers.append(tdns.RRHeader(zone, tdns.NS, tdns.IN, 30, tdns.Record_NS(target, 30), auth=True))
        additional.append(
            tdns.RRHeader(
                target, tdns.A, tdns.IN, 30,
                tdns.Record_A(f"10.{index >> 16}.{index >> 8 & 255}.{index & 255}", 30),
                auth=True,
            )
        )
    return Response(tdns.OK, True, tuple(answers), additional=tuple(additional))


class EncoderTests(unittest.TestCase):
    def test_reply_past_16k_parses(self):
        """
        A reply longer than 0x4000 bytes points only at names written
        before that offset: names after it are written out, or point to an
        earlier copy, and dnspython reads every record back.
        """
        apex = domain_labels("tf.local")
        data, encoded = reply(apex, tdns.NS, ns_response(apex, 800))
        self.assertGreater(len(data), 0x4000 * 2)
        message = dns.message.from_wire(data)
        (ns,) = message.answer
        self.assertEqual(len(ns), 800)
        self.assertEqual(
            {str(r.target) for r in ns}, {f"worker{i}.tf.local." for i in range(800)}
        )
        self.assertEqual(len(message.additional), 800)
        addresses = {str(rrset.name): rrset[0].address for rrset in message.additional}
        self.assertEqual(addresses["worker799.tf.local."], "10.0.3.31")
        # Past 0x4000 a name's own labels are written out each time (no
        # pointer could reach them), and its suffix points to an earlier copy.
        self.assertEqual(data[0x4000:].count(b"\x09worker799\xc0\x0c"), 2)

    def test_reply_capped_at_65535_bytes(self):
        """
        Over TCP a reply never exceeds 65,535 bytes: it is cut to whole
        RRsets and says TC.
        """
        apex = domain_labels("tf.local")
        data, encoded = reply(apex, tdns.NS, ns_response(apex, 3000))
        self.assertGreater(len(encoded.body), wire.MAX_MESSAGE)
        self.assertLessEqual(len(data), wire.MAX_MESSAGE)
        message = dns.message.from_wire(data)
        self.assertTrue(message.flags & dns.flags.TC)
        self.assertEqual(message.answer, [])

    def test_compresses_against_the_question(self):
        """
        Names are compressed against the question and earlier records, so a
        small reply is as short as twisted.names made it.
        """
        labels = domain_labels("worker1.tf.local")
        record = tdns.RRHeader(b"worker1.tf.local", tdns.A, tdns.IN, 30, tdns.Record_A("10.0.0.1"))
        data, encoded = reply(labels, tdns.A, Response(tdns.OK, True, (record,)))
        # A pointer to the question's name (offset 12), then 14 bytes.
        self.assertEqual(encoded.body, b"\xc0\x0c" + b"\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\n\x00\x00\x01")
        (rrset,) = dns.message.from_wire(data).answer
        self.assertEqual(rrset[0].address, "10.0.0.1")

    def test_extended_error_only_with_edns(self):
        """
        A response's Extended DNS Error (RFC 8914) goes in the OPT of a
        reply to an EDNS query, with the DO bit copied; a query without
        EDNS gets no OPT at all.
        """
        labels = domain_labels("worker1.tf.local")
        question = wire.name(labels) + wire.TYPE_CLASS.pack(tdns.A, tdns.IN)
        encoded = wire.encode(labels, question, Response(tdns.ESERVER, False, ede=22))
        edns = wire.EDNS(1232, 0, True)
        head, tail = wire.template(encoded, wire.RD, len(question), wire.MIN_PAYLOAD, edns)
        message = dns.message.from_wire(b"\0\0" + head + question + tail)
        self.assertEqual(message.rcode(), dns.rcode.SERVFAIL)
        self.assertTrue(message.ednsflags & dns.flags.DO)
        (option,) = message.options
        self.assertEqual((option.otype, option.code, option.text), (dns.edns.EDE, 22, None))
        head, tail = wire.template(encoded, wire.RD, len(question), wire.MIN_PAYLOAD, None)
        self.assertEqual(dns.message.from_wire(b"\0\0" + head + question + tail).edns, -1)

    def test_room_for_the_extended_error(self):
        """
        Records that fill the room L{wire.answer_room} gives still fit in a
        TCP reply with our OPT and an Extended DNS Error: no truncation.
        """
        labels = domain_labels("worker1.tf.local")
        question = wire.name(labels) + wire.TYPE_CLASS.pack(tdns.TXT, tdns.IN)
        # A pointer, type, class, TTL and length, then strings of 1 + n bytes.
        whole, rest = divmod(wire.answer_room(labels) - 12, 256)
        strings = [b"x" * 255] * whole + [b"y" * (rest - 1)]
        record = tdns.RRHeader(b"worker1.tf.local", tdns.TXT, tdns.IN, 30, tdns.Record_TXT(*strings))
        encoded = wire.encode(labels, question, Response(tdns.OK, True, (record,), ede=3))
        self.assertEqual(len(encoded.body), wire.answer_room(labels))
        edns = wire.EDNS(1232, 0, False)
        head, tail = wire.template(encoded, wire.RD, len(question), wire.MAX_MESSAGE, edns)
        message = dns.message.from_wire(b"\0\0" + head + question + tail)
        self.assertFalse(message.flags & dns.flags.TC)
        self.assertEqual([option.code for option in message.options], [3])


QUERY = dns.message.make_query("worker1.tf.local", "A", id=0x1234).to_wire()
_RR = struct.Struct("!HHIH")


def pointers(count):
    """
    A message whose name at the end follows C{count} pointers, each to the
    one before, down to worker1.tf.local in the question.
    """
    data = bytearray(QUERY)
    target = 12
    for _ in range(count):
        data += struct.pack("!H", 0xC000 | target)
        target = len(data) - 2
    return bytes(data), target


class ReadQueryTests(unittest.TestCase):
    def test_pointer_chains_refused(self):
        """
        The pointer-chain queries of issue 9, 8 KB and 64 KB, with their
        records in the answer or the additional section, are malformed
        before a record is read.
        """
        for size in (8192, 65535):
            for section in ("answer", "additional"):
                packet = pointer_chain(size, section)
                self.assertGreater(len(packet), size - 12)
                error = self.assertRaises(wire.FormatError, wire.read_query, packet)
                self.assertIn("more than 8 records", str(error))

    def test_pointer_hops_capped(self):
        """
        A name may follow 16 compression pointers, not 17.
        """
        data, end = pointers(wire.MAX_POINTERS)
        labels, _ = wire._read_name(data, end)
        self.assertEqual(labels, (b"worker1", b"tf", b"local"))
        data, end = pointers(wire.MAX_POINTERS + 1)
        error = self.assertRaises(wire.FormatError, wire._read_name, data, end)
        self.assertIn("more than 16 compression pointers", str(error))

    def test_pointers_point_back(self):
        for name in (b"\xc0\x0c", b"\x01a\xc0\x0c", b"\xc0\x0e\x00", b"\xc0\x02"):
            packet = QUERY[:12] + name + b"\x00\x01\x00\x01"
            self.assertRaises(wire.FormatError, wire.read_query, packet)

    def test_additional_owners_not_followed(self):
        """
        The owner of an additional record other than OPT and TSIG is skipped
        over, never followed: only the question's name is read.
        """
        calls = []
        read_name = wire._read_name

        def counting(data, offset, follow=True):
            calls.append(follow)
            return read_name(data, offset, follow)

        self.patch(wire, "_read_name", counting)
        record = b"\xc0\x0c" + _RR.pack(1, 1, 0, 4) + b"\x0a\x00\x00\x01"
        packet = QUERY[:10] + struct.pack("!H", 8) + QUERY[12:] + record * 8
        query = wire.read_query(packet)
        self.assertEqual(query.labels, (b"worker1", b"tf", b"local"))
        self.assertEqual(calls, [True] + [False] * 8)

    def test_records_in_answer_or_authority(self):
        """
        FORMERR for records in the answer or authority section of a query,
        as NSD does; the OPT, when there is one, is known to the error.
        """
        record = b"\xc0\x0c" + _RR.pack(1, 1, 0, 4) + b"\x0a\x00\x00\x01"
        query = dns.message.make_query("worker1.tf.local", "A", use_edns=0, want_dnssec=True)
        wire_query = query.to_wire()
        opt = wire_query[-11:]
        for counts in ((1, 0, 1), (0, 1, 1)):
            packet = wire_query[:6] + struct.pack("!3H", *counts) + wire_query[12:-11] + record + opt
            error = self.assertRaises(wire.FormatError, wire.read_query, packet)
            self.assertIn("answer or authority", str(error))
            self.assertEqual(error.edns, wire.EDNS(1232, 0, True))

    def test_class_any_reads_as_in(self):
        packet = dns.message.make_query("worker1.tf.local", "A", rdclass="ANY").to_wire()
        query = wire.read_query(packet)
        self.assertEqual(query.cls, 1)
        self.assertEqual(query.question[-2:], b"\x00\xff")

    def test_tsig(self):
        """
        A TSIG-signed query is answered NOTAUTH with an unsigned BADKEY TSIG
        that dnspython reads as such (RFC 8945 section 5.2); a TSIG that is
        not the last record, or is cut short, is malformed.
        """
        keyring = dns.tsigkeyring.from_text({"key.example.": "c2VjcmV0"})
        query = dns.message.make_query("worker1.tf.local", "A", use_edns=0)
        query.use_tsig(keyring, "key.example.")
        packet = query.to_wire()
        reply = wire.badkey(packet, wire.read_query(packet))
        self.assertRaises(
            dns.tsig.PeerBadKey, dns.message.from_wire, reply, keyring=keyring,
            request_mac=query.mac,
        )
        response = dns.message.from_wire(reply, keyring=False)
        self.assertEqual((response.id, response.rcode()), (query.id, dns.rcode.NOTAUTH))
        self.assertEqual((response.tsig_error, response.edns), (dns.rcode.BADKEY, 0))
        self.assertEqual(response.question, query.question)
        self.assertRaises(wire.FormatError, wire.read_query, packet[:-1])
        opt = dns.message.make_query("x", "A", use_edns=0).to_wire()[-11:]
        unsigned = dns.message.make_query("worker1.tf.local", "A")
        unsigned.use_tsig(keyring, "key.example.")
        signed = unsigned.to_wire()
        misplaced = signed[:10] + struct.pack("!H", 2) + signed[12:] + opt
        error = self.assertRaises(wire.FormatError, wire.read_query, misplaced)
        self.assertIn("TSIG is not the last record", str(error))
