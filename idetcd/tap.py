"""
The ``twistd idetcd`` command: options, and the service it runs.
"""

import atexit
import os
import sys

from twisted.application.service import MultiService
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python import usage

from idetcd.claimer import SlotsExhausted
from idetcd.corefile import CorefileError, load
from idetcd.service import IdetcdService

log = Logger()

#: Exit status when the node cannot take part (no free slot, broken etcd).
EXIT_NO_NAME = 2


class Options(usage.Options):
    synopsis = "[--corefile FILE] [--port PORT] [--state DIR]"
    longdesc = (
        "Claim a unique name for this node in etcd and answer DNS for every "
        "node's name. See the README for the Corefile directives."
    )
    optParameters = [
        ["corefile", "c", "Corefile", "The Corefile to read."],
        ["port", "p", None, "DNS port to listen on, instead of the Corefile's.", int],
        ["state", "s", None, "State directory, instead of the Corefile's 'state'."],
    ]

    def postOptions(self):
        try:
            blocks = load(self["corefile"])
        except CorefileError as e:
            raise usage.UsageError(str(e))
        blocks = [block for block in blocks if block.idetcd is not None]
        if not blocks:
            raise usage.UsageError(f"{self['corefile']}: no server block has an idetcd directive")
        if len(blocks) > 1 and (self["port"] is not None or self["state"] is not None):
            raise usage.UsageError("--port and --state apply to a Corefile with one idetcd server block")
        self["blocks"] = blocks


def _exit_after_shutdown(status):
    # twistd exits 0 whenever the reactor stops; leave with our status once
    # it has cleaned up after itself.
    def leave():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(leave)


def _fatal(failure, reactor):
    if failure.check(CancelledError):
        return  # stopped before it had a name
    if failure.check(SlotsExhausted):
        log.critical("cannot start: {error}", error=failure.getErrorMessage())
    else:
        log.failure("cannot start", failure)
    _exit_after_shutdown(EXIT_NO_NAME)
    if reactor.running:
        reactor.stop()


def makeService(options, reactor=global_reactor):
    top = MultiService()
    for block in options["blocks"]:
        node = IdetcdService(block, reactor, port=options["port"], state_dir=options["state"])
        node.setServiceParent(top)
        node.when_claimed().addErrback(_fatal, reactor)
    return top
