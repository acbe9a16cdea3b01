"""
Tests for L{idetcd.dns._authority}, with the members in idetcd.testing's
etcd and a real registry following them.
"""

import dns.message
import dns.query
import dns.rcode
from twisted.internet import reactor, threads
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.names import dns as tdns
from twisted.names import server as tserver
from twisted.names.error import AuthoritativeDomainError, DomainError
from twisted.trial import unittest

from idetcd.dns._authority import (
    EXPIRE,
    NO_REACHABLE_AUTHORITY,
    REFRESH,
    RETRY,
    STALE_ANSWER,
    STALE_TTL,
    ZoneAuthority,
    domain_labels,
)
from idetcd.dns._freshness import CURRENT, View
from idetcd.etcd import b64_text
from idetcd.members._record import Member
from idetcd.members._registry import Registry
from idetcd.testing import FakeEtcd, Hold
from tests.fakeregistry import FakeRegistry, sample_members


def labels(name):
    return domain_labels(name)


#: Where the members are in etcd.
PREFIX = b"/idetcd/"


class MembersCase(unittest.TestCase):
    """
    The sample members in idetcd.testing's etcd, followed by a real
    L{Registry} (C{registry}); the test changes them there.
    """

    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd(self.clock)
        self.addCleanup(self.etcd.close)
        self.client = self.etcd.client()
        self.addCleanup(self.client.close)
        for member in sample_members():
            self.put(member)
        self.registry = self.follow(PREFIX)
        self.assertEqual(self.registry.revision, self.etcd.revision)

    def follow(self, prefix):
        """
        A started registry of C{prefix}.
        """
        registry = Registry(self.client, prefix, self.clock)
        registry.startService()
        self.addCleanup(registry.stopService)
        return registry

    def put(self, *members):
        """
        Write C{members} in one transaction: one change.
        """
        puts = [
            {"request_put": {"key": b64_text(PREFIX + m.name.encode("ascii")), "value": b64_text(m.to_value())}}
            for m in members
        ]
        self.successResultOf(self.client.call("/v3/kv/txn", {"success": puts}))

    def delete(self, name):
        self.successResultOf(self.client.delete(PREFIX + name.encode("ascii")))


class ZoneAuthorityTests(MembersCase):
    def setUp(self):
        MembersCase.setUp(self)
        self.authority = ZoneAuthority("tf.local.", self.registry, 30)

    def respond(self, name, type, cls=tdns.IN):
        return self.authority.respond(tuple(name.rstrip(".").encode().split(b".")), cls, type)

    def soa(self):
        (record,) = self.respond("tf.local", tdns.SOA).answers
        return record

    def test_addresses(self):
        """
        A and AAAA answers carry every address of the member, the zone TTL
        and AA.
        """
        response = self.respond("worker2.tf.local", tdns.A)
        self.assertEqual(response.rCode, tdns.OK)
        self.assertTrue(response.auth)
        self.assertEqual(
            [(r.name.name, r.ttl, r.payload.dottedQuad()) for r in response.answers],
            [(b"worker2.tf.local", 30, "10.0.0.2"), (b"worker2.tf.local", 30, "10.0.0.22")],
        )
        self.assertTrue(all(r.auth for r in response.answers))
        (record,) = self.respond("worker1.tf.local", tdns.AAAA).answers
        self.assertEqual(record.payload, tdns.Record_AAAA("fd00::1", 30))

    def test_case_insensitive(self):
        """
        Names match whatever their case.
        """
        self.assertEqual(
            self.respond("WoRkEr1.TF.local", tdns.A), self.respond("worker1.tf.local", tdns.A)
        )
        self.assertEqual(len(self.respond("WORKER1.TF.LOCAL", tdns.A).answers), 1)

    def test_nxdomain(self):
        """
        An unknown name in the zone is NXDOMAIN with the SOA (negative TTL:
        the lesser of its TTL and minimum) and AA.
        """
        response = self.respond("worker9.tf.local", tdns.A)
        self.assertEqual(response.rCode, tdns.ENAME)
        self.assertTrue(response.auth)
        self.assertEqual(response.answers, ())
        (soa,) = response.authority
        self.assertEqual(soa.type, tdns.SOA)
        self.assertEqual(soa.ttl, min(30, soa.payload.minimum))
        self.assertEqual(soa.payload.serial, self.etcd.revision)

    def test_nodata(self):
        """
        A known name without the asked type is NOERROR, no answer, the SOA.
        """
        for name, type in [
            ("worker2.tf.local", tdns.AAAA),
            ("worker3.tf.local", tdns.A),
            ("worker1.tf.local", tdns.MX),
            ("worker1.tf.local", tdns.SOA),
            ("tf.local", tdns.A),
        ]:
            response = self.respond(name, type)
            self.assertEqual(
                (response.rCode, response.auth, response.answers), (tdns.OK, True, ())
            )
            self.assertEqual([r.type for r in response.authority], [tdns.SOA])

    def test_empty_non_terminal(self):
        """
        A name that exists only because a member lies below it is NODATA, not
        NXDOMAIN (RFC 8020).
        """
        self.put(Member("a.b.tf.local.", ("10.0.0.9",)))
        response = self.respond("b.tf.local", tdns.A)
        self.assertEqual((response.rCode, response.answers), (tdns.OK, ()))
        self.assertEqual(self.respond("c.b.tf.local", tdns.A).rCode, tdns.ENAME)

    def test_soa(self):
        """
        The apex SOA names the first member in sorted order, serial is the
        registry revision.
        """
        record = self.soa()
        self.assertEqual(record.name.name, b"tf.local")
        self.assertEqual(record.ttl, 30)
        soa = record.payload
        self.assertEqual(soa.mname.name, b"worker1.tf.local")
        self.assertEqual(soa.rname.name, b"hostmaster.tf.local")
        self.assertEqual(
            (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum),
            (self.etcd.revision, REFRESH, RETRY, EXPIRE, 30),
        )

    def test_soa_without_members(self):
        """
        With no member the SOA names the apex, and there is no NS.
        """
        authority = ZoneAuthority("tf.local", self.follow(b"/empty/"), 30)
        (record,) = authority.respond(labels("tf.local"), tdns.IN, tdns.SOA).answers
        self.assertEqual(record.payload.mname.name, b"tf.local")
        response = authority.respond(labels("tf.local"), tdns.IN, tdns.NS)
        self.assertEqual((response.rCode, response.answers), (tdns.OK, ()))

    def test_serial_follows_revision(self):
        """
        Every change moves the serial forward, modulo 2**32.
        """
        before = self.soa().payload.serial
        self.put(Member("worker4.tf.local.", ("10.0.0.4",)))
        self.assertEqual(self.soa().payload.serial, before + 1)
        self.registry.revision = 2**32 + 5  # where etcd gets after 2**32 writes
        self.assertEqual(self.soa().payload.serial, 5)

    def test_ns_and_glue(self):
        """
        Every member is a name server, in sorted order, with its addresses
        as glue; members of other zones are not.
        """
        response = self.respond("tf.local", tdns.NS)
        self.assertEqual(
            [r.payload.name.name for r in response.answers],
            [b"worker1.tf.local", b"worker2.tf.local", b"worker3.tf.local"],
        )
        self.assertEqual(
            [(r.name.name, r.type) for r in response.additional],
            [
                (b"worker1.tf.local", tdns.A),
                (b"worker1.tf.local", tdns.AAAA),
                (b"worker2.tf.local", tdns.A),
                (b"worker2.tf.local", tdns.A),
                (b"worker3.tf.local", tdns.AAAA),
            ],
        )

    def test_refused(self):
        """
        Names outside the zone (even ones in the registry), other classes
        and zone transfers are refused, without AA.
        """
        for name, type, cls in [
            ("worker1.elsewhere", tdns.A, tdns.IN),
            ("local", tdns.SOA, tdns.IN),
            ("xtf.local", tdns.A, tdns.IN),
            ("worker1.tf.local", tdns.A, tdns.CH),
            ("worker1.tf.local", tdns.A, tdns.ANY),
            ("tf.local", tdns.AXFR, tdns.IN),
            ("tf.local", tdns.IXFR, tdns.IN),
        ]:
            response = self.respond(name, type, cls)
            self.assertEqual((response.rCode, response.auth), (tdns.EREFUSED, False), (name, type))
            self.assertEqual(response.authority, ())

    def test_servfail_until_the_registry_is_read(self):
        """
        Before the first read from etcd, names in the zone get SERVFAIL, not
        an NXDOMAIN that resolvers would cache; nothing is prepared.
        """
        read = self.etcd.faults.once("/v3/kv/range", Hold())
        self.authority = ZoneAuthority("tf.local.", self.follow(PREFIX), 30)
        for name, type in [("worker1.tf.local", tdns.A), ("nope.tf.local", tdns.A), ("tf.local", tdns.SOA)]:
            response = self.respond(name, type)
            self.assertEqual((response.rCode, response.auth), (tdns.ESERVER, False), name)
        self.assertEqual(self.authority.positive(), [])
        self.assertEqual(self.respond("worker1.elsewhere", tdns.A).rCode, tdns.EREFUSED)
        read.release()
        self.assertEqual(self.respond("worker1.tf.local", tdns.A).rCode, tdns.OK)

    def test_any(self):
        """
        ANY gets the one synthesized HINFO of RFC 8482, at members and apex.
        """
        for name in ("worker1.tf.local", "tf.local"):
            (record,) = self.respond(name, tdns.ALL_RECORDS).answers
            self.assertEqual((record.payload.cpu, record.payload.os), (b"RFC8482", b""))
        self.assertEqual(self.respond("nope.tf.local", tdns.ALL_RECORDS).rCode, tdns.ENAME)

    def test_membership_changes(self):
        """
        Answers follow the registry: new names appear, deleted ones go.
        """
        self.put(Member("worker4.tf.local.", ("10.0.0.4",)))
        self.assertEqual(len(self.respond("worker4.tf.local", tdns.A).answers), 1)
        self.delete("worker1.tf.local.")
        self.assertEqual(self.respond("worker1.tf.local", tdns.A).rCode, tdns.ENAME)
        (record,) = self.respond("tf.local", tdns.SOA).answers
        self.assertEqual(record.payload.mname.name, b"worker2.tf.local")

    def test_unchanged_members_keep_responses(self):
        """
        A change leaves the responses of untouched members the same objects,
        which is what lets a server skip re-encoding them.
        """
        before = {(l, t): r for l, t, r in self.authority.positive()}
        self.put(Member("worker4.tf.local.", ("10.0.0.4",)))
        after = {(l, t): r for l, t, r in self.authority.positive()}
        key = (labels("worker2.tf.local"), tdns.A)
        self.assertIs(after[key], before[key])
        self.assertIn((labels("worker4.tf.local"), tdns.A), after)
        apex = (labels("tf.local"), tdns.SOA)
        self.assertNotEqual(after[apex], before[apex])

    def test_bad_member_name_skipped(self):
        """
        A member whose name cannot be a DNS name is left out with a warning;
        the others are still served.  The registry skips such a key
        already; the guard is the authority's own, so a L{FakeRegistry}
        hands it such a name.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.put(Member("x" * 64 + ".tf.local.", ("10.0.0.5",)))
        self.assertEqual(len(self.registry.members), 4)
        self.assertEqual(len(self.respond("worker1.tf.local", tdns.A).answers), 1)
        registry = FakeRegistry(sample_members())
        authority = ZoneAuthority("tf.local.", registry, 30)
        registry.put(Member("x" * 64 + ".tf.local.", ("10.0.0.5",)))
        self.assertEqual(len(authority.respond(labels("worker1.tf.local"), tdns.IN, tdns.A).answers), 1)
        self.assertTrue(any("not serving" in e.get("log_format", "") for e in events))

    def test_bad_nameservers(self):
        for bad in (0, -1, "3", None):
            self.assertRaises(ValueError, ZoneAuthority, "tf.local.", self.registry, 30, bad)

    def test_bad_arguments(self):
        """
        A zone that is no DNS name, or a TTL out of range, is refused early.
        """
        self.assertRaises(ValueError, ZoneAuthority, "a..b", self.registry, 30)
        self.assertRaises(ValueError, ZoneAuthority, "x" * 64 + ".local", self.registry, 30)
        self.assertRaises(ValueError, ZoneAuthority, "tf.local", self.registry, -1)
        self.assertRaises(ValueError, ZoneAuthority, "tf.local", self.registry, "30")


class StaleViewTests(MembersCase):
    """
    What a node answers from a view that may be stale (RFC 8767, RFC 8914).
    """

    def setUp(self):
        MembersCase.setUp(self)
        self.authority = ZoneAuthority("tf.local.", self.registry, 300)

    def respond(self, name, type):
        return self.authority.respond(labels(name), tdns.IN, type)

    def assertUnvouched(self, response):
        self.assertEqual(
            (response.rCode, response.auth, response.ede),
            (tdns.ESERVER, False, NO_REACHABLE_AUTHORITY),
        )

    def test_stale(self):
        """
        Known data is served with its TTL capped and marked stale; a name
        the view does not know is SERVFAIL, since it may have been claimed
        meanwhile.
        """
        self.authority.set_view(View(stale=True))
        answer = self.respond("worker2.tf.local", tdns.A)
        self.assertEqual(answer.ede, STALE_ANSWER)
        self.assertEqual({r.ttl for r in answer.answers}, {STALE_TTL})
        self.assertEqual({r.payload.ttl for r in answer.answers}, {STALE_TTL})
        nodata = self.respond("worker2.tf.local", tdns.AAAA)
        self.assertEqual((nodata.rCode, nodata.ede), (tdns.OK, STALE_ANSWER))
        self.assertLessEqual(nodata.authority[0].ttl, STALE_TTL)
        ns = self.respond("tf.local", tdns.NS)
        self.assertEqual(ns.ede, STALE_ANSWER)
        self.assertEqual({r.ttl for r in ns.answers + ns.additional}, {STALE_TTL})
        self.assertUnvouched(self.respond("worker9.tf.local", tdns.A))
        self.assertEqual(
            {response.ede for _, _, response in self.authority.positive()}, {STALE_ANSWER}
        )

    def test_lower_ttl_kept(self):
        """
        A zone TTL below the cap stays.
        """
        authority = ZoneAuthority("tf.local.", self.registry, 5)
        authority.set_view(View(stale=True))
        answer = authority.respond(labels("worker1.tf.local"), tdns.IN, tdns.A)
        self.assertEqual((answer.answers[0].ttl, answer.ede), (5, STALE_ANSWER))

    def test_unvouched(self):
        """
        The node's own unconfirmed name is SERVFAIL, whatever the type, and
        is not among the replies a server prepares.
        """
        own = labels("worker1.tf.local")
        self.authority.set_view(View(stale=True, unvouched=own))
        for type in (tdns.A, tdns.AAAA, tdns.ALL_RECORDS, tdns.MX):
            self.assertUnvouched(self.respond("WORKER1.tf.local", type))
        self.assertEqual(self.authority.positive(own), [])
        self.assertNotIn(own, {labels for labels, _, _ in self.authority.positive()})
        self.assertEqual(self.respond("worker2.tf.local", tdns.A).ede, STALE_ANSWER)

    def test_expired(self):
        """
        Past the bound, every name in the zone is SERVFAIL; other names are
        still refused.
        """
        self.authority.set_view(View(stale=True, expired=True))
        for name, type in [("worker2.tf.local", tdns.A), ("tf.local", tdns.SOA)]:
            self.assertUnvouched(self.respond(name, type))
        self.assertEqual(self.authority.positive(), [])
        self.assertEqual(self.respond("worker1.elsewhere", tdns.A).rCode, tdns.EREFUSED)

    def test_current_again(self):
        """
        Back to a current view, the answers are as before: zone TTL, no
        marking, NXDOMAIN.
        """
        before = self.respond("worker2.tf.local", tdns.A)
        self.authority.set_view(View(stale=True, unvouched=labels("worker1.tf.local")))
        self.respond("worker2.tf.local", tdns.A)
        self.authority.set_view(CURRENT)
        self.assertEqual(self.respond("worker2.tf.local", tdns.A), before)
        self.assertEqual(self.respond("worker1.tf.local", tdns.A).ede, None)
        self.assertEqual(self.respond("worker9.tf.local", tdns.A).rCode, tdns.ENAME)


class IncrementalTests(MembersCase):
    """
    L{ZoneAuthority.update} applies the names a change touched, and ends
    where a rebuild from scratch would.
    """

    def setUp(self):
        MembersCase.setUp(self)
        self.authority = ZoneAuthority("tf.local.", self.registry, 30, nameservers=2)
        self.assertIsNone(self.authority.update(None))
        self.unsubscribe = self.registry.subscribe_changes(self.record)
        self.updates = []

    def record(self, names):
        self.updates.append(self.authority.update(names))

    def assertLikeRebuilt(self):
        fresh = ZoneAuthority("tf.local.", self.registry, 30, nameservers=2)
        self.assertEqual(
            sorted(self.authority.positive(), key=repr), sorted(fresh.positive(), key=repr)
        )
        for name in ("a.b.tf.local", "b.tf.local", "tf.local", "nobody.tf.local"):
            for type in (tdns.A, tdns.NS):
                question = tuple(name.encode().split(b".")), tdns.IN, type
                self.assertEqual(
                    self.authority.respond(*question), fresh.respond(*question), (name, type)
                )

    def test_a_change_touches_its_name_and_the_apex(self):
        self.put(Member("worker4.tf.local.", ("10.0.0.4",)))
        self.put(Member("worker4.tf.local.", ("10.0.0.5",)))
        self.delete("worker4.tf.local.")
        apex, worker4 = labels("tf.local"), labels("worker4.tf.local")
        self.assertEqual(self.updates, [{apex, worker4}] * 3)
        self.assertLikeRebuilt()

    def test_empty_non_terminals_and_the_apex_member(self):
        """
        Names below names come and go with the empty non-terminals between
        them and the apex; a member named like the apex keeps its SOA.
        """
        a_b = labels("a.b.tf.local")
        self.put(Member("a.b.tf.local.", ("10.0.0.8",)))
        self.assertEqual(self.updates[-1], {labels("tf.local"), a_b, labels("b.tf.local")})
        self.assertLikeRebuilt()
        self.put(Member("b.tf.local.", ("10.0.0.9",)))
        self.delete("a.b.tf.local.")
        self.assertLikeRebuilt()
        self.put(Member("a.b.tf.local.", ("10.0.0.8",)))
        self.delete("b.tf.local.")
        self.assertLikeRebuilt()
        self.assertEqual(self.authority.respond(labels("b.tf.local"), tdns.IN, tdns.A).rCode, tdns.OK)
        self.delete("a.b.tf.local.")
        self.assertEqual(
            self.authority.respond(labels("b.tf.local"), tdns.IN, tdns.A).rCode, tdns.ENAME
        )
        self.put(Member("tf.local.", ("10.0.0.10",)))
        self.assertLikeRebuilt()
        self.assertEqual(len(self.authority.respond(labels("tf.local"), tdns.IN, tdns.SOA).answers), 1)
        self.delete("tf.local.")
        self.assertLikeRebuilt()

    def test_bounded_ns_set(self):
        """
        The apex NS RRset names the lowest-numbered members (worker2 before
        worker10), with glue for them only, and its response stays the same
        object while they stay.
        """
        for index in (10, 11, 2):
            self.put(Member(f"worker{index}.tf.local.", (f"10.0.1.{index}",)))
        ns = self.authority.respond(labels("tf.local"), tdns.IN, tdns.NS)
        self.assertEqual(
            [r.payload.name.name for r in ns.answers], [b"worker1.tf.local", b"worker2.tf.local"]
        )
        self.assertEqual(
            {r.name.name for r in ns.additional}, {b"worker1.tf.local", b"worker2.tf.local"}
        )
        self.put(Member("worker11.tf.local.", ("10.0.2.11",)))
        self.assertIs(self.authority.respond(labels("tf.local"), tdns.IN, tdns.NS), ns)
        self.delete("worker1.tf.local.")
        ns = self.authority.respond(labels("tf.local"), tdns.IN, tdns.NS)
        self.assertEqual(
            [r.payload.name.name for r in ns.answers], [b"worker2.tf.local", b"worker3.tf.local"]
        )
        self.assertLikeRebuilt()

    def test_big_changes_rebuild(self):
        """
        A change to many members at once (a full read) is a rebuild, which
        update() reports as None: everything may have changed.
        """
        self.put(*(Member(f"worker{index}.tf.local.", (f"10.0.1.{index}",)) for index in range(10, 50)))
        self.assertEqual(self.updates, [None])
        self.assertLikeRebuilt()

    def test_revision_moved_without_update(self):
        """
        Asked after a change nobody applied, the authority rebuilds, and the
        next update says so.
        """
        self.unsubscribe()
        self.put(Member("worker9.tf.local.", ("10.0.0.9",)))
        self.unsubscribe = self.registry.subscribe_changes(self.record)
        self.assertEqual(
            len(self.authority.respond(labels("worker9.tf.local"), tdns.IN, tdns.A).answers), 1
        )
        self.put(Member("worker8.tf.local.", ("10.0.0.8",)))
        self.assertEqual(self.updates, [None])
        self.assertLikeRebuilt()


class ResolverInterfaceTests(MembersCase):
    """
    The stock twisted.names resolver contract.
    """

    def setUp(self):
        MembersCase.setUp(self)
        self.authority = ZoneAuthority("tf.local.", self.registry, 30)

    def test_lookup(self):
        d = self.authority.lookupAddress("Worker2.tf.local")
        answers, authority, additional = self.successResultOf(d)
        self.assertEqual(len(answers), 2)
        self.assertEqual((authority, additional), ([], []))

    def test_nodata(self):
        answers, authority, _ = self.successResultOf(
            self.authority.lookupIPV6Address("worker2.tf.local.")
        )
        self.assertEqual((answers, [r.type for r in authority]), ([], [tdns.SOA]))

    def test_errors(self):
        """
        Unknown names fail authoritatively; foreign ones let a resolver chain
        go on to its next resolver.
        """
        self.failureResultOf(
            self.authority.lookupAddress("nope.tf.local"), AuthoritativeDomainError
        )
        self.failureResultOf(self.authority.lookupAddress("example.com"), DomainError)

    def test_stock_server(self):
        """
        A stock DNSServerFactory serves the authority to a real client.
        """
        factory = tserver.DNSServerFactory(authorities=[self.authority])
        port = reactor.listenUDP(0, tdns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        query = dns.message.make_query("worker1.tf.local", "A")
        d = threads.deferToThread(
            dns.query.udp, query, "127.0.0.1", port=port.getHost().port, timeout=5
        )

        def check(response):
            self.assertEqual(response.rcode(), dns.rcode.NOERROR)
            self.assertEqual([r.address for r in response.answer[0]], ["10.0.0.1"])

        return d.addCallback(check)
