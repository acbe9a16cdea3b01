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
from tests.commands import CommandCase
from tests.waiting import wait_for

#: A DDP job: one all-reduce a step, each line saying where it runs; and
#: first, how many workers have come to the workers' store so far, this
#: one included: an earlier round's workers would count too.
DDP = """\
import os, sys, time
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
print(f"STORE round={os.environ['IDETCD_ROUND']} came={store.add('check/came', 1)}", flush=True)
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
CAME = re.compile(rb"STORE round=(\d+) came=(\d+)")


def steps(output):
    """
    The job's steps in C{output}: (step, round, rank, world size, sum).
    """
    return [tuple(int(x) for x in found) for found in STEP.findall(output)]


def came(runs, round_):
    """
    The workers of C{runs} in C{round_}: each one's count of the workers
    come to its store, in order.
    """
    return sorted(int(n) for run in runs for r, n in CAME.findall(run.output) if int(r) == round_)


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
    def test_ddp_ranks_and_a_new_round_after_a_death(self):
        """
        Three nodes, one round: ranks 0 to 2, the sum of the ranks from
        every node.  Then the rank-2 machine dies, node and job: the
        others agree a newer round without it, ranks 0 and 1 in a world
        of 2, train in it and end well.
        """
        started = time.monotonic()
        nodes = yield self.workers(3)
        named = time.monotonic() - started
        runs = [self.torchrun(node, "ddp", "2:3", "200", "0.05") for node in nodes]
        yield wait_for(lambda: all(steps(run.output) for run in runs) or any(r.ended.called for r in runs), 120)
        first_step = time.monotonic() - started
        firsts = [steps(run.output)[0] for run in runs]
        self.assertEqual(len({f[1] for f in firsts}), 1, firsts)
        self.assertEqual(sorted(f[2] for f in firsts), [0, 1, 2])
        self.assertEqual({(f[3], f[4]) for f in firsts}, {(3, 3)})
        first_round = firsts[0][1]
        self.assertEqual(came(runs, first_round), [1, 2, 3])
        print(
            f"\ntorchrun --rdzv-backend idetcd: 3 nodes; from their start: every node named in {named:.1f}s,"
            f" first step on every node by {first_step:.1f}s (torchrun started once named), round {first_round}"
        )

        dead = [i for i, f in enumerate(firsts) if f[2] == 2][0]
        nodes[dead].process.signalProcess(signal.SIGKILL)
        yield self.kill_job(runs[dead])
        died = time.monotonic()
        survivors = [run for i, run in enumerate(runs) if i != dead]
        yield wait_for(
            lambda: all(any(s[1] > first_round for s in steps(r.output)) for r in survivors)
            or any(r.ended.called for r in survivors),
            120,
        )
        print(f"after the death: first step of the next round in {time.monotonic() - died:.1f}s")
        for run in survivors:
            self.assertFalse(run.ended.called, run.output.decode()[-3000:])
        later = [[s for s in steps(r.output) if s[1] > first_round][0] for r in survivors]
        self.assertEqual(len({s[1] for s in later}), 1, later)
        self.assertEqual(sorted(s[2] for s in later), [0, 1])
        self.assertEqual({(s[3], s[4]) for s in later}, {(2, 1)})
        # The workers' store is the new round's alone: gloo finds there the
        # addresses of this round's workers, not of those that were.
        self.assertEqual(came(survivors, later[0][1]), [1, 2])
        for run in survivors:
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
