"""
Tests for zone transfers (L{idetcd.dns._transfer}): AXFR, IXFR and NOTIFY
from a live server on loopback, read by dnspython's transfer client, kdig,
and a Knot secondary mirroring a real node's zone.
"""

import ipaddress
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.xfr
import dns.zone
from twisted.internet import defer, protocol, reactor, threads, utils
from twisted.trial import unittest

from idetcd.config import CorefileError
from idetcd.dns import _wire as wire
from idetcd.dns._authority import ZoneAuthority
from idetcd.dns._freshness import View
from idetcd.dns._server import DNSServer
from idetcd.dns._transfer import NOTIFY_FIRST_RETRY, ZoneTransfer
from idetcd.members._record import Member
from idetcd.node import parse
from idetcd.node._embedded import free_port
from tests.dnsclient import read_exactly
from tests.fakeregistry import FakeRegistry, sample_members
from tests.nodes import ROOT, NodeProcessCase, ProcessOutput
from tests.waiting import sleep

HOST = "127.0.0.1"
#: An address on loopback that no transfer lists.
STRANGER = "127.0.0.2"
TIMEOUT = 5.0
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


def ixfr_query(serial, zone="tf.local"):
    """
    An IXFR query as RFC 1995 has it: the client's SOA in the authority
    section.
    """
    query = dns.message.make_query(zone, "IXFR")
    query.authority.append(
        dns.rrset.from_text(f"{zone}.", 0, "IN", "SOA", f"ns.{zone}. hostmaster.{zone}. {serial} 1 1 1 1")
    )
    return query


def xfr(port, rdtype="AXFR", serial=0, source=None):
    """
    The messages of a transfer over TCP, read raw (dnspython's reader would
    stop at a REFUSED), from a thread.
    """
    query = dns.message.make_query("tf.local", rdtype) if rdtype == "AXFR" else ixfr_query(serial)

    def run():
        import socket

        with socket.create_connection((HOST, port), TIMEOUT, (source, 0) if source else None) as s:
            payload = query.to_wire()
            s.sendall(struct.pack("!H", len(payload)) + payload)
            messages, soas = [], 0
            while True:
                (length,) = struct.unpack("!H", read_exactly(s, 2))
                data = read_exactly(s, length)
                message = dns.message.from_wire(data, xfr=True, one_rr_per_rrset=True)
                messages.append((len(data), message))
                soas += sum(1 for rrset in message.answer if rrset.rdtype == dns.rdatatype.SOA)
                if message.rcode() != dns.rcode.NOERROR or soas >= 2 or (
                    rdtype == "IXFR" and soas == 1 and len(message.answer) == 1
                ):
                    return messages

    return threads.deferToThread(run)


def records(messages):
    return [rrset for _, message in messages for rrset in message.answer]


def as_set(rrsets):
    return {(str(rrset.name), rrset.rdtype, str(rrset[0])) for rrset in rrsets}


def zone_text(zone):
    """
    The zone's records as comparable text, one per record.
    """
    return {
        (str(name), rdataset.rdtype, str(rdata))
        for name, node in zone.nodes.items()
        for rdataset in node.rdatasets
        for rdata in rdataset
    }


#: A process that reads an AXFR from the server on port argv[1] and prints
#: the sizes of its messages and its records, as JSON.
AXFR_CLIENT = """
import json, socket, struct, sys
import dns.message, dns.rdatatype
from tests.dnsclient import read_exactly
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), 60) as s:
    query = dns.message.make_query("tf.local", "AXFR").to_wire()
    s.sendall(struct.pack("!H", len(query)) + query)
    sizes, answer = [], []
    while sum(1 for record in answer if record[1] == "SOA") < 2:
        (length,) = struct.unpack("!H", read_exactly(s, 2))
        message = dns.message.from_wire(read_exactly(s, length), xfr=True, one_rr_per_rrset=True)
        sizes.append(length)
        answer += [(str(r.name), dns.rdatatype.to_text(r.rdtype), str(r[0])) for r in message.answer]
print(json.dumps([sizes, answer]))
"""


class TransferServerTests(unittest.TestCase):
    """
    A server whose transfer allows 127.0.0.1, asked by dnspython.
    """

    def setUp(self):
        members = sample_members() + [Member("ps1.tf.local.", ("10.0.1.1",), role="ps", slot=1, srv=2222)]
        self.registry = FakeRegistry(members, revision=100)
        self.authority = ZoneAuthority("tf.local.", self.registry, 30)
        self.transfer = ZoneTransfer(self.authority, LOOPBACK)
        self.server = DNSServer(self.authority, 0, transfer=self.transfer)
        self.server.startService()
        self.addCleanup(self.server.stopService)

    def whole_zone(self):
        return threads.deferToThread(
            lambda: dns.zone.from_xfr(dns.query.xfr(HOST, "tf.local", port=self.server.port, timeout=TIMEOUT))
        )

    def ask(self, name, rdtype, **kwargs):
        return threads.deferToThread(
            dns.query.udp, dns.message.make_query(name, rdtype), HOST,
            port=self.server.port, timeout=TIMEOUT, **kwargs
        )

    @defer.inlineCallbacks
    def test_axfr_holds_what_the_server_answers(self):
        """
        The AXFR holds the SOA, NS, A, AAAA and SRV records of the zone,
        each as the server answers it, and nothing from outside the zone
        (worker1.elsewhere., reverse names).
        """
        zone = yield self.whole_zone()
        transferred = zone_text(zone)
        expected = set()
        for name in ("tf.local.", "worker1.tf.local.", "worker2.tf.local.", "worker3.tf.local.",
                     "ps1.tf.local.", "_ps._tcp.tf.local."):
            for rdtype in ("SOA", "NS", "A", "AAAA", "SRV"):
                response = yield self.ask(name, rdtype)
                for rrset in response.answer:
                    relative = rrset.name.relativize(dns.name.from_text("tf.local."))
                    expected |= {(str(relative), rrset.rdtype, str(r)) for r in rrset}
        self.assertEqual(
            {(n, t, r.replace(".tf.local.", "")) for n, t, r in expected},
            {(n, t, r.replace(".tf.local.", "")) for n, t, r in transferred},
        )
        self.assertIn(("_ps._tcp", dns.rdatatype.SRV, "0 0 2222 ps1"), transferred)
        self.assertEqual(zone.get_soa().serial, 100)

    @defer.inlineCallbacks
    def test_ixfr_gives_the_differences(self):
        """
        After a join, then a move and a leave, an IXFR from the serial
        before them is incremental: per version the journal holds (one
        per transfer or NOTIFY round between changes), the old SOA,
        deletions, new SOA and additions.  dnspython applying it to its
        copy of the zone gets the zone an AXFR gives now.
        """
        zone = yield self.whole_zone()
        before = self.transfer.serial
        self.registry.put(Member("worker7.tf.local.", ("10.0.0.7",)))
        messages = yield xfr(self.server.port, "IXFR", before)
        self.registry.put(Member("worker2.tf.local.", ("10.0.0.2",)))
        self.registry.delete("worker3.tf.local.")
        messages = yield xfr(self.server.port, "IXFR", before)
        answer = records(messages)
        serials = [rrset[0].serial for rrset in answer if rrset.rdtype == dns.rdatatype.SOA]
        self.assertEqual(serials, [103, 100, 101, 101, 103, 103])
        # Each SOA opens a section: deletions, then additions, by turns.
        sections = []
        for rrset in answer[1:-1]:
            if rrset.rdtype == dns.rdatatype.SOA:
                sections.append((rrset[0].serial, set()))
            else:
                sections[-1][1].add((str(rrset.name), rrset.rdtype, str(rrset[0])))
        self.assertEqual(sections, [
            (100, set()), (101, {("worker7.tf.local.", dns.rdatatype.A, "10.0.0.7")}),
            (101, {("worker2.tf.local.", dns.rdatatype.A, "10.0.0.22"),
                   ("worker3.tf.local.", dns.rdatatype.AAAA, "fd00::3")}),
            (103, set()),
        ])
        # The NS set is the three lowest-numbered members: ps1, worker1, worker2.
        response = yield self.ask("tf.local", "NS")
        self.assertEqual(
            sorted(str(r.target) for r in response.answer[0]),
            ["ps1.tf.local.", "worker1.tf.local.", "worker2.tf.local."],
        )

        def apply():
            query, _ = dns.xfr.make_query(zone, serial=before)
            dns.query.inbound_xfr(HOST, zone, query, port=self.server.port, timeout=TIMEOUT)

        yield threads.deferToThread(apply)
        now = yield self.whole_zone()
        self.assertEqual(zone_text(zone), zone_text(now))
        self.assertEqual(zone.get_soa().serial, 103)

    @defer.inlineCallbacks
    def test_ixfr_from_outside_the_journal_gets_the_whole_zone(self):
        """
        A serial the journal does not reach (never seen, or dropped as the
        journal is bounded) gets the whole zone, AXFR-style; the current
        serial or a newer one gets the SOA alone.
        """
        self.transfer.journal_records = 2
        first = self.transfer.serial
        for index in range(3):
            self.registry.put(Member(f"worker{index + 7}.tf.local.", (f"10.0.0.{index + 7}",)))
            # A secondary checks between changes: one version each.
            yield xfr(self.server.port, "IXFR", self.transfer.serial)
        whole = yield self.whole_zone()
        for serial in (first, 5):
            messages = yield xfr(self.server.port, "IXFR", serial)
            answer = records(messages)
            self.assertEqual(
                [rrset.rdtype for rrset in answer].count(dns.rdatatype.SOA), 2, f"serial {serial}"
            )
            self.assertEqual(len(answer), len(zone_text(whole)) + 1)
        # The last two changes are still in the journal.
        for serial, count in ((first + 1, 8), (first + 2, 5)):
            messages = yield xfr(self.server.port, "IXFR", serial)
            self.assertEqual(len(records(messages)), count)
        for serial in (self.transfer.serial, self.transfer.serial + 10):
            messages = yield xfr(self.server.port, "IXFR", serial)
            (soa,) = records(messages)
            self.assertEqual(soa[0].serial, self.transfer.serial)

    @defer.inlineCallbacks
    def test_udp(self):
        """
        Over UDP an IXFR gets the current SOA alone (the client asks again
        over TCP); an AXFR is refused.
        """
        response = yield threads.deferToThread(
            dns.query.udp, ixfr_query(1), HOST, port=self.server.port, timeout=TIMEOUT
        )
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        (soa,) = response.answer
        self.assertEqual(soa[0].serial, 100)
        self.assertTrue(response.flags & dns.flags.AA)
        response = yield self.ask("tf.local", "AXFR")
        self.assertEqual(response.rcode(), dns.rcode.REFUSED)

    @defer.inlineCallbacks
    def test_unlisted_client_refused(self):
        """
        A client at an address the transfer does not list is refused AXFR
        and IXFR, over TCP and UDP.
        """
        for rdtype in ("AXFR", "IXFR"):
            messages = yield xfr(self.server.port, rdtype, 1, source=STRANGER)
            ((_, message),) = messages
            self.assertEqual(message.rcode(), dns.rcode.REFUSED, rdtype)
        response = yield threads.deferToThread(
            dns.query.udp, ixfr_query(1), HOST, port=self.server.port, timeout=TIMEOUT, source=STRANGER
        )
        self.assertEqual(response.rcode(), dns.rcode.REFUSED)

    @defer.inlineCallbacks
    def test_stale_view_fails(self):
        """
        A node that may be cut off from etcd transfers nothing (SERVFAIL):
        a secondary keeps its copy and asks again later.
        """
        self.server.set_view(View(stale=True))
        messages = yield xfr(self.server.port, "AXFR")
        ((_, message),) = messages
        self.assertEqual(message.rcode(), dns.rcode.SERVFAIL)

    @defer.inlineCallbacks
    def test_large_zone_streams_in_messages(self):
        """
        10,000 members with SRV records go in several messages of at most
        65,535 bytes, every record once; the reactor builds one message per
        turn (the slowest build is logged for the bench's record).
        """
        for index in range(1, 10001):
            self.registry.members[f"worker{index}.tf.local."] = Member(
                f"worker{index}.tf.local.", (str(ipaddress.ip_address("10.100.0.0") + index),),
                role="worker", slot=index, srv=2222,
            )
        self.registry._changed(set(self.registry.members))
        # The client reads in a process of its own, as a secondary would:
        # in a thread here it would share the server's interpreter lock.
        output, errors, status = yield utils.getProcessOutputAndValue(
            sys.executable, ["-c", AXFR_CLIENT, str(self.server.port)], env=dict(os.environ, PYTHONPATH=ROOT)
        )
        self.assertEqual(status, 0, errors.decode())
        sizes, answer = json.loads(output)
        self.assertGreater(len(sizes), 2)
        self.assertLessEqual(max(sizes), 65535)
        names = {name for name, rdtype, _ in answer if rdtype == "A"}
        self.assertEqual(len(names), 10000 + 1)  # ps1 too
        self.assertEqual(len([1 for _, rdtype, _ in answer if rdtype == "SRV"]), 10001)
        self.assertEqual(len(answer), len({tuple(record) for record in answer}) + 1)  # only the SOA twice
        print(
            f"AXFR of {len(answer)} records in {len(sizes)} messages;"
            f" slowest message built in {self.transfer.slowest_build / 1e6:.1f} ms"
        )


class QueryFormTests(unittest.TestCase):
    """
    A well-formed IXFR is never FORMERR, with or without transfer.
    """

    def test_ixfr_serial_read(self):
        query = wire.read_query(ixfr_query(1234).to_wire())
        self.assertEqual((query.type, query.serial), (dns.rdatatype.IXFR, 1234))

    def test_soa_elsewhere_malformed(self):
        """
        An SOA in the authority section of another type of query, or in the
        answer section of an IXFR, is still malformed.
        """
        query = ixfr_query(1)
        query.question[0].rdtype = dns.rdatatype.A
        error = self.assertRaises(wire.FormatError, wire.read_query, query.to_wire())
        self.assertIn("answer or authority", str(error))
        query = ixfr_query(1)
        query.answer, query.authority = query.authority, []
        self.assertRaises(wire.FormatError, wire.read_query, query.to_wire())

    @defer.inlineCallbacks
    def test_refused_without_transfer(self):
        registry = FakeRegistry(sample_members(), revision=100)
        server = DNSServer(ZoneAuthority("tf.local.", registry, 30), 0)
        server.startService()
        self.addCleanup(server.stopService)
        for send in (dns.query.udp, dns.query.tcp):
            response = yield threads.deferToThread(send, ixfr_query(1), HOST, port=server.port, timeout=TIMEOUT)
            self.assertEqual(response.rcode(), dns.rcode.REFUSED, send)


class _NotifyListener(protocol.DatagramProtocol):
    """
    A secondary's NOTIFY port: records every NOTIFY's serial, and answers
    it if C{answer}.
    """

    def __init__(self, answer):
        self.answer = answer
        self.serials = []

    def datagramReceived(self, data, address):
        message = dns.message.from_wire(data)
        self.serials.append(message.answer[0][0].serial)
        if self.answer:
            reply = dns.message.make_response(message)
            self.transport.write(reply.to_wire(), address)


class NotifyTests(unittest.TestCase):
    """
    NOTIFY to the listed addresses, coalesced and retried.
    """

    def setUp(self):
        self.registry = FakeRegistry(sample_members(), revision=100)
        self.authority = ZoneAuthority("tf.local.", self.registry, 30)

    def start(self, *listeners):
        targets = []
        for listener in listeners:
            port = reactor.listenUDP(0, listener, interface=HOST)
            self.addCleanup(port.stopListening)
            targets.append((HOST, port.getHost().port))
        self.transfer = ZoneTransfer(self.authority, LOOPBACK, targets)
        server = DNSServer(self.authority, 0, transfer=self.transfer)
        server.startService()
        self.addCleanup(server.stopService)

    @defer.inlineCallbacks
    def wait_for(self, condition, what, seconds=10):
        for _ in range(int(seconds / 0.05)):
            if condition():
                return
            yield sleep(0.05)
        self.fail(f"waited {seconds}s for {what}")

    @defer.inlineCallbacks
    def test_changes_coalesced(self):
        """
        A change sends one NOTIFY with the new serial at once; a burst of
        changes right after it brings one more, with the serial at its
        end; an answered NOTIFY is not sent again.
        """
        answering = _NotifyListener(answer=True)
        self.start(answering)
        self.assertEqual(answering.serials, [])
        self.registry.put(Member("worker7.tf.local.", ("10.0.0.7",)))
        yield self.wait_for(lambda: answering.serials, "the first NOTIFY")
        for index in range(8, 18):
            self.registry.put(Member(f"worker{index}.tf.local.", (f"10.0.0.{index}",)))
        yield self.wait_for(lambda: len(answering.serials) >= 2, "the second NOTIFY")
        yield sleep(NOTIFY_FIRST_RETRY + 1)
        self.assertEqual(answering.serials, [101, 111])

    @defer.inlineCallbacks
    def test_unanswered_sent_again(self):
        """
        A NOTIFY nobody answers is sent again after 2 s, while one that is
        answered is not.
        """
        silent, answering = _NotifyListener(answer=False), _NotifyListener(answer=True)
        self.start(silent, answering)
        self.registry.put(Member("worker7.tf.local.", ("10.0.0.7",)))
        yield self.wait_for(lambda: len(silent.serials) >= 2, "a second NOTIFY")
        self.assertEqual(silent.serials[:2], [101, 101])
        self.assertEqual(answering.serials, [101])


class CorefileTests(unittest.TestCase):
    def block(self, transfer):
        text = f"tf.local:1053 {{\n idetcd {{\n  pattern worker{{{{.ID}}}}.tf.local.\n }}\n {transfer}\n}}\n"
        return parse(text)[0]

    def test_transfer(self):
        """
        CoreDNS's syntax: addresses with or without a port (NOTIFY goes to
        those), networks and * (which only allow), C{to} repeated.
        """
        settings = self.block("transfer tf.local {\n to 10.0.0.1 [fd00::1]:5300\n to 10.1.0.0/16 *\n }").transfer
        self.assertEqual(settings.targets, (("10.0.0.1", 53), ("fd00::1", 5300)))
        self.assertEqual(
            settings.allowed,
            (ipaddress.ip_network("10.0.0.1/32"), ipaddress.ip_network("fd00::1/128"),
             ipaddress.ip_network("10.1.0.0/16"), None),
        )
        self.assertIsNone(self.block("").transfer)

    def test_mistakes(self):
        for text, message in [
            ("transfer", "Corefile:5: transfer needs a block naming who may transfer the zone"),
            ("transfer {\n to\n }", "Corefile:6: 'to' needs at least 1 argument"),
            ("transfer {\n to 10.0.0.1:70000\n }", "Corefile:6: transfer: bad port in '10.0.0.1:70000'"),
            ("transfer {\n to example.com\n }", "Corefile:6: transfer: expected an address"),
            ("transfer {\n from 10.0.0.1\n }", "Corefile:6: unknown directive 'from' in transfer"),
            ("transfer other.zone {\n to *\n }", "Corefile:5: transfer can only transfer the zone of the pattern"),
        ]:
            error = self.assertRaises(CorefileError, self.block, text)
            self.assertTrue(str(error).startswith(message), str(error))


KNOT = shutil.which("knotd") or (os.path.exists("/usr/sbin/knotd") and "/usr/sbin/knotd")

KNOT_CONF = """\
server:
    rundir: {rundir}
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: info
database:
    storage: {dir}
remote:
  - id: node
    address: 127.0.0.1@{node_port}
acl:
  - id: notify_from_nodes
    address: 127.0.0.1
    action: notify
zone:
  - domain: tf.local.
    master: node
    acl: notify_from_nodes
    storage: {dir}
    file: tf.local.zone
    zonefile-sync: -1
    zonefile-load: none
    journal-content: none
"""

NODE_COREFILE = """\
tf.local:{$NODE_PORT} {
    bind 127.0.0.1
    idetcd {
        endpoint {$ETCD_URL}
        limit 5
        pattern worker{{.ID}}.tf.local.
        lease 3
        address 127.0.0.1
        srv 2222
    }
    transfer {
        to 127.0.0.1:{$KNOT_PORT}
    }
}
"""


class KnotSecondaryTests(NodeProcessCase):
    """
    A Knot secondary of a real node's zone, kept current by NOTIFY and
    IXFR as members join and leave.
    """

    COREFILE = NODE_COREFILE

    if not KNOT:
        skip = "knotd is not installed (Debian package knot)"

    def start_knot(self, node_port):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.knot_conf = os.path.join(directory, "knot.conf")
        # Its control socket's path must fit a Unix socket address.
        rundir = tempfile.mkdtemp(prefix="knot")
        self.addCleanup(shutil.rmtree, rundir, True)
        with open(self.knot_conf, "w") as f:
            f.write(KNOT_CONF.format(dir=directory, rundir=rundir, port=self.knot_port, node_port=node_port))
        check = subprocess.run(["knotc", "-c", self.knot_conf, "conf-check"], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        knot = ProcessOutput()
        knot.process = reactor.spawnProcess(knot, KNOT, [KNOT, "-c", self.knot_conf], env=dict(os.environ))
        return self.kill_at_end(knot)

    def whole_zone(self, port):
        return threads.deferToThread(
            lambda: dns.zone.from_xfr(dns.query.xfr(HOST, "tf.local", port=port, timeout=TIMEOUT))
        )

    def answers(self, port):
        """
        What the server on C{port} answers for the zone: the A, AAAA and
        SRV records of the names that can exist, the NS and SOA serial.
        """

        def ask():
            seen = set()
            names = [f"worker{i}.tf.local" for i in range(1, 6)] + ["tf.local", "_worker._tcp.tf.local"]
            for name in names:
                for rdtype in ("A", "AAAA", "SRV", "NS", "SOA"):
                    try:
                        response = dns.query.udp(
                            dns.message.make_query(name, rdtype), HOST, port=port, timeout=0.5
                        )
                    except (dns.exception.Timeout, ConnectionRefusedError):
                        seen.add((name, rdtype, "no answer"))
                        continue
                    seen.add((name, rdtype, dns.rcode.to_text(response.rcode())))
                    for rrset in response.answer:
                        seen |= {(name, rdtype, r.to_text()) for r in rrset}
            return seen

        return threads.deferToThread(ask)

    @defer.inlineCallbacks
    def same_answers(self, node_port, what, seconds=15):
        """
        Wait until Knot answers as the node does; returns the answers.
        """
        knot = node = None
        for _ in range(int(seconds / 0.2)):
            node = yield self.answers(node_port)
            knot = yield self.answers(self.knot_port)
            if knot == node:
                return node
            yield sleep(0.2)
        self.fail(f"Knot did not mirror the node {what} within {seconds}s:\n{sorted(node ^ knot)}\n{self.knot.output.decode()}")

    @defer.inlineCallbacks
    def test_mirror(self):
        self.knot_port = free_port()
        first = self.start_node(KNOT_PORT=str(self.knot_port))
        yield self.wait_claimed(first)
        self.knot = self.start_knot(first.port)
        answers = yield self.same_answers(first.port, "at start")
        self.assertIn(("worker1.tf.local", "A", "127.0.0.1"), answers)
        copy = yield self.whole_zone(first.port)
        start = copy.get_soa().serial

        # A member joins: NOTIFY, then IXFR.
        second = self.start_node(KNOT_PORT=str(self.knot_port))
        yield self.wait_claimed(second)
        answers = yield self.same_answers(first.port, "after a join")
        self.assertIn(("_worker._tcp.tf.local", "SRV", "0 0 2222 worker2.tf.local."), answers)

        # dnspython's IXFR from the serial it held: incremental, and its
        # copy then equals the zone; from a serial never served, the zone.
        answer = records((yield xfr(first.port, "IXFR", start)))
        self.assertEqual((answer[1].rdtype, answer[1][0].serial), (dns.rdatatype.SOA, start))

        def apply():
            query, _ = dns.xfr.make_query(copy, serial=start)
            dns.query.inbound_xfr(HOST, copy, query, port=first.port, timeout=TIMEOUT)

        yield threads.deferToThread(apply)
        now = yield self.whole_zone(first.port)
        self.assertEqual(zone_text(copy), zone_text(now))
        answer = records((yield xfr(first.port, "IXFR", 0)))  # etcd starts at revision 1
        self.assertEqual(len(answer), len(zone_text(now)) + 1)

        # kdig's AXFR from the node holds what the node answers.
        if shutil.which("kdig"):
            text = yield utils.getProcessOutput("kdig", ["-p", str(first.port), "@127.0.0.1", "tf.local", "AXFR", "+nocomments"])
            lines = [line.split() for line in text.decode().splitlines() if line and not line.startswith(";")]
            self.assertIn(["worker2.tf.local.", "5", "IN", "A", "127.0.0.1"], lines)
            self.assertEqual([line[3] for line in lines].count("SOA"), 2)
            out, err, _ = yield utils.getProcessOutputAndValue(
                "kdig", ["-b", STRANGER, "-p", str(first.port), "@127.0.0.1", "tf.local", "AXFR"]
            )
            self.assertIn(b"REFUSED", out + err)

        # The member leaves (its lease revoked): the secondary follows.
        second.process.signalProcess(signal.SIGTERM)
        yield second.ended
        answers = yield self.same_answers(first.port, "after a leave")
        self.assertIn(("worker2.tf.local", "A", "NXDOMAIN"), answers)
        # Knot took both changes as IXFRs, after the AXFR it started with.
        ixfrs = re.findall(rb"IXFR, incoming[^\n]*finished", self.knot.output)
        self.assertGreaterEqual(len(ixfrs), 2, self.knot.output.decode())

        # Anyone else is refused AXFR and IXFR.
        for rdtype in ("AXFR", "IXFR"):
            messages = yield xfr(first.port, rdtype, 1, source=STRANGER)
            self.assertEqual(messages[0][1].rcode(), dns.rcode.REFUSED)
