"""
Whole nodes for tests: real ``twistd -n idetcd`` processes on loopback
against a real etcd, their output collected, killed when the test ends;
and one node holding worker1, for tests that signal it (L{SignalCase}).
"""

import os
import re
import signal
import sys

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from idetcd.etcd import EtcdClient
from idetcd.node._embedded import free_port
from tests.dnsclient import query
from tests.etcdserver import start_etcd
from tests.waiting import sleep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COREFILE = """\
# The original plugin's Corefile, with its endpoint and port from the test.
.:{$NODE_PORT} {
    bind 127.0.0.1
    idetcd {
        endpoint {$ETCD_URL}
        limit 3
        pattern worker{{.ID}}.tf.local.
        lease {$LEASE:3}
        address 127.0.0.1
    }
}
"""


class ProcessOutput(protocol.ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.ended = defer.Deferred()
        self.status = None

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.status = reason.value.exitCode
        self.signal = reason.value.signal
        self.ended.callback(self.status)


def spawn_node(corefile, state, env, options=(), child_fds=None):
    """
    Start ``twistd -n idetcd`` on C{corefile} with the state directory
    C{state}, C{options} for idetcd, and C{env} added to the environment
    (and C{child_fds} as spawnProcess takes them, if given); returns its
    L{ProcessOutput}, with the process as C{process}.
    """
    node = ProcessOutput()
    args = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "idetcd",
        "--corefile", corefile,
        "--state", state,
        *options,
    ]
    env = dict(dict(os.environ, PYTHONPATH=ROOT), **env)
    node.process = reactor.spawnProcess(node, sys.executable, args, env=env, childFDs=child_fds)
    return node


class NodeProcessCase(unittest.TestCase):
    """
    A test with its own etcd and real ``twistd idetcd`` processes, all on
    the Corefile C{COREFILE}.
    """

    timeout = 120
    COREFILE = COREFILE
    #: More arguments for the test's etcd.
    ETCD_ARGS = ()

    @defer.inlineCallbacks
    def setUp(self):
        self.etcd = yield start_etcd(self, extra_args=self.ETCD_ARGS)
        self.corefile = os.path.abspath(self.mktemp())
        with open(self.corefile, "w") as f:
            f.write(self.COREFILE)

    def start_node(self, state=None, options=(), corefile=None, child_fds=None, **env):
        port = free_port()
        node = spawn_node(
            corefile or self.corefile,
            state or os.path.abspath(self.mktemp()),
            dict(dict(NODE_PORT=str(port), ETCD_URL=self.etcd.client_url), **env),
            options,
            child_fds,
        )
        node.port = port
        return self.kill_at_end(node)

    def kill_at_end(self, started):
        """
        Kill C{started} (an L{ProcessOutput} with its C{process}) when the test
        ends, if it still runs; returns it.
        """

        def stop():
            if not started.ended.called:
                started.process.signalProcess(signal.SIGKILL)
                return started.ended

        self.addCleanup(stop)
        return started

    @defer.inlineCallbacks
    def wait_claimed(self, node, timeout=30):
        for _ in range(int(timeout / 0.05)):
            if b"answers DNS on port" in node.output:
                return node.output.split(b"answers DNS on port")[0].split()[-1].decode()
            if node.ended.called:
                self.fail(f"node exited with {node.status}:\n{node.output.decode()}")
            yield sleep(0.05)
        self.fail(f"node did not claim a name in {timeout}s:\n{node.output.decode()}")


KEY = b"/idetcd/worker1.tf.local."

SIGNALLED = COREFILE.replace("        address 127.0.0.1\n", "        address 127.0.0.1\n        ttl 5\n")


class SignalCase(NodeProcessCase):
    """
    One node of C{COREFILE} holding worker1, and a client of its etcd.
    """

    COREFILE = SIGNALLED

    @defer.inlineCallbacks
    def start_holder(self):
        self.client = EtcdClient([self.etcd.client_url], reactor)
        self.addCleanup(self.client.close)
        node = self.start_node()
        self.assertEqual((yield self.wait_claimed(node)), "worker1.tf.local.")
        return node

    def rewrite(self, old, new):
        with open(self.corefile) as f:
            text = f.read()
        self.assertIn(old, text)
        with open(self.corefile, "w") as f:
            f.write(text.replace(old, new))

    @defer.inlineCallbacks
    def wait_output(self, node, pattern, timeout=20):
        """
        Wait until C{node}'s output matches C{pattern} (bytes); fire with
        the match.
        """
        for _ in range(int(timeout / 0.05)):
            found = re.search(pattern, node.output)
            if found:
                return found
            if node.ended.called:
                self.fail(f"node exited with {node.status}, signal {node.signal}:\n{node.output.decode()}")
            yield sleep(0.05)
        self.fail(f"no {pattern!r} in the output in {timeout}s:\n{node.output.decode()}")

    @defer.inlineCallbacks
    def holder_lease(self):
        kvs, _ = yield self.client.range(KEY)
        self.assertEqual(len(kvs), 1)
        return kvs[0].lease

    @defer.inlineCallbacks
    def answer_ttl(self, node):
        reply = yield query(node.port, "worker1.tf.local.")
        self.assertEqual([rr.address for rr in reply.answer[0]], ["127.0.0.1"])
        return reply.answer[0].ttl

    @defer.inlineCallbacks
    def assert_still_holding(self, node, lease, ttl):
        """
        C{node} runs, etcd still has its name on C{lease}, and it answers
        with C{ttl}.
        """
        self.assertFalse(node.ended.called)
        self.assertEqual((yield self.holder_lease()), lease)
        self.assertEqual((yield self.answer_ttl(node)), ttl)
        self.assertNotIn(b"Traceback", node.output)
