"""
The launchers with the real frameworks: C{torchrun --rdzv-backend idetcd}
running a gloo DDP job on real nodes (one etcd, C{twistd idetcd} processes,
all on loopback), through a member's death; and the TensorFlow resolver.
"""

import json
import os
import re
import signal
import sys
import time

from twisted.internet import defer

from idetcd.node._embedded import free_port
from tests.test_cli import CommandCase
from tests.test_etcd import wait_for

#: A DDP job: one all-reduce a step, each line saying where it runs.
DDP = """\
import os, sys, time
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
steps = int(sys.argv[1])
for step in range(steps):
    model(torch.ones(2, 4)).sum().backward()
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    print(f"STEP {step} round={os.environ['IDETCD_ROUND']} rank={rank} world={world} sum={int(total.item())}",
          flush=True)
    time.sleep(float(sys.argv[2]))
dist.barrier()  # all done before gloo is torn down: a rank leaving early can abort it
dist.destroy_process_group()
"""

STEP = re.compile(rb"STEP (\d+) round=(\d+) rank=(\d+) world=(\d+) sum=(\d+)")


def steps(output):
    """
    The job's steps in C{output}: (step, round, rank, world size, sum).
    """
    return [tuple(int(x) for x in found) for found in STEP.findall(output)]


class TorchrunTests(CommandCase):

    timeout = 300

    def setUp(self):
        self.script = os.path.abspath(self.mktemp())
        with open(self.script, "w") as f:
            f.write(DDP)
        return CommandCase.setUp(self)

    @defer.inlineCallbacks
    def workers(self, count):
        """
        C{count} worker nodes whose C{srv} port is the store's.
        """
        corefile = self.corefile_for("worker", free_port())
        nodes = [self.node(corefile) for _ in range(count)]
        for node in nodes:
            yield self.wait_claimed(node)
        return nodes

    def torchrun(self, node, job, nnodes, *args, timeout=120):
        """
        Start torchrun on C{node}; it and its workers are killed at the end.
        """
        run = self.start(
            "-m", "torch.distributed.run", "--nnodes", nnodes, "--nproc-per-node", "1",
            "--rdzv-backend", "idetcd", "--rdzv-id", job, "--rdzv-endpoint", node.corefile,
            "--rdzv-conf", f"state={node.state},settle=0,timeout={timeout},watch_interval=1",
            "--monitor-interval", "0.5", "--max-restarts", "3", self.script, *args,
            program=(sys.executable,),
        )
        self.addCleanup(self.kill_job, run)
        return run

    def kill_job(self, run):
        """
        Kill C{run}'s workers (each in a session of its own), then torchrun.
        """
        if run.ended.called:
            return
        pid = run.process.pid
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    os.kill(int(child), signal.SIGKILL)
        run.process.signalProcess(signal.SIGKILL)
        return run.ended

    @defer.inlineCallbacks
    def test_ddp_ranks_in_one_round(self):
        """
        Three nodes, one round: ranks 0 to 2, the sum of the ranks from
        every node, every job done.  (A member's death and the next round
        are not checked here yet: the survivors' gloo, set up again for the
        next round, sometimes fails to connect (issue #15's note).)
        """
        nodes = yield self.workers(3)
        started = time.monotonic()
        runs = [self.torchrun(node, "ddp", "2:3", "3", "0") for node in nodes]
        yield wait_for(lambda: all(steps(run.output) for run in runs) or any(r.ended.called for r in runs), 120)
        first_step = time.monotonic() - started
        firsts = [steps(run.output)[0] for run in runs]
        self.assertEqual(len({f[1] for f in firsts}), 1, firsts)
        self.assertEqual(sorted(f[2] for f in firsts), [0, 1, 2])
        self.assertEqual({(f[3], f[4]) for f in firsts}, {(3, 3)})
        print(f"3 nodes: torchrun start to first step in {first_step:.1f}s, round {firsts[0][1]}")
        for run in runs:
            status = yield run.ended
            self.assertEqual(status, 0, run.output.decode()[-3000:])

    @defer.inlineCallbacks
    def test_a_spare_waits_and_errors_are_one_line(self):
        nodes = yield self.workers(3)
        # Two of three in the round: the third is a spare until it times out.
        runs = [self.torchrun(node, "small", "2", "1", "0", timeout=20) for node in nodes]
        statuses = yield defer.gatherResults([run.ended for run in runs])
        self.assertEqual(sorted(statuses), [0, 0, 1], [run.output.decode()[-2000:] for run in runs])
        spare = runs[statuses.index(1)]
        self.assertEqual(steps(spare.output), [])
        self.assertIn(
            b"RendezvousTimeoutError: idetcd: timed out after 20s: this node is a spare, not in round 1 of job small",
            spare.output,
        )


#: Each node's resolver, in one TensorFlow process: argv is the job's
#: nnodes, then each node's Corefile and state directory.
RESOLVE = """\
import json, sys
from idetcd.training.launcher import NotInRound
from idetcd.training.tensorflow import IdetcdClusterResolver

nnodes, nodes = sys.argv[1], sys.argv[2:]
for corefile, state in zip(nodes[::2], nodes[1::2]):
    try:
        r = IdetcdClusterResolver(nnodes, job="tf", corefile=corefile, state=state, timeout=60)
    except NotInRound as e:
        print(json.dumps({"spare": e.message}))
        continue
    print(json.dumps({
        "cluster": r.cluster_spec().as_dict(), "task": [r.task_type, r.task_id],
        "master": r.master(), "rpc_layer": r.rpc_layer, "round": r.round.number,
    }))
"""


class TensorFlowTests(CommandCase):

    timeout = 180

    @defer.inlineCallbacks
    def test_each_node_gets_the_rounds_cluster(self):
        corefile = self.corefile_for("worker", 2222)
        nodes = [self.node(corefile) for _ in range(3)]
        names = []
        for node in nodes:
            names.append((yield self.wait_claimed(node)))
        nodes = [node for _, node in sorted(zip(names, nodes), key=lambda pair: pair[0])]
        status, out, output = yield self.idetcd(
            "-c", RESOLVE, "2", *[part for node in nodes for part in (node.corefile, node.state)],
            program=(sys.executable,),
        )
        self.assertEqual(status, 0, output)
        seen = [json.loads(line) for line in out.splitlines()]
        cluster = {"worker": ["worker1.tf.local:2222", "worker2.tf.local:2222"]}
        self.assertEqual(seen[:2], [
            {"cluster": cluster, "task": ["worker", i], "master": f"grpc://worker{i + 1}.tf.local:2222",
             "rpc_layer": "grpc", "round": 1}
            for i in range(2)
        ])
        self.assertEqual(seen[2], {
            "spare": "idetcd: spare: worker3.tf.local. is not in round 1 of job 'tf'"
            " (2 members: worker1.tf.local. worker2.tf.local.)"
        })
