"""
The nemesis: five real node processes and one real etcd, each node behind
its own fault proxy, under a seeded random schedule of kill -9 and restart,
SIGSTOP/SIGCONT, delayed, blackholed and cut etcd traffic, partitions just
shorter than the lease's tolerance or twice the lease, SIGHUP, and for the
whole cluster once each an etcd out of space (NOSPACE) and a compaction
while a node is cut off; checked by an observer that trusts nothing the
nodes say about themselves that it cannot verify in etcd's own history,
and a prober that asks every node for every name and judges each answer
against that history.  L{NemesisTests.test_scenarios} plays the cases of
issue 16 one by one, with a newcomer taking a partitioned node's slot.

Reproduce a run with ``NEMESIS_SEED=<seed>`` (printed on failure);
``NEMESIS_SECONDS`` changes the length of the faulty part (default 45);
``NEMESIS_VERBOSE=1`` prints the schedule of a run that passed.  Each run
prints a one-paragraph report: probes, wrong answers, lease losses, double
ownership.  A seed
fixes the schedule of faults; the interleaving of the processes still
varies from run to run.
"""

import bisect
import collections
import itertools
import json
import os
import random
import signal

import attr
import dns.edns
import dns.exception
import dns.message
import dns.rcode
from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from idetcd.etcd import EtcdClient, Event, KeyValue, prefix_range_end
from idetcd.members._record import Member
from idetcd.members._registry import BOOKKEEPING
from idetcd.node._embedded import free_port
from tests.dnsclient import query
from tests.etcdserver import SMALL_QUOTA, fill, free_space, start_etcd
from tests.faultproxy import FaultProxy
from tests.httpendpoints import HttpGetter
from tests.nodes import spawn_node
from tests.waiting import sleep

NODES = 5
LIMIT = 6
LEASE = 3
ROOT_KEY = b"/nemesis/"
PREFIX = b"/nemesis/idetcd/"
FENCE = b"/nemesis/fence"  # watched with the names, outside the nodes' prefix
PATTERN = "worker{}.tf.local."
#: The longest delay of a "delay" fault, each way.
MAX_DELAY = 2.0
#: How far behind etcd an answer not marked stale may be: a node marks its
#: view stale once its watch has been broken, or its keepalives have
#: failed, for a lease TTL; a delayed link adds its delay to what it
#: delivers.  (Answers marked stale, EDE 3, may be as old as the run.)
UNMARKED_STALENESS = LEASE + 2 * MAX_DELAY
#: Every name the prober asks for: each slot, and one past the limit.
NAMES = [PATTERN.format(slot) for slot in range(1, LIMIT + 2)]

COREFILE = """\
.:{$NODE_PORT} {
    bind 127.0.0.1
    ready 127.0.0.1:{$READY_PORT}
    idetcd {
        endpoint {$ETCD_URL}
        limit %d
        pattern worker{{.ID}}.tf.local.
        lease %d
        prefix %s
        address {$NODE_ADDRESS}
    }
}
""" % (LIMIT, LEASE, PREFIX.decode())


def corefile(ttl=None):
    """
    The nodes' Corefile, with C{ttl} if given (a SIGHUP applies it live).
    """
    if ttl is None:
        return COREFILE
    line = "        address {$NODE_ADDRESS}\n"
    return COREFILE.replace(line, f"{line}        ttl {ttl}\n")


@attr.s(frozen=True, auto_attribs=True)
class State:
    """
    One version of a key as etcd's watch reported it: C{lease} 0 when the
    key does not exist.
    """

    revision: int
    lease: int = 0
    node: str = None
    addresses: tuple = ()

    def __str__(self):
        if not self.lease:
            return f"no key (rev {self.revision})"
        return f"lease {self.lease:x} of node {self.node} (rev {self.revision})"


class History:
    """
    Every version of every key under the prefix, from one watch held for
    the whole run, checked as it arrives: no key is put with another lease
    while it exists, except by a restarted node taking over its own dead
    predecessor's key; no lease ever holds two keys.  It also keeps when it
    applied each revision, to judge answers given from a view that may be
    behind, and every key a lease lost.
    """

    def __init__(self, describe_node, violation):
        self.describe_node = describe_node  # node field -> "node3"
        self.violation = violation  # (revision, text) -> None
        self.revision = 0
        self.states = collections.defaultdict(lambda: [State(0)])  # key -> [State]
        self.first_seen = {}  # lease -> revision of its first put
        self.keys_of = collections.defaultdict(set)  # lease -> keys it holds
        self.restarts = collections.defaultdict(list)  # node field -> [(killed at, fence revision)]
        self.losses = []  # (revision, old State): a key deleted or put on another lease
        self.applied = [(0.0, 0)]  # (time, revision), in order
        self._waiting = []  # (revision, Deferred)

    def events(self, events, revision):
        for event in events:
            kv = event.kv
            if kv.key.startswith(PREFIX) and not kv.key.startswith(PREFIX + BOOKKEEPING):
                self._apply(kv, event.deleted)
        self.revision = revision
        self.applied.append((reactor.seconds(), revision))
        still = []
        for wanted, d in self._waiting:
            if revision >= wanted:
                d.callback(revision)
            else:
                still.append((wanted, d))
        self._waiting = still

    def _apply(self, kv, deleted):
        key = kv.key.decode()
        old = self.states[kv.key][-1]
        if old.lease:
            self.keys_of[old.lease].discard(key)
        if old.lease and (deleted or kv.lease != old.lease):
            self.losses.append((kv.mod_revision, old))
        if deleted:
            self.states[kv.key].append(State(kv.mod_revision))
            return
        try:
            member = Member.from_value("", kv.value)
            node, addresses = member.node, tuple(sorted(member.ipv4))
        except ValueError as e:
            node, addresses = f"<unreadable value: {e}>", ()
        new = State(kv.mod_revision, kv.lease, node, addresses)
        self.states[kv.key].append(new)
        self.first_seen.setdefault(kv.lease, kv.mod_revision)
        if old.lease and old.lease != kv.lease and not self._takeover(old, new):
            same = " (the same node, no restart between: not a dead predecessor's key)"
            self.violation(
                kv.mod_revision,
                f"{key} was put with {new} ({self.describe_node(new.node)})"
                f" while it existed with {old} ({self.describe_node(old.node)})"
                + (same if old.node == new.node else ""),
            )
        holding = self.keys_of[kv.lease]
        holding.add(key)
        if len(holding) > 1:
            self.violation(
                kv.mod_revision,
                f"lease {kv.lease:x} ({self.describe_node(node)}) holds {len(holding)} keys:"
                f" {', '.join(sorted(holding))}",
            )

    def _takeover(self, old, new):
        """
        Whether C{new} replaces C{old} as a restarted node taking over its
        dead predecessor's key: the same node, and the old lease first seen
        before a restart fence that comes before the new put.
        """
        return old.node == new.node and any(
            self.first_seen[old.lease] <= fence < new.revision for _, fence in self.restarts[old.node]
        )

    def killed(self, state, revision):
        """
        Whether the process that held C{state} had been killed by
        C{revision}: its node was killed then, and restarted after the
        lease first appeared.
        """
        return any(
            killed <= revision and self.first_seen[state.lease] <= fence
            for killed, fence in self.restarts[state.node]
        )

    def lease_losses(self):
        """
        The keys lost by a lease whose process was not killed: expired or
        taken while the node lived, as (revision, old State).
        """
        return [(revision, old) for revision, old in self.losses if not self.killed(old, revision)]

    def revision_at(self, when):
        """
        The last revision applied at or before time C{when}.
        """
        return self.applied[bisect.bisect_right(self.applied, (when, float("inf"))) - 1][1]

    def contradiction(self, probe, stale_from):
        """
        Why C{probe}'s answer contradicts etcd, or None.  An address for a
        name must be one etcd gave that name: the answering node's own
        address between the probe's revisions (the node let the name go
        at its deadline, before etcd could); another's between
        C{stale_from} and then, or at any time before if marked stale.
        NXDOMAIN, never served stale, needs the key absent in that window.
        SERVFAIL and silence claim nothing.
        """
        key = PREFIX + probe.name.encode("ascii")
        if probe.rcode == dns.rcode.NXDOMAIN:
            if not any(not state.lease for state in self.between(key, stale_from, probe.fence)):
                return "NXDOMAIN while etcd held it"
            return None
        if probe.rcode != dns.rcode.NOERROR or not probe.addresses:
            return None
        if probe.own:
            since = probe.since
        else:
            since = 0 if probe.stale else stale_from
        states = self.between(key, since, probe.fence)
        if any(state.lease and state.addresses == probe.addresses for state in states):
            return None
        whose = "its own address" if probe.own else "an address"
        return f"{whose} {', '.join(probe.addresses)} that etcd never gave it then"

    def former(self, probe, address):
        """
        Whether C{probe} asked a node (at C{address}) for a name it held
        once, while etcd gave it to another node throughout.
        """
        key = PREFIX + probe.name.encode("ascii")
        window = self.between(key, probe.since, probe.fence)
        held_before = any(address in state.addresses for state in self.states[key] if state.revision <= probe.since)
        return held_before and all(state.lease and address not in state.addresses for state in window)

    def between(self, key, since, until):
        """
        The versions of C{key} that may have been current at some moment
        between revisions C{since} and C{until}: the one current at
        C{since}, and every later one up to C{until}.
        """
        states = self.states[key]
        at_since = [s for s in states if s.revision <= since][-1]
        return [at_since] + [s for s in states if since < s.revision <= until]

    def reached(self, revision):
        """
        Fires once every event up to C{revision} has been applied.
        """
        if self.revision >= revision:
            return defer.succeed(self.revision)
        d = defer.Deferred()
        self._waiting.append((revision, d))
        return d


@attr.s(auto_attribs=True)
class Report:
    """
    What a node said on /ready: C{name} on C{lease}, answered between
    C{sent} and C{received}; the watch had applied revision C{since} at
    C{sent}; C{fence} was written after C{received}.
    """

    node: "Node"
    incarnation: int
    sent: float
    received: float
    since: int
    name: str
    lease: int
    fence: int = 0

    def describe(self, t0):
        return (
            f"{self.node.label} (incarnation {self.incarnation}) reported {self.name} on lease"
            f" {self.lease:x} between t={self.sent - t0:.2f}s and t={self.received - t0:.2f}s"
            f" (revisions {self.since}..{self.fence})"
        )


@attr.s(auto_attribs=True)
class Probe:
    """
    One DNS question to C{node} for C{name}, sent at C{sent} when the watch
    had applied revision C{since}, and its answer, received at C{received}
    (C{rcode} None: none in time); C{stale}, marked Extended DNS Error 3;
    C{fence} was written after C{received}.
    """

    node: "Node"
    name: str
    sent: float
    since: int
    received: float = 0.0
    rcode: int = None
    addresses: tuple = ()
    stale: bool = False
    fence: int = 0

    @property
    def own(self):
        return self.node.address in self.addresses

    def describe(self, t0):
        answer = "no reply" if self.rcode is None else dns.rcode.to_text(self.rcode)
        if self.addresses:
            answer += f" {', '.join(self.addresses)}" + (" (marked stale)" if self.stale else "")
        return (
            f"{self.node.label} answered {self.name} with {answer} between t={self.sent - t0:.2f}s and"
            f" t={self.received - t0:.2f}s (revisions {self.since}..{self.fence})"
        )


class Prober(protocol.DatagramProtocol):
    """
    Asks nodes for A records over one UDP socket, with EDNS (to see stale
    marks): no thread per question, so frozen nodes tie nothing up.
    """

    def __init__(self, timeout=1.0):
        self.timeout = timeout
        self.ids = itertools.cycle(range(2**16))
        self.waiting = {}  # (port, id) -> (Deferred, timer)

    def ask(self, port, name):
        """
        Fire with the reply from the node on C{port}, or None after
        C{timeout}.
        """
        message = dns.message.make_query(name, "A", use_edns=0)
        message.id = next(self.ids)
        key = (port, message.id)
        d = defer.Deferred()
        self.waiting[key] = (d, reactor.callLater(self.timeout, self._answer, key, None))
        self.transport.write(message.to_wire(), ("127.0.0.1", port))
        return d

    def datagramReceived(self, data, address):
        try:
            reply = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        self._answer((address[1], reply.id), reply)

    def _answer(self, key, reply):
        d, timer = self.waiting.pop(key, (None, None))
        if d is not None:
            if timer.active():
                timer.cancel()
            d.callback(reply)


@attr.s(eq=False)
class Node:
    """
    One node of the test: its state directory, ports, proxy and address
    survive restarts; C{process} is the current incarnation.
    """

    index = attr.ib()
    state = attr.ib()
    corefile = attr.ib()
    proxy = attr.ib()
    dns_port = attr.ib(factory=free_port)
    ready_port = attr.ib(factory=free_port)
    on_exit = attr.ib(default=None)  # (node, status) for an exit not caused by kill()
    process = attr.ib(default=None)
    incarnation = attr.ib(default=0)
    logs = attr.ib(factory=list)  # every incarnation's output

    @property
    def label(self):
        return f"node{self.index}"

    @property
    def address(self):
        return f"127.0.1.{self.index}"

    @property
    def identity(self):
        try:
            with open(os.path.join(self.state, "node-id")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    @property
    def alive(self):
        return self.process is not None and not self.process.ended.called

    def start(self):
        self.incarnation += 1
        self.process = spawn_node(
            self.corefile,
            self.state,
            dict(
                NODE_PORT=str(self.dns_port),
                READY_PORT=str(self.ready_port),
                ETCD_URL=self.proxy.url,
                NODE_ADDRESS=self.address,
            ),
        )
        self.logs.append(self.process)
        process = self.process
        process.killed = False
        process.ended.addCallback(lambda status: None if process.killed else self.on_exit(self, status))

    def signal(self, sig):
        if self.alive:
            self.process.process.signalProcess(sig)

    @defer.inlineCallbacks
    def kill(self):
        if self.process is not None:
            self.process.killed = True
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.process is not None:
            yield self.process.ended


class NemesisTests(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        seed = os.environ.get("NEMESIS_SEED")
        self.seed = int(seed) if seed else random.SystemRandom().randrange(2**32)
        self.chaos = float(os.environ.get("NEMESIS_SECONDS", "45"))
        self.random = random.Random(self.seed)
        self.t0 = reactor.seconds()
        self.events = []  # (time, text): faults and other happenings, in order
        self.violations = []  # (time, text)
        self.reports = collections.defaultdict(collections.deque)  # name -> recent Reports
        self.tally = collections.Counter()  # the report's counts
        self.last_answer = {}  # (node index, name) -> when the last answered probe was sent
        self.log_folder = None
        self.etcd = yield start_etcd(self, extra_args=SMALL_QUOTA)
        self.client = EtcdClient([self.etcd.client_url], reactor)
        self.addCleanup(self.client.close)
        self.http = HttpGetter(timeout=1.0)
        self.addCleanup(self.http.close)
        self.corefile = os.path.abspath(self.mktemp())
        self.write_corefile()
        self.nodes = []
        for _ in range(NODES):
            self.add_node()
        self.addCleanup(self.stop_nodes)
        self.prober = Prober()
        self.addCleanup(reactor.listenUDP(0, self.prober, interface="127.0.0.1").stopListening)
        self.history = History(self.describe_node, self.etcd_violation)
        _, revision = yield self.client.range(ROOT_KEY, prefix_range_end(ROOT_KEY))
        watch = self.client.watch(ROOT_KEY, prefix_range_end(ROOT_KEY), revision + 1, self.history.events)
        watch.done.addErrback(lambda f: self.note_violation(f"the checker's watch failed: {f.getErrorMessage()}"))
        self.addCleanup(watch.stop)

    def add_node(self):
        """
        One more node of this test, behind a fault proxy of its own, not
        started.
        """
        proxy = FaultProxy(self.etcd.client_port)
        proxy.start()
        self.addCleanup(proxy.close)
        node = Node(len(self.nodes) + 1, os.path.abspath(self.mktemp()), self.corefile, proxy, on_exit=self.exited)
        self.nodes.append(node)
        return node

    def write_corefile(self, ttl=None):
        with open(self.corefile, "w") as f:
            f.write(corefile(ttl))

    @defer.inlineCallbacks
    def stop_nodes(self):
        for node in self.nodes:
            yield node.kill()
        if self.log_folder is None:
            self.save_logs()

    def now(self):
        return reactor.seconds() - self.t0

    def note(self, text):
        self.events.append((self.now(), text))

    def note_violation(self, text):
        self.violations.append((self.now(), text))

    def etcd_violation(self, revision, text):
        self.ownership_violation(f"etcd at revision {revision}: {text}")

    def ownership_violation(self, text):
        self.tally["double ownership"] += 1
        self.note_violation(text)

    def describe_node(self, field):
        for node in self.nodes:
            if field is not None and node.identity == field:
                return node.label
        return "a node outside this test" if field else "no node field"

    def save_logs(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        for node in self.nodes:
            for incarnation, process in enumerate(node.logs, 1):
                path = os.path.join(folder, f"{node.label}-{incarnation}.log")
                with open(path, "wb") as f:
                    f.write(process.output)
        self.log_folder = folder

    # The observer: each node's /ready, checked against etcd's history.

    @defer.inlineCallbacks
    def poll(self, node, pending, running):
        url = f"http://127.0.0.1:{node.ready_port}/ready"
        while running[0]:
            since, sent, incarnation = self.history.revision, reactor.seconds(), node.incarnation
            try:
                code, body = yield self.http.get(url)
            except Exception:
                code = None  # stopped, dead or starting: it says nothing
            if code == 200:
                state = json.loads(body)
                pending.append(
                    Report(node, incarnation, sent, reactor.seconds(), since, state["name"], int(state["lease"], 16))
                )
            elif code not in (None, 503):
                self.note_violation(f"{node.label}: /ready answered {code}: {body[:200]!r}")
            yield sleep(0.1)

    @defer.inlineCallbacks
    def write_fence(self):
        """
        Put the fence key; fire with its revision.  While etcd is out of
        space, again until it takes writes (at most a minute).
        """
        for _ in range(300):
            try:
                revision = yield self.client.put(FENCE, b"")
                return revision
            except Exception as e:
                failure = e
                yield sleep(0.2)
        raise AssertionError(f"etcd refused the fence for a minute: {failure!r}")

    @defer.inlineCallbacks
    def fence(self, pending, running):
        """
        Every ~100 ms, write the fence key and, once the watch has seen it,
        check every report and probe received before the write.
        """
        while running[0] or pending:
            written = reactor.seconds()
            revision = yield self.write_fence()
            batch = [report for report in pending if report.received < written]
            pending[:] = [report for report in pending if report.received >= written]
            # Bounded: a watch that stalls fails the test, never hangs it.
            yield self.history.reached(revision).addTimeout(30, reactor)
            for item in batch:
                item.fence = revision
                (self.check if isinstance(item, Report) else self.judge)(item)
            yield sleep(0.1)

    def check(self, report):
        key = PREFIX + report.name.encode("ascii")
        states = self.history.between(key, report.since, report.fence)
        if not any(state.lease == report.lease for state in states):
            self.ownership_violation(
                f"{report.describe(self.t0)}, but etcd held {report.name} as:"
                f" {'; '.join(str(s) for s in states)}"
            )
        recent = self.reports[report.name]
        while recent and recent[0].received < report.sent - 10:
            recent.popleft()
        for other in recent:
            overlap = other.sent <= report.received and report.sent <= other.received
            if other.node is report.node or not overlap:
                continue
            span = self.history.between(
                key, min(report.since, other.since), max(report.fence, other.fence)
            )
            if len(span) == 1:
                # etcd's key did not change while both answered: they
                # cannot both have held it.
                self.ownership_violation(
                    f"two live nodes reported {report.name} at once: {other.describe(self.t0)};"
                    f" {report.describe(self.t0)}; etcd held it throughout as {span[0]}"
                )
        recent.append(report)

    # The prober: every live node asked for every name, each answer
    # judged against etcd's history.

    @defer.inlineCallbacks
    def probe(self, pending, running):
        """
        Ask every live node for every name, one round at a time (at most
        one question per node and name in flight), until the run ends.
        """
        while running[0]:
            asked = [self.ask(node, name, pending) for node in self.nodes if node.alive for name in NAMES]
            yield defer.gatherResults(asked)
            yield sleep(0.2)

    @defer.inlineCallbacks
    def ask(self, node, name, pending):
        probe = Probe(node, name, reactor.seconds(), self.history.revision)
        reply = yield self.prober.ask(node.dns_port, name)
        probe.received = reactor.seconds()
        if reply is not None:
            probe.rcode = reply.rcode()
            probe.addresses = tuple(sorted(rr.address for rrset in reply.answer for rr in rrset))
            probe.stale = any(option.otype == dns.edns.EDE and option.code == 3 for option in reply.options)
            self.last_answer[node.index, name] = probe.sent
        pending.append(probe)

    def judge(self, probe):
        self.tally["probes"] += 1
        if probe.rcode is None:
            self.tally["unanswered"] += 1
        elif probe.rcode == dns.rcode.SERVFAIL:
            self.tally["servfail"] += 1
        elif probe.stale:
            self.tally["stale"] += 1
        if self.history.former(probe, probe.node.address):
            self.tally["former"] += 1
            self.tally["former servfail"] += probe.rcode == dns.rcode.SERVFAIL
        stale_from = self.history.revision_at(probe.sent - UNMARKED_STALENESS)
        why = self.history.contradiction(probe, stale_from)
        if why is not None:
            self.tally["wrong"] += 1
            key = PREFIX + probe.name.encode("ascii")
            states = self.history.between(key, 0 if probe.stale else stale_from, probe.fence)
            self.note_violation(
                f"wrong answer: {probe.describe(self.t0)}: {why}; etcd held it as"
                f" {'; '.join(str(state) for state in states[-4:])}"
            )

    def report(self):
        """
        The run in one paragraph, for the closing note.
        """
        t = self.tally
        losses = self.history.lease_losses()
        by_node = collections.Counter(self.describe_node(old.node) for _, old in losses)
        lost = ", ".join(f"{label}: {n}" for label, n in sorted(by_node.items()))
        kinds = collections.Counter(kind for _, _, kind, _, _ in self.faults)
        return (
            f"Nemesis report (seed {self.seed}, {self.id().rsplit('.', 1)[-1]}): {len(self.faults)} faults"
            f" ({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}) on {len(self.nodes)} nodes"
            f" over {self.now():.0f}s; {t['probes']} probes of every live node for every name, {t['stale']}"
            f" answered marked stale, {t['servfail']} SERVFAIL, {t['unanswered']} unanswered (a stopped, dead or"
            f" starting node); {t['wrong']} wrong answers; {t['former']} probes of a node for a name it once"
            f" held while etcd gave it to another node ({t['former servfail']} of them SERVFAIL);"
            f" {len(losses)} lease losses by live nodes{f' ({lost})' if lost else ''};"
            f" {len(self.history.losses) - len(losses)} keys lost by killed nodes;"
            f" {t['double ownership']} double ownership."
        )

    # The nemesis.

    def schedule(self):
        """
        The faults, drawn from the seed before anything runs: (start,
        node, kind, duration, parameter); at most three nodes faulty at once
        and one fault per node at a time; once in each run, etcd out of
        space (node None) and a compaction while a node is cut off.
        """
        faults = []
        busy = {node.index: 0.0 for node in self.nodes}
        nospace_at = self.random.uniform(self.chaos / 8, self.chaos * 3 / 4)
        compact_at = self.random.uniform(self.chaos / 8, self.chaos * 3 / 4)
        t = 3.0
        while t < self.chaos:
            if nospace_at is not None and t >= nospace_at:
                faults.append((t, None, "nospace", self.random.uniform(LEASE, 2 * LEASE), None))
                nospace_at = None
            free = [index for index, until in busy.items() if until <= t]
            if len(free) > NODES - 3:
                index = self.random.choice(free)
                if compact_at is not None and t >= compact_at:
                    kind, compact_at = "compact", None
                else:
                    kind = self.random.choice(
                        ["kill", "stop", "stop", "delay", "blackhole", "cut", "partition", "sighup"]
                    )
                if kind == "kill":
                    duration, parameter = self.random.uniform(0.2, 4.0), None
                elif kind == "stop":
                    # Shorter or longer than the lease.
                    duration = self.random.choice(
                        [self.random.uniform(0.5, LEASE - 0.8), self.random.uniform(LEASE + 0.5, 2.5 * LEASE)]
                    )
                    parameter = None
                elif kind == "delay":
                    duration, parameter = self.random.uniform(3, 10), self.random.uniform(0.5, MAX_DELAY)
                elif kind == "partition":
                    # Just within the lease's tolerance, or twice the lease.
                    tolerance = LEASE - LEASE / 3
                    duration = self.random.choice([tolerance - self.random.uniform(0.4, 0.8), 2 * LEASE])
                    parameter = None
                elif kind == "sighup":
                    duration, parameter = 0.0, self.random.choice([None, 7])
                else:
                    duration, parameter = self.random.uniform(1, 8), None
                duration = min(duration, self.chaos + 5 - t)
                faults.append((t, index, kind, duration, parameter))
                busy[index] = t + duration + 0.5
            t += self.random.uniform(0.5, 2.5)
        return faults

    @defer.inlineCallbacks
    def fault(self, node, kind, duration, parameter):
        if kind == "nospace":
            yield self.out_of_space(duration)
            return
        if kind == "kill":
            self.note(f"{node.label}: kill -9 (pid {node.process.process.pid}), restart in {duration:.2f}s")
            yield node.kill()
            killed = self.history.revision
            node.proxy.reset()  # what the dead process had in flight is lost
            yield sleep(duration)
            # Keys put before this revision by this node's identity are a
            # dead predecessor's: taking them over is allowed.  (Out of
            # space, the restart waits for etcd to take the fence.)
            fence = yield self.write_fence()
            if node.identity is not None:
                self.history.restarts[node.identity].append((killed, fence))
            node.start()
            self.note(f"{node.label}: restarted (pid {node.process.process.pid}, fence rev {fence})")
            return
        if kind == "stop":
            self.note(f"{node.label}: SIGSTOP for {duration:.2f}s")
            node.signal(signal.SIGSTOP)
            yield sleep(duration)
            node.signal(signal.SIGCONT)
            self.note(f"{node.label}: SIGCONT")
            return
        if kind == "sighup":
            self.reload(node, parameter)
            return
        if kind == "compact":
            self.note(f"{node.label}: etcd connections cut for {duration:.2f}s, etcd compacted meanwhile")
            node.proxy.cut()
            yield sleep(duration / 2)
            yield self.compact()
            yield sleep(duration / 2)
            node.proxy.restore()
            self.note(f"{node.label}: etcd traffic restored")
            return
        if kind == "delay":
            self.note(f"{node.label}: etcd traffic delayed {parameter:.2f}s each way for {duration:.2f}s")
            node.proxy.delay(parameter)
        elif kind in ("blackhole", "partition"):
            self.note(f"{node.label}: etcd traffic blackholed for {duration:.2f}s ({kind})")
            node.proxy.blackhole()
        else:
            self.note(f"{node.label}: etcd connections cut for {duration:.2f}s")
            node.proxy.cut()
        yield sleep(duration)
        node.proxy.restore()
        self.note(f"{node.label}: etcd traffic restored")

    def reload(self, node, ttl):
        """
        SIGHUP to C{node}, the Corefile rewritten with C{ttl} first; not to
        a node still starting, whose handler is not in place yet (the
        signal's default effect, before it holds a name, is documented).
        """
        self.write_corefile(ttl)
        if not node.alive or b"answers DNS on port" not in node.process.output:
            self.note(f"{node.label}: no SIGHUP, still starting")
            return
        self.note(f"{node.label}: SIGHUP, Corefile with ttl {ttl or 'by default'}")
        node.signal(signal.SIGHUP)

    @defer.inlineCallbacks
    def compact(self):
        """
        Compact etcd's history up to its current revision.
        """
        status = yield self.client.call("/v3/maintenance/status", {})
        revision = status["header"]["revision"]
        yield self.client.call("/v3/kv/compaction", {"revision": revision})
        self.note(f"etcd: compacted at revision {revision}")

    @defer.inlineCallbacks
    def out_of_space(self, duration):
        self.note("etcd: filling up to its quota")
        yield fill(self.etcd)
        self.note(f"etcd: out of space (NOSPACE alarm) for {duration:.2f}s")
        yield sleep(duration)
        yield free_space(self.etcd)
        self.note("etcd: space freed (compacted, defragmented, alarm disarmed)")

    @defer.inlineCallbacks
    def run_schedule(self):
        running = []
        for start, index, kind, duration, parameter in self.faults:
            wait = start - self.now()
            if wait > 0:
                yield sleep(wait)
            running.append(self.fault(index and self.nodes[index - 1], kind, duration, parameter))
        yield defer.gatherResults(running, consumeErrors=True)

    def exited(self, node, status):
        self.note_violation(f"{node.label} exited by itself with status {status}")

    # The end state.

    @defer.inlineCallbacks
    def settled(self, timeout=45):
        """
        Wait until every node reports a name on /ready, names are distinct
        and etcd holds exactly those names on those leases; fire with
        etcd's members, by name, or fail saying what differs.
        """
        for _ in range(int(timeout / 0.5)):
            said = {}
            for node in self.nodes:
                try:
                    code, body = yield self.http.get(f"http://127.0.0.1:{node.ready_port}/ready")
                    said[node.label] = json.loads(body)
                except Exception as e:
                    said[node.label] = repr(e)
            kvs, revision = yield self.client.range(PREFIX, prefix_range_end(PREFIX))
            held = {kv.key[len(PREFIX):].decode(): kv for kv in kvs if not kv.key.startswith(PREFIX + BOOKKEEPING)}
            claims = {
                (state["name"], int(state["lease"], 16))
                for state in said.values()
                if isinstance(state, dict) and state.get("ready")
            }
            if len(claims) == len(self.nodes) and claims == {(name, kv.lease) for name, kv in held.items()}:
                return {name: Member.from_value(name, kv.value) for name, kv in held.items()}
            yield sleep(0.5)
        etcd = {name: f"lease {kv.lease:x}" for name, kv in held.items()}
        self.note_violation(
            f"not settled {timeout}s after the last fault: nodes say {said}; etcd (rev {revision}) holds {etcd}"
        )
        return None

    @defer.inlineCallbacks
    def answers_match(self, members, timeout=15):
        """
        Every node answers every name with etcd's addresses, and every
        other slot with NXDOMAIN.
        """
        names = [PATTERN.format(slot) for slot in range(1, LIMIT + 2)]
        expected = {
            name: sorted(members[name].ipv4) if name in members else "NXDOMAIN" for name in names
        }
        for _ in range(int(timeout / 0.5)):
            wrong = []
            for node in self.nodes:
                for name in names:
                    try:
                        reply = yield query(node.dns_port, name)
                    except Exception as e:
                        got = repr(e)
                    else:
                        got = dns.rcode.to_text(reply.rcode())
                        if reply.rcode() == dns.rcode.NOERROR:
                            got = sorted(rr.address for rr in reply.answer[0]) if reply.answer else []
                    if got != expected[name]:
                        wrong.append(f"{node.label} answers {name} with {got}, etcd says {expected[name]}")
            if not wrong:
                return
            yield sleep(0.5)
        self.note_violation("DNS answers differ from etcd: " + "; ".join(wrong))

    def failure_message(self):
        lines = [
            f"nemesis seed {self.seed}, {self.chaos:.0f}s of faults (reproduce: NEMESIS_SEED={self.seed}"
            f" python -m twisted.trial tests.test_nemesis)",
            f"{len(self.violations)} violation(s):",
        ]
        lines += [f"  t={t:6.2f}s {text}" for t, text in self.violations[:30]]
        if len(self.violations) > 30:
            lines.append(f"  … and {len(self.violations) - 30} more")
        lines.append("faults and events so far:")
        lines += [f"  t={t:6.2f}s {text}" for t, text in self.events]
        lines.append(f"node logs: {self.log_folder}")
        return "\n".join(lines)

    def observe(self, node):
        """
        Poll C{node}'s /ready for the rest of the run.
        """
        self.observers.append(self.poll(node, self.pending, self.running))

    @defer.inlineCallbacks
    def drive(self, play):
        """
        Start the nodes, the observer and the prober, C{play()}, wait for
        the cluster to settle and answer what etcd holds; print the report;
        fail on any violation.
        """
        for node in self.nodes:
            node.start()
        self.pending, self.running = [], [True]
        self.observers = [self.fence(self.pending, self.running), self.probe(self.pending, self.running)]
        for node in self.nodes:
            self.observe(node)
        try:
            yield play()
            self.note("every fault removed")
            members = yield self.settled()
            self.note("settled" if members is not None else "did not settle")
            if members is not None:
                yield self.answers_match(members)
        finally:
            self.running[0] = False
            yield defer.gatherResults(self.observers, consumeErrors=True)
            for node in self.nodes:
                yield node.kill()
            self.save_logs()
            print("\n" + self.report())
        if self.violations:
            self.fail(self.failure_message())
        if os.environ.get("NEMESIS_VERBOSE"):
            print(self.failure_message())

    def test_nemesis(self):
        self.faults = self.schedule()
        return self.drive(self.run_schedule)

    # The cases of issue 16, one at a time.

    @defer.inlineCallbacks
    def holding(self, node):
        """
        The (name, lease) C{node} holds in etcd, or None.
        """
        kvs, _ = yield self.client.range(PREFIX, prefix_range_end(PREFIX))
        for kv in kvs:
            if not kv.key.startswith(PREFIX + BOOKKEEPING) and Member.from_value("", kv.value).node == node.identity:
                return kv.key[len(PREFIX):].decode(), kv.lease
        return None

    @defer.inlineCallbacks
    def until(self, predicate, what, timeout=20):
        """
        Wait until C{predicate()} (a Deferred) is true; a violation if not
        within C{timeout}.
        """
        for _ in range(int(timeout / 0.1)):
            if (yield predicate()):
                return True
            yield sleep(0.1)
        self.note_violation(f"not within {timeout}s: {what}")
        return False

    @defer.inlineCallbacks
    def play_scenarios(self):
        if (yield self.settled()) is None:
            return
        self.note("all five hold names")
        for ttl in (None, 7):
            for node in self.nodes:
                self.faults.append((self.now(), node.index, "sighup", 0.0, ttl))
                self.reload(node, ttl)
            yield sleep(1)

        node = self.nodes[0]
        # Within the tolerance (a lease minus a keepalive period), with a
        # second to spare for a busy box.
        self.faults.append((self.now(), node.index, "partition", LEASE - LEASE / 3 - 1.0, None))
        yield self.fault(node, *self.faults[-1][2:])

        self.faults.append((self.now(), None, "nospace", 2 * LEASE, None))
        yield self.fault(None, *self.faults[-1][2:])

        # Compaction while a node is cut off: its watch resumes from a
        # compacted revision, so it must read everything again, and see a
        # member that went meanwhile.
        lagging = self.nodes[1]
        static = Member("static.tf.local.", ("127.0.2.1",))
        key = PREFIX + static.name.encode("ascii")
        yield self.client.put(key, static.to_value())
        yield self.until(lambda: self.answers(lagging, static.name, ["127.0.2.1"]), "static.tf.local. known")
        self.note(f"{lagging.label}: etcd connections cut, static.tf.local. deleted, etcd compacted")
        self.faults.append((self.now(), lagging.index, "compact", LEASE, None))
        lagging.proxy.cut()
        yield self.client.delete(key)
        yield self.compact()
        yield sleep(1)
        lagging.proxy.restore()
        self.note(f"{lagging.label}: etcd traffic restored")
        yield self.until(lambda: self.answers(lagging, static.name, "NXDOMAIN"), f"{lagging.label} read etcd again")

        # A partition of twice the lease, while a newcomer takes the slot.
        cut_off = self.nodes[2]
        self.former = yield self.holding(cut_off)
        self.faults.append((self.now(), cut_off.index, "partition", 2 * LEASE, None))
        self.note(f"{cut_off.label}: etcd traffic blackholed ({self.former[0]} on lease {self.former[1]:x})")
        cut_off.proxy.blackhole()
        partitioned = reactor.seconds()
        yield self.until(lambda: self.history_lacks(*self.former), f"etcd let {self.former[0]} go")
        newcomer = self.add_node()
        newcomer.start()
        self.observe(newcomer)
        self.note(f"{newcomer.label}: started, fresh")
        yield self.until(lambda: defer.succeed(self.took(newcomer, self.former[0])), f"{newcomer.label} took {self.former[0]}")
        taken = reactor.seconds()
        yield sleep(max(2.0, partitioned + 2 * LEASE - reactor.seconds()))
        # On a busy box a round of probes can outlast the window: keep the
        # cut-off node cut off until it has answered for its former name.
        yield self.until(
            lambda: defer.succeed(self.last_answer.get((cut_off.index, self.former[0]), 0) > taken),
            f"{cut_off.label} was asked for {self.former[0]} while {newcomer.label} held it",
        )
        cut_off.proxy.restore()
        self.note(f"{cut_off.label}: etcd traffic restored")

    def took(self, node, name):
        """
        Whether etcd's history shows C{node} holding C{name}: a node that
        has not yet written its identity (a fresh one on a busy box) holds
        nothing, though a deleted key's holder is none either.
        """
        holder = self.history.states[PREFIX + name.encode("ascii")][-1]
        return node.identity is not None and holder.lease and holder.node == node.identity

    def history_lacks(self, name, lease):
        return defer.succeed(self.history.states[PREFIX + name.encode("ascii")][-1].lease != lease)

    @defer.inlineCallbacks
    def answers(self, node, name, expected):
        reply = yield self.prober.ask(node.dns_port, name)
        if reply is None or reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return False
        if reply.rcode() == dns.rcode.NXDOMAIN:
            return expected == "NXDOMAIN"
        return sorted(rr.address for rrset in reply.answer for rr in rrset) == expected

    @defer.inlineCallbacks
    def test_scenarios(self):
        """
        SIGHUP to every node (the Corefile unchanged, then another ttl), a
        partition just within the lease's tolerance, etcd out of space, a
        compaction while a node is cut off, and a partition of twice the
        lease while a newcomer takes the slot: no wrong answer, no double
        ownership, one lease lost (the long partition's), and the cut-off
        node was asked for its former name while the newcomer held it, and
        answered SERVFAIL (its own address would be a wrong answer).
        """
        self.faults = []
        yield self.drive(self.play_scenarios)
        losses = [(self.describe_node(old.node), old.lease) for _, old in self.history.lease_losses()]
        self.assertEqual(losses, [("node3", self.former[1])])
        self.assertGreater(self.tally["former"], 0)
        self.assertGreater(self.tally["former servfail"], 0)


class HistoryTests(unittest.TestCase):
    """
    The checker's rules on etcd's history, on made-up events: it must flag
    what the nemesis looks for, and nothing a correct cluster does.
    """

    def setUp(self):
        self.violations = []
        self.history = History(lambda field: field, lambda revision, text: self.violations.append(revision))
        self.revision = 0

    def put(self, slot, lease, node, address="127.0.0.1"):
        self.revision += 1
        value = Member(name="", ipv4=(address,), node=node).to_value()
        kv = KeyValue(PREFIX + PATTERN.format(slot).encode(), value, 0, self.revision, lease)
        self.history.events([Event(False, kv)], self.revision)

    def delete(self, slot):
        self.revision += 1
        kv = KeyValue(PREFIX + PATTERN.format(slot).encode(), b"", 0, self.revision, 0)
        self.history.events([Event(True, kv)], self.revision)

    def test_claims_and_expiry_are_fine(self):
        self.put(1, 10, "a")
        self.put(2, 20, "b")
        self.delete(1)
        self.put(1, 30, "b2")
        self.put(1, 30, "b2")  # the same lease may put again
        self.assertEqual(self.violations, [])

    def test_another_node_replacing_a_live_key(self):
        self.put(1, 10, "a")
        self.put(1, 20, "b")
        self.assertEqual(self.violations, [2])

    def test_takeover_of_a_dead_predecessor(self):
        self.put(1, 10, "a")
        self.history.restarts["a"].append((self.revision, self.revision))  # killed and restarted here
        self.put(1, 11, "a")
        self.assertEqual(self.violations, [])
        # A second replacement without another restart: the same process.
        self.put(1, 12, "a")
        self.assertEqual(self.violations, [3])

    def test_lease_with_two_keys(self):
        self.put(1, 10, "a")
        self.put(2, 10, "a")
        self.assertEqual(self.violations, [2])

    def test_versions_between_revisions(self):
        key = PREFIX + PATTERN.format(1).encode()
        self.put(1, 10, "a")  # 1
        self.put(2, 20, "b")  # 2
        self.delete(1)  # 3
        self.put(1, 30, "c")  # 4
        self.assertEqual([s.lease for s in self.history.between(key, 0, 0)], [0])
        self.assertEqual([s.lease for s in self.history.between(key, 2, 2)], [10])
        self.assertEqual([s.lease for s in self.history.between(key, 2, 4)], [10, 0, 30])
        self.assertEqual([s.lease for s in self.history.between(key, 4, 9)], [30])

    def test_lease_losses(self):
        self.put(1, 10, "a")
        self.put(2, 20, "b")
        self.delete(1)  # expired while a lived: lost
        self.history.restarts["b"].append((self.revision, self.revision + 1))  # b killed
        self.revision += 1
        self.put(2, 21, "b")  # b's restart takes its key over: not lost
        self.assertEqual([(revision, old.lease) for revision, old in self.history.lease_losses()], [(3, 10)])
        self.assertEqual(len(self.history.losses), 2)

    def probe(self, address, slot, since, fence, rcode=dns.rcode.NOERROR, addresses=("127.0.0.1",), stale=False):
        node = collections.namedtuple("Node", "address")(address)
        return Probe(node, PATTERN.format(slot), 0.0, since, 0.0, rcode, addresses, stale, fence)

    def test_judging_answers(self):
        self.put(1, 10, "a", "127.0.1.1")  # 1
        self.delete(1)  # 2
        self.put(1, 20, "b", "127.0.1.2")  # 3
        contradiction = self.history.contradiction
        # Node a, its own address for its former name, after etcd gave it to b.
        former = self.probe("127.0.1.1", 1, 3, 4, addresses=("127.0.1.1",))
        self.assertIn("its own address", contradiction(former, 0))
        self.assertTrue(self.history.former(former, "127.0.1.1"))
        # SERVFAIL claims nothing; while etcd still held it, its own address is right.
        self.assertIsNone(contradiction(self.probe("127.0.1.1", 1, 3, 4, dns.rcode.SERVFAIL, ()), 0))
        self.assertIsNone(contradiction(self.probe("127.0.1.1", 1, 1, 4, addresses=("127.0.1.1",)), 0))
        # Another node answering a's address: right within the staleness, or marked stale.
        old = self.probe("127.0.1.3", 1, 3, 4, addresses=("127.0.1.1",))
        self.assertIsNone(contradiction(old, 1))
        self.assertIsNotNone(contradiction(old, 3))
        old.stale = True
        self.assertIsNone(contradiction(old, 3))
        # NXDOMAIN only while the key was absent, never stale.
        self.assertIsNone(contradiction(self.probe("127.0.1.3", 1, 2, 2, dns.rcode.NXDOMAIN, ()), 2))
        self.assertIsNotNone(contradiction(self.probe("127.0.1.3", 1, 3, 4, dns.rcode.NXDOMAIN, ()), 3))
        self.assertIsNone(contradiction(self.probe("127.0.1.3", 2, 3, 4, dns.rcode.NXDOMAIN, ()), 3))
