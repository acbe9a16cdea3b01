"""
The parts of idetcd and which of them each may import: the table the
README's Layout section shows, checked against every import in the package,
so an arrow running back up fails here rather than in a reader's head.
"""

import ast
import os

from twisted.trial import unittest

import idetcd

PACKAGE = os.path.dirname(idetcd.__file__)

#: The training job's launchers run the idetcd command and read its exit
#: statuses, so they sit above it; the rest of training sits below it.
LAUNCHERS = {"idetcd.training.launcher", "idetcd.training.torchrun", "idetcd.training.tensorflow"}

#: Each part, and the parts it may import (besides itself).
MAY_IMPORT = {
    "common": set(),
    "names": set(),
    "etcd": {"common"},
    "testing": {"etcd"},
    "config": {"common", "names"},
    "members": {"common", "etcd", "names"},
    "claim": {"common", "etcd", "members"},
    "dns": {"common", "config", "etcd", "members", "names"},
    "training": {"common", "etcd", "members", "names"},
    "cli": {"version", "common", "config", "etcd", "members", "names", "claim", "training", "node"},
    "launchers": {"cli", "training"},
    "node": {"version", "common", "config", "etcd", "members", "names", "claim", "dns", "training"},
    "version": set(),
    "api": {"version", "claim", "config", "members", "names", "node", "training"},
}


def part_of(module):
    """
    The part a module of idetcd belongs to, from its dotted name.
    """
    if module in LAUNCHERS:
        return "launchers"
    pieces = module.split(".")
    if len(pieces) == 1:
        return "api"
    if pieces[1] == "_version":
        return "version"
    return pieces[1]


def modules():
    """
    Every module of the package, as (dotted name, path).
    """
    for directory, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(directory, file)
                relative = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")]
                name = relative.replace(os.sep, ".").removesuffix(".__init__")
                yield name, path


def imported(path, module):
    """
    The idetcd modules a module imports, wherever in it the import is.
    """
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.split(".")[0] == "idetcd")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "idetcd":
                names = [f"{base}.{alias.name}" for alias in node.names]
                # "from idetcd.dns import _wire" imports a module of dns.
                yield from (name if _module_name(name) else base for name in names)


def _module_name(dotted):
    """
    Whether C{from A import B} named a private module B (C{_wire}), not a
    name defined in A (C{__version__}, C{Registry}).
    """
    last = dotted.rpartition(".")[2]
    return last.startswith("_") and not last.startswith("__")


class LayoutTests(unittest.TestCase):
    def test_every_part_imports_only_what_it_may(self):
        """
        No module imports a part its own part may not import: the parts
        stay layered as the README draws them.
        """
        wrong = []
        for module, path in modules():
            part = part_of(module)
            self.assertIn(part, MAY_IMPORT, f"{module} belongs to no known part")
            for target in imported(path, module):
                other = part_of(target)
                if other != part and other not in MAY_IMPORT[part]:
                    wrong.append(f"{module} imports {target} ({part} may not import {other})")
        self.assertEqual([], wrong)

    def test_a_part_is_reached_through_its_public_names(self):
        """
        Across parts, modules import a part's package (its public names),
        never its private modules: inside a part, anything goes.
        """
        wrong = []
        for module, path in modules():
            for target in imported(path, module):
                last = target.rpartition(".")[2]
                if last.startswith("_") and part_of(target) != part_of(module) and target != "idetcd._version":
                    wrong.append(f"{module} imports {target}")
        self.assertEqual([], wrong)

    def test_the_public_api_is_unchanged(self):
        """
        The names embedders import from C{idetcd} itself are still there.
        """
        for name in [
            "ClusterSpec", "CorefileError", "IdetcdService", "IdetcdSettings", "Member", "Pattern",
            "PatternError", "Round", "ServerBlock", "SlotsExhausted", "SpecError", "StateDirectoryBusy",
            "load", "parse",
        ]:
            self.assertIn(name, idetcd.__all__)
            self.assertTrue(hasattr(idetcd, name), name)
