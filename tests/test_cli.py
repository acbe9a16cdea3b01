"""
The ``idetcd`` command against a training job's real nodes: three workers
and a parameter server, each a ``twistd idetcd`` process, on one etcd.
"""

import json
import os
import signal

from twisted.internet import defer, reactor

from idetcd.cli._commands import EXIT_ETCD, EXIT_NO_SPEC, EXIT_TIMEOUT, EXIT_USAGE
from idetcd.etcd import EtcdClient, prefix_range_end
from idetcd.node._embedded import free_port
from tests.commands import CommandCase
from tests.nodes import ROOT
from tests.waiting import wait_for


def _torchrun(text):
    return dict(line.split("=", 1) for line in text.splitlines())


class TrainingJobTests(CommandCase):

    @defer.inlineCallbacks
    def test_barrier_cluster_specs_and_stable_ranks(self):
        workers = self.corefile_for("worker", 2222)
        ps = self.corefile_for("ps", 2223)
        nodes = [self.node(workers), self.node(workers), self.node(ps)]
        names = []
        for node in nodes:
            names.append((yield self.wait_claimed(node)))
        # The first two workers race for slots 1 and 2: list them by slot.
        if names[0] == "worker2.tf.local.":
            nodes[:2] = nodes[1::-1]

        # The barrier: it waits, following etcd, until the third worker.
        waiting = self.start("wait", "3", "--role", "worker", "--corefile", workers)
        yield wait_for(lambda: b"waiting for 3 worker members" in waiting.output or waiting.ended.called, 30)
        self.assertIn(b"(2 present)", waiting.output)
        self.assertFalse(waiting.ended.called)
        nodes.insert(2, self.node(workers))
        self.assertEqual((yield self.wait_claimed(nodes[2])), "worker3.tf.local.")
        status = yield waiting.ended
        self.assertEqual(status, 0, waiting.output)
        self.assertEqual(
            waiting.stdout.decode().split(), ["worker1.tf.local.", "worker2.tf.local.", "worker3.tf.local."]
        )

        # Asked for more than there are: a clean timeout.
        status, out, output = yield self.idetcd(
            "wait", "5", "--role", "worker", "--timeout", "1.5", "--corefile", workers
        )
        self.assertEqual(status, EXIT_TIMEOUT)
        self.assertEqual(out, "")
        self.assertIn("idetcd: timed out after 1.5s: 3 of 5 live worker members present in tf.local.", output)
        self.assertNotIn("Traceback", output)

        # TF_CONFIG: one cluster, and each node's own task.
        configs = []
        for node in nodes:
            configs.append(json.loads((yield self.env(node, "tf-config"))))
        cluster = {
            "worker": ["worker1.tf.local:2222", "worker2.tf.local:2222", "worker3.tf.local:2222"],
            "ps": ["ps1.tf.local:2223"],
        }
        self.assertEqual([config["cluster"] for config in configs], [cluster] * 4)
        self.assertEqual(
            [config["task"] for config in configs],
            [{"type": "worker", "index": i} for i in range(3)] + [{"type": "ps", "index": 0}],
        )

        # torchrun: ranks are slots - 1, the master is slot 1.
        ranks = []
        for node in nodes[:3]:
            settings = _torchrun((yield self.env(node, "torchrun")))
            self.assertEqual(
                {k: v for k, v in settings.items() if k != "NODE_RANK"},
                {
                    "NNODES": "3", "MASTER_ADDR": "worker1.tf.local", "MASTER_PORT": "2222",
                    "LOCAL_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo",
                },
            )
            ranks.append(settings["NODE_RANK"])
        self.assertEqual(ranks, ["0", "1", "2"])
        hostfile = yield self.env(nodes[0], "hostfile")
        self.assertEqual(hostfile, "".join(f"worker{i}.tf.local slots=1\n" for i in (1, 2, 3)))
        yield self.check_examples(nodes[2], configs[2])

        # A worker stopped: its name is gone, its state says so; the others
        # get dense ranks meanwhile.  Started again, it has its rank back.
        second = nodes[1]
        second.process.signalProcess(signal.SIGTERM)
        yield second.ended
        status, out, output = yield self.idetcd(
            "env", "--format", "torchrun", "--corefile", workers, "--state", second.state
        )
        self.assertEqual(status, EXIT_NO_SPEC)
        self.assertIn("idetcd: this node holds no name now: it last held worker2.tf.local., which etcd no longer has", output)
        self.assertEqual(_torchrun((yield self.env(nodes[2], "torchrun")))["NODE_RANK"], "1")
        again = self.node(workers, second.state)
        self.assertEqual((yield self.wait_claimed(again)), "worker2.tf.local.")
        self.assertEqual(_torchrun((yield self.env(again, "torchrun")))["NODE_RANK"], "1")
        self.assertEqual(json.loads((yield self.env(again, "tf-config")))["task"]["index"], 1)

        # members --json is what etcd holds, with the leases' time left.
        status, out, output = yield self.idetcd("members", "--json", "--corefile", ps)
        self.assertEqual(status, 0, output)
        listed = json.loads(out)
        client = EtcdClient([self.etcd.client_url], reactor)
        self.addCleanup(client.close)
        kvs, revision = yield client.range(b"/idetcd/", prefix_range_end(b"/idetcd/"))
        held = {kv.key.decode()[len("/idetcd/"):]: kv for kv in kvs if b"/_claims/" not in kv.key}
        self.assertLessEqual(listed["revision"], revision)
        self.assertEqual([m["name"] for m in listed["members"]], [
            "ps1.tf.local.", "worker1.tf.local.", "worker2.tf.local.", "worker3.tf.local."
        ])
        for member in listed["members"]:
            kv = held[member["name"]]
            value = json.loads(kv.value)
            self.assertEqual(member["lease"], f"{kv.lease:x}")
            self.assertEqual(member["node"], value["node"])
            self.assertEqual((member["role"], member["slot"]), (value["role"], value["slot"]))
            self.assertEqual(member["srv"], 2223 if member["role"] == "ps" else 2222)
            self.assertEqual(member["addresses"], ["127.0.0.1"])
            self.assertTrue(0 <= member["ttl"] <= 3, member)
        status, out, output = yield self.idetcd("members", "--corefile", ps)
        self.assertEqual(status, 0, output)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "ROLE", "SLOT", "ADDRESSES", "SRV", "NODE", "LEASE", "LEFT"])
        self.assertEqual(lines[1].split()[:5], ["ps1.tf.local.", "ps", "1", "127.0.0.1", "2223"])
        self.assertEqual(len(lines), 5)


class CommandErrorTests(CommandCase):

    @defer.inlineCallbacks
    def test_errors_are_one_line_with_a_status(self):
        workers = self.corefile_for("worker", 2222)
        dead = f"http://127.0.0.1:{free_port()}"
        cases = [
            (("members", "--corefile", "/nonexistent/Corefile"), None, EXIT_USAGE, "cannot read the Corefile"),
            (("wait", "0", "--corefile", workers), None, EXIT_USAGE, "argument N"),
            (("env", "--corefile", workers), None, EXIT_USAGE, "--format"),
            (("members", "--corefile", workers), dead, EXIT_ETCD, "cannot read etcd: no etcd endpoint answered"),
            (("wait", "1", "--timeout", "1", "--corefile", workers), dead, EXIT_ETCD, f"no answer from {dead} in 1s"),
            (
                ("env", "-f", "json", "--corefile", workers, "--state", os.path.abspath(self.mktemp())),
                None, EXIT_NO_SPEC, "this node has not held a name",
            ),
        ]
        for args, etcd_url, expected, message in cases:
            status, out, output = yield self.idetcd(*args, etcd_url=etcd_url)
            self.assertEqual((status, out), (expected, ""), output)
            last = output.strip().splitlines()[-1]
            self.assertTrue(last.startswith("idetcd: "), output)
            self.assertIn(message, last)
            self.assertNotIn("Traceback", output)

    @defer.inlineCallbacks
    def test_a_member_without_srv_gives_no_tf_config(self):
        corefile = self.corefile_for("worker")
        node = self.node(corefile)
        yield self.wait_claimed(node)
        status, out, output = yield self.idetcd(
            "env", "--format", "tf-config", "--corefile", corefile, "--state", node.state
        )
        self.assertEqual((status, out), (EXIT_NO_SPEC, ""))
        self.assertIn("worker1.tf.local. has no srv port: set 'srv PORT'", output)
        self.assertEqual((yield self.env(node, "hostfile")), "worker1.tf.local slots=1\n")


class EmbeddedTests(CommandCase):

    @defer.inlineCallbacks
    def test_finds_the_running_nodes_embedded_etcd(self):
        corefile = os.path.abspath(self.mktemp())
        with open(os.path.join(ROOT, "Corefile.sample")) as f:
            text = f.read().replace(".:1053", ".:{$NODE_PORT}")
        with open(corefile, "w") as f:
            f.write(text)
        node = self.node(corefile)
        yield self.wait_claimed(node)
        status, out, output = yield self.idetcd("members", "--corefile", corefile, "--state", node.state)
        self.assertEqual(status, 0, output)
        self.assertEqual(out.splitlines()[1].split()[:3], ["worker1.tf.local.", "worker", "1"])
        self.assertEqual(json.loads((yield self.env(node, "json")))["name"], "worker1.tf.local.")

        node.process.signalProcess(signal.SIGTERM)
        yield node.ended
        status, out, output = yield self.idetcd("members", "--corefile", corefile, "--state", node.state)
        self.assertEqual(status, EXIT_ETCD)
        self.assertIn(f"idetcd: no node is running with state directory {node.state}", output)


class InterruptTests(CommandCase):

    @defer.inlineCallbacks
    def test_a_wait_stopped_by_a_signal_does_not_exit_0(self):
        workers = self.corefile_for("worker", 2222)
        waiting = self.start("wait", "2", "--corefile", workers)
        yield wait_for(lambda: b"waiting for 2 members" in waiting.output or waiting.ended.called, 30)
        waiting.process.signalProcess(signal.SIGTERM)
        status = yield waiting.ended
        self.assertEqual(status, 130, waiting.output)
        self.assertEqual(waiting.output.decode().strip().splitlines()[-1], "idetcd: interrupted")
