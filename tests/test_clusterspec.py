"""
Cluster specs from members: what ``idetcd env`` prints for each framework.
"""

import json
import shlex

from twisted.trial.unittest import SynchronousTestCase

from idetcd.members._record import Member
from idetcd.training._clusterspec import ClusterSpec, SpecError


def member(role, slot, srv=2222):
    return Member(
        name=f"{role}{slot}.tf.local.", ipv4=(f"10.0.0.{slot}",), role=role, slot=slot, srv=srv, node=f"n-{role}{slot}"
    )


JOB = [member("worker", 3), member("ps", 1, 2223), member("worker", 1), member("worker", 2)]


class ClusterSpecTests(SynchronousTestCase):
    def test_tf_config(self):
        spec = ClusterSpec.of(JOB, "worker2.tf.local.")
        self.assertEqual(
            spec.tf_config(),
            {
                "cluster": {
                    "ps": ["ps1.tf.local:2223"],
                    "worker": ["worker1.tf.local:2222", "worker2.tf.local:2222", "worker3.tf.local:2222"],
                },
                "task": {"type": "worker", "index": 1},
            },
        )
        text = spec.render("tf-config")
        self.assertEqual(text.count("\n"), 1)
        self.assertEqual(json.loads(text), spec.tf_config())
        self.assertEqual(ClusterSpec.of(JOB, "ps1.tf.local.").tf_config()["task"], {"type": "ps", "index": 0})

    def test_torchrun_assignments_are_shell_words(self):
        spec = ClusterSpec.of(JOB, "worker3.tf.local.")
        text = spec.render("torchrun")
        self.assertEqual(
            text, "NODE_RANK=2\nNNODES=3\nMASTER_ADDR=worker1.tf.local\nMASTER_PORT=2222\n"
        )
        for line in text.splitlines():
            self.assertEqual(shlex.split(line), [line])

    def test_gaps_give_dense_ranks(self):
        """
        With worker2 gone, worker3 is rank 1 of 2: frameworks need ranks
        0 to N-1.
        """
        present = [m for m in JOB if m.name != "worker2.tf.local."]
        spec = ClusterSpec.of(present, "worker3.tf.local.")
        self.assertEqual(spec.torchrun()["NODE_RANK"], 1)
        self.assertEqual(spec.torchrun()["NNODES"], 2)
        self.assertEqual(spec.tf_config()["task"]["index"], 1)

    def test_hostfile_lists_the_role(self):
        spec = ClusterSpec.of(JOB, "worker1.tf.local.")
        self.assertEqual(
            spec.render("hostfile"), "worker1.tf.local slots=1\nworker2.tf.local slots=1\nworker3.tf.local slots=1\n"
        )
        self.assertEqual(spec.hostfile(8).splitlines()[0], "worker1.tf.local slots=8")

    def test_json(self):
        data = json.loads(ClusterSpec.of(JOB, "worker2.tf.local.").render("json"))
        self.assertEqual((data["name"], data["role"], data["slot"], data["index"]), ("worker2.tf.local.", "worker", 2, 1))
        self.assertEqual([m["name"] for m in data["cluster"]["worker"]], [f"worker{i}.tf.local." for i in (1, 2, 3)])
        self.assertEqual(data["cluster"]["ps"][0]["srv"], 2223)
        self.assertEqual(data["cluster"]["ps"][0]["addresses"], ["10.0.0.1"])

    def test_missing_srv_port(self):
        job = JOB[:3] + [member("worker", 2, srv=0)]
        spec = ClusterSpec.of(job, "worker2.tf.local.")
        error = self.assertRaises(SpecError, spec.tf_config)
        self.assertIn("worker2.tf.local. has no srv port", str(error))
        # The master's port is the one torchrun needs.
        self.assertEqual(spec.torchrun()["MASTER_PORT"], 2222)
        masterless = [member("worker", 1, srv=0), member("worker", 2)]
        self.assertRaises(SpecError, ClusterSpec.of(masterless, "worker2.tf.local.").torchrun)

    def test_not_a_member(self):
        error = self.assertRaises(SpecError, ClusterSpec.of, JOB, "worker9.tf.local.")
        self.assertIn("worker9.tf.local. is not among the members", str(error))
