"""
idetcd: collision-free DNS names for the nodes of a cluster, claimed in etcd.

The public API; everything else may change.
"""

from idetcd._version import __version__
from idetcd.claim import SlotsExhausted, StateDirectoryBusy
from idetcd.config import CorefileError
from idetcd.members import Member
from idetcd.names import Pattern, PatternError
from idetcd.node import IdetcdService, IdetcdSettings, ServerBlock, load, parse
from idetcd.training import ClusterSpec, SpecError
from idetcd.training.rounds import Round

__all__ = [
    "ClusterSpec",
    "CorefileError",
    "IdetcdService",
    "IdetcdSettings",
    "Member",
    "Pattern",
    "PatternError",
    "Round",
    "ServerBlock",
    "SlotsExhausted",
    "SpecError",
    "StateDirectoryBusy",
    "__version__",
    "load",
    "parse",
]
