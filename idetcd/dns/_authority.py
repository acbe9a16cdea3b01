"""
The records of one zone, read from the registry of claimed names.

Every claimed name inside the zone owns its A and AAAA records, and every
claimed name is a name server of the zone (each node answers for all of
them).  A member with an SRV port is listed in the SRV RRset of its role
(C{_worker._tcp.ZONE}), and each member's address gives its name back in
a PTR RRset, in the reverse zones the server block serves.
L{ZoneAuthority} is a twisted.names resolver, so a stock
L{twisted.names.server.DNSServerFactory} can serve it; L{ZoneAuthority.respond}
gives the complete answer (response code, AA, negative SOA) that the stock
resolver interface has no room for, and that L{idetcd.dns._server} sends.
"""

from __future__ import annotations

import bisect
import collections
import functools
import re
import types

import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import common, dns
from twisted.names.error import AuthoritativeDomainError, DomainError

from idetcd.dns import _peers as peers
from idetcd.dns import _wire as wire
from idetcd.dns._freshness import CURRENT

log = Logger()

# The SOA timers, for secondaries of the zone (the transfer directive):
# refresh an hour (NOTIFY tells them of changes sooner), retry ten minutes,
# expire a day, as a stale view's default, each longer than the one before
# (RFC 1912 section 2.2).
REFRESH = 3600
RETRY = 600
EXPIRE = 86400

# RFC 8482 section 4.2: a synthesized HINFO answers ANY.  Unlike "the A
# RRset" it exists for every owner (the apex and IPv6-only names too), its
# size is fixed, and it tells the client plainly that ANY is not served.
_RFC8482 = dns.Record_HINFO(cpu=b"RFC8482", os=b"")
_EMPTY = types.MappingProxyType({})
_DIGITS = re.compile(r"(\d+)")
#: Name servers in the apex NS RRset, by default.
NAMESERVERS = 3
#: A change to more than this many names plus this share of the members
#: is applied by a rebuild, which sorts once instead of inserting each.
REBUILD_NAMES = 16
REBUILD_SHARE = 0.125
#: RFC 8767 section 4: the TTL of an answer from a view that may be stale.
STALE_TTL = 30
#: Extended DNS Error INFO-CODEs (RFC 8914 section 4).
STALE_ANSWER = 3
NO_REACHABLE_AUTHORITY = 22


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Response:
    """
    A complete answer to one question, with what a resolver result lacks.
    """

    rCode: int
    auth: bool
    answers: tuple = ()
    authority: tuple = ()
    additional: tuple = ()
    ede: int = None  # an Extended DNS Error INFO-CODE for EDNS replies


_NOT_READY = Response(dns.ESERVER, auth=False)
# What a node that may be cut off from etcd cannot vouch for.
_UNVOUCHED = Response(dns.ESERVER, auth=False, ede=NO_REACHABLE_AUTHORITY)
_REFUSED = Response(dns.EREFUSED, auth=False)


def domain_labels(name):
    """
    The lower-case labels of a domain name in text form (a trailing dot is
    optional); L{ValueError} if it cannot be a DNS name.
    """
    text = name[:-1] if name.endswith(".") else name
    if not text:
        return ()
    try:
        labels = tuple(text.lower().encode("ascii").split(b"."))
    except UnicodeEncodeError:
        raise ValueError(f"{name!r} is not ASCII") from None
    if not all(0 < len(label) < 64 for label in labels):
        raise ValueError(f"{name!r} has an empty label or one over 63 bytes")
    if sum(len(label) + 1 for label in labels) + 1 > 255:
        raise ValueError(f"{name!r} is longer than 255 bytes")
    return labels


def _rr(labels, record, ttl):
    return dns.RRHeader(b".".join(labels), record.TYPE, dns.IN, ttl, record, auth=True)


def _within(labels, apex):
    """
    Whether C{labels} name C{apex} or something below it.
    """
    cut = len(labels) - len(apex)
    return cut >= 0 and labels[cut:] == apex


def _ancestors(labels, apex):
    """
    The names between C{labels} and C{apex}, both left out.
    """
    return [labels[index:] for index in range(1, len(labels) - len(apex))]


@functools.lru_cache(maxsize=64)
def _apex_any(apex, ttl, ede):
    # One object per zone, so the apex's ANY reply is not encoded again.
    return Response(dns.OK, True, (_rr(apex, _RFC8482, ttl),), ede=ede)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Owner:
    """
    What one member brings to the zone; kept while the member is unchanged,
    so its responses stay the same objects from one revision to the next.
    """

    labels: tuple
    order: tuple  # (sort key, name): the lowest-numbered name first
    responses: dict
    glue: tuple
    peers: tuple  # (owner, apex, peers.Entry) of its SRV and PTR records


def _numbered(name):
    """
    A sort key that puts C{worker2} before C{worker10}: runs of digits
    compare as numbers.
    """
    parts = _DIGITS.split(name)
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


class ZoneAuthority(common.ResolverBase):
    """
    Answers for one zone from C{registry.members}.

    The records follow C{registry.revision}: L{update} applies the names a
    change touched, and a revision that moved without an update (nobody
    feeds this authority changes) rebuilds everything on the next question.
    The SOA serial is that revision, so it moves with every change.

    The apex NS RRset names the C{nameservers} lowest-numbered members, not
    all of them: every member answers for the whole zone, so a few suffice,
    and the set (and its glue) stays small and changes only when one of
    those few comes or goes.

    C{reverse} lists the zones that serve reverse names besides: each
    (C{10.in-addr.arpa.}) gets its SOA and NS and answers every name in it,
    with NXDOMAIN where no member's address is; the root zone (C{.})
    serves the reverse names of members' addresses and refuses every
    other name outside C{zone}, as if it were not listed.

    The SRV and PTR RRsets grow with the members (see L{idetcd.dns._peers}): a
    change only marks them, and the first question after it builds them.

    C{view} (see L{set_view}) says how far the node can vouch for what it
    answers.
    """

    def __init__(self, zone, registry, ttl, nameservers=NAMESERVERS, reverse=()):
        common.ResolverBase.__init__(self)
        self.view = CURRENT
        self._ede = None  # the Extended DNS Error of NOERROR answers
        self.configure(ttl, nameservers)
        self.zone = zone
        self.apex = domain_labels(zone)
        self.registry = registry
        self._suffix = "".join("." + label.decode("ascii") for label in self.apex) + "."
        apexes = set()
        self._reverse_anywhere = False  # the root zone serves members' reverse names
        for text in reverse:
            labels = domain_labels(text)
            if not labels:
                self._reverse_anywhere = True
            elif peers.holds_reverse_names(labels):
                apexes.add(labels)
            else:
                raise ValueError(f"{text!r} holds no reverse names")
        # Longest first, so a name belongs to the closest zone above it.
        self._reverse = tuple(sorted(apexes, key=len, reverse=True))
        self._apexes = (self.apex,) + self._reverse
        #: How many times an SRV or PTR response was built, for tests.
        self.peer_builds = 0
        self._revision = None  # the registry revision the records reflect
        self._rebuilt = False  # rebuilt since the last update()
        self._owners = {}  # name -> (member, _Owner or None if it cannot be served)
        # labels -> {type: positive Response or PeerRRset}, empty non-terminals too
        self._nodes = {}
        self._below = collections.Counter()  # labels -> owners strictly below
        self._peers = {}  # labels -> the PeerRRset there
        self._order = []  # the order of every served member, sorted
        self._ns = ((), {})  # (the NS owners, {apex: their NS response})
        self._negative = {}  # apex -> (NXDOMAIN, NODATA) response

    def __repr__(self):
        return f"<ZoneAuthority {self.zone!r}>"

    def configure(self, ttl, nameservers):
        """
        Answer with C{ttl} and name C{nameservers} members in the apex NS
        RRset from the next build on (a Corefile reload); every record is
        made again then, none kept from before.
        """
        if not isinstance(ttl, int) or not 0 <= ttl < 2**31:
            raise ValueError(f"ttl must be an integer in [0, 2**31), not {ttl!r}")
        if not isinstance(nameservers, int) or nameservers < 1:
            raise ValueError(f"nameservers must be a positive integer, not {nameservers!r}")
        self.ttl = ttl
        self.nameservers = nameservers
        self._ttl = self._served_ttl()  # of the records served: capped while the view is stale
        self._owners = {}
        self._ns = ((), {})  # (the NS owners, {apex: their NS response})
        self._revision = None

    def _served_ttl(self):
        return min(self.ttl, STALE_TTL) if self.view.stale else self.ttl

    def _apex_of(self, labels):
        """
        The apex of the zone that holds lower-case C{labels}, or L{None}.
        """
        if _within(labels, self.apex):
            return self.apex
        for apex in self._reverse:
            if _within(labels, apex):
                return apex
        return None

    def _reverse_apex(self, labels):
        """
        The apex of the zone that serves the reverse name C{labels}: a
        reverse zone, C{()} for the root zone, or L{None} for none.
        """
        apex = self._apex_of(labels)
        if apex == self.apex:
            return None  # a zone of names under arpa: not reverse names here
        if apex is None and self._reverse_anywhere:
            return ()
        return apex

    def set_view(self, view):
        """
        Answer as the L{idetcd.dns._freshness.View} C{view} allows from now on.
        From a view that may be stale (RFC 8767) the answers carry a TTL of
        at most L{STALE_TTL} and the Extended DNS Error "Stale Answer"
        (RFC 8914), and SERVFAIL with "No Reachable Authority" stands for
        what the node cannot vouch for: its own unconfirmed name, a name it
        does not know (it may have been claimed since), and everything once
        the view is too old.
        """
        if view.stale != self.view.stale:
            # Every record again, with the other TTL and marking.
            self.view = view
            self._ttl = self._served_ttl()
            self._ede = STALE_ANSWER if view.stale else None
            self._owners = {}
            self._ns = ((), {})
            self._revision = None
        self.view = view

    def respond(self, labels, cls, type):
        """
        The answer to the question (C{labels}, C{type}, C{cls}); C{labels} in
        any case, as a question carries them.
        """
        labels = tuple(label.lower() for label in labels)
        if cls != dns.IN or type in (dns.AXFR, dns.IXFR):
            # Only IN data lives here; zone transfers are not offered.
            return _REFUSED
        apex = self._apex_of(labels)
        if apex is None and not (self._reverse_anywhere and peers.is_reverse(labels)):
            return _REFUSED
        if not self.registry.ready:
            # Before the first read from etcd nothing is known, not even
            # what does not exist: a cached NXDOMAIN would outlive this.
            return _NOT_READY
        if self.view.expired or labels == self.view.unvouched:
            return _UNVOUCHED
        self._current()
        rrsets = self._nodes.get(labels)
        if apex is None:
            # A reverse name served through the root zone only: refused
            # unless a member's address gives it, as every name outside
            # the zones.
            if rrsets is None:
                return _REFUSED
            # NODATA with no SOA: no zone of ours above it.
            nodata = Response(dns.OK, True, ede=self._ede)
        else:
            nxdomain, nodata = self._negative[apex]
            if rrsets is None:
                return nxdomain
        answer = rrsets.get(type, nodata)
        if answer.__class__ is peers.PeerRRset:
            return answer.response or self._build_peers(answer)
        return answer

    def _build_peers(self, rrset):
        answers, additional = rrset.fitting()
        rrset.response = self._data(answers, additional=additional)
        self.peer_builds += 1
        return rrset.response

    def positive(self, labels=None):
        """
        Every (labels, type, response) that carries data, or only those of
        the node C{labels}, for a server to prepare.  Unchanged members give
        the very same response objects.  The SRV and PTR RRsets are left
        out: L{respond} builds them when asked, once per change at most, and
        so are the names the node cannot vouch for.
        """
        if not self.registry.ready or self.view.expired:
            return []
        self._current()
        if labels is None:
            nodes = self._nodes.items()
        else:
            nodes = [(labels, self._nodes.get(labels, _EMPTY))]
        return [
            (labels, type, response)
            for labels, rrsets in nodes
            for type, response in rrsets.items()
            if response.__class__ is Response and labels != self.view.unvouched
        ]

    def soa(self):
        """
        The zone's SOA record now, or L{None} before the first read from
        etcd.
        """
        if not self.registry.ready:
            return None
        self._current()
        return self._nodes[self.apex][dns.SOA].answers[0]

    def zone_nodes(self):
        """
        The labels of every node of the zone (not of the reverse zones).
        """
        self._current()
        return [labels for labels in self._nodes if _within(labels, self.apex)]

    def zone_records(self, labels):
        """
        The records at the node C{labels} that a transfer of the zone
        carries: NS, A, AAAA and SRV, not the SOA, which frames a
        transfer, nor the answers to ANY, which are not data.
        """
        self._current()
        records = []
        if _within(labels, self.apex):
            for type, rrset in self._nodes.get(labels, _EMPTY).items():
                if rrset.__class__ is peers.PeerRRset:
                    records += rrset.records()
                elif type not in (dns.SOA, dns.ALL_RECORDS):
                    records += rrset.answers
        return records

    def subscribe_changes(self, callback):
        """
        Call C{callback(names)} after each change to the members this
        authority answers from, with the names that changed, so that what
        is made from its answers is made again (see L{update}); returns the
        function that ends the subscription.
        """
        return self.registry.subscribe_changes(callback)

    def update(self, names):
        """
        Apply a registry change to the members C{names}: the labels of every
        node whose records may have changed (every apex always, for its SOA
        serial), or L{None} when everything was rebuilt and may have changed.
        On an exception the authority rebuilds everything on its next use.
        """
        if not self.registry.ready:
            self._revision = None
            return None
        if (
            names is None
            or self._revision is None
            or self._rebuilt
            or len(names) > REBUILD_NAMES + REBUILD_SHARE * len(self._owners)
        ):
            self._build()
            self._rebuilt = False
            return None
        self._revision = None
        changed = set(self._apexes)
        for name in names:
            changed.update(self._apply(name))
        self._apex_records(self.registry.revision)
        self._revision = self.registry.revision
        return changed

    def _lookup(self, name, cls, type, timeout):
        """
        The stock resolver contract: names outside the zone fail with
        L{DomainError} (so a resolver chain asks its next member), unknown
        names with L{AuthoritativeDomainError}.
        """
        if name.endswith(b"."):
            name = name[:-1]
        response = self.respond(tuple(name.split(b".")) if name else (), cls, type)
        if response.rCode == dns.EREFUSED:
            return defer.fail(DomainError(name))
        if response.rCode == dns.ENAME:
            return defer.fail(AuthoritativeDomainError(name))
        return defer.succeed(
            (list(response.answers), list(response.authority), list(response.additional))
        )

    def _current(self):
        if self._revision != self.registry.revision:
            self._build()
            self._rebuilt = True

    def _own(self, name, member):
        try:
            labels = domain_labels(name)
        except ValueError as e:
            log.warn("not serving {name!r}: {why}", name=name, why=str(e))
            return None
        ttl = self._ttl
        responses = {dns.ALL_RECORDS: self._data((_rr(labels, _RFC8482, ttl),))}
        glue = ()
        for type, addresses, record in (
            (dns.A, member.ipv4, dns.Record_A),
            (dns.AAAA, member.ipv6, dns.Record_AAAA),
        ):
            if addresses:
                rrset = tuple(_rr(labels, record(a, ttl), ttl) for a in addresses)
                responses[type] = self._data(rrset)
                glue += rrset
        order = (_numbered(name), name)
        peer_entries = self._peer_entries(member, labels, order, glue)
        return _Owner(labels, order, responses, glue, peer_entries)

    def _peer_entries(self, member, labels, order, glue):
        """
        The (owner, apex, L{peers.Entry}) of the SRV record and the PTR
        records C{member} (served as C{labels}) brings.
        """
        ttl = self._ttl
        target = b".".join(labels)
        entries = []
        if member.srv:
            service = peers.service_labels(member.role, self.apex)
            if service is None:
                log.warn(
                    "no SRV record for {name!r}: its role {role!r} cannot be a DNS label",
                    name=member.name, role=member.role,
                )
            else:
                record = _rr(service, dns.Record_SRV(0, 0, member.srv, target, ttl), ttl)
                extra_size = sum(wire.record_size(r) for r in glue)
                entry = peers.Entry(
                    (member.slot, order), record, wire.record_size(record, True), glue, extra_size
                )
                entries.append((service, self.apex, entry))
        for address in dict.fromkeys(member.ipv4 + member.ipv6):
            owner = peers.reverse_labels(address)
            apex = self._reverse_apex(owner)
            if apex is not None:
                record = _rr(owner, dns.Record_PTR(target, ttl), ttl)
                entry = peers.Entry(order, record, wire.record_size(record, True))
                entries.append((owner, apex, entry))
        return tuple(entries)

    def _build(self):
        """
        Every record again from C{registry.members}; unchanged members keep
        their L{_Owner}.
        """
        self._revision = None
        owners, self._owners = self._owners, {}
        self._nodes = {}
        self._below = collections.Counter()
        self._peers = {}
        for name, member in self.registry.members.items():
            if self._serves(name):
                kept = owners.get(name)
                self._add(name, member, kept[1] if kept and kept[0] == member else None)
        self._order = sorted(owner.order for _, owner in self._owners.values() if owner)
        for rrset in self._peers.values():
            rrset.sort()
        self._apex_records(self.registry.revision)
        self._revision = self.registry.revision

    def _serves(self, name):
        return name.endswith(self._suffix) or name == self._suffix[1:]

    def _apply(self, name):
        """
        Bring C{name} in line with the registry; the labels of the nodes
        that changed.
        """
        member = self.registry.members.get(name) if self._serves(name) else None
        old = self._owners.get(name)
        if old is not None and old[0] == member:
            return ()
        changed = []
        if old is not None:
            changed += self._remove(name)
        if member is not None:
            changed += self._add(name, member, None, ordered=True)
        return changed

    def _add(self, name, member, owner, ordered=False):
        if owner is None:
            owner = self._own(name, member)
        self._owners[name] = (member, owner)
        if owner is None:
            return []
        labels = owner.labels
        if ordered:
            bisect.insort(self._order, owner.order)
        self._nodes[labels] = owner.responses
        changed = [labels] + self._link(labels, self.apex)
        for peer_labels, apex, entry in owner.peers:
            changed += self._enter(peer_labels, apex, entry, ordered)
        return changed

    def _remove(self, name):
        _, owner = self._owners.pop(name)
        if owner is None:
            return []
        labels = owner.labels
        del self._order[bisect.bisect_left(self._order, owner.order)]
        if self._below[labels]:
            self._nodes[labels] = _EMPTY
        else:
            del self._nodes[labels]
        changed = [labels] + self._unlink(labels, self.apex)
        for peer_labels, apex, entry in owner.peers:
            changed += self._leave(peer_labels, apex, entry.key)
        return changed

    def _enter(self, labels, apex, entry, ordered):
        """
        Add C{entry} to the SRV or PTR RRset at C{labels}, in the zone
        C{apex}; the labels of the nodes that changed.
        """
        changed = [labels]
        rrset = self._peers.get(labels)
        if rrset is None:
            type = entry.record.type
            rrset = self._peers[labels] = peers.PeerRRset(labels, type)
            hinfo = self._data((_rr(labels, _RFC8482, self._ttl),))
            self._nodes[labels] = {type: rrset, dns.ALL_RECORDS: hinfo}
            if apex:
                changed += self._link(labels, apex)
        rrset.add(entry, ordered)
        return changed

    def _leave(self, labels, apex, key):
        """
        Take the entry C{key} out of the SRV or PTR RRset at C{labels}.
        """
        changed = [labels]
        rrset = self._peers[labels]
        rrset.remove(key)
        if not rrset:
            del self._peers[labels]
            self._nodes.pop(labels, None)
            if apex:
                changed += self._unlink(labels, apex)
        return changed

    def _link(self, labels, apex):
        """
        Count an owner at C{labels} in every name between it and C{apex}:
        the empty non-terminals that appear.
        """
        changed = []
        for ancestor in _ancestors(labels, apex):
            self._below[ancestor] += 1
            if ancestor not in self._nodes:
                self._nodes[ancestor] = _EMPTY
                changed.append(ancestor)
        return changed

    def _unlink(self, labels, apex):
        """
        Undo L{_link}: the empty non-terminals that go.
        """
        changed = []
        for ancestor in _ancestors(labels, apex):
            self._below[ancestor] -= 1
            if not self._below[ancestor]:
                del self._below[ancestor]
                if self._nodes.get(ancestor) is _EMPTY:
                    del self._nodes[ancestor]
                    changed.append(ancestor)
        return changed

    def _apex_records(self, revision):
        """
        The SOA, NS and ANY answers and the negative answers of the zone
        and of each reverse zone, for C{revision}.
        """
        ttl = self._ttl
        owners = tuple(self._owners[name][1] for _, name in self._order[: self.nameservers])
        if owners != self._ns[0]:
            self._ns = (owners, {apex: self._ns_response(apex, owners) for apex in self._apexes})
        apex_member = self._owners.get(self._suffix[1:], (None, None))[1]
        for apex in self._apexes:
            soa = dns.Record_SOA(
                mname=b".".join(owners[0].labels if owners else apex),
                rname=b".".join((b"hostmaster",) + self.apex),
                serial=revision % 2**32,
                refresh=REFRESH,
                retry=RETRY,
                expire=EXPIRE,
                minimum=ttl,
                ttl=ttl,
            )
            if apex == self.apex:
                top = dict(apex_member.responses if apex_member else _EMPTY)
            else:
                # A reverse zone as small as one address has its PTR here.
                rrset = self._peers.get(apex)
                top = {rrset.type: rrset} if rrset else {}
            top[dns.SOA] = self._data((_rr(apex, soa, ttl),))
            top[dns.ALL_RECORDS] = _apex_any(apex, ttl, self._ede)
            if owners:
                top[dns.NS] = self._ns[1][apex]
            self._nodes[apex] = top
            # RFC 2308 section 3: the negative TTL is the lesser of the SOA's
            # TTL and its minimum field.
            negative = (_rr(apex, soa, min(soa.ttl, soa.minimum)),)
            self._negative[apex] = (
                _UNVOUCHED if self.view.stale else Response(dns.ENAME, True, authority=negative),
                self._data(authority=negative),
            )

    def _ns_response(self, apex, owners):
        ttl = self._ttl
        return self._data(
            tuple(_rr(apex, dns.Record_NS(b".".join(owner.labels), ttl), ttl) for owner in owners),
            additional=tuple(record for owner in owners for record in owner.glue),
        )

    def _data(self, answers=(), authority=(), additional=()):
        """
        A NOERROR answer from the zone's data, marked as stale while the
        view may be.
        """
        return Response(dns.OK, True, answers, authority, additional, self._ede)
