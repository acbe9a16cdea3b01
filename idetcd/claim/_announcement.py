"""
What a node announces with its name: its addresses (found without
blocking when the Corefile does not say), its DNS port, its identity and
its srv port.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

import attr
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from idetcd.common import EXIT_UNAVAILABLE
from idetcd.members import Member

log = Logger()


class NoAddress(Exception):
    """
    No address to announce could be found, and the Corefile gives none.
    """

    exit_status = EXIT_UNAVAILABLE

#: Documentation addresses (RFC 5737, RFC 3849): connecting a UDP socket
#: to one picks the default route's source address, and sends nothing.
_ELSEWHERE = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


def _source_address(host, family):
    """
    The local address this machine uses to reach C{host}: what a UDP
    socket gets bound to when connected there (no packet is sent).
    """
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return s.getsockname()[0]


def announced_address(host, family):
    """
    The address to announce for a node that reaches etcd at C{host}: the
    one it reaches etcd from, unless that is loopback (etcd, or a proxy to
    it, on this machine), where other nodes need the default route's.
    """
    address = _source_address(host, family)
    if ipaddress.ip_address(address).is_loopback:
        try:
            address = _source_address(_ELSEWHERE[family], family)
        except OSError:
            pass  # no route out: loopback is all there is
    return address




@attr.s(frozen=True)
class Announcement:
    """
    What a node's claimer writes with its name and where its claim starts:
    C{member} (the member value; its name is ignored), C{preferred} (a slot
    name to try first, such as the one held before a restart) and
    C{predecessor_lease} (the lease this node's previous process held,
    given only when that process is known to have ended: a key on it is
    taken over at once).
    """

    member = attr.ib()
    preferred = attr.ib(default=None)
    predecessor_lease = attr.ib(default=None)


@attr.s(eq=False)
class NodeIdentity(Service):
    """
    Finds, at each start, what the node's claimer announces and where it
    starts looking: the member value (addresses, DNS port, identity, srv
    port), the name held last and the lease of the previous run.  Its
    C{startService} returns a Deferred, so the claimer after it in the node
    starts only once this is known; L{announcement} gives it the claimer.

    C{member} is what the node announces, once started.
    """

    settings = attr.ib()
    state = attr.ib()
    dns = attr.ib()
    client = attr.ib()
    reactor = attr.ib()
    embedded = attr.ib(default=False)
    _found = attr.ib(default=None, init=False)

    def startService(self):
        Service.startService(self)
        return self._find()

    def announcement(self):
        """
        The L{Announcement} found at this start.
        """
        return self._found

    @property
    def member(self):
        return None if self._found is None else self._found.member

    @defer.inlineCallbacks
    def _find(self):
        settings = self.settings
        addresses = list(settings.addresses)
        if not addresses:
            addresses = yield self._detect_addresses()
        member = Member(
            name="",
            ipv4=tuple(a for a in addresses if ":" not in a),
            ipv6=tuple(a for a in addresses if ":" in a),
            port=str(self.dns.port),
            node=settings.node or self.state.node_id(),
            srv=settings.srv,
        )
        self._found = Announcement(member, self.state.last_name(), self.state.predecessor_lease())

    @defer.inlineCallbacks
    def _detect_addresses(self):
        """
        The address this node reaches etcd from, found without blocking:
        the host name is resolved by the reactor's resolver.
        """
        if self.embedded:
            return ["127.0.0.1"]
        errors = []
        for endpoint in self.client.endpoints:
            host = urlsplit(endpoint).hostname
            try:
                ip = yield self.reactor.resolve(host) if ":" not in host else defer.succeed(host)
                family = socket.AF_INET6 if ":" in ip else socket.AF_INET
                address = announced_address(ip, family)
            except Exception as e:
                errors.append(f"{host}: {e}")
                continue
            if address.lower().startswith("fe80:"):
                errors.append(f"{host}: only a link-local address reaches it")
                continue
            log.info("announcing {address} (set 'address' to choose)", address=address)
            return [address]
        raise NoAddress(
            "cannot tell which address to announce (" + "; ".join(errors) + "); set 'address'"
        )
