"""
Tests for the reply encoder of L{idetcd.wire}, checked with dnspython.
"""

import dns.flags
import dns.message
from twisted.names import dns as tdns
from twisted.trial import unittest

from idetcd import wire
from idetcd.authority import Response, domain_labels


def reply(labels, type, response, limit=wire.MAX_MESSAGE):
    """
    A whole reply message (id 0, RD) to (C{labels}, C{type}) and its encoding.
    """
    question = wire.name(labels) + wire.TYPE_CLASS.pack(type, tdns.IN)
    encoded = wire.encode(labels, question, response)
    head, tail = wire.template(encoded, wire.RD, len(question), limit, None)
    return b"\0\0" + head + question + tail, encoded


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
