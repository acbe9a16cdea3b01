"""
The install an operator makes without PyPI: ``python -m build`` gives an
sdist and a wheel; the wheel, installed into a fresh virtual environment,
runs ``idetcd`` and ``twistd idetcd`` from a directory outside the source
tree, and a node started from it claims a name in a real etcd and answers
DNS for it.

The wheel's dependencies come from the pip index this machine's pip is
configured with, as for ``pip install '.[test]'`` (here, and in CI, a local
index); the build's own (setuptools, wheel) too.
"""

import os
import sys
import zipfile

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from idetcd._version import __version__
from tests.dnsclient import query
from tests.etcdserver import start_etcd
from tests.nodes import COREFILE, ROOT, ProcessOutput
from tests.waiting import sleep


def _environment():
    """
    This process's environment without what would find the source tree or
    the test's virtual environment.
    """
    env = dict(os.environ)
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    return env


def _sources():
    """
    The modules of the source tree, as paths in a wheel.
    """
    found = {"twisted/plugins/idetcd_plugin.py"}
    for directory, _, files in os.walk(os.path.join(ROOT, "idetcd")):
        for name in files:
            if name.endswith(".py"):
                found.add(os.path.relpath(os.path.join(directory, name), ROOT).replace(os.sep, "/"))
    return found


class WheelTests(unittest.TestCase):
    timeout = 900

    @defer.inlineCallbacks
    def succeed(self, executable, *args, where=None):
        """
        Run C{executable} with C{args} in C{where} (default: a directory of
        the test's, outside the source tree); fails the test unless it
        exits 0; fires with its output.
        """
        if where is None:
            where = os.path.abspath(self.mktemp())
            os.makedirs(where)
        out, err, status = yield utils.getProcessOutputAndValue(executable, args, env=_environment(), path=where)
        self.assertEqual(status, 0, f"{executable} {' '.join(args)}:\n{out.decode()}\n{err.decode()}")
        return out.decode()

    @defer.inlineCallbacks
    def test_wheel_in_a_fresh_venv_runs_a_node(self):
        dist = os.path.abspath(self.mktemp())
        yield self.succeed(sys.executable, "-m", "build", "--outdir", dist, ROOT)
        name = f"idetcd-{__version__}"
        self.assertEqual(sorted(os.listdir(dist)), [f"{name}-py3-none-any.whl", f"{name}.tar.gz"])
        wheel = os.path.join(dist, f"{name}-py3-none-any.whl")
        with zipfile.ZipFile(wheel) as archive:
            inside = set(archive.namelist())
            entry_points = archive.read(f"{name}.dist-info/entry_points.txt").decode()
        self.assertEqual(_sources() - inside, set())
        self.assertIn("idetcd = idetcd.cli:run", entry_points)

        venv = os.path.abspath(self.mktemp())
        yield self.succeed(sys.executable, "-m", "venv", venv)
        bin_ = os.path.join(venv, "bin")
        yield self.succeed(os.path.join(bin_, "pip"), "install", "--quiet", wheel)

        # Everything runs from the venv, from a directory of its own.
        found = yield self.succeed(os.path.join(bin_, "python"), "-c", "import idetcd; print(idetcd.__file__)")
        self.assertTrue(found.startswith(venv + os.sep), found)
        version = yield self.succeed(os.path.join(bin_, "idetcd"), "--version")
        self.assertEqual(version, f"idetcd {__version__}\n")
        version = yield self.succeed(os.path.join(bin_, "twistd"), "idetcd", "--version")
        self.assertEqual(version, f"idetcd {__version__}\n")
        plugins = yield self.succeed(os.path.join(bin_, "twistd"), "--help")
        self.assertRegex(plugins, r"(?m)^ +idetcd +Collision-free")

        etcd = yield start_etcd(self)
        corefile = os.path.abspath(self.mktemp())
        with open(corefile, "w") as f:
            f.write(COREFILE.replace("{$NODE_PORT}", "0").replace("{$ETCD_URL}", etcd.client_url))
        checked = yield self.succeed(os.path.join(bin_, "idetcd"), "check", "--corefile", corefile)
        self.assertIn("ready to run 1 node", checked)

        node = ProcessOutput()
        twistd = os.path.join(bin_, "twistd")
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        node.process = reactor.spawnProcess(
            node, twistd,
            [twistd, "-n", "--pidfile=", "idetcd", "--corefile", corefile, "--state", os.path.join(where, "state")],
            env=_environment(), path=where,
        )
        self.addCleanup(lambda: None if node.ended.called else (node.process.signalProcess("KILL"), node.ended)[1])
        for _ in range(600):
            if b"answers DNS on port" in node.output or node.ended.called:
                break
            yield sleep(0.05)
        output = node.output.decode()
        self.assertIn("worker1.tf.local. answers DNS on port", output)
        port = int(output.split("answers DNS on port ")[1].split()[0])
        reply = yield query(port, "worker1.tf.local.")
        self.assertEqual([rr.address for rr in reply.answer[0]], ["127.0.0.1"])
        node.process.signalProcess("TERM")
        yield node.ended
        self.assertIn(b"released worker1.tf.local.", node.output)
