"""
The nemesis: five real node processes and one real etcd, each node behind
its own fault proxy, under a seeded random schedule of kill -9 and restart,
SIGSTOP/SIGCONT, delayed, blackholed and cut etcd traffic; checked by an
observer that trusts nothing the nodes say about themselves that it cannot
verify in etcd's own history.

Reproduce a run with ``NEMESIS_SEED=<seed>`` (printed on failure);
``NEMESIS_SECONDS`` changes the length of the faulty part (default 45);
``NEMESIS_VERBOSE=1`` prints the schedule of a run that passed.  A seed
fixes the schedule of faults; the interleaving of the processes still
varies from run to run.
"""

import collections
import json
import os
import random
import signal

import attr
import dns.rcode
from twisted.internet import defer, reactor
from twisted.trial import unittest

from idetcd.embedded import free_port
from idetcd.etcd import EtcdClient, Event, KeyValue, prefix_range_end
from idetcd.members import Member
from idetcd.registry import BOOKKEEPING
from tests.etcdserver import start_etcd
from tests.faultproxy import FaultProxy
from tests.test_cluster import query, spawn_node
from tests.test_etcd import sleep
from tests.test_http import HttpGetter

NODES = 5
LIMIT = 6
LEASE = 3
ROOT_KEY = b"/nemesis/"
PREFIX = b"/nemesis/idetcd/"
FENCE = b"/nemesis/fence"  # watched with the names, outside the nodes' prefix
PATTERN = "worker{}.tf.local."

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


@attr.s(frozen=True, auto_attribs=True)
class State:
    """
    One version of a key as etcd's watch reported it: C{lease} 0 when the
    key does not exist.
    """

    revision: int
    lease: int = 0
    node: str = None

    def __str__(self):
        if not self.lease:
            return f"no key (rev {self.revision})"
        return f"lease {self.lease:x} of node {self.node} (rev {self.revision})"


class History:
    """
    Every version of every key under the prefix, from one watch held for
    the whole run, checked as it arrives: no key is put with another lease
    while it exists, except by a restarted node taking over its own dead
    predecessor's key; no lease ever holds two keys.
    """

    def __init__(self, describe_node, violation):
        self.describe_node = describe_node  # node field -> "node3"
        self.violation = violation  # (revision, text) -> None
        self.revision = 0
        self.states = collections.defaultdict(lambda: [State(0)])  # key -> [State]
        self.first_seen = {}  # lease -> revision of its first put
        self.keys_of = collections.defaultdict(set)  # lease -> keys it holds
        self.restarts = collections.defaultdict(list)  # node field -> fence revisions
        self._waiting = []  # (revision, Deferred)

    def events(self, events, revision):
        for event in events:
            kv = event.kv
            if kv.key.startswith(PREFIX) and not kv.key.startswith(PREFIX + BOOKKEEPING):
                self._apply(kv, event.deleted)
        self.revision = revision
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
        if deleted:
            self.states[kv.key].append(State(kv.mod_revision))
            return
        try:
            node = Member.from_value("", kv.value).node
        except ValueError as e:
            node = f"<unreadable value: {e}>"
        new = State(kv.mod_revision, kv.lease, node)
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
            self.first_seen[old.lease] <= fence < new.revision for fence in self.restarts[old.node]
        )

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
        self.log_folder = None
        self.etcd = yield start_etcd(self)
        self.client = EtcdClient([self.etcd.client_url], reactor)
        self.addCleanup(self.client.close)
        self.http = HttpGetter(timeout=1.0)
        self.addCleanup(self.http.close)
        corefile = os.path.abspath(self.mktemp())
        with open(corefile, "w") as f:
            f.write(COREFILE)
        etcd_port = int(self.etcd.client_url.rsplit(":", 1)[1])
        self.nodes = []
        for index in range(1, NODES + 1):
            proxy = FaultProxy(etcd_port)
            proxy.start()
            self.addCleanup(proxy.close)
            self.nodes.append(
                Node(index, os.path.abspath(self.mktemp()), corefile, proxy, on_exit=self.exited)
            )
        self.addCleanup(self.stop_nodes)
        self.history = History(self.describe_node, self.etcd_violation)
        _, revision = yield self.client.range(ROOT_KEY, prefix_range_end(ROOT_KEY))
        watch = self.client.watch(ROOT_KEY, prefix_range_end(ROOT_KEY), revision + 1, self.history.events)
        watch.done.addErrback(lambda f: self.note_violation(f"the checker's watch failed: {f.getErrorMessage()}"))
        self.addCleanup(watch.stop)

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
        self.note_violation(f"etcd at revision {revision}: {text}")

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
    def fence(self, pending, running):
        """
        Every ~100 ms, write the fence key and, once the watch has seen it,
        check every report received before the write.
        """
        while running[0] or pending:
            written = reactor.seconds()
            try:
                revision = yield self.client.put(FENCE, b"")
            except Exception as e:
                self.note(f"checker: fence write failed ({e!r}); again")
                continue
            batch = [report for report in pending if report.received < written]
            pending[:] = [report for report in pending if report.received >= written]
            # Bounded: a watch that stalls fails the test, never hangs it.
            yield self.history.reached(revision).addTimeout(30, reactor)
            for report in batch:
                report.fence = revision
                self.check(report)
            yield sleep(0.1)

    def check(self, report):
        key = PREFIX + report.name.encode("ascii")
        states = self.history.between(key, report.since, report.fence)
        if not any(state.lease == report.lease for state in states):
            self.note_violation(
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
                self.note_violation(
                    f"two live nodes reported {report.name} at once: {other.describe(self.t0)};"
                    f" {report.describe(self.t0)}; etcd held it throughout as {span[0]}"
                )
        recent.append(report)

    # The nemesis.

    def schedule(self):
        """
        The faults, drawn from the seed before anything runs: (start,
        node, kind, duration, parameter); at most three nodes faulty at once
        and one fault per node at a time.
        """
        faults = []
        busy = {node.index: 0.0 for node in self.nodes}
        t = 3.0
        while t < self.chaos:
            free = [index for index, until in busy.items() if until <= t]
            if len(free) > NODES - 3:
                index = self.random.choice(free)
                kind = self.random.choice(["kill", "stop", "stop", "delay", "blackhole", "cut"])
                if kind == "kill":
                    duration, parameter = self.random.uniform(0.2, 4.0), None
                elif kind == "stop":
                    # Shorter or longer than the lease.
                    duration = self.random.choice(
                        [self.random.uniform(0.5, LEASE - 0.8), self.random.uniform(LEASE + 0.5, 2.5 * LEASE)]
                    )
                    parameter = None
                elif kind == "delay":
                    duration, parameter = self.random.uniform(3, 10), self.random.uniform(0.5, 2.0)
                else:
                    duration, parameter = self.random.uniform(1, 8), None
                duration = min(duration, self.chaos + 5 - t)
                faults.append((t, index, kind, duration, parameter))
                busy[index] = t + duration + 0.5
            t += self.random.uniform(0.5, 2.5)
        return faults

    @defer.inlineCallbacks
    def fault(self, node, kind, duration, parameter):
        if kind == "kill":
            self.note(f"{node.label}: kill -9 (pid {node.process.process.pid}), restart in {duration:.2f}s")
            yield node.kill()
            node.proxy.reset()  # what the dead process had in flight is lost
            yield sleep(duration)
            # Keys put before this revision by this node's identity are a
            # dead predecessor's: taking them over is allowed.
            fence = yield self.client.put(FENCE, b"")
            if node.identity is not None:
                self.history.restarts[node.identity].append(fence)
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
        if kind == "delay":
            self.note(f"{node.label}: etcd traffic delayed {parameter:.2f}s each way for {duration:.2f}s")
            node.proxy.delay(parameter)
        elif kind == "blackhole":
            self.note(f"{node.label}: etcd traffic blackholed for {duration:.2f}s")
            node.proxy.blackhole()
        else:
            self.note(f"{node.label}: etcd connections cut for {duration:.2f}s")
            node.proxy.cut()
        yield sleep(duration)
        node.proxy.restore()
        self.note(f"{node.label}: etcd traffic restored")

    @defer.inlineCallbacks
    def run_schedule(self, faults):
        running = []
        for start, index, kind, duration, parameter in faults:
            wait = start - self.now()
            if wait > 0:
                yield sleep(wait)
            running.append(self.fault(self.nodes[index - 1], kind, duration, parameter))
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
            if len(claims) == NODES and claims == {(name, kv.lease) for name, kv in held.items()}:
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

    @defer.inlineCallbacks
    def test_nemesis(self):
        faults = self.schedule()
        for node in self.nodes:
            node.start()
        pending, running = [], [True]
        observers = [self.poll(node, pending, running) for node in self.nodes]
        observers.append(self.fence(pending, running))
        try:
            yield self.run_schedule(faults)
            self.note("every fault removed")
            members = yield self.settled()
            self.note("settled" if members is not None else "did not settle")
            if members is not None:
                yield self.answers_match(members)
        finally:
            running[0] = False
            yield defer.gatherResults(observers, consumeErrors=True)
            for node in self.nodes:
                yield node.kill()
            self.save_logs()
        if self.violations:
            self.fail(self.failure_message())
        if os.environ.get("NEMESIS_VERBOSE"):
            print(self.failure_message())


class HistoryTests(unittest.TestCase):
    """
    The checker's rules on etcd's history, on made-up events: it must flag
    what the nemesis looks for, and nothing a correct cluster does.
    """

    def setUp(self):
        self.violations = []
        self.history = History(lambda field: field, lambda revision, text: self.violations.append(revision))
        self.revision = 0

    def put(self, slot, lease, node):
        self.revision += 1
        value = Member(name="", ipv4=("127.0.0.1",), node=node).to_value()
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
        self.history.restarts["a"].append(self.revision)  # killed and restarted here
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
