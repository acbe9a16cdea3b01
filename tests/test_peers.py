"""
SRV records per role and PTR records for members' addresses: L{idetcd.dns._peers}
and L{idetcd.dns._authority} with a fake registry, and a live server asked by
dnspython, dig and kdig.
"""

import random

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, threads
from twisted.logger import globalLogPublisher
from twisted.names import dns as tdns
from twisted.trial import unittest

from idetcd.dns import _peers as peers
from idetcd.dns import _wire as wire
from idetcd.dns._authority import Response, ZoneAuthority, domain_labels
from idetcd.dns._server import DNSServer
from idetcd.members._record import Member
from tests.dnsclient import HOST, TIMEOUT, reply, run_tool
from tests.fakeregistry import FakeRegistry


def worker(slot, address, srv=2222, zone="tf.local", role="worker", ipv6=()):
    return Member(f"{role}{slot}.{zone}.", (address,), ipv6, role=role, slot=slot, srv=srv)


def peer_members():
    return [
        worker(1, "10.0.0.1", ipv6=("fd00::1",)),
        worker(2, "10.0.0.2"),
        worker(10, "10.0.0.10"),
        worker(3, "10.0.0.3", srv=0),
        # ps1 shares worker2's host; ps1.elsewhere is in no zone served here.
        worker(1, "10.0.0.2", srv=2223, role="ps"),
        worker(1, "10.0.0.1", srv=2223, role="ps", zone="elsewhere"),
    ]


def labels(name):
    return domain_labels(name)


def reverse(address):
    return dns.reversename.from_address(address).to_text(omit_final_dot=True)


class PeerCase(unittest.TestCase):
    reverse = ()

    def setUp(self):
        self.registry = FakeRegistry(peer_members(), revision=50)
        self.authority = self.make_authority()

    def make_authority(self):
        return ZoneAuthority("tf.local.", self.registry, 30, reverse=self.reverse)

    def respond(self, name, type):
        return self.authority.respond(labels(name), tdns.IN, type)

    def targets(self, name, type):
        response = self.respond(name, type)
        self.assertEqual((response.rCode, response.auth), (tdns.OK, True), name)
        return [
            (r.payload.target.name, r.payload.port) if type == tdns.SRV else r.payload.name.name
            for r in response.answers
        ]

    def assertNegative(self, name, type, rcode, soa_owner):
        response = self.respond(name, type)
        self.assertEqual((response.rCode, response.auth, response.answers), (rcode, True, ()), name)
        self.assertEqual(
            [(r.type, r.name.name) for r in response.authority],
            [(tdns.SOA, soa_owner.encode())] if soa_owner else [],
            name,
        )

    def assertRefused(self, name, type=tdns.PTR):
        self.assertEqual(self.respond(name, type).rCode, tdns.EREFUSED, name)


class ServiceTests(PeerCase):
    """
    C{_ROLE._tcp.ZONE}: one SRV record per member of the role with an SRV
    port, lowest slot first.
    """

    def test_srv_per_role(self):
        response = self.respond("_worker._tcp.tf.local", tdns.SRV)
        self.assertEqual(
            [
                (r.name.name, r.ttl, r.payload.priority, r.payload.weight, r.payload.port,
                 r.payload.target.name)
                for r in response.answers
            ],
            [
                (b"_worker._tcp.tf.local", 30, 0, 0, 2222, b"worker1.tf.local"),
                (b"_worker._tcp.tf.local", 30, 0, 0, 2222, b"worker2.tf.local"),
                (b"_worker._tcp.tf.local", 30, 0, 0, 2222, b"worker10.tf.local"),
            ],
        )
        self.assertEqual(
            [(r.name.name, r.type) for r in response.additional],
            [
                (b"worker1.tf.local", tdns.A),
                (b"worker1.tf.local", tdns.AAAA),
                (b"worker2.tf.local", tdns.A),
                (b"worker10.tf.local", tdns.A),
            ],
        )
        self.assertEqual(self.targets("_ps._tcp.tf.local", tdns.SRV), [(b"ps1.tf.local", 2223)])
        self.assertEqual(self.targets("_PS._TCP.tf.local", tdns.SRV), [(b"ps1.tf.local", 2223)])

    def test_negative_answers(self):
        """
        A role with no SRV member is an unknown name; C{_tcp} is an empty
        non-terminal while some role has one; other types are NODATA.
        """
        self.assertNegative("_chief._tcp.tf.local", tdns.SRV, tdns.ENAME, "tf.local")
        self.assertNegative("_worker._udp.tf.local", tdns.SRV, tdns.ENAME, "tf.local")
        self.assertNegative("_tcp.tf.local", tdns.SRV, tdns.OK, "tf.local")
        self.assertNegative("_worker._tcp.tf.local", tdns.A, tdns.OK, "tf.local")
        (hinfo,) = self.respond("_worker._tcp.tf.local", tdns.ALL_RECORDS).answers
        self.assertEqual(hinfo.payload.cpu, b"RFC8482")
        for name in ("worker1.tf.local.", "worker2.tf.local.", "worker10.tf.local.", "ps1.tf.local."):
            self.registry.delete(name)
        self.assertNegative("_worker._tcp.tf.local", tdns.SRV, tdns.ENAME, "tf.local")
        self.assertNegative("_tcp.tf.local", tdns.SRV, tdns.ENAME, "tf.local")

    def test_srv_port_follows_the_member(self):
        self.registry.put(worker(2, "10.0.0.2", srv=0))
        self.registry.put(worker(3, "10.0.0.3", srv=4000))
        self.assertEqual(
            self.targets("_worker._tcp.tf.local", tdns.SRV),
            [(b"worker1.tf.local", 2222), (b"worker3.tf.local", 4000), (b"worker10.tf.local", 2222)],
        )

    def test_role_that_cannot_be_a_label(self):
        """
        A role from etcd that cannot make a label gives no SRV record, with
        a warning; its member's other records stay.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.registry.put(Member("odd1.tf.local.", ("10.0.0.9",), role="a b", slot=1, srv=1))
        self.registry.put(Member("odd2.tf.local.", ("10.0.0.9",), role="x" * 63, slot=1, srv=1))
        self.assertEqual(len(self.targets("_worker._tcp.tf.local", tdns.SRV)), 3)
        self.assertEqual(len(self.respond("odd1.tf.local", tdns.A).answers), 1)
        self.assertEqual(sum("no SRV record" in e.get("log_format", "") for e in events), 2)

    def test_built_when_asked(self):
        """
        Changes only mark the RRset: it is built by the first question
        after them, once, however many changes came before.
        """
        self.registry.subscribe_changes(self.authority.update)
        self.respond("_worker._tcp.tf.local", tdns.SRV)
        builds = self.authority.peer_builds
        for slot in range(100, 1100):
            self.registry.put(worker(slot, f"10.1.{slot >> 8}.{slot & 255}"))
        self.assertEqual(self.authority.peer_builds, builds)
        first = self.respond("_worker._tcp.tf.local", tdns.SRV)
        self.assertEqual(len(first.answers), 3 + 1000)
        self.assertIs(self.respond("_worker._tcp.tf.local", tdns.SRV), first)
        self.assertEqual(self.authority.peer_builds, builds + 1)
        # Another role's change leaves this RRset built.
        self.registry.put(worker(2, "10.0.0.22", srv=2223, role="ps"))
        self.assertIs(self.respond("_worker._tcp.tf.local", tdns.SRV), first)


class ReverseZoneTests(PeerCase):
    """
    A reverse zone the server block lists: PTR records where members'
    addresses are, NXDOMAIN elsewhere in it, its own SOA and NS.
    """

    reverse = ("10.in-addr.arpa.",)

    def test_ptr_per_member(self):
        """
        One PTR per member on an address, in name order; members of other
        zones give none.
        """
        self.assertEqual(self.targets(reverse("10.0.0.1"), tdns.PTR), [b"worker1.tf.local"])
        self.assertEqual(
            self.targets(reverse("10.0.0.2"), tdns.PTR), [b"ps1.tf.local", b"worker2.tf.local"]
        )
        (record,) = self.respond(reverse("10.0.0.10"), tdns.PTR).answers
        self.assertEqual((record.name.name, record.ttl), (reverse("10.0.0.10").encode(), 30))

    def test_negative_answers(self):
        self.assertNegative(reverse("10.0.0.99"), tdns.PTR, tdns.ENAME, "10.in-addr.arpa")
        self.assertNegative("0.0.10.in-addr.arpa", tdns.PTR, tdns.OK, "10.in-addr.arpa")
        self.assertNegative("0.10.in-addr.arpa", tdns.PTR, tdns.OK, "10.in-addr.arpa")
        self.assertNegative(reverse("10.0.0.1"), tdns.A, tdns.OK, "10.in-addr.arpa")
        (soa,) = self.respond(reverse("10.0.0.99"), tdns.PTR).authority
        self.assertEqual(soa.payload.serial, self.registry.revision)

    def test_apex(self):
        """
        The reverse zone has the forward zone's name servers and an SOA of
        its own, whose serial moves with every change.
        """
        (soa,) = self.respond("10.in-addr.arpa", tdns.SOA).answers
        self.assertEqual(
            (soa.name.name, soa.payload.mname.name, soa.payload.rname.name),
            (b"10.in-addr.arpa", b"ps1.tf.local", b"hostmaster.tf.local"),
        )
        ns = self.respond("10.in-addr.arpa", tdns.NS)
        self.assertEqual(
            [(r.name.name, r.payload.name.name) for r in ns.answers],
            [(b"10.in-addr.arpa", name) for name in self.targets("tf.local", tdns.NS)],
        )
        self.assertTrue(ns.additional)
        self.registry.put(worker(4, "10.0.0.4"))
        (soa,) = self.respond("10.in-addr.arpa", tdns.SOA).answers
        self.assertEqual(soa.payload.serial, self.registry.revision)

    def test_outside_refused(self):
        """
        Reverse names outside the listed zone are refused, as before.
        """
        self.assertRefused(reverse("fd00::1"))
        self.assertRefused(reverse("127.0.0.1"))
        self.assertRefused("in-addr.arpa", tdns.SOA)
        self.assertRefused("example.com", tdns.A)


class RootZoneTests(PeerCase):
    """
    A server block for C{.}: the reverse names of members' addresses are
    answered, every other name outside the zone refused as before.
    """

    reverse = (".",)

    def test_members_addresses(self):
        self.assertEqual(self.targets(reverse("10.0.0.1"), tdns.PTR), [b"worker1.tf.local"])
        self.assertEqual(self.targets(reverse("fd00::1"), tdns.PTR), [b"worker1.tf.local"])
        self.assertEqual(len(self.targets(reverse("10.0.0.2"), tdns.PTR)), 2)
        self.assertNegative(reverse("10.0.0.1"), tdns.A, tdns.OK, None)

    def test_everything_else_as_before(self):
        for name in (reverse("10.0.0.99"), "0.0.10.in-addr.arpa", "in-addr.arpa", "example.com", "arpa"):
            self.assertRefused(name)
        self.assertNegative("nobody.tf.local", tdns.A, tdns.ENAME, "tf.local")

    def test_with_a_reverse_zone(self):
        """
        With a reverse zone listed too, names in it are its own; the root
        zone still serves the other addresses.
        """
        self.authority = ZoneAuthority(
            "tf.local.", self.registry, 30, reverse=(".", "10.in-addr.arpa.")
        )
        self.assertNegative(reverse("10.0.0.99"), tdns.PTR, tdns.ENAME, "10.in-addr.arpa")
        self.assertEqual(self.targets(reverse("fd00::1"), tdns.PTR), [b"worker1.tf.local"])
        self.assertRefused(reverse("fd00::2"))

    def test_not_ready(self):
        self.registry.ready = False
        self.assertEqual(self.respond(reverse("10.0.0.1"), tdns.PTR).rCode, tdns.ESERVER)
        self.assertRefused("example.com")


class ReverseTreeTests(PeerCase):
    reverse = ("in-addr.arpa.", "ip6.arpa.")

    def test_both_trees(self):
        self.assertEqual(self.targets(reverse("fd00::1"), tdns.PTR), [b"worker1.tf.local"])
        self.assertNegative(reverse("fd00::2"), tdns.PTR, tdns.ENAME, "ip6.arpa")
        self.assertNegative("d.f.ip6.arpa", tdns.PTR, tdns.OK, "ip6.arpa")
        self.assertNegative("10.in-addr.arpa", tdns.PTR, tdns.OK, "in-addr.arpa")
        self.assertNegative("11.in-addr.arpa", tdns.PTR, tdns.ENAME, "in-addr.arpa")

    def test_zone_of_one_address(self):
        """
        A reverse zone as small as one address holds its PTR at the apex.
        """
        self.authority = ZoneAuthority(
            "tf.local.", self.registry, 30, reverse=("1.0.0.10.in-addr.arpa.",)
        )
        self.registry.subscribe_changes(self.authority.update)
        apex = reverse("10.0.0.1")
        self.assertEqual(self.targets(apex, tdns.PTR), [b"worker1.tf.local"])
        self.assertEqual(len(self.respond(apex, tdns.SOA).answers), 1)
        self.registry.delete("worker1.tf.local.")
        self.assertNegative(apex, tdns.PTR, tdns.OK, apex)
        self.registry.put(worker(1, "10.0.0.1"))
        self.assertEqual(self.targets(apex, tdns.PTR), [b"worker1.tf.local"])
        self.assertEqual(len(self.respond(apex, tdns.NS).answers), 3)

    def test_which_zones(self):
        """
        Of a server block's zones, the root and those that hold reverse
        names serve PTR records; anything else is refused as an argument.
        """
        zones = (".", "tf.local.", "10.in-addr.arpa.", "arpa.", "IP6.ARPA.", "example.arpa.")
        self.assertEqual(
            peers.reverse_zones(zones), (".", "10.in-addr.arpa.", "arpa.", "IP6.ARPA.")
        )
        for bad in ("tf.local.", "example.arpa.", "in-addr.arpa.example."):
            self.assertRaises(ValueError, ZoneAuthority, "tf.local.", self.registry, 30, reverse=(bad,))


class IncrementalPeerTests(PeerCase):
    """
    Changes applied one by one end where a rebuild from scratch would.
    """

    reverse = ("10.in-addr.arpa.", ".")

    def setUp(self):
        PeerCase.setUp(self)
        self.assertIsNone(self.authority.update(None))
        self.updates = []
        self.registry.subscribe_changes(lambda names: self.updates.append(self.authority.update(names)))

    def assertLikeRebuilt(self):
        fresh = self.make_authority()
        self.assertEqual(
            sorted(self.authority.positive(), key=repr), sorted(fresh.positive(), key=repr)
        )
        names = ["_worker._tcp.tf.local", "_ps._tcp.tf.local", "_tcp.tf.local", "10.in-addr.arpa",
                 "0.0.10.in-addr.arpa", "0.10.in-addr.arpa", reverse("fd00::1"), reverse("fd00::4")]
        names += [reverse(f"10.0.0.{i}") for i in (1, 2, 3, 4, 10)]
        for name in names:
            for type in (tdns.SRV, tdns.PTR, tdns.A, tdns.SOA):
                question = labels(name), tdns.IN, type
                self.assertEqual(self.authority.respond(*question), fresh.respond(*question), (name, type))

    def test_changes(self):
        srv, ptr = labels("_worker._tcp.tf.local"), labels(reverse("10.0.0.4"))
        self.registry.put(worker(4, "10.0.0.4", ipv6=("fd00::4",)))
        self.assertTrue({srv, ptr, labels(reverse("fd00::4"))} <= self.updates[-1])
        self.assertLikeRebuilt()
        steps = [
            lambda: self.registry.put(worker(4, "10.0.0.2")),
            lambda: self.registry.put(worker(4, "10.0.0.2", srv=0)),
            lambda: self.registry.put(worker(4, "10.0.0.2", role="ps")),
            lambda: self.registry.delete("worker2.tf.local."),
            lambda: self.registry.delete("ps1.tf.local."),
            lambda: self.registry.put(worker(4, "10.0.0.4", srv=7)),
            lambda: self.registry.delete("worker4.tf.local."),
            lambda: self.registry.delete("worker1.tf.local."),
            lambda: self.registry.delete("worker10.tf.local."),
            lambda: self.registry.delete("ps4.tf.local."),
        ]
        for step in steps:
            step()
            self.assertLikeRebuilt()
        self.assertNegative("_tcp.tf.local", tdns.A, tdns.ENAME, "tf.local")
        self.assertNegative("0.0.10.in-addr.arpa", tdns.A, tdns.OK, "10.in-addr.arpa")

    def test_many_members_rebuild(self):
        """
        A change to many members at once is a rebuild, which sorts each
        RRset once.
        """
        for slot in random.Random(3).sample(range(100, 200), 100):
            member = worker(slot, "10.0.0.2")
            self.registry.members[member.name] = member
        self.registry._changed({f"worker{slot}.tf.local." for slot in range(100, 200)})
        self.assertEqual(self.updates, [None])
        self.assertLikeRebuilt()
        self.assertEqual(
            self.targets("_worker._tcp.tf.local", tdns.SRV)[3:],
            [(f"worker{slot}.tf.local".encode(), 2222) for slot in range(100, 200)],
        )


ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.1.2", "10.9.0.1", "127.0.0.1", "fd00::1", "fd00::2"]
_change = st.tuples(
    st.sampled_from(["worker", "ps", "chief"]),
    st.integers(1, 4),
    st.one_of(st.none(), st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3)),
    st.sampled_from([0, 2222, 2223]),
)


class PropertyTests(unittest.TestCase):
    """
    Any sequence of joins, moves and leaves, applied change by change,
    answers every SRV and PTR question as a rebuild from scratch does.
    """

    @settings(max_examples=60, deadline=None)
    @given(st.lists(_change, max_size=25))
    def test_incremental_is_rebuilt(self, changes):
        registry = FakeRegistry()

        def make():
            return ZoneAuthority("tf.local.", registry, 30, reverse=("10.in-addr.arpa.", "."))

        authority = make()
        authority.update(None)
        registry.subscribe_changes(authority.update)
        questions = [labels(f"_{role}._tcp.tf.local") for role in ("worker", "ps", "chief")]
        questions += [labels("_tcp.tf.local"), labels("0.0.10.in-addr.arpa"), labels("0.10.in-addr.arpa")]
        questions += [labels(reverse(address)) for address in ADDRESSES]
        for role, slot, addresses, srv in changes:
            name = f"{role}{slot}.tf.local."
            if addresses is None:
                if name in registry.members:
                    registry.delete(name)
            else:
                ipv4 = tuple(a for a in addresses if ":" not in a)
                ipv6 = tuple(a for a in addresses if ":" in a)
                registry.put(Member(name, ipv4, ipv6, role=role, slot=slot, srv=srv))
            # Ask between changes, so that built RRsets must follow.
            authority.respond(questions[0], tdns.IN, tdns.SRV)
            authority.respond(questions[-1], tdns.IN, tdns.PTR)
        fresh = make()
        for question in questions:
            for type in (tdns.SRV, tdns.PTR, tdns.A):
                self.assertEqual(
                    authority.respond(question, tdns.IN, type), fresh.respond(question, tdns.IN, type)
                )


class PeerRRsetTests(unittest.TestCase):
    """
    Sizes and the cap of 65,535 bytes.
    """

    def srv(self, slot):
        owner = labels("_worker._tcp.tf.local")
        target = b"worker%d.tf.local" % slot
        payload = tdns.Record_SRV(0, 0, 2222, target, 30)
        record = tdns.RRHeader(b".".join(owner), tdns.SRV, tdns.IN, 30, payload)
        glue = (tdns.RRHeader(target, tdns.A, tdns.IN, 30, tdns.Record_A("10.0.0.1", 30)),)
        size = wire.record_size(record, True)
        return peers.Entry((slot,), record, size, glue, wire.record_size(glue[0]))

    def test_record_size(self):
        """
        The size of a record whose owner is the question is exact; an
        owner written out is an upper bound.
        """
        entry = self.srv(12)
        data, _ = reply(labels("_worker._tcp.tf.local"), tdns.SRV, self.response([entry.record]))
        self.assertEqual(len(data), 12 + len(wire.name(labels("_worker._tcp.tf.local"))) + 4 + entry.size)
        self.assertEqual(entry.extra_size, len(wire.name(labels("worker12.tf.local"))) + 10 + 4)
        owner = reverse("fd00::1").encode()
        ptr = tdns.RRHeader(owner, tdns.PTR, tdns.IN, 30, tdns.Record_PTR(b"worker12.tf.local", 30))
        data, _ = reply(labels(reverse("fd00::1")), tdns.PTR, self.response([ptr]))
        self.assertEqual(len(data), 12 + len(owner) + 2 + 4 + wire.record_size(ptr, True))

    def response(self, answers):
        return Response(tdns.OK, True, tuple(answers))

    def test_order_and_cap(self):
        """
        Entries come out in key order whatever order they went in; the
        answers fill a TCP reply with an OPT and an Extended DNS Error
        without passing 65,535 bytes, and one more would not fit; glue
        only takes what room is left.
        """
        rrset = peers.PeerRRset(labels("_worker._tcp.tf.local"), tdns.SRV)
        slots = random.Random(5).sample(range(1, 4001), 4000)
        for slot in slots:
            rrset.add(self.srv(slot))
        for slot in slots[:500]:
            rrset.remove((slot,))
        answers, additional = rrset.fitting()
        kept = sorted(slots[500:])
        self.assertEqual(
            [r.payload.target.name for r in answers], [b"worker%d.tf.local" % s for s in kept[: len(answers)]]
        )
        question = wire.name(rrset.labels) + wire.TYPE_CLASS.pack(tdns.SRV, tdns.IN)
        edns = wire.EDNS(1232, 0, False)

        def reply(additional):
            # An OPT with an Extended DNS Error: the largest a reply gets.
            response = Response(tdns.OK, True, answers, additional=additional, ede=3)
            encoded = wire.encode(rrset.labels, question, response)
            head, tail = wire.template(encoded, 0, len(question), wire.MAX_MESSAGE, edns)
            return 2 + len(head) + len(question) + len(tail), wire.HEAD.unpack(head)

        size, _ = reply(())
        self.assertLessEqual(size, wire.MAX_MESSAGE)
        self.assertGreater(size + self.srv(kept[len(answers)]).size, wire.MAX_MESSAGE)
        size, (flags, _, answered, _, extra) = reply(additional)
        self.assertLessEqual(size, wire.MAX_MESSAGE)
        self.assertEqual((flags & wire.TC, answered, extra), (0, len(answers), len(additional) + 1))
        self.assertGreater(answered, 1500)

    def test_extras_where_they_fit(self):
        rrset = peers.PeerRRset(labels("_worker._tcp.tf.local"), tdns.SRV)
        for slot in range(1, 4):
            rrset.add(self.srv(slot))
        answers, additional = rrset.fitting()
        self.assertEqual(
            [r.name.name for r in additional],
            [b"worker1.tf.local", b"worker2.tf.local", b"worker3.tf.local"],
        )


class PeerServerTests(unittest.TestCase):
    """
    A live server: SRV and PTR to real clients, built once per change.
    """

    def setUp(self):
        self.registry = FakeRegistry(peer_members(), revision=100)
        self.authority = ZoneAuthority("tf.local.", self.registry, 30, reverse=(".", "10.in-addr.arpa."))
        self.server = DNSServer(self.authority, 0)
        self.server.startService()
        self.addCleanup(self.server.stopService)

    def ask(self, name, type, tcp=False):
        send = dns.query.tcp if tcp else dns.query.udp
        query = dns.message.make_query(name, type)
        return threads.deferToThread(send, query, HOST, port=self.server.port, timeout=TIMEOUT)

    @defer.inlineCallbacks
    def test_srv(self):
        response = yield self.ask("_worker._tcp.tf.local", "SRV")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertTrue(response.flags & dns.flags.AA)
        (rrset,) = response.answer
        self.assertEqual(
            sorted((str(r.target), r.port) for r in rrset),
            [("worker1.tf.local.", 2222), ("worker10.tf.local.", 2222), ("worker2.tf.local.", 2222)],
        )
        self.assertEqual(
            {(str(r.name), r.rdtype) for r in response.additional},
            {("worker1.tf.local.", dns.rdatatype.A), ("worker1.tf.local.", dns.rdatatype.AAAA),
             ("worker2.tf.local.", dns.rdatatype.A), ("worker10.tf.local.", dns.rdatatype.A)},
        )
        response = yield self.ask("_chief._tcp.tf.local", "SRV")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(response.authority[0].rdtype, dns.rdatatype.SOA)

    @defer.inlineCallbacks
    def test_big_role_truncated_over_udp(self):
        """
        A role too big for UDP is truncated there (TC, no partial RRset)
        and whole over TCP.
        """
        for slot in range(100, 160):
            self.registry.put(worker(slot, f"10.0.1.{slot}"))
        response = yield self.ask("_worker._tcp.tf.local", "SRV")
        self.assertTrue(response.flags & dns.flags.TC)
        self.assertEqual(response.answer, [])
        response = yield self.ask("_worker._tcp.tf.local", "SRV", tcp=True)
        self.assertFalse(response.flags & dns.flags.TC)
        self.assertEqual(len(response.answer[0]), 63)

    @defer.inlineCallbacks
    def test_built_and_encoded_once_per_change(self):
        """
        The SRV reply is built and encoded by the first question after a
        change, then answered as a prepared reply; changes with no question
        between them cost no build.
        """
        replies = self.server._replies
        builds, encoded = self.authority.peer_builds, replies.encoded_count
        for slot in range(100, 150):
            self.registry.put(worker(slot, f"10.0.1.{slot}"))
        self.assertEqual(self.authority.peer_builds, builds)
        calls = []
        respond = self.authority.respond
        self.patch(self.authority, "respond", lambda *args: calls.append(args) or respond(*args))
        for tcp in (False, False, True, True):
            response = yield self.ask("_worker._tcp.tf.local", "SRV", tcp=tcp)
            self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(len(calls), 1)
        self.assertEqual(self.authority.peer_builds, builds + 1)
        # 50 changes, each encoding the new member's A and ANY and the
        # three apexes' SOA, plus the one SRV reply.
        self.assertEqual(replies.encoded_count - encoded, 50 * 2 + 50 * 3 + 1)
        self.registry.put(worker(200, "10.0.2.200"))
        response = yield self.ask("_worker._tcp.tf.local", "SRV", tcp=True)
        self.assertIn("worker200.tf.local.", [str(r.target) for r in response.answer[0]])
        self.assertEqual(self.authority.peer_builds, builds + 2)

    @defer.inlineCallbacks
    def test_ptr(self):
        for address, names in [
            ("10.0.0.2", ["ps1.tf.local.", "worker2.tf.local."]),
            ("fd00::1", ["worker1.tf.local."]),
        ]:
            response = yield self.ask(dns.reversename.from_address(address), "PTR")
            self.assertTrue(response.flags & dns.flags.AA)
            self.assertEqual(sorted(str(r.target) for r in response.answer[0]), names)
        response = yield self.ask(dns.reversename.from_address("10.9.9.9"), "PTR")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(str(response.authority[0].name), "10.in-addr.arpa.")
        response = yield self.ask(dns.reversename.from_address("192.0.2.1"), "PTR")
        self.assertEqual(response.rcode(), dns.rcode.REFUSED)

    @defer.inlineCallbacks
    def test_dig_and_kdig(self):
        text = yield run_tool(self, self.server.port, "dig", "_worker._tcp.tf.local", "SRV", "+norec")
        self.assertIn("flags: qr aa;", text)
        self.assertRegex(text, r"_worker\._tcp\.tf\.local\.\s+30\s+IN\s+SRV\s+0 0 2222 worker1\.tf\.local\.")
        text = yield run_tool(self, self.server.port, "kdig", "-x", "10.0.0.10", "+norec")
        self.assertIn("Flags: qr aa;", text)
        self.assertRegex(text, r"10\.0\.0\.10\.in-addr\.arpa\.\s+30\s+IN\s+PTR\s+worker10\.tf\.local\.")
