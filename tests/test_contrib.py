"""
The files in contrib/: the systemd unit and the cloud-init user-data agree
with each other and with the code they run.
"""

import os
import re
import shutil
import subprocess
import sys

import yaml
from twisted.trial import unittest

from idetcd.common import PERMANENT
from idetcd.node import parse
from tests.nodes import ROOT

UNIT = os.path.join(ROOT, "contrib", "systemd", "idetcd.service")
USER_DATA = os.path.join(ROOT, "contrib", "cloud-init", "user-data.yaml")
EXAMPLE_USER_DATA = os.path.join(ROOT, "examples", "cloud-init.yaml")
#: What ``python -m build`` names the wheel (idetcd is not on PyPI), or a
#: glob of it.
WHEEL = re.compile(r"\S*/idetcd-(?:[0-9.]+|\*)-py3-none-any\.whl$")


def pip_installs(commands):
    """
    What the C{pip install} among C{commands} (shell lines) installs.
    """
    found = (re.search(r"/opt/idetcd/bin/pip install (.*)$", command) for command in commands)
    return [match.group(1).split() for match in found if match]


def settings(unit_text):
    """
    Every C{Key=value} of a unit, as lists (a key may repeat).
    """
    found = {}
    for line in unit_text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


class UnitTests(unittest.TestCase):
    def setUp(self):
        with open(UNIT) as f:
            self.text = f.read()
        self.settings = settings(self.text)

    def test_readiness_state_and_restarts(self):
        """
        Type=notify, the state directory systemd makes is the one given to
        the node, and the statuses a restart cannot cure are those of
        L{idetcd.common.PERMANENT}.
        """
        self.assertEqual(self.settings["Type"], ["notify"])
        self.assertEqual(self.settings["StateDirectory"], ["idetcd"])
        self.assertIn("--state %S/idetcd", self.settings["ExecStart"][0])
        self.assertEqual(self.settings["Restart"], ["on-failure"])
        # systemctl reload: SIGHUP rereads the Corefile, the name is kept.
        self.assertEqual(self.settings["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        restart_prevented = [int(status) for status in self.settings["RestartPreventExitStatus"][0].split()]
        self.assertEqual(sorted(restart_prevented), sorted(PERMANENT))
        self.assertEqual(self.settings["RestrictAddressFamilies"], ["AF_INET AF_INET6 AF_UNIX"])

    def test_systemd_accepts_it(self):
        """
        C{systemd-analyze verify}, with ExecStart= pointing at a program
        that exists here (the unit's /opt/idetcd is not installed).
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "idetcd.service"), "w") as f:
            f.write(self.text.replace("/opt/idetcd/bin/twistd", sys.executable))
        result = subprocess.run(
            [analyze, "verify", "idetcd.service"], cwd=directory, capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))


class UserDataTests(unittest.TestCase):
    def setUp(self):
        with open(USER_DATA) as f:
            self.text = f.read()
        self.data = yaml.safe_load(self.text)
        self.files = {entry["path"]: entry["content"] for entry in self.data["write_files"]}

    def test_cloud_config(self):
        self.assertTrue(self.text.startswith("#cloud-config\n"))
        self.assertEqual(self.data["packages"], ["python3-venv"])
        self.assertIn("systemctl enable --now --no-block idetcd.service", self.data["runcmd"])

    def test_installs_the_wheel(self):
        """
        idetcd comes from its wheel, by URL or path, as the unit's comment
        says too: there is no idetcd on PyPI.
        """
        for path in (USER_DATA, EXAMPLE_USER_DATA):
            with open(path) as f:
                commands = yaml.safe_load(f)["runcmd"]
            ((wheel,),) = pip_installs(commands)
            self.assertRegex(wheel, WHEEL, path)
        with open(UNIT) as f:
            comment = [line for line in f if line.startswith("#")]
        ((wheel,),) = pip_installs(line.lstrip("# ") for line in comment)
        self.assertRegex(wheel, r"idetcd-VERSION-py3-none-any\.whl$")

    def test_installs_the_contrib_unit(self):
        with open(UNIT) as f:
            self.assertEqual(self.files["/etc/systemd/system/idetcd.service"], f.read())

    def test_corefile_is_valid_and_routed(self):
        """
        The Corefile parses; idetcd listens on loopback and on the address
        the unit's drop-in gives it; systemd-resolved sends its zone, and
        only it, to this node's idetcd first, then to other nodes', so a
        node cut off from etcd (SERVFAIL) is ridden over.
        """
        (block,) = parse(self.files["/etc/idetcd/Corefile"], environ={"IDETCD_ADDRESS": "10.0.0.5"})
        self.assertEqual((block.port, block.binds), (53, ("127.0.0.1", "10.0.0.5")))
        zone = block.idetcd.pattern.zone.rstrip(".")
        resolved = settings(self.files["/etc/systemd/resolved.conf.d/idetcd.conf"])
        self.assertEqual(resolved["Domains"], [f"~{zone}"])
        (servers,) = resolved["DNS"]
        self.assertEqual(servers.split()[0], "127.0.0.1")
        self.assertGreater(len(servers.split()), 1)

    def test_bind_address_written_before_start(self):
        """
        The drop-in that gives the Corefile C{IDETCD_ADDRESS} is written
        before systemd reloads its units and starts idetcd.
        """
        commands = self.data["runcmd"]
        (writes,) = [i for i, c in enumerate(commands) if "Environment=IDETCD_ADDRESS=" in c]
        self.assertIn("/etc/systemd/system/idetcd.service.d/", commands[writes])
        self.assertLess(writes, commands.index("systemctl daemon-reload"))
        self.assertLess(writes, commands.index("systemctl enable --now --no-block idetcd.service"))
