"""
The records of one zone, read from the registry of claimed names.

Every claimed name inside the zone owns its A and AAAA records, and every
claimed name is a name server of the zone (each node answers for all of
them).  L{ZoneAuthority} is a twisted.names resolver, so a stock
L{twisted.names.server.DNSServerFactory} can serve it; L{ZoneAuthority.respond}
gives the complete answer (response code, AA, negative SOA) that the stock
resolver interface has no room for, and that L{idetcd.server} sends.
"""

from __future__ import annotations

import types

import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import common, dns
from twisted.names.error import AuthoritativeDomainError, DomainError

log = Logger()

# Nobody transfers this zone (every node reads etcd itself), so the SOA
# timers only need to be sane (RFC 1912 section 2.2): refresh an hour, retry
# ten minutes, expire a day, each longer than the one before.
REFRESH = 3600
RETRY = 600
EXPIRE = 86400

# RFC 8482 section 4.2: a synthesized HINFO answers ANY.  Unlike "the A
# RRset" it exists for every owner (the apex and IPv6-only names too), its
# size is fixed, and it tells the client plainly that ANY is not served.
_RFC8482 = dns.Record_HINFO(cpu=b"RFC8482", os=b"")
_EMPTY = types.MappingProxyType({})


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


_NOT_READY = Response(dns.ESERVER, auth=False)


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


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Owner:
    """
    What one member brings to the zone; kept while the member is unchanged,
    so its responses stay the same objects from one revision to the next.
    """

    labels: tuple
    responses: dict
    ns: dns.RRHeader
    glue: tuple


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _View:
    """
    The zone at one registry revision.  C{nodes} maps the labels of every
    name that exists (empty non-terminals too) to {type: positive Response}.
    """

    revision: int
    nodes: dict
    nxdomain: Response
    nodata: Response


class ZoneAuthority(common.ResolverBase):
    """
    Answers for one zone from C{registry.members}.

    The records are rebuilt when C{registry.revision} moves, so this needs no
    subscription of its own: the SOA serial is that revision, and a change
    that did not move it could not move the serial either.
    """

    def __init__(self, zone, registry, ttl):
        common.ResolverBase.__init__(self)
        if not isinstance(ttl, int) or not 0 <= ttl < 2**31:
            raise ValueError(f"ttl must be an integer in [0, 2**31), not {ttl!r}")
        self.zone = zone
        self.apex = domain_labels(zone)
        self.registry = registry
        self.ttl = ttl
        self._suffix = "".join("." + label.decode("ascii") for label in self.apex) + "."
        self._view = None
        self._owners = {}

    def __repr__(self):
        return f"<ZoneAuthority {self.zone!r}>"

    def _in_zone(self, labels):
        """
        Whether lower-case C{labels} name something at or below the apex.
        """
        cut = len(labels) - len(self.apex)
        return cut >= 0 and labels[cut:] == self.apex

    def respond(self, labels, cls, type):
        """
        The answer to the question (C{labels}, C{type}, C{cls}); C{labels} in
        any case, as a question carries them.
        """
        labels = tuple(label.lower() for label in labels)
        if cls != dns.IN or not self._in_zone(labels) or type in (dns.AXFR, dns.IXFR):
            # Only IN data lives here; zone transfers are not offered.
            return Response(dns.EREFUSED, auth=False)
        if not self.registry.ready:
            # Before the first read from etcd nothing is known, not even
            # what does not exist: a cached NXDOMAIN would outlive this.
            return _NOT_READY
        view = self._current()
        rrsets = view.nodes.get(labels)
        if rrsets is None:
            return view.nxdomain
        return rrsets.get(type, view.nodata)

    def positive(self):
        """
        Every (labels, type, response) that carries data, for a server to
        prepare.  Unchanged members give the very same response objects.
        """
        if not self.registry.ready:
            return []
        return [
            (labels, type, response)
            for labels, rrsets in self._current().nodes.items()
            for type, response in rrsets.items()
        ]

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
        revision = self.registry.revision
        if self._view is None or self._view.revision != revision:
            self._view = self._build(revision)
        return self._view

    def _own(self, name, member):
        try:
            labels = domain_labels(name)
        except ValueError as e:
            log.warn("not serving {name!r}: {why}", name=name, why=str(e))
            return None
        ttl = self.ttl
        responses = {dns.ALL_RECORDS: Response(dns.OK, True, (_rr(labels, _RFC8482, ttl),))}
        glue = ()
        for type, addresses, record in (
            (dns.A, member.ipv4, dns.Record_A),
            (dns.AAAA, member.ipv6, dns.Record_AAAA),
        ):
            if addresses:
                rrset = tuple(_rr(labels, record(a, ttl), ttl) for a in addresses)
                responses[type] = Response(dns.OK, True, rrset)
                glue += rrset
        ns = _rr(self.apex, dns.Record_NS(b".".join(labels), ttl), ttl)
        return _Owner(labels, responses, ns, glue)

    def _build(self, revision):
        owners = {}
        for name, member in sorted(self.registry.members.items()):
            if name.endswith(self._suffix) or name == self._suffix[1:]:
                key = (name, member)
                owners[key] = self._owners[key] if key in self._owners else self._own(name, member)
        self._owners = owners
        served = [owner for owner in owners.values() if owner is not None]
        ttl = self.ttl
        apex = self.apex
        nodes = {owner.labels: owner.responses for owner in served}
        for owner in served:
            for ancestor in range(1, len(owner.labels) - len(apex)):
                nodes.setdefault(owner.labels[ancestor:], _EMPTY)
        soa = dns.Record_SOA(
            mname=b".".join(served[0].labels if served else apex),
            rname=b".".join((b"hostmaster",) + apex),
            serial=revision % 2**32,
            refresh=REFRESH,
            retry=RETRY,
            expire=EXPIRE,
            minimum=ttl,
            ttl=ttl,
        )
        top = dict(nodes.get(apex, _EMPTY))
        top[dns.SOA] = Response(dns.OK, True, (_rr(apex, soa, ttl),))
        top[dns.ALL_RECORDS] = Response(dns.OK, True, (_rr(apex, _RFC8482, ttl),))
        if served:
            top[dns.NS] = Response(
                dns.OK,
                True,
                tuple(owner.ns for owner in served),
                additional=tuple(record for owner in served for record in owner.glue),
            )
        nodes[apex] = top
        # RFC 2308 section 3: the negative TTL is the lesser of the SOA's TTL
        # and its minimum field.
        negative = (_rr(apex, soa, min(soa.ttl, soa.minimum)),)
        return _View(
            revision,
            nodes,
            nxdomain=Response(dns.ENAME, True, authority=negative),
            nodata=Response(dns.OK, True, authority=negative),
        )
