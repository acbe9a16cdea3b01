"""
Tests for L{idetcd.dns._server}: a live server on loopback, real clients.

dnspython and raw sockets run in threads (deferToThread) with timeouts, so
the server keeps the reactor; dig and kdig run as child processes.
"""

import socket
import struct
import time

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.serial
import dns.tsig
import dns.tsigkeyring
from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from idetcd.dns import _server as server_module
from idetcd.dns import _tally as tally
from idetcd.dns._authority import ZoneAuthority
from idetcd.dns._freshness import CURRENT, View
from idetcd.dns._server import DNSServer
from idetcd.members._record import Member
from tests.dnsclient import (
    HOST,
    TIMEOUT,
    exchange_udp,
    header,
    question,
    read_message,
    run_tool,
    tcp_session,
    wait_closed,
)
from tests.fakeregistry import FakeRegistry, sample_members

SILENCE = 0.5


class ServerTestCase(unittest.TestCase):
    ttl = 30
    idle_timeout = 10.0
    max_connections = 1000
    nameservers = 3

    def setUp(self):
        self.registry = FakeRegistry(sample_members(), revision=100)
        self.registry.put(Member("big.tf.local.", tuple(f"10.1.0.{i}" for i in range(1, 41))))
        self.registry.put(Member("huge.tf.local.", tuple(f"10.2.0.{i}" for i in range(1, 81))))
        self.authority = ZoneAuthority("tf.local.", self.registry, self.ttl, self.nameservers)
        self.server = DNSServer(
            self.authority,
            0,
            tcp_idle_timeout=self.idle_timeout,
            max_tcp_connections=self.max_connections,
        )
        self.server.startService()
        self.addCleanup(self.server.stopService)

    def udp(self, query, **kwargs):
        return threads.deferToThread(
            dns.query.udp, query, HOST, port=self.server.port, timeout=TIMEOUT, **kwargs
        )

    def tcp(self, query):
        return threads.deferToThread(
            dns.query.tcp, query, HOST, port=self.server.port, timeout=TIMEOUT
        )

    def raw(self, payload, wait=TIMEOUT):
        return threads.deferToThread(exchange_udp, self.server.port, payload, wait)

    @defer.inlineCallbacks
    def assertAnswers(self, name="worker1.tf.local", address="10.0.0.1"):
        """
        The server still answers a plain query correctly.
        """
        response = yield self.udp(dns.message.make_query(name, "A"))
        self.assertEqual([r.address for r in response.answer[0]], [address])


class AnswerTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_servfail_until_the_registry_is_read(self):
        self.registry.ready = False
        self.registry._changed()
        response = yield self.udp(dns.message.make_query("worker1.tf.local", "A"))
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
        self.registry.ready = True
        self.registry._changed()
        yield self.assertAnswers()

    @defer.inlineCallbacks
    def test_answer(self):
        """
        A known name: NOERROR, AA set, RA clear, RD copied, zone TTL.
        """
        response = yield self.udp(dns.message.make_query("worker2.tf.local", "A"))
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertTrue(response.flags & dns.flags.AA)
        self.assertFalse(response.flags & dns.flags.RA)
        self.assertTrue(response.flags & dns.flags.RD)
        (rrset,) = response.answer
        self.assertEqual(rrset.ttl, 30)
        self.assertEqual(sorted(r.address for r in rrset), ["10.0.0.2", "10.0.0.22"])
        query = dns.message.make_query("worker3.tf.local", "AAAA", flags=0)
        response = yield self.udp(query)
        self.assertFalse(response.flags & (dns.flags.RD | dns.flags.RA))
        self.assertEqual([r.address for r in response.answer[0]], ["fd00::3"])

    @defer.inlineCallbacks
    def test_question_echoed(self):
        """
        The question comes back byte for byte (0x20 mixed case), and the
        answer is for that name.
        """
        asked = question(b"\x07WoRkeR1\x02Tf\x05lOcAL\x00")
        reply = yield self.raw(header() + asked)
        self.assertEqual(reply[12 : 12 + len(asked)], asked)
        response = dns.message.from_wire(reply)
        self.assertEqual(str(response.question[0].name), "WoRkeR1.Tf.lOcAL.")
        self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])
        self.assertTrue(response.flags & dns.flags.AA)

    @defer.inlineCallbacks
    def test_uncommon_flags(self):
        """
        Queries with flags the prepared replies do not cover (CD, AD) get the
        same answer; CD is copied, AD is not claimed.
        """
        query = dns.message.make_query("worker1.tf.local", "A")
        query.flags |= dns.flags.CD | dns.flags.AD
        for _ in range(2):
            response = yield self.udp(query)
            self.assertEqual(response.flags & (dns.flags.CD | dns.flags.AD), dns.flags.CD)
            self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])

    @defer.inlineCallbacks
    def test_nxdomain(self):
        """
        An unknown name in the zone: NXDOMAIN, AA, the SOA with the negative
        TTL.
        """
        response = yield self.udp(dns.message.make_query("nobody.TF.local", "A"))
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertTrue(response.flags & dns.flags.AA)
        self.assertEqual(response.answer, [])
        (soa,) = response.authority
        self.assertEqual(soa.rdtype, dns.rdatatype.SOA)
        self.assertEqual(soa.ttl, min(30, soa[0].minimum))

    @defer.inlineCallbacks
    def test_nodata(self):
        """
        A known name without the asked type: NOERROR, no answer, the SOA, AA.
        """
        response = yield self.udp(dns.message.make_query("worker2.tf.local", "AAAA"))
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertTrue(response.flags & dns.flags.AA)
        self.assertEqual(response.answer, [])
        self.assertEqual([r.rdtype for r in response.authority], [dns.rdatatype.SOA])

    @defer.inlineCallbacks
    def test_refused(self):
        """
        Names outside the zone and classes other than IN are refused,
        without AA.
        """
        for query in [
            dns.message.make_query("worker1.elsewhere", "A"),
            dns.message.make_query("example.com", "A"),
            dns.message.make_query("worker1.tf.local", "TXT", "CH"),
        ]:
            response = yield self.udp(query)
            self.assertEqual(response.rcode(), dns.rcode.REFUSED)
            self.assertFalse(response.flags & dns.flags.AA)

    @defer.inlineCallbacks
    def test_soa(self):
        response = yield self.udp(dns.message.make_query("tf.local", "SOA"))
        (rrset,) = response.answer
        soa = rrset[0]
        self.assertEqual(str(soa.mname), "big.tf.local.")
        self.assertEqual(str(soa.rname), "hostmaster.tf.local.")
        self.assertEqual(soa.serial, self.registry.revision)
        self.assertEqual(soa.minimum, 30)
        self.assertTrue(response.flags & dns.flags.AA)

    @defer.inlineCallbacks
    def test_ns_with_glue(self):
        """
        NS at the apex lists the three lowest-numbered members, with glue
        for them only (over TCP, where it all fits).
        """
        response = yield self.tcp(dns.message.make_query("tf.local", "NS"))
        (ns,) = response.answer
        names = sorted(str(r.target) for r in ns)
        self.assertEqual(names, ["big.tf.local.", "huge.tf.local.", "worker1.tf.local."])
        glue = {(str(r.name), r.rdtype): len(r) for r in response.additional}
        self.assertEqual(
            glue,
            {
                ("big.tf.local.", dns.rdatatype.A): 40,
                ("huge.tf.local.", dns.rdatatype.A): 80,
                ("worker1.tf.local.", dns.rdatatype.A): 1,
                ("worker1.tf.local.", dns.rdatatype.AAAA): 1,
            },
        )

    @defer.inlineCallbacks
    def test_serial_moves(self):
        """
        Every membership change moves the SOA serial forward.
        """
        query = dns.message.make_query("tf.local", "SOA")
        before = (yield self.udp(query)).answer[0][0].serial
        self.registry.put(Member("worker4.tf.local.", ("10.0.0.4",)))
        after = (yield self.udp(query)).answer[0][0].serial
        self.assertGreater(dns.serial.Serial(after), dns.serial.Serial(before))
        nxdomain = yield self.udp(dns.message.make_query("nobody.tf.local", "A"))
        self.assertEqual(nxdomain.authority[0][0].serial, after)

    @defer.inlineCallbacks
    def test_change_visible_at_once(self):
        """
        A change shows in the very next answer, since the registry callback
        rebuilds the replies before it returns (well within 10 ms).
        """
        query = dns.message.make_query("worker5.tf.local", "A")
        yield self.udp(query)
        durations = []
        for index in range(21):
            start = time.perf_counter()
            self.registry.put(Member("worker5.tf.local.", (f"10.0.5.{index}",)))
            durations.append(time.perf_counter() - start)
        self.assertLess(sorted(durations)[10], 0.010)
        response = yield self.udp(query)
        self.assertEqual([r.address for r in response.answer[0]], ["10.0.5.20"])
        self.registry.delete("worker5.tf.local.")
        response = yield self.udp(query)
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)

    @defer.inlineCallbacks
    def test_prepared_replies(self):
        """
        Known names are answered from replies prepared at the last change:
        no lookup happens per query.  Other answers are looked up once and
        then cached until the next change.
        """
        calls = []
        respond = self.authority.respond

        def counting(*args):
            calls.append(args)
            return respond(*args)

        self.patch(self.authority, "respond", counting)
        for _ in range(3):
            yield self.assertAnswers()
        self.assertEqual(calls, [])
        for _ in range(3):
            response = yield self.udp(dns.message.make_query("nobody.tf.local", "A"))
            self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(len(calls), 1)

    @defer.inlineCallbacks
    def test_any(self):
        """
        ANY gets one small HINFO (RFC 8482), not every record.
        """
        query = dns.message.make_query("huge.tf.local", "ANY")
        reply = yield self.raw(query.to_wire())
        self.assertLess(len(reply), 100)
        (rrset,) = dns.message.from_wire(reply).answer
        self.assertEqual(rrset.rdtype, dns.rdatatype.HINFO)
        self.assertEqual((rrset[0].cpu, rrset[0].os), (b"RFC8482", b""))


class EDNSTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_opt_echoed(self):
        """
        A query with OPT gets OPT back, with our payload size; DO is copied.
        """
        query = dns.message.make_query("worker1.tf.local", "A", use_edns=0, payload=4096)
        response = yield self.udp(query)
        self.assertEqual((response.edns, response.payload), (0, 1232))
        self.assertFalse(response.ednsflags & dns.flags.DO)
        query = dns.message.make_query("worker1.tf.local", "A", want_dnssec=True)
        response = yield self.udp(query)
        self.assertTrue(response.ednsflags & dns.flags.DO)
        response = yield self.udp(dns.message.make_query("worker1.tf.local", "A"))
        self.assertEqual(response.edns, -1)

    @defer.inlineCallbacks
    def test_unknown_options_ignored(self):
        cookie = dns.edns.GenericOption(dns.edns.COOKIE, b"\x01" * 8)
        unknown = dns.edns.GenericOption(65001, b"xyz")
        query = dns.message.make_query(
            "worker1.tf.local", "A", use_edns=0, options=[cookie, unknown]
        )
        response = yield self.udp(query)
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])
        self.assertEqual(list(response.options), [])

    @defer.inlineCallbacks
    def test_badvers(self):
        """
        EDNS version 1 gets BADVERS (extended rcode 16) and our version 0.
        """
        response = yield self.udp(dns.message.make_query("worker1.tf.local", "A", use_edns=1))
        self.assertEqual(response.rcode(), dns.rcode.BADVERS)
        self.assertEqual(response.edns, 0)
        self.assertEqual(response.answer, [])

    @defer.inlineCallbacks
    def test_two_opts(self):
        wire = dns.message.make_query("worker1.tf.local", "A", use_edns=0).to_wire()
        opt = wire[-11:]
        doubled = wire[:10] + struct.pack("!H", 2) + wire[12:] + opt
        reply = yield self.raw(doubled)
        response = dns.message.from_wire(reply)
        self.assertEqual(response.rcode(), dns.rcode.FORMERR)
        self.assertEqual(response.id, struct.unpack("!H", wire[:2])[0])


class StaleViewTests(ServerTestCase):
    """
    A node whose view may be stale, asked by dnspython, dig and kdig.
    """

    ttl = 300
    OWN = View(stale=True, unvouched=(b"worker1", b"tf", b"local"))

    def query(self, name, type="A", edns=True):
        message = dns.message.make_query(name, type, use_edns=0 if edns else None)
        return self.udp(message)

    def run_tool(self, tool, *args):
        return run_tool(self, self.server.port, tool, *args)

    @defer.inlineCallbacks
    def test_stale_and_unvouched(self):
        """
        Known names are answered with the TTL capped at 30 s and, for EDNS
        queries only, the Extended DNS Error "Stale Answer"; the node's own
        unconfirmed name and names it does not know are SERVFAIL, with "No
        Reachable Authority" for EDNS queries.
        """
        yield self.query("worker2.tf.local")  # prepared and cached replies before
        yield self.query("worker1.tf.local", edns=False)
        self.server.set_view(self.OWN)
        for edns in (True, False):
            response = yield self.query("worker2.tf.local", edns=edns)
            self.assertEqual(response.rcode(), dns.rcode.NOERROR)
            self.assertEqual(response.answer[0].ttl, 30)
            stale = [(o.otype, o.code) for o in response.options]
            self.assertEqual(stale, [(dns.edns.EDE, 3)] if edns else [])
            for name in ("WORKER1.tf.local", "worker9.tf.local"):
                response = yield self.query(name, edns=edns)
                self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
                self.assertEqual(response.answer, [])
                unreachable = [(o.otype, o.code) for o in response.options]
                self.assertEqual(unreachable, [(dns.edns.EDE, 22)] if edns else [])
            if not edns:
                self.assertEqual(response.edns, -1)
        response = yield self.tcp(dns.message.make_query("worker1.tf.local", "AAAA", use_edns=0))
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)

    @defer.inlineCallbacks
    def test_expired_then_current(self):
        """
        Past the bound every name in the zone is SERVFAIL; once the view is
        current again, the answers are the usual ones.
        """
        self.server.set_view(View(stale=True, expired=True))
        response = yield self.query("worker2.tf.local")
        self.assertEqual((response.rcode(), response.options[0].code), (dns.rcode.SERVFAIL, 22))
        self.server.set_view(CURRENT)
        response = yield self.query("worker1.tf.local")
        self.assertEqual((response.answer[0].ttl, list(response.options)), (300, []))
        yield self.assertAnswers()
        response = yield self.query("worker9.tf.local", edns=False)
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)

    @defer.inlineCallbacks
    def test_dig(self):
        self.server.set_view(self.OWN)
        text = yield self.run_tool("dig", "worker2.tf.local", "A", "+tries=1")
        self.assertIn("status: NOERROR", text)
        self.assertIn("EDE: 3 (Stale Answer)", text)
        self.assertRegex(text, r"worker2\.tf\.local\.\s+30\s+IN\s+A\s+10\.0\.0\.2")
        text = yield self.run_tool("dig", "worker1.tf.local", "A", "+tries=1")
        self.assertIn("status: SERVFAIL", text)
        self.assertIn("EDE: 22 (No Reachable Authority)", text)
        self.assertNotIn("10.0.0.1", text)
        text = yield self.run_tool("dig", "worker2.tf.local", "A", "+noedns", "+tries=1")
        self.assertNotIn("EDE", text)
        self.assertNotIn("OPT PSEUDOSECTION", text)

    @defer.inlineCallbacks
    def test_kdig(self):
        self.server.set_view(self.OWN)
        text = yield self.run_tool("kdig", "worker2.tf.local", "A", "+edns", "+retry=0")
        self.assertIn("status: NOERROR", text)
        self.assertIn("EDE: 3 (Stale Answer)", text)
        text = yield self.run_tool("kdig", "worker1.tf.local", "A", "+edns", "+retry=0")
        self.assertIn("status: SERVFAIL", text)
        self.assertIn("EDE: 22 (No Reachable Authority)", text)


class UpdateTests(ServerTestCase):
    """
    A membership change re-encodes only the replies it touched.
    """

    def encodes(self, change):
        replies = self.server._replies
        before = replies.encoded_count
        change()
        return replies.encoded_count - before

    @defer.inlineCallbacks
    def test_reencodes_only_what_changed(self):
        """
        Adding a member encodes its A and ANY replies and the apex SOA;
        moving it, its A and the SOA; deleting it, the SOA.  Cached
        negative answers are dropped, since their SOA serial moved.
        """
        nxdomain = yield self.udp(dns.message.make_query("worker7.tf.local", "A"))
        self.assertEqual(nxdomain.rcode(), dns.rcode.NXDOMAIN)
        member = Member("worker7.tf.local.", ("10.0.0.7",))
        self.assertEqual(self.encodes(lambda: self.registry.put(member)), 3)
        yield self.assertAnswers("worker7.tf.local", "10.0.0.7")
        moved = Member("worker7.tf.local.", ("10.0.0.77",))
        self.assertEqual(self.encodes(lambda: self.registry.put(moved)), 2)
        yield self.assertAnswers("worker7.tf.local", "10.0.0.77")
        self.assertEqual(self.encodes(lambda: self.registry.delete("worker7.tf.local.")), 1)
        response = yield self.udp(dns.message.make_query("worker7.tf.local", "A"))
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(response.authority[0][0].serial, self.registry.revision)
        # A change to the NS set encodes the NS reply as well.
        first = Member("a1.tf.local.", ("10.0.0.1",))
        self.assertEqual(self.encodes(lambda: self.registry.put(first)), 4)
        response = yield self.udp(dns.message.make_query("tf.local", "NS"))
        self.assertIn("a1.tf.local.", [str(r.target) for r in response.answer[0]])

    @defer.inlineCallbacks
    def test_failed_update_falls_back_to_a_rebuild(self):
        """
        An update that fails is logged (rate-limited) and every table is
        rebuilt, so no stale answer survives it.
        """
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        update = self.authority.update
        failures = []

        def failing(names):
            if names is not None:
                failures.append(names)
                raise RuntimeError("broken")
            return update(names)

        self.authority.update = failing
        for index in range(3):
            self.registry.put(Member("worker1.tf.local.", (f"10.9.0.{index}",)))
            yield self.assertAnswers(address=f"10.9.0.{index}")
        self.registry.delete("worker2.tf.local.")
        response = yield self.udp(dns.message.make_query("worker2.tf.local", "A"))
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(len(failures), 4)
        logged = [e for e in events if e.get("kind") == "update"]
        self.assertEqual(len(logged), 1)
        self.assertIn("broken", logged[0]["why"])


class TruncationTests(ServerTestCase):
    nameservers = 40  # an NS RRset big enough to be cut
    @defer.inlineCallbacks
    def test_truncated_without_edns(self):
        """
        640 bytes of A records do not fit 512: TC, and no partial RRset.
        """
        response = yield self.udp(dns.message.make_query("big.tf.local", "A"))
        self.assertTrue(response.flags & dns.flags.TC)
        self.assertEqual(response.answer, [])
        self.assertTrue(response.flags & dns.flags.AA)

    @defer.inlineCallbacks
    def test_edns_sizes(self):
        """
        The advertised size counts, clamped to [512, 1232].
        """
        for payload, name, truncated in [
            (1232, "big.tf.local", False),
            (600, "big.tf.local", True),
            (100, "big.tf.local", True),
            (4096, "huge.tf.local", True),
        ]:
            query = dns.message.make_query(name, "A", use_edns=0, payload=payload)
            response = yield self.udp(query)
            self.assertEqual(bool(response.flags & dns.flags.TC), truncated, (payload, name))
            answered = len(response.answer[0]) if response.answer else 0
            self.assertEqual(answered, 0 if truncated else 40)
            self.assertEqual(response.edns, 0)

    @defer.inlineCallbacks
    def test_tcp_full(self):
        """
        The query that was truncated over UDP gets everything over TCP.
        """
        response = yield self.tcp(dns.message.make_query("huge.tf.local", "A"))
        self.assertFalse(response.flags & dns.flags.TC)
        self.assertEqual(len(response.answer[0]), 80)

    @defer.inlineCallbacks
    def test_ns_truncation(self):
        """
        Glue that does not fit is left out by whole RRsets without TC (RFC
        2181 section 9); an NS RRset that does not fit sets TC.
        """
        self.registry.delete("big.tf.local.")
        self.registry.delete("huge.tf.local.")
        for index in range(10, 22):
            self.registry.put(Member(f"worker{index}.tf.local.", (f"10.0.1.{index}",)))
        response = yield self.udp(dns.message.make_query("tf.local", "NS"))
        self.assertFalse(response.flags & dns.flags.TC)
        self.assertEqual(len(response.answer[0]), 15)
        self.assertTrue(0 < len(response.additional) < 16)
        for rrset in response.additional:
            if str(rrset.name) == "worker2.tf.local.":
                self.assertEqual(len(rrset), 2)
        for index in range(22, 40):
            self.registry.put(Member(f"worker{index}.tf.local.", (f"10.0.1.{index}",)))
        response = yield self.udp(dns.message.make_query("tf.local", "NS"))
        self.assertTrue(response.flags & dns.flags.TC)
        self.assertEqual((response.answer, response.additional), ([], []))
        response = yield self.tcp(dns.message.make_query("tf.local", "NS"))
        self.assertEqual(len(response.answer[0]), 33)
        self.assertEqual(sum(len(rrset) for rrset in response.additional), 35)


class MalformedTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_opcode_not_implemented(self):
        for opcode in (dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE):
            query = dns.message.make_query("worker1.tf.local", "A")
            query.set_opcode(opcode)
            response = yield self.udp(query)
            self.assertEqual(response.rcode(), dns.rcode.NOTIMP)
            self.assertEqual(response.opcode(), opcode)

    @defer.inlineCallbacks
    def test_formerr(self):
        """
        Every message with a readable header that cannot be read further
        gets FORMERR with the query id.
        """
        long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"
        for payload in [
            header(qd=0),
            header(qd=2) + question() + question(),
            header() + b"\xff" * 20,
            header() + question(b"\xc0\x0c"),
            header() + b"\x07worker1\xc0\x0c" + b"\x00\x01\x00\x01",
            header() + question(b"\x40" + b"a" * 64 + b"\x00"),
            header() + question(long_name),
            header(an=65535, ns=65535, ar=65535) + question(),
            header() + question()[:-1],
            header() + question() + b"junk",
        ]:
            reply = yield self.raw(payload)
            self.assertIsNotNone(reply, payload)
            response = dns.message.from_wire(reply)
            self.assertEqual((response.id, response.rcode()), (0x1234, dns.rcode.FORMERR), payload)
        yield self.assertAnswers()

    @defer.inlineCallbacks
    def test_errors_carry_opt(self):
        """
        NOTIMP and FORMERR replies to a query with OPT carry our OPT (RFC
        6891 section 7), DO copied; replies to one without OPT carry none.
        """
        for edns, expected in ((None, -1), (0, 0)):
            query = dns.message.make_query("worker1.tf.local", "A", use_edns=edns, want_dnssec=edns == 0)
            query.set_opcode(dns.opcode.NOTIFY)
            response = yield self.udp(query)
            self.assertEqual((response.rcode(), response.edns), (dns.rcode.NOTIMP, expected))
            query = dns.message.make_query("worker1.tf.local", "A", use_edns=edns, want_dnssec=edns == 0)
            query.answer.append(dns.rrset.from_text("worker1.tf.local.", 30, "IN", "A", "10.0.0.9"))
            reply = yield self.raw(query.to_wire())
            response = dns.message.from_wire(reply)
            self.assertEqual((response.rcode(), response.edns), (dns.rcode.FORMERR, expected))
            self.assertEqual(bool(response.ednsflags & dns.flags.DO), edns == 0)
            self.assertEqual(response.payload, 1232 if edns == 0 else 0)

    @defer.inlineCallbacks
    def test_tsig_badkey(self):
        """
        This server holds no TSIG keys: a signed query gets NOTAUTH with an
        unsigned BADKEY TSIG, which dnspython reports as such.
        """
        query = dns.message.make_query("worker1.tf.local", "A")
        query.use_tsig(dns.tsigkeyring.from_text({"key.example.": "c2VjcmV0"}), "key.example.")
        for exchange in (self.udp, self.tcp):
            yield self.assertFailure(exchange(query), dns.tsig.PeerBadKey)

    @defer.inlineCallbacks
    def test_class_any(self):
        """
        A question of class ANY gets the IN data (RFC 1035 section 3.2.5),
        its class echoed.
        """
        response = yield self.udp(dns.message.make_query("worker1.tf.local", "A", rdclass="ANY"))
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(response.question[0].rdclass, dns.rdataclass.ANY)
        self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])
        self.assertEqual(response.answer[0].rdclass, dns.rdataclass.IN)

    @defer.inlineCallbacks
    def test_dropped(self):
        """
        Responses (QR set) and messages shorter than a header get no reply;
        the server goes on answering.
        """
        response = dns.message.make_query("worker1.tf.local", "A").to_wire()
        response = response[:2] + bytes([response[2] | 0x80]) + response[3:]
        for payload in [response, b"", b"\x12\x34\x01", header()[:11]]:
            reply = yield self.raw(payload, wait=SILENCE)
            self.assertIsNone(reply)
        yield self.assertAnswers()


class TCPTests(ServerTestCase):
    idle_timeout = 0.4
    max_connections = 3

    @defer.inlineCallbacks
    def test_pipelined(self):
        """
        Several queries sent at once on one connection are all answered, in
        order.
        """
        queries = [
            dns.message.make_query(name, type)
            for name, type in [
                ("worker1.tf.local", "A"),
                ("worker2.tf.local", "A"),
                ("nobody.tf.local", "A"),
                ("huge.tf.local", "A"),
                ("tf.local", "SOA"),
            ]
        ]
        replies = yield threads.deferToThread(
            tcp_session, self.server.port, [q.to_wire() for q in queries]
        )
        responses = [dns.message.from_wire(r) for r in replies]
        self.assertEqual([r.id for r in responses], [q.id for q in queries])
        self.assertEqual(
            [r.rcode() for r in responses],
            [dns.rcode.NOERROR] * 2 + [dns.rcode.NXDOMAIN] + [dns.rcode.NOERROR] * 2,
        )
        self.assertEqual(len(responses[3].answer[0]), 80)

    @defer.inlineCallbacks
    def test_idle_timeout(self):
        """
        An idle connection, or one stuck in a message that never ends, is
        closed after the timeout.
        """

        def idle(prefix):
            with socket.create_connection((HOST, self.server.port), timeout=TIMEOUT) as s:
                s.sendall(prefix)
                return wait_closed(s, TIMEOUT)

        for prefix in (b"", b"\xff\xff", b"\x00\x20abc"):
            elapsed = yield threads.deferToThread(idle, prefix)
            self.assertIsNotNone(elapsed, prefix)
            self.assertGreater(elapsed, self.idle_timeout * 0.5)
        yield self.assertAnswers()

    @defer.inlineCallbacks
    def test_connection_cap(self):
        """
        Past the cap, new connections are closed at once; the open ones keep
        working.
        """
        query = dns.message.make_query("worker1.tf.local", "A").to_wire()
        framed = struct.pack("!H", len(query)) + query

        def crowd():
            sockets = [
                socket.create_connection((HOST, self.server.port), timeout=TIMEOUT)
                for _ in range(3)
            ]
            try:
                for s in sockets:
                    s.sendall(framed)
                    read_message(s)
                extra = socket.create_connection((HOST, self.server.port), timeout=TIMEOUT)
                with extra:
                    closed = wait_closed(extra, TIMEOUT)
                sockets[0].sendall(framed)
                return closed, dns.message.from_wire(read_message(sockets[0]))
            finally:
                for s in sockets:
                    s.close()

        closed, response = yield threads.deferToThread(crowd)
        self.assertIsNotNone(closed)
        self.assertLess(closed, self.idle_timeout)
        self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])

    @defer.inlineCallbacks
    def test_stop_closes_connections(self):
        """
        stopService closes open connections, stops listening and
        unsubscribes.
        """

        def hold():
            with socket.create_connection((HOST, self.server.port), timeout=TIMEOUT) as s:
                s.sendall(b"\x00")
                return wait_closed(s, TIMEOUT)

        d = threads.deferToThread(hold)
        yield task.deferLater(reactor, 0.1, lambda: None)
        yield self.server.stopService()
        self.assertIsNotNone((yield d))
        self.assertEqual(self.registry.subscribers, [])
        query = dns.message.make_query("worker1.tf.local", "A")
        reply = yield self.raw(query.to_wire(), wait=SILENCE)
        self.assertIsNone(reply)
        self.server.startService()
        yield self.assertAnswers()


class _EchoReplies:
    """
    The replies surface of a server, answering each message with itself
    (of the kind of a NOERROR answer to an A question).
    """

    def __init__(self):
        self.asked = []

    def tcp(self, data, peer, send, stream):
        self.asked.append(data)
        return data, tally.kind(1, 0)

    def report(self, kind, format, **fields):
        pass


class FairTCPTests(unittest.TestCase):
    """
    The batching of L{server._TCP}, on a fake transport and clock.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.replies = _EchoReplies()
        self.factory = server_module._TCPFactory(self.replies, self.clock, 10.0, 100, 2)

    def turn(self):
        """
        Run the calls due now but not those they schedule: one reactor turn
        (Clock.advance would run those too).
        """
        now = self.clock.seconds()
        due = [call for call in self.clock.calls if call.getTime() <= now]
        for call in due:
            self.clock.calls.remove(call)
            call.func(*call.args, **call.kw)

    def connect(self, host="127.0.0.1"):
        address = IPv4Address("TCP", host, 5353)
        connection = self.factory.buildProtocol(address)
        if connection is not None:
            connection.makeConnection(StringTransport(peerAddress=address))
        return connection

    def test_batches_per_turn(self):
        """
        100 pipelined queries are answered 16 per reactor turn, in order;
        the connection is not read from until all are answered.
        """
        connection = self.connect()
        messages = [b"query %03d" % i for i in range(100)]
        connection.dataReceived(b"".join(struct.pack("!H", len(m)) + m for m in messages))
        answered = [len(self.replies.asked)]
        while connection.transport.producerState == "paused" and len(answered) < 100:
            self.turn()
            answered.append(len(self.replies.asked))
        self.assertEqual(answered, [16, 32, 48, 64, 80, 96, 100])
        self.assertEqual(self.replies.asked, messages)

    def test_backpressure(self):
        """
        While the transport says its replies are not being read, nothing
        more is answered or read; when they are, the rest follows.
        """
        connection = self.connect()
        messages = [b"query %03d" % i for i in range(40)]
        connection.pauseProducing()
        connection.dataReceived(b"".join(struct.pack("!H", len(m)) + m for m in messages))
        self.turn()
        self.assertEqual((self.replies.asked, connection.transport.producerState), ([], "paused"))
        connection.resumeProducing()
        self.assertEqual(len(self.replies.asked), 16)
        self.turn()
        self.turn()
        self.assertEqual(self.replies.asked, messages)
        self.assertEqual(connection.transport.producerState, "producing")

    def test_per_client_limit(self):
        """
        One address holds at most max_per_client connections; others are
        not affected, and a closed connection frees its slot.
        """
        first = [self.connect(), self.connect()]
        self.assertIsNone(self.connect())
        self.assertIsNotNone(self.connect("127.0.0.2"))
        first[0].connectionLost(None)
        self.assertIsNotNone(self.connect())

    def test_turn_shared_by_all_connections(self):
        """
        All connections together answer at most TCP_TURN queries per turn,
        taking turns in order: 20 connections with 100 queries each all
        progress alike.
        """
        self.factory.max_per_client = 20
        connections = [self.connect() for _ in range(20)]
        for index, connection in enumerate(connections):
            messages = [b"%02d %03d" % (index, i) for i in range(100)]
            connection.dataReceived(b"".join(struct.pack("!H", len(m)) + m for m in messages))
        per_turn = [len(self.replies.asked)]
        while len(self.replies.asked) < 2000 and len(per_turn) < 100:
            self.turn()
            per_turn.append(len(self.replies.asked) - sum(per_turn))
        self.assertEqual(sum(per_turn), 2000)
        self.assertEqual(max(per_turn), server_module.TCP_TURN)
        self.assertEqual(per_turn[:12], [server_module.TCP_TURN] * 12)
        for index in range(20):
            mine = [m for m in self.replies.asked if m.startswith(b"%02d " % index)]
            self.assertEqual(mine, [b"%02d %03d" % (index, i) for i in range(100)])
        halfway = self.replies.asked[:1000]
        counts = {sum(m.startswith(b"%02d " % i) for m in halfway) for i in range(20)}
        self.assertLessEqual(max(counts) - min(counts), server_module.TCP_BATCH)

    def test_lost_connection_answers_nothing(self):
        connection = self.connect()
        connection.dataReceived(b"\x00\x01x" * 20)
        connection.connectionLost(None)
        self.turn()
        self.assertEqual(len(self.replies.asked), 16)


class BackpressureTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_unread_replies_stop_reading(self):
        """
        A client that pipelines 2,000 queries for 1.3 KB answers without
        reading gets no more answered than fits the kernel's buffers and
        our cap; once it reads, it gets every answer, in order.
        """
        query = dns.message.make_query("huge.tf.local", "A", id=7).to_wire()
        count = 2000
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        # A small window, so the kernel does not absorb every reply.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        yield threads.deferToThread(sock.connect, (HOST, self.server.port))
        yield threads.deferToThread(sock.sendall, (struct.pack("!H", len(query)) + query) * count)
        asked = []
        tcp = self.server._replies.tcp
        self.patch(self.server._replies, "tcp", lambda *args: asked.append(1) or tcp(*args))
        # Wait until the server stops answering: the count holds still.
        before = -1
        while before != len(asked):
            before = len(asked)
            yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertLess(len(asked), count - 100)
        (connection,) = self.server._tcp.connections
        self.assertTrue(connection._blocked)
        transport = connection.transport
        queued = len(transport.dataBuffer) + transport._tempDataLen
        self.assertLessEqual(queued, server_module.TCP_BUFFER + 2 * 1500)

        def read_all():
            return [read_message(sock) for _ in range(count)]

        replies = yield threads.deferToThread(read_all)
        self.assertEqual({len(r) for r in replies}, {len(replies[0])})
        self.assertEqual(len(dns.message.from_wire(replies[-1]).answer[0]), 80)


class SourceAddressTests(unittest.TestCase):
    """
    Replies leave from the address the query was sent to, on a wildcard
    bind, whatever the kernel's route would pick.
    """

    def setUp(self):
        self.registry = FakeRegistry(sample_members())
        self.authority = ZoneAuthority("tf.local.", self.registry, 30)

    def serve(self, interface):
        server = DNSServer(self.authority, 0, interfaces=(interface,))
        try:
            server.startService()
        except CannotListenError:
            raise unittest.SkipTest(f"cannot listen on {interface}")
        self.addCleanup(server.stopService)
        return server

    @defer.inlineCallbacks
    def assertRepliesFrom(self, server, hosts):
        def ask(host):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(TIMEOUT)
                s.sendto(dns.message.make_query("worker1.tf.local", "A").to_wire(), (host, server.port))
                data, source = s.recvfrom(65535)
                return source[0], dns.message.from_wire(data)

        for host in hosts:
            source, response = yield threads.deferToThread(ask, host)
            self.assertEqual(source, host)
            self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])

    def test_ipv4_wildcard(self):
        return self.assertRepliesFrom(self.serve("0.0.0.0"), ["127.0.0.2", "127.0.0.1", "127.0.0.3"])

    def test_ipv6_wildcard(self):
        """
        On "::" IPv6 queries and (mapped) IPv4 ones both get replies from
        the address asked.
        """
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                s.bind(("::1", 0))
        except OSError:
            raise unittest.SkipTest("no IPv6 loopback")
        return self.assertRepliesFrom(self.serve("::"), ["::1", "127.0.0.2"])

    def test_receive_buffer(self):
        """
        The UDP socket asks for a receive buffer of a few MB; when the
        kernel clamps it, that is logged.
        """
        with open("/proc/sys/net/core/rmem_max") as f:
            limit = int(f.read())
        udp = self.serve("127.0.0.1")._listening[0].getHandle()
        granted = udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        self.assertGreaterEqual(granted, min(server_module.UDP_RECEIVE_BUFFER, limit))
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.patch(server_module, "SO_RCVBUFFORCE", None)
        self.patch(server_module, "UDP_RECEIVE_BUFFER", 2 * limit)
        self.serve("127.0.0.1")
        (warning,) = [e for e in events if "clamped" in e.get("log_format", "")]
        self.assertEqual(warning["granted"], limit)


class LifecycleTests(unittest.TestCase):
    def setUp(self):
        self.registry = FakeRegistry(sample_members())
        self.authority = ZoneAuthority("tf.local.", self.registry, 30)

    @defer.inlineCallbacks
    def test_ipv6(self):
        """
        IPv4 and IPv6 interfaces share one port number, on UDP and TCP.
        """
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                s.bind(("::1", 0))
        except OSError:
            raise unittest.SkipTest("no IPv6 loopback")
        server = DNSServer(self.authority, 0, interfaces=("127.0.0.1", "::1"))
        server.startService()
        self.addCleanup(server.stopService)
        query = dns.message.make_query("worker1.tf.local", "A")
        for host in ("127.0.0.1", "::1"):
            for exchange in (dns.query.udp, dns.query.tcp):
                response = yield threads.deferToThread(
                    exchange, query, host, port=server.port, timeout=TIMEOUT
                )
                self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])

    @defer.inlineCallbacks
    def test_port_taken(self):
        """
        A port already taken raises CannotListenError and leaves nothing
        listening or subscribed.
        """
        blocker = reactor.listenTCP(0, protocol.Factory(), interface=HOST)
        self.addCleanup(blocker.stopListening)
        server = DNSServer(self.authority, blocker.getHost().port)
        self.assertRaises(CannotListenError, server.startService)
        self.assertEqual(self.registry.subscribers, [])
        self.assertEqual(self.registry.change_subscribers, [])
        self.assertFalse(server.running)
        # Let the UDP port it opened first finish closing.
        yield task.deferLater(reactor, 0, lambda: None)

    def test_bad_arguments(self):
        self.assertRaises(ValueError, DNSServer, self.authority, 0, tcp_idle_timeout=0)
        self.assertRaises(ValueError, DNSServer, self.authority, 0, max_tcp_connections=0)
        self.assertRaises(ValueError, DNSServer, self.authority, 0, interfaces=())


class ToolTests(ServerTestCase):
    """
    dig and kdig, when installed.
    """

    def run_tool(self, tool, *args):
        return run_tool(self, self.server.port, tool, *args)

    @defer.inlineCallbacks
    def test_dig(self):
        text = yield self.run_tool("dig", "WoRkEr1.tf.local", "A", "+norec", "+tries=1")
        self.assertIn("status: NOERROR", text)
        self.assertIn("flags: qr aa;", text)
        self.assertIn("udp: 1232", text)
        self.assertRegex(text, r"WoRkEr1\.tf\.local\.\s+30\s+IN\s+A\s+10\.0\.0\.1")

    @defer.inlineCallbacks
    def test_dig_truncation_retries_tcp(self):
        text = yield self.run_tool("dig", "huge.tf.local", "A", "+bufsize=512", "+tries=1")
        self.assertIn("ANSWER: 80", text)
        self.assertIn("(TCP)", text)

    @defer.inlineCallbacks
    def test_kdig(self):
        text = yield self.run_tool("kdig", "nobody.tf.local", "A", "+norec", "+retry=0")
        self.assertIn("status: NXDOMAIN", text)
        self.assertIn("Flags: qr aa;", text)
        self.assertRegex(text, r"tf\.local\.\s+30\s+IN\s+SOA\s+big\.tf\.local\.")
