"""
Agreed rounds with real nodes: every node that asks ``idetcd env
--nnodes`` gets the same world, dead members are left out before etcd
expires them, and ranks hold.  Real etcd, real ``twistd idetcd`` processes,
the ``idetcd`` command run as users run it.
"""

import json
import os
import signal

from twisted.internet import defer, reactor
from twisted.trial import unittest

from idetcd.cli._commands import EXIT_ETCD, EXIT_NO_SPEC, EXIT_SPARE, EXIT_TIMEOUT
from idetcd.etcd import EtcdClient, KeyValue, LeaseInfo
from idetcd.members._record import Member
from idetcd.members._registry import Registry, dead_key
from idetcd.node._embedded import free_port
from idetcd.training import rounds
from idetcd.training._clusterspec import ClusterSpec, Local
from idetcd.training.liveness import overdue
from idetcd.training.rounds import (
    PROPOSERS,
    Round,
    RoundKeeper,
    parse_nnodes,
    round_key,
)
from tests.commands import CommandCase
from tests.etcdserver import enable_auth, handled, start_etcd, start_secure_etcd
from tests.inprocess import start_node
from tests.memberdata import write_members
from tests.waiting import sleep, wait_for

#: Lease 6 unless a test says otherwise: a live node renews every 2 s and
#: is counted dead 3 s after its last renewal; room for a busy 2-core box.
ROUND_COREFILE = """\
.:{$NODE_PORT} {
    bind 127.0.0.1
    idetcd {
        endpoint {$ETCD_URL}
        limit 8
        pattern worker{{.ID}}.tf.local.
        lease 6
        address 127.0.0.1
        srv 2222
%s    }
}
"""

PREFIX = b"/idetcd/"

#: For tests that show a dead member left out while etcd still holds its
#: key: overdue 15 s after its last renewal, its key there at least 20 s
#: after the kill, which leaves a busy box 5 s to show it.
LONG_LEASE = 30


class RoundCase(CommandCase):

    timeout = 180

    def job_corefile(self, settings="", lease=6):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(ROUND_COREFILE.replace("lease 6", f"lease {lease}") % settings)
        return path

    @defer.inlineCallbacks
    def nodes(self, count, corefile):
        """
        Start C{count} nodes one after another, so their slots are 1 to
        C{count} in start order.
        """
        started = []
        for _ in range(count):
            node = self.node(corefile)
            node.name = yield self.wait_claimed(node)
            started.append(node)
        self.assertEqual([n.name for n in started], [f"worker{i}.tf.local." for i in range(1, count + 1)])
        return started

    @defer.inlineCallbacks
    def ask(self, nodes, *args, **kwargs):
        """
        Run C{idetcd env --format json ARGS} for every node at once; returns
        {node name: (status, JSON or None, output)}.
        """
        runs = [
            self.idetcd(
                "env", "--format", "json", *args, "--corefile", node.corefile, "--state", node.state,
                **kwargs,
            )
            for node in nodes
        ]
        results = yield defer.gatherResults(runs)
        return {
            node.name: (status, json.loads(out) if status == 0 else None, output)
            for node, (status, out, output) in zip(nodes, results)
        }

    def assert_one_world(self, answers, names, number):
        """
        The nodes in C{names} print one and the same round C{number} with
        exactly C{names}, in slot order, and ranks 0 to N-1; returns it.
        """
        worlds = {name: answers[name][1] for name in names}
        for name, (status, _, output) in answers.items():
            if name in names:
                self.assertEqual(status, 0, output)
        first = worlds[names[0]]
        for name, world in worlds.items():
            self.assertEqual((world["round"], world["members"]), (first["round"], first["members"]), name)
            self.assertEqual(world["world_size"], len(names))
            self.assertEqual(world["members"][world["index"]]["name"], name)
        self.assertEqual(first["round"], number)
        self.assertEqual([m["name"] for m in first["members"]], names)
        self.assertEqual(sorted(world["index"] for world in worlds.values()), list(range(len(names))))
        self.assertEqual(first["master"], names[0].rstrip("."))
        return first

    def assert_spare(self, answers, name, number):
        status, _, output = answers[name]
        self.assertEqual(status, EXIT_SPARE, output)
        self.assertIn(f"idetcd: spare: {name} is not in round {number} of job 'worker'", output)
        self.assertNotIn("Traceback", output)

    @defer.inlineCallbacks
    def until_marked(self, client, name, marked=True):
        """
        Wait until etcd holds a dead mark for C{name} (or, with C{marked}
        false, none); returns the mark's lease.
        """
        for _ in range(200):  # 40 s
            kvs, _ = yield client.range(dead_key(PREFIX, name))
            if bool(kvs) == marked:
                return kvs[0].lease if kvs else None
            yield sleep(0.2)
        self.fail(f"{name} was {'never' if marked else 'still'} marked dead")

    def etcd_client(self):
        client = EtcdClient([self.etcd.client_url], reactor)
        self.addCleanup(client.close)
        return client


class AgreementTests(RoundCase):

    @defer.inlineCallbacks
    def test_five_nodes_four_places_then_a_member_dies(self):
        corefile = self.job_corefile(lease=LONG_LEASE)
        nodes = yield self.nodes(5, corefile)
        names = [node.name for node in nodes]

        # All five ask at once: four get one world, the fifth is a spare.
        answers = yield self.ask(nodes, "--nnodes", "4")
        self.assert_one_world(answers, names[:4], 1)
        self.assert_spare(answers, names[4], 1)
        # Asked again while everyone lives: the same round.
        answers = yield self.ask(nodes, "--nnodes", "4")
        self.assert_one_world(answers, names[:4], 1)
        self.assert_spare(answers, names[4], 1)

        # worker2 dies; once its lease is overdue, the survivors agree a new
        # round without it, while etcd still holds its key.
        client = self.etcd_client()
        dead = nodes[1]
        key = PREFIX + dead.name.encode()
        kvs, _ = yield client.range(key)
        dead.process.signalProcess(signal.SIGKILL)
        yield dead.ended
        self.assertEqual((yield self.until_marked(client, dead.name)), kvs[0].lease)
        survivors = [n for n in nodes if n is not dead]
        answers = yield self.ask(survivors, "--nnodes", "4", "--timeout", "60")
        world = self.assert_one_world(answers, [n.name for n in survivors], 2)
        kvs, _ = yield client.range(round_key(PREFIX, "worker"))
        written = kvs[0].mod_revision
        deleted = []
        watch = client.watch(
            key, None, written, lambda events, _: deleted.extend(e.kv.mod_revision for e in events if e.deleted)
        )
        self.addCleanup(watch.stop)
        yield wait_for(lambda: deleted, LONG_LEASE + 10)
        self.assertGreater(deleted[0], written, "the round was agreed only after etcd expired the dead member")
        self.assertEqual([m["slot"] for m in world["members"]], [1, 3, 4, 5])

        # idetcd round shows it, standing, with nobody waiting.
        status, out, output = yield self.idetcd(
            "round", "--json", "--corefile", corefile, "--state", nodes[0].state
        )
        self.assertEqual(status, 0, output)
        report = json.loads(out)
        self.assertEqual((report["round"], report["alive"], report["waiting"]), (2, True, []))
        self.assertEqual(report["members"], world["members"])

    @defer.inlineCallbacks
    def test_ranks_hold_through_a_restart_and_a_join(self):
        corefile = self.job_corefile()
        nodes = yield self.nodes(4, corefile)
        names = [node.name for node in nodes]
        first = self.assert_one_world((yield self.ask(nodes, "--nnodes", "4")), names, 1)

        # worker3 stops and starts again with its state directory: a new
        # round (a new incarnation), and the same rank in it.
        third = nodes[2]
        third.process.signalProcess(signal.SIGTERM)
        yield third.ended
        again = self.node(corefile, third.state)
        again.name = yield self.wait_claimed(again)
        self.assertEqual(again.name, third.name)
        nodes[2] = again
        second = self.assert_one_world((yield self.ask(nodes, "--nnodes", "4")), names, 2)
        self.assertEqual(
            [m["name"] for m in second["members"]], [m["name"] for m in first["members"]]
        )

        # worker2 leaves for good: round 3 of three.  A new node joins into
        # its gap; the round stands, nobody's rank moves, the newcomer is a
        # spare until a member of the round dies or leaves.
        leaving = nodes.pop(1)
        leaving.process.signalProcess(signal.SIGTERM)
        yield leaving.ended
        third_round = self.assert_one_world(
            (yield self.ask(nodes, "--nnodes", "3")), [n.name for n in nodes], 3
        )
        newcomer = self.node(corefile)
        newcomer.name = yield self.wait_claimed(newcomer)
        self.assertEqual(newcomer.name, "worker2.tf.local.")
        answers = yield self.ask(nodes + [newcomer], "--nnodes", "3")
        self.assertEqual(self.assert_one_world(answers, [n.name for n in nodes], 3), third_round)
        self.assert_spare(answers, newcomer.name, 3)

        # --after: a job that failed in round 3 asks for a new one: all
        # members alive, so the same members, ranks by slot.
        answers = yield self.ask(nodes + [newcomer], "--nnodes", "3:4", "--after", "3", "--settle", "0")
        self.assert_one_world(answers, [f"worker{i}.tf.local." for i in (1, 2, 3, 4)], 4)

    @defer.inlineCallbacks
    def test_started_beside_its_node_waits_for_its_name(self):
        """
        A job started with its node, not after it (no systemd ordering):
        env --nnodes waits, within its timeout, for the node's name.
        """
        corefile = self.job_corefile()
        state = os.path.abspath(self.mktemp())
        asking = self.start(
            "env", "--format", "json", "--nnodes", "1", "--timeout", "60", "--corefile", corefile, "--state", state
        )
        yield wait_for(lambda: b"waiting for this node to hold a name" in asking.output or asking.ended.called, 30)
        self.assertFalse(asking.ended.called, asking.output)
        node = self.node(corefile, state)
        yield self.wait_claimed(node)
        self.assertEqual((yield asking.ended), 0, asking.output)
        self.assertEqual(json.loads(asking.stdout)["name"], "worker1.tf.local.")
        # And a timeout says why.
        status, out, output = yield self.idetcd(
            "env", "--format", "json", "--nnodes", "1", "--timeout", "1", "--corefile", corefile,
            "--state", os.path.abspath(self.mktemp()),
        )
        self.assertEqual((status, out), (EXIT_NO_SPEC, ""), output)
        self.assertIn("timed out after 1s: this node holds no name", output)

    @defer.inlineCallbacks
    def test_round_of_an_etcd_that_does_not_answer(self):
        """
        idetcd round reads etcd now, without waiting: exit 3 at once.
        """
        corefile = self.job_corefile()
        status, out, output = yield self.idetcd(
            "round", "--corefile", corefile, etcd_url=f"http://127.0.0.1:{free_port()}"
        )
        self.assertEqual((status, out), (EXIT_ETCD, ""), output)
        self.assertIn("cannot read etcd", output.strip().splitlines()[-1])

    @defer.inlineCallbacks
    def test_waits_for_enough_live_members(self):
        corefile = self.job_corefile()
        nodes = yield self.nodes(2, corefile)
        waiting = self.start(
            "wait", "--nnodes", "3", "--json", "--corefile", corefile, "--state", nodes[0].state
        )
        yield wait_for(lambda: b"waiting for 3 live worker members" in waiting.output or waiting.ended.called, 30)
        self.assertIn(b"(2 live)", waiting.output)
        self.assertFalse(waiting.ended.called)
        third = self.node(corefile)
        third.name = yield self.wait_claimed(third)
        nodes.append(third)
        status = yield waiting.ended
        self.assertEqual(status, 0, waiting.output)
        printed = json.loads(waiting.stdout)
        self.assertEqual(printed["round"], 1)
        self.assertEqual([m["name"] for m in printed["members"]], [n.name for n in nodes])


class DeadMemberTests(RoundCase):

    @defer.inlineCallbacks
    def test_a_barrier_leaves_out_a_member_once_overdue(self):
        """
        A killed member counts no more once its lease is overdue, though
        etcd still holds its key.
        """
        corefile = self.job_corefile(lease=LONG_LEASE)
        nodes = yield self.nodes(3, corefile)
        client = self.etcd_client()
        key = PREFIX + nodes[1].name.encode()
        kvs, _ = yield client.range(key)
        nodes[1].process.signalProcess(signal.SIGKILL)
        yield nodes[1].ended
        yield self.until_marked(client, nodes[1].name)
        status, out, output = yield self.idetcd(
            "wait", "3", "--timeout", "1", "--corefile", corefile
        )
        self.assertEqual(status, EXIT_TIMEOUT, output)
        still, _ = yield client.range(key)
        self.assertEqual([kv.lease for kv in still], [kvs[0].lease], "the key expired: the check proves nothing")
        status, out, output = yield self.idetcd(
            "wait", "2", "--timeout", "5", "--corefile", corefile
        )
        self.assertEqual((status, out.split()), (0, [nodes[0].name, nodes[2].name]), output)
        answers = yield self.ask([nodes[0], nodes[2]], "--nnodes", "2:3", "--settle", "0")
        self.assert_one_world(answers, [nodes[0].name, nodes[2].name], 1)


class LookAfterTests(RoundCase):
    """
    Each node looks after the member before it in its role: deaths are
    marked in etcd, and a node marked by mistake takes its mark back.
    """

    @defer.inlineCallbacks
    def test_two_neighbours_die_together(self):
        corefile = self.job_corefile(lease=LONG_LEASE)
        nodes = yield self.nodes(5, corefile)
        client = self.etcd_client()
        for dead in nodes[1:3]:
            dead.process.signalProcess(signal.SIGKILL)
        for dead in nodes[1:3]:
            yield dead.ended
        # worker4 marks worker3, then looks past it and marks worker2.
        for dead in nodes[1:3]:
            yield self.until_marked(client, dead.name)
        kvs, _ = yield client.range(dead_key(PREFIX, nodes[1].name))
        self.assertEqual(json.loads(kvs[0].value)["by"], nodes[3].name)
        status, out, output = yield self.idetcd("wait", "3", "--timeout", "5", "--corefile", corefile)
        self.assertEqual((status, out.split()), (0, [n.name for n in (nodes[0], nodes[3], nodes[4])]), output)

    @defer.inlineCallbacks
    def test_a_late_node_takes_its_mark_back(self):
        """
        A node frozen past half its lease (SIGSTOP) is marked dead; thawed
        before its lease ends, it keeps its name and takes the mark back.
        """
        corefile = self.job_corefile(lease=10)
        nodes = yield self.nodes(3, corefile)
        client = self.etcd_client()
        late = nodes[1]
        late.process.signalProcess(signal.SIGSTOP)
        try:
            yield self.until_marked(client, late.name)
        finally:
            late.process.signalProcess(signal.SIGCONT)
        yield self.until_marked(client, late.name, marked=False)
        kvs, _ = yield client.range(PREFIX + late.name.encode())
        self.assertEqual(len(kvs), 1, "the late node lost its name")
        self.assertIn(b"was marked dead", late.output)
        status, out, output = yield self.idetcd("wait", "3", "--timeout", "5", "--corefile", corefile)
        self.assertEqual(status, 0, output)


class SecureRoundTests(RoundCase):
    """
    The idetcd command against etcd with TLS, client certificates and a
    user, from the node's own Corefile.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.etcd = yield start_secure_etcd(self)
        yield enable_auth(self.etcd, "node", "node-password")

    def secure_corefile(self, password):
        certs = self.etcd.certs
        return self.job_corefile(
            f"        tls {certs.client_cert} {certs.client_key} {certs.ca}\n"
            f"        credentials node {password}\n"
        )

    @defer.inlineCallbacks
    def test_rounds_and_members_over_tls_with_a_user(self):
        corefile = self.secure_corefile("node-password")
        nodes = yield self.nodes(3, corefile)
        answers = yield self.ask(nodes, "--nnodes", "2")
        self.assert_one_world(answers, [n.name for n in nodes[:2]], 1)
        self.assert_spare(answers, nodes[2].name, 1)
        status, out, output = yield self.idetcd("members", "--json", "--corefile", corefile)
        self.assertEqual(status, 0, output)
        self.assertEqual(len(json.loads(out)["members"]), 3)

        # worker2 dies: marked dead over TLS, left out of the next round.
        nodes[1].process.signalProcess(signal.SIGKILL)
        yield nodes[1].ended
        for _ in range(40):
            status, out, output = yield self.idetcd(
                "round", "--json", "--corefile", corefile, "--state", nodes[0].state
            )
            self.assertEqual(status, 0, output)
            if not json.loads(out)["alive"]:
                break
        else:
            self.fail(f"round 1 still stands after worker2's death: {out}")
        survivors = [nodes[0], nodes[2]]
        self.assert_one_world((yield self.ask(survivors, "--nnodes", "2")), [n.name for n in survivors], 2)
        # worker1 restarts with its state directory: round 3, rank 0 again.
        nodes[0].process.signalProcess(signal.SIGTERM)
        yield nodes[0].ended
        again = self.node(corefile, nodes[0].state)
        again.name = yield self.wait_claimed(again)
        survivors[0] = again
        third = self.assert_one_world((yield self.ask(survivors, "--nnodes", "2")), [n.name for n in survivors], 3)
        self.assertEqual(third["members"][0]["name"], "worker1.tf.local.")

        # A refused login is one line, at once, from every command: those
        # that follow etcd's watch too, which would otherwise retry.
        wrong = self.secure_corefile("wrong-password")
        for command in (
            ("members",),
            ("round",),
            ("wait", "--nnodes", "2", "--timeout", "60"),
            ("env", "--format", "json", "--nnodes", "2", "--timeout", "60", "--state", survivors[1].state),
        ):
            status, out, output = yield self.idetcd(*command, "--corefile", wrong)
            self.assertEqual((status, out), (EXIT_ETCD, ""), output)
            self.assertIn("refused user 'node'", output)
            self.assertEqual(len(output.strip().splitlines()), 1, output)


def _member(slot, lease):
    return Member(
        f"worker{slot}.tf.local.", ipv4=("10.0.0.%d" % slot,), node=f"n{slot}", lease=lease,
        role="worker", slot=slot, srv=2222,
    )


class RoundValueTests(unittest.TestCase):

    def test_round_trip(self):
        agreed = Round("train", 7, (_member(1, 0x10), _member(3, 0x30)))
        kv = KeyValue(round_key(PREFIX, "train"), agreed.to_value(), 5, 9, 0)
        read = Round.from_kv(kv)
        self.assertEqual(read, Round("train", 7, agreed.members, 9))
        self.assertEqual(read.rank(_member(3, 0x30)), 1)
        self.assertIsNone(read.rank(_member(3, 0x31)), "another lease is another member")

    def test_garbage(self):
        for value in (b"", b"[]", b'{"job":"x","round":0,"members":[]}', b'{"job":"x","round":1}'):
            with self.assertRaises(ValueError):
                Round.from_kv(KeyValue(b"k", value, 1, 1, 0))

    def test_parse_nnodes(self):
        self.assertEqual(parse_nnodes("4"), (4, 4))
        self.assertEqual(parse_nnodes("2:8"), (2, 8))
        for text in ("0", "3:2", "a", "1:", ":2", "-1"):
            with self.assertRaises(ValueError):
                parse_nnodes(text)

    def test_overdue(self):
        # (seconds left as etcd reports them, granted TTL) -> overdue
        cases = {(10, 10): False, (6, 10): False, (5, 10): False, (4, 10): True, (0, 10): True,
                 (2, 3): False, (1, 3): False, (0, 3): True, (1, 2): False, (0, 2): True,
                 (2, 6): True, (3, 6): False}
        for (ttl, granted), expected in cases.items():
            self.assertEqual(overdue(LeaseInfo(ttl, granted, frozenset(), 1)), expected, (ttl, granted))


class FormatTests(unittest.TestCase):

    def spec(self, **kwargs):
        members = [_member(1, 1), _member(2, 2), _member(4, 4)]
        return ClusterSpec.of(members, "worker2.tf.local.", **kwargs)

    def test_round_in_every_format(self):
        spec = self.spec(job="train", round=3, local=Local("10.0.0.2", "eth1"))
        self.assertEqual(json.loads(spec.render("tf-config"))["round"], 3)
        lines = spec.render("torchrun").splitlines()
        self.assertEqual(lines, [
            "IDETCD_JOB=train", "IDETCD_ROUND=3", "NODE_RANK=1", "NNODES=3", "MASTER_ADDR=worker1.tf.local",
            "MASTER_PORT=2222", "LOCAL_ADDR=10.0.0.2", "GLOO_SOCKET_IFNAME=eth1", "NCCL_SOCKET_IFNAME=eth1",
        ])
        self.assertEqual(spec.render("hostfile").splitlines()[0], "# idetcd job train round 3")
        data = json.loads(spec.render("json"))
        self.assertEqual(
            {k: data[k] for k in ("job", "round", "index", "world_size", "master", "local_addr", "interface")},
            {"job": "train", "round": 3, "index": 1, "world_size": 3, "master": "worker1.tf.local",
             "local_addr": "10.0.0.2", "interface": "eth1"},
        )

    def test_hostfiles(self):
        spec = self.spec()
        self.assertEqual(spec.render("hostfile-mpich", 4), "worker1.tf.local:4\nworker2.tf.local:4\nworker4.tf.local:4\n")
        self.assertEqual(spec.render("hostfile", 2, addresses=True), "10.0.0.1 slots=2\n10.0.0.2 slots=2\n10.0.0.4 slots=2\n")
        self.assertNotIn("IDETCD_ROUND", spec.render("torchrun"))


class EmbeddedRoundTests(unittest.TestCase):
    """
    The embedding API: a node in the job's own process agrees rounds and
    hears of new ones.
    """

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.etcd = yield start_etcd(self)

    @defer.inlineCallbacks
    def test_when_round_and_subscribe_rounds(self):
        first = start_node(self, self.etcd.client_url, "srv 2222", address=1)
        self.assertEqual((yield first.when_claimed()), "worker1.tf.local.")
        second = start_node(self, self.etcd.client_url, "srv 2222", address=2)
        yield second.when_claimed()
        heard = []
        self.addCleanup(first.subscribe_rounds(lambda job, found: heard.append((job, found))))

        agreed = yield first.when_round(2)
        self.assertEqual((agreed.job, agreed.number), ("worker", 1))
        self.assertEqual([m.name for m in agreed.members], ["worker1.tf.local.", "worker2.tf.local."])
        self.assertEqual((yield second.when_round(2)), agreed)
        yield wait_for(lambda: heard)
        self.assertEqual(heard, [("worker", agreed)])

        # A member leaves: the next round, and the running job hears of it.
        yield second.stopService()
        # The round is agreed on what the first node has heard: wait until
        # it has heard of the second one's leaving (under load the watch
        # can deliver the deletion after the stop has returned).
        yield wait_for(lambda: "worker2.tf.local." not in first.members)
        again = yield first.when_round(1, 2, settle=0)
        self.assertEqual((again.number, [m.name for m in again.members]), (2, ["worker1.tf.local."]))
        yield wait_for(lambda: len(heard) == 2)
        self.assertEqual(heard[1], ("worker", again))

    @defer.inlineCallbacks
    def test_stopping_the_node_cancels_a_round_wait(self):
        node = start_node(self, self.etcd.client_url, address=1)
        yield node.when_claimed()
        waiting = node.when_round(3)
        yield node.stopService()
        yield self.assertFailure(waiting, defer.CancelledError)


@defer.inlineCallbacks
def served(etcd):
    """
    How many transactions, lease lookups and reads etcd has served.
    """
    counts = {}
    for method in ("Txn", "LeaseTimeToLive", "Range"):
        counts[method] = yield handled(etcd, method)
    return counts


class RoundScaleTests(unittest.TestCase):
    """
    A job of 1,000 members whose every node asks at once, each with a
    registry of its own as each ``idetcd env`` has: one world, one write,
    no lease lookups.
    """

    timeout = 300
    MEMBERS = 1000
    ASKERS = 100

    @defer.inlineCallbacks
    def test_a_thousand_members_ask_at_once(self):
        etcd = yield start_etcd(self)
        client = EtcdClient([etcd.client_url], reactor, timeout=60.0)
        self.addCleanup(client.close)
        yield write_members(
            client, PREFIX, self.MEMBERS,
            member=lambda slot: Member("", ("10.0.0.1",), role="worker", slot=slot, srv=2222),
        )
        registries = []
        for _ in range(self.ASKERS):
            registry = Registry(client, PREFIX, reactor)
            registry.startService()
            self.addCleanup(registry.stopService)
            registries.append(registry)
        yield defer.gatherResults([registry.when_ready() for registry in registries])
        before = yield served(etcd)
        keepers = [
            RoundKeeper(client, registry, reactor, PREFIX, "worker", "worker", "tf.local.")
            for registry in registries
        ]
        # A hundred registries in one process on a busy box see a write
        # late: give the first proposer a turn long enough for that.
        self.patch(rounds, "PROPOSER_DELAY", 1.0)
        # The first asker is worker1's node; the others are the rest.
        agreed = yield defer.gatherResults(
            [keeper.agree(self.MEMBERS, self.MEMBERS, own=f"worker{i + 1}.tf.local.") for i, keeper in enumerate(keepers)]
        )
        after = yield served(etcd)
        self.assertEqual({(r.number, r.members) for r in agreed}, {(1, agreed[0].members)})
        self.assertEqual([m.slot for m in agreed[0].members], list(range(1, self.MEMBERS + 1)))
        # Only the first few askers ever propose: at most one transaction
        # each, whatever the number of askers; everyone else reads, without
        # the value, at most once, that a round was written.
        self.assertLessEqual(after["Txn"] - before["Txn"], PROPOSERS)
        self.assertLessEqual(after["Range"] - before["Range"], self.ASKERS)
        self.assertEqual(after["LeaseTimeToLive"] - before["LeaseTimeToLive"], 0)
