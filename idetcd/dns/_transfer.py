"""
Zone transfers to secondaries: AXFR (RFC 5936), IXFR (RFC 1995) and
NOTIFY (RFC 1996), for the C{transfer} directive.

The zone's serial is the etcd revision of the last change to the members
(see L{idetcd.dns._authority.ZoneAuthority}): it grows across restarts, and
a serial names the zone as etcd held it at that revision, whichever node
serves it, so a secondary can move between nodes.  L{ZoneTransfer} keeps a
copy of the zone's records as the registry changes, and a bounded journal
of the differences between versions, from which an IXFR is answered; a
client whose version the journal does not reach gets the whole zone.

A transfer is a list of messages, each built only when the connection is
ready for it (one per reactor turn), so a zone of 10,000 members never
holds the reactor for long, and a client that does not read stops it.
"""

from __future__ import annotations

import collections
import ipaddress
import struct
import time

import attr
from twisted.internet import defer, protocol
from twisted.names import dns

from idetcd.dns import _wire as wire

#: The most records (added and deleted) the journal keeps; older versions
#: go first, and a client that holds one of them gets the whole zone.
JOURNAL_RECORDS = 100_000
#: At most one NOTIFY round per this many seconds: a storm of changes
#: brings one NOTIFY, for the serial at its end.
NOTIFY_INTERVAL = 1.0
#: An unanswered NOTIFY is sent again after 2, 4, 8, 16, 32 s (RFC 1996
#: section 3.6 leaves the timing to the operator; secondaries check the
#: SOA at its refresh anyway).
NOTIFY_RETRIES = 5
NOTIFY_FIRST_RETRY = 2.0
NOTIFY = 4
_NOTIFY_FLAGS = NOTIFY << 11 | wire.AA
# A record's owner takes at most 255 bytes written out, its header 10.
_RECORD_MOST = 255 + 10
_now = time.perf_counter_ns


def _newer(a, b):
    """
    Whether serial C{a} is newer than C{b} (RFC 1982 serial arithmetic).
    """
    return a != b and (a - b) % 2**32 < 2**31


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Version:
    """
    One step in the journal: from the zone at C{old} (its SOA data
    C{old_soa}) to the zone at C{new}, deleting and adding records, each
    (labels, type, data).
    """

    old: int
    old_soa: bytes
    deleted: tuple
    new: int
    new_soa: bytes
    added: tuple


@attr.s(frozen=True, slots=True)
class _Node:
    """
    The records at one node of the zone: C{entries} holds each record
    object by its id(), with its (type, data); C{counts} how many records
    have each (type, data).  Replaced, never changed, so a transfer under
    way keeps the zone as it started.
    """

    entries = attr.ib(factory=dict)
    counts = attr.ib(factory=dict)

    def follow(self, records):
        """
        The node holding C{records} now, and the (type, data) it lost and
        gained; L{None} if nothing changed.  Members that did not change
        keep their record objects, so only new ones are read: a change
        costs little even in an SRV RRset of 10,000 records.
        """
        present = dict(zip(map(id, records), records))
        gone = self.entries.keys() - present.keys()
        new = present.keys() - self.entries.keys()
        if not gone and not new:
            return None
        entries, counts = dict(self.entries), dict(self.counts)
        lost, gained = set(), set()
        for key in gone:
            _, data = entries.pop(key)
            counts[data] -= 1
            if not counts[data]:
                del counts[data]
                lost.add(data)
        for key in new:
            record = present[key]
            data = (record.type, wire.rdata(record.payload))
            entries[key] = (record, data)
            counts[data] = counts.get(data, 0) + 1
            if counts[data] == 1:
                gained.add(data)
        # A record made again the same is neither lost nor gained.
        return _Node(entries, counts), lost - gained, gained - lost


_EMPTY_NODE = _Node()


@attr.s(eq=False)
class ZoneTransfer:
    """
    Answers AXFR and IXFR for C{authority}'s zone to clients within
    C{allowed} (networks; L{None} in it allows everyone), and sends NOTIFY
    to C{targets} ((host, port)s) when the zone changes.

    L{changed} must follow every update of the authority (the DNS server
    calls it with what the update touched).
    """

    authority = attr.ib()
    allowed = attr.ib(converter=tuple)
    targets = attr.ib(converter=tuple, default=())
    journal_records = attr.ib(default=JOURNAL_RECORDS)
    #: How many records the largest message of a transfer held, and how
    #: long (ns) building the slowest one took, for tests and the bench.
    largest_message = attr.ib(init=False, default=0)
    slowest_build = attr.ib(init=False, default=0)
    _nodes = attr.ib(init=False, factory=dict)  # labels -> _Node
    _size = attr.ib(init=False, default=0)  # records in the zone, SOA left out
    _soa = attr.ib(init=False, default=None)  # (serial, SOA data) or None
    _journal = attr.ib(init=False, factory=collections.deque)
    _journaled = attr.ib(init=False, default=0)  # records in the journal
    _unjournaled = attr.ib(init=False, default=False)
    _pending = attr.ib(init=False, factory=set)  # nodes touched since catch_up
    _everything = attr.ib(init=False, default=True)  # or every node
    _notifier = attr.ib(init=False, default=None)

    def serves(self, labels):
        """
        Whether lower-case C{labels} name the zone transferred.
        """
        return labels == self.authority.apex

    def allows(self, peer):
        """
        Whether the client at address C{peer} may transfer the zone.
        """
        if None in self.allowed:
            return True
        address = ipaddress.ip_address(peer.partition("%")[0])
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed)

    @property
    def serial(self):
        """
        The zone's serial now, or L{None} while it is not known.
        """
        self.catch_up()
        return None if self._soa is None else self._soa[0]

    def changed(self, nodes):
        """
        Note an update of the authority that touched the nodes C{nodes}
        (labels), or every node (L{None}), and NOTIFY the secondaries.  The
        journal catches up when next needed (a transfer, a NOTIFY round),
        so a storm of changes costs one comparison per round, not one per
        change.
        """
        if nodes is None or len(self._pending) > len(self._nodes):
            self._everything = True
            self._pending.clear()
        elif not self._everything:
            self._pending.update(nodes)
        if self._notifier is not None:
            self._notifier.changed()

    def catch_up(self):
        """
        Bring the copy of the zone up to the authority's, and record the
        difference in the journal as one version when the serial moved.
        """
        soa = self.authority.soa()
        if soa is None or self.authority.view.stale:
            # What changes meanwhile is taken in whole when the view is
            # current again (the authority is rebuilt then), as one version.
            return
        if self._everything:
            nodes = set(self._nodes) | set(self.authority.zone_nodes())
        else:
            nodes = self._pending
        self._pending, self._everything = set(), False
        deleted, added = [], []
        for labels in nodes:
            node = self._nodes.get(labels, _EMPTY_NODE).follow(self.authority.zone_records(labels))
            if node is None:
                continue
            node, gone, new = node
            deleted += [(labels, *key) for key in gone]
            added += [(labels, *key) for key in new]
            if node.entries:
                self._nodes[labels] = node
            else:
                del self._nodes[labels]
        self._size += len(added) - len(deleted)
        serial, soa_data = soa.payload.serial, wire.rdata(soa.payload)
        old = self._soa
        self._soa = (serial, soa_data)
        if old is None:
            return
        if old[0] == serial:
            if deleted or added or old[1] != soa_data:
                # A change with no new serial (a reload's ttl or
                # nameservers): secondaries at this serial may hold either,
                # so no difference from it can be given.
                self._unjournaled = True
            return
        if self._unjournaled:
            self._unjournaled = False
            self._journal.clear()
            self._journaled = 0
        else:
            self._journal.append(_Version(old[0], old[1], tuple(deleted), serial, soa_data, tuple(added)))
            self._journaled += len(deleted) + len(added)
            while self._journaled > self.journal_records:
                dropped = self._journal.popleft()
                self._journaled -= len(dropped.deleted) + len(dropped.added)

    def respond(self, query, tcp):
        """
        The answer to an AXFR or IXFR C{query} from an allowed client, over
        TCP or not: (rcode, an iterator of reply messages, each built when
        asked for).  Over UDP an AXFR is refused (RFC 5936 section 4.2)
        and an IXFR gets the current SOA alone, which tells the client to
        ask again over TCP (RFC 1995 section 2); so does an IXFR from a
        client as new as the zone.
        """
        self.catch_up()
        view = self.authority.view
        if self._soa is None or view.stale or view.expired:
            # Nothing a secondary should keep for the SOA's expire time.
            return dns.ESERVER, iter([self._error(query, dns.ESERVER)])
        if query.type == dns.AXFR:
            if not tcp:
                return dns.EREFUSED, iter([self._error(query, dns.EREFUSED)])
            return dns.OK, self._messages(query, self._full())
        serial = self._soa[0]
        if not tcp or (query.serial is not None and not _newer(serial, query.serial)):
            return dns.OK, self._messages(query, iter([self._soa_record(self._soa)]))
        versions = self._since(query.serial)
        if versions is None:
            return dns.OK, self._messages(query, self._full())
        return dns.OK, self._messages(query, self._incremental(versions))

    def _since(self, serial):
        """
        The journal's versions from C{serial} on, or L{None} when it does
        not reach back to it, or when they hold more records than the zone
        (RFC 1995 section 2 allows the whole zone then).
        """
        if serial is None:
            return None
        versions = []
        size = 0
        for version in reversed(self._journal):
            versions.append(version)
            size += len(version.deleted) + len(version.added)
            if size > self._size:
                return None
            if version.old == serial:
                versions.reverse()
                return versions
        return None

    def _soa_record(self, soa):
        return (self.authority.apex, dns.SOA, soa[1])

    def _full(self):
        """
        The records of an AXFR: the SOA, every other record, the SOA again,
        as the zone is now, whatever changes while they are sent.
        """
        soa = self._soa_record(self._soa)
        nodes = list(self._nodes.items())
        yield soa
        for labels, node in nodes:
            for type, data in node.counts:
                yield (labels, type, data)
        yield soa

    def _incremental(self, versions):
        """
        The records of an IXFR (RFC 1995 section 4): the current SOA, each
        version's old SOA, deletions, new SOA and additions, the current
        SOA again.
        """
        current = self._soa_record(self._soa)
        yield current
        for version in versions:
            yield self._soa_record((version.old, version.old_soa))
            yield from version.deleted
            yield self._soa_record((version.new, version.new_soa))
            yield from version.added
        yield current

    def _header(self, query, rcode, answers, question=True, opt=b""):
        flags = wire.QR | query.flags & (wire.RD | wire.CD) | (wire.AA if rcode == dns.OK else 0) | rcode
        return wire.HEADER.pack(query.id, flags, 1 if question else 0, answers, 0, 1 if opt else 0)

    def _error(self, query, rcode):
        """
        A reply with C{rcode}, the question and no records.
        """
        opt = b"" if query.edns is None else wire.opt_record(rcode, query.edns)
        return self._header(query, rcode, 0, opt=opt) + query.question + opt

    def _messages(self, query, records):
        """
        Reply messages of at most 65,535 bytes holding C{records}, each
        built when the next is asked for; the question is in the first
        (RFC 5936 section 2.2.1).
        """
        ttl = self.authority.ttl
        opt = b"" if query.edns is None else wire.opt_record(dns.OK, query.edns)
        room = wire.MAX_MESSAGE - wire.HEADER.size - len(opt)
        record = next(records)
        question = query.question
        while record is not None:
            started = _now()
            message = wire.Message(query.labels if question else (), question)
            count = 0
            while record is not None and (
                count == 0 or len(message.data) + _RECORD_MOST + len(record[2]) <= room
            ):
                message.raw(record[0], record[1], ttl, record[2])
                count += 1
                record = next(records, None)
            self.largest_message = max(self.largest_message, count)
            head = self._header(query, dns.OK, count, bool(question), opt)
            self.slowest_build = max(self.slowest_build, _now() - started)
            question = b""
            yield head + bytes(message.data) + opt

    def start(self, reactor, report):
        """
        Send NOTIFY from now on, if there is anyone to send it to.
        """
        if self.targets:
            self._notifier = _Notifier(self, reactor, report)
            self._notifier.start()

    def stop(self):
        """
        Stop sending NOTIFY; fires once its sockets are closed.
        """
        notifier, self._notifier = self._notifier, None
        return defer.succeed(None) if notifier is None else notifier.stop()

    def notify_message(self, id):
        """
        A NOTIFY for the zone's current serial, its SOA in the answer
        section (RFC 1996 section 3.7).
        """
        apex = self.authority.apex
        question = wire.name(apex) + wire.TYPE_CLASS.pack(dns.SOA, dns.IN)
        message = wire.Message(apex, question)
        message.raw(apex, dns.SOA, self.authority.ttl, self._soa[1])
        return wire.HEADER.pack(id, _NOTIFY_FLAGS, 1, 1, 0, 0) + bytes(message.data)


_ID = struct.Struct("!HH")


class _Notifier(protocol.DatagramProtocol):
    """
    Sends NOTIFY to the transfer's targets: at most one round per
    L{NOTIFY_INTERVAL}, each message sent again until its target answers
    or L{NOTIFY_RETRIES} retries went unanswered.  A new round replaces
    the retries of the one before: it names a newer serial.
    """

    noisy = False

    def __init__(self, transfer, reactor, report):
        self._transfer = transfer
        self._reactor = reactor
        self._report = report
        self._ports = {}  # address family -> listening UDP port
        self._round = None  # the timer of the next round
        self._last = None  # when the last round was sent
        self._pending = {}  # (id, (host, port)) -> retry timer
        self._ids = 0
        self._notified = None  # the serial of the last round

    def start(self):
        for host, _ in self._transfer.targets:
            interface = "::" if ":" in host else "0.0.0.0"
            if interface not in self._ports:
                self._ports[interface] = self._reactor.listenUDP(0, self, interface=interface)
        # A node that starts tells the secondaries its serial (RFC 1996
        # section 4.7 suggests it): they may hold an older one.
        self.changed()

    def stop(self):
        if self._round is not None and self._round.active():
            self._round.cancel()
        self._round = None
        for timer in self._pending.values():
            if timer.active():
                timer.cancel()
        self._pending.clear()
        ports, self._ports = list(self._ports.values()), {}
        return defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])

    def changed(self):
        if self._round is not None and self._round.active():
            return  # the coming round sends the serial as it is then
        now = self._reactor.seconds()
        delay = 0 if self._last is None else max(0, self._last + NOTIFY_INTERVAL - now)
        self._round = self._reactor.callLater(delay, self._send_round)

    def _send_round(self):
        self._round = None
        self._transfer.catch_up()
        if self._transfer.serial in (None, self._notified):
            return
        self._notified = self._transfer.serial
        self._last = self._reactor.seconds()
        for timer in self._pending.values():
            if timer.active():
                timer.cancel()
        self._pending.clear()
        for target in self._transfer.targets:
            self._ids = (self._ids + 1) % 0x10000
            self._send(self._ids, target, 0)

    def _send(self, id, target, tries):
        host, port = target
        interface = "::" if ":" in host else "0.0.0.0"
        try:
            self._ports[interface].write(self._transfer.notify_message(id), (host, port))
        except OSError as e:
            self._report("notify-send", "NOTIFY to {host} port {port} not sent: {why}", host=host, port=port, why=str(e))
        if tries < NOTIFY_RETRIES:
            delay = NOTIFY_FIRST_RETRY * 2**tries
            self._pending[id, target] = self._reactor.callLater(delay, self._send, id, target, tries + 1)
        else:
            self._pending.pop((id, target), None)
            self._report(
                "notify-lost", "NOTIFY to {host} port {port}: no answer after {tries} retries",
                host=host, port=port, tries=tries,
            )

    def datagramReceived(self, data, address):
        if len(data) < wire.HEADER.size:
            return
        id, flags = _ID.unpack_from(data)
        if not flags & wire.QR or (flags & wire.OPCODE) >> 11 != NOTIFY:
            return
        host = ipaddress.ip_address(address[0].partition("%")[0]).compressed
        timer = self._pending.pop((id, (host, address[1])), None)
        if timer is not None and timer.active():
            timer.cancel()
