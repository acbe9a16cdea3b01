"""
The parts of idetcd and which of them each may import: the table the
README's Layout section shows, checked against every import in the package,
so an arrow running back up fails here rather than in a reader's head.
And the tests' own layout: what test modules share lives in the support
modules of tests/, never in another test module.
"""

import ast
import os

from twisted.trial import unittest

import idetcd

PACKAGE = os.path.dirname(idetcd.__file__)

#: The source tree's folders of Python that import the tests' helpers.
SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_FOLDERS = ("tests", "bench", "checks")

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


def imported_test_modules(path):
    """
    The test modules (C{tests.test_*}) that the module at C{path} imports,
    wherever in it the import is.
    """
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = os.path.basename(os.path.dirname(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(filter(None, [package if node.level else None, node.module]))
            # "from tests import test_cluster" imports a test module too.
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "tests" and len(pieces) > 1 and pieces[1].startswith("test_"):
                yield ".".join(pieces[:2])
                break


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

    def test_test_modules_share_through_support_modules(self):
        """
        No module of tests/, bench/ or checks/ imports a test module: what
        tests share (base cases, fixtures, clients) lives in a support module.
        """
        wrong = []
        scanned = []
        for folder in TEST_FOLDERS:
            for file in sorted(os.listdir(os.path.join(SOURCE, folder))):
                if file.endswith(".py"):
                    scanned.append(f"{folder}/{file}")
                    path = os.path.join(SOURCE, folder, file)
                    wrong.extend(f"{folder}/{file} imports {name}" for name in imported_test_modules(path))
        self.assertIn("tests/test_layout.py", scanned)
        self.assertEqual([], wrong)

    def test_an_import_of_a_test_module_is_found(self):
        """
        Every way of writing an import of a test module is caught; imports
        of support modules are not.
        """
        folder = os.path.join(self.mktemp(), "tests")
        os.makedirs(folder)
        path = os.path.join(folder, "test_example.py")
        with open(path, "w") as f:
            f.write(
                "import tests.test_cluster\n"
                "from tests.test_etcd import sleep\n"
                "from tests import etcdserver, test_http\n"
                "from .test_server import HOST\n"
                "from . import nodes, test_wire\n"
                "from tests.dnsclient import query\n"
                "def later():\n"
                "    from tests.test_secure import serve\n"
            )
        self.assertEqual(
            list(imported_test_modules(path)),
            ["tests.test_cluster", "tests.test_etcd", "tests.test_http", "tests.test_server", "tests.test_wire",
             "tests.test_secure"],
        )
