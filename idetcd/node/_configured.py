"""
From a Corefile and the options of ``twistd idetcd`` to the nodes they
describe, built but not started: the one path by which ``twistd idetcd``
and ``idetcd check`` find every mistake that shows without binding a port
or asking etcd (the Corefile's every directive, the files named by
C{tls}, C{credentials} and C{forward}, a C{forward} that would reach the
node itself).
"""

from idetcd.common import EXIT_CONFIG, EXIT_USAGE
from idetcd.config import CorefileError
from idetcd.node import _failures as failures
from idetcd.node._corefile import load
from idetcd.node._service import IdetcdService


class Unusable(Exception):
    """
    A Corefile or options no node can run with: C{line} says why and what
    to fix, C{status} is the exit status (L{EXIT_CONFIG} or
    L{EXIT_USAGE}).
    """

    def __init__(self, line, status):
        super().__init__(line)
        self.line = line
        self.status = status


def dns_port(text):
    """
    The C{--port} option: a port number, 0 (any free port) to 65535.
    """
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be 0 to 65535, got {text}")
    return port


def idetcd_blocks(corefile, port=None, state=None):
    """
    The server blocks with an C{idetcd} directive of the Corefile at
    C{corefile}, which C{--port} and C{--state} (C{port}, C{state}) must
    fit.
    """
    try:
        blocks = load(corefile)
    except CorefileError as e:
        raise Unusable(failures.one_line(e), EXIT_CONFIG) from None
    blocks = [block for block in blocks if block.idetcd is not None]
    if not blocks:
        raise Unusable(f"{corefile}: no server block has an idetcd directive", EXIT_CONFIG)
    if len(blocks) > 1 and (port is not None or state is not None):
        raise Unusable("--port and --state apply to a Corefile with one idetcd server block", EXIT_USAGE)
    return blocks


def build_nodes(blocks, reactor, port=None, state=None):
    """
    An L{IdetcdService} for each of C{blocks}, not started.
    """
    try:
        return [IdetcdService(block, reactor, port=port, state_dir=state) for block in blocks]
    except Exception as e:
        explained = failures.explain(e)
        if explained is None:
            raise
        raise Unusable(*explained) from None
