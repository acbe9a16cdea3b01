"""
The C{idetcd} command in tests, run as users run it, against real node
processes (L{CommandCase}): the Corefile of a training job's roles, and
stand-ins for torchrun and python in the examples' launch scripts.
"""

import json
import os
import sys

from twisted.internet import defer, reactor

from tests.nodes import ROOT, NodeProcessCase, ProcessOutput

JOB_COREFILE = """\
.:{$NODE_PORT} {
    bind 127.0.0.1
    idetcd {
        endpoint {$ETCD_URL}
        limit 5
        pattern %s{{.ID}}.tf.local.
        lease 3
        address 127.0.0.1
%s    }
}
"""


#: The idetcd command, as the console script runs it.
IDETCD = (sys.executable, "-m", "idetcd.cli")
EXAMPLES = os.path.join(ROOT, "examples")

#: Stand-ins for torchrun and python in the examples' launch scripts: they
#: print what they were given (TF_CONFIG and their arguments).
STAND_IN = """#!/bin/sh
printf '%s\\n' "${TF_CONFIG:-}" "$@"
"""


class _Command(ProcessOutput):
    """
    An C{idetcd} run: C{stdout} alone, and C{output} with stderr.
    """

    def __init__(self):
        super().__init__()
        self.stdout = b""

    def outReceived(self, data):
        self.stdout += data
        ProcessOutput.outReceived(self, data)


class CommandCase(NodeProcessCase):
    """
    Real node processes, and the C{idetcd} command run as users run it.
    """

    def corefile_for(self, role, srv=None):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(JOB_COREFILE % (role, f"        srv {srv}\n" if srv else ""))
        return path

    def start(self, *args, etcd_url=None, program=IDETCD, **env):
        """
        Start C{idetcd ARGS} (or C{program} with C{args}, and C{env} added
        to the environment); returns its L{_Command}, killed at the end of
        the test if still running.
        """
        command = _Command()
        env = dict(
            os.environ,
            PYTHONPATH=ROOT,
            NODE_PORT="0",
            ETCD_URL=etcd_url or self.etcd.client_url,
            **env,
        )
        argv = [*program, *args]
        command.process = reactor.spawnProcess(command, argv[0], argv, env=env)
        return self.kill_at_end(command)

    @defer.inlineCallbacks
    def idetcd(self, *args, **kwargs):
        """
        Run C{idetcd ARGS} (or as L{start} says) to its end: (status,
        stdout, stdout and stderr).
        """
        command = self.start(*args, **kwargs)
        yield command.ended
        return command.status, command.stdout.decode(), command.output.decode()

    @defer.inlineCallbacks
    def env(self, node, form):
        status, out, output = yield self.idetcd(
            "env", "--format", form, "--corefile", node.corefile, "--state", node.state
        )
        self.assertEqual(status, 0, output)
        return out

    def node(self, corefile, state=None):
        state = state or os.path.abspath(self.mktemp())
        node = self.start_node(state, corefile=corefile)
        node.corefile, node.state = corefile, state
        return node


    @defer.inlineCallbacks
    def check_examples(self, node, tf_config):
        """
        The examples' launch scripts pass what idetcd says for the job's
        round to the framework.
        """
        stand_in = os.path.abspath(self.mktemp())
        os.makedirs(stand_in)
        for name in ("torchrun", "python"):
            with open(os.path.join(stand_in, name), "w") as f:
                f.write(STAND_IN)
            os.chmod(os.path.join(stand_in, name), 0o755)
        env = dict(
            IDETCD=" ".join(IDETCD),
            IDETCD_NODE=f"--corefile {node.corefile} --state {node.state}",
            WORKERS="3",
            PATH=stand_in + os.pathsep + os.environ["PATH"],
            PYTHON=os.path.join(stand_in, "python"),
        )
        torch = os.path.join(EXAMPLES, "pytorch")
        status, out, output = yield self.idetcd(
            os.path.join(torch, "launch.sh"), "--epochs=1", program=("/bin/sh",), **env
        )
        self.assertEqual(status, 0, output)
        self.assertEqual(out.splitlines(), [
            "", "--nnodes=3", "--node_rank=2", "--master_addr=worker1.tf.local", "--master_port=2222",
            "--local-addr=127.0.0.1", "--nproc_per_node=1", os.path.join(torch, "train_ddp.py"), "--epochs=1",
        ])
        tf = os.path.join(EXAMPLES, "tensorflow")
        status, out, output = yield self.idetcd(os.path.join(tf, "launch.sh"), program=("/bin/sh",), **env)
        self.assertEqual(status, 0, output)
        lines = out.splitlines()
        # The job's agreed round: this node's role alone.
        role = tf_config["task"]["type"]
        self.assertEqual(json.loads(lines[0]), {
            "cluster": {role: tf_config["cluster"][role]}, "task": tf_config["task"], "job": "mwms", "round": 1,
        })
        self.assertEqual(lines[1:], [os.path.join(tf, "train_mwms.py")])
