"""
``idetcd check`` against the node itself: for every Corefile of the broken
corpus (L{tests.brokencorefiles}), the check and a real ``twistd -n idetcd``
print the same one line on stderr and exit 78; on a good Corefile the check
exits 0 without binding its ports or asking etcd.  Also the options a node
refuses in one line (``--port`` out of range) and the version both
commands print.
"""

import os
import socket
import sys

from twisted.internet import defer, utils
from twisted.trial import unittest

from idetcd._version import __version__
from idetcd.common import EXIT_CONFIG, EXIT_USAGE
from tests.brokencorefiles import NOWHERE, corpus, node
from tests.nodes import ROOT

CHECK = ("-c", "from idetcd.cli import run; run()", "check")
TWISTD = ("-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "idetcd")
#: Processes run at once: the corpus is long, the box may have 2 cores.
AT_ONCE = 4


def run(case, *args):
    """
    Run this Python with C{args} in a directory of C{case}'s, outside the
    source tree: fires with (stdout, stderr, exit status).
    """
    where = os.path.abspath(case.mktemp())
    os.makedirs(where)
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("IDETCD_TEST_UNSET_VARIABLE", None)
    return utils.getProcessOutputAndValue(sys.executable, args, env=env, path=where)


def after(prefix, stderr):
    """
    The one line of C{stderr} after the program's C{prefix}.
    """
    text = stderr.decode("utf-8", "replace")
    if not text.startswith(prefix) or text.count("\n") != 1:
        raise AssertionError(f"expected one line starting {prefix!r}, got {text!r}")
    return text[len(prefix) : -1]


class CorpusTests(unittest.TestCase):
    # 84 processes of about a CPU second each, on a busy 2-core box.
    timeout = 1800

    @defer.inlineCallbacks
    def test_check_says_what_the_node_says(self):
        directory = os.path.abspath(self.mktemp())
        cases = corpus(os.path.join(directory, "files"))
        self.assertGreaterEqual(len(cases), 30)
        limit = defer.DeferredSemaphore(AT_ONCE)

        @defer.inlineCallbacks
        def both(broken, path):
            state = os.path.join(directory, "state-" + os.path.basename(path))
            checked = yield limit.run(run, self, *CHECK, "--corefile", path)
            started = yield limit.run(run, self, *TWISTD, "--corefile", path, "--state", state)
            return broken, path, checked, started

        runs = []
        for number, broken in enumerate(cases):
            path = os.path.join(directory, f"Corefile-{number}")
            with open(path, "w") as f:
                f.write(broken.text)
            runs.append(both(broken, path))
        results = yield defer.gatherResults(runs, consumeErrors=True)
        for broken, path, (check_out, check_err, check_status), (node_out, node_err, node_status) in results:
            line = after("idetcd: ", check_err)
            self.assertEqual(after("twistd idetcd: ", node_err), line, broken.name)
            self.assertEqual((check_status, node_status), (EXIT_CONFIG, EXIT_CONFIG), broken.name)
            where = path if broken.line is None else f"{path}:{broken.line}"
            self.assertTrue(line.startswith(where + ": "), (broken.name, line))
            self.assertIn(broken.fragment, line, broken.name)
            # Nothing printed, nothing logged: the node stopped before
            # twistd started its log, bound a port or asked etcd.
            self.assertEqual((check_out, node_out), (b"", b""), broken.name)
            self.assertFalse(os.path.exists(os.path.join(directory, "state-" + os.path.basename(path))))


class GoodCorefileTests(unittest.TestCase):
    timeout = 600

    @defer.inlineCallbacks
    def test_checks_without_binding(self):
        """
        A good Corefile passes with a line per node, even while its DNS
        port and its health port are taken: the check binds nothing (and
        its etcd, on a port nothing listens on, is not asked).
        """
        taken = []
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("127.0.0.1", 0))
            if kind == socket.SOCK_STREAM:
                s.listen()
            self.addCleanup(s.close)
            taken.append(s.getsockname()[1])
        dns_port, health_port = taken[0], taken[2]
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                node(server=["bind 127.0.0.1", f"health 127.0.0.1:{health_port}", "forward . 192.0.2.53"])
                .replace(":1053", f":{dns_port}")
            )
        out, err, status = yield run(self, *CHECK, "--corefile", path)
        self.assertEqual((status, err), (0, b""))
        self.assertEqual(
            out.decode().splitlines(),
            [
                f"{path}:1: . on DNS port {dns_port} of 127.0.0.1; names worker{{{{.ID}}}}.tf.local. (limit 10)"
                f" in etcd {NOWHERE} under /idetcd/; forward to 192.0.2.53:53; health on 127.0.0.1:{health_port}",
                f"{path}: ready to run 1 node",
            ],
        )

    @defer.inlineCallbacks
    def test_port_option(self):
        """
        C{--port} decides the DNS port, as for the node: a C{forward} to
        that port on this node's address would reach the node itself.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(node(server=["bind 127.0.0.1", "forward . 127.0.0.1:5300"]))
        out, err, status = yield run(self, *CHECK, "--corefile", path)
        self.assertEqual(status, 0, err)
        out, err, status = yield run(self, *CHECK, "--corefile", path, "--port", "5300")
        self.assertEqual(status, EXIT_CONFIG)
        self.assertIn(": forward to 127.0.0.1:5300 would reach this server itself", after("idetcd: ", err))


class OptionTests(unittest.TestCase):
    timeout = 600

    @defer.inlineCallbacks
    def test_port_out_of_range(self):
        """
        The node refuses a C{--port} outside 0 to 65535 in one line with
        status 64, before reading the Corefile; C{idetcd check} too.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(node())
        for port in ("70000", "-5", "65536"):
            out, err, status = yield run(self, *TWISTD, "--corefile", path, "--port", port)
            self.assertEqual(
                (status, after("twistd idetcd: ", err)),
                (
                    EXIT_USAGE,
                    f"Parameter type enforcement failed: --port must be 0 to 65535, got {port}"
                    " (see twistd idetcd --help)",
                ),
            )
            out, err, status = yield run(self, *CHECK, "--corefile", path, "--port", port)
            self.assertEqual(status, 2)
            self.assertIn(f"--port must be 0 to 65535, got {port}", after("idetcd: ", err))

    @defer.inlineCallbacks
    def test_version(self):
        """
        C{idetcd --version} and C{twistd idetcd --version} print idetcd's
        version, not Twisted's.
        """
        out, err, status = yield run(self, "-c", "from idetcd.cli import run; run()", "--version")
        self.assertEqual((out, err, status), (f"idetcd {__version__}\n".encode(), b"", 0))
        out, err, status = yield run(self, *TWISTD, "--version")
        self.assertEqual((out, err, status), (f"idetcd {__version__}\n".encode(), b"", 0))
