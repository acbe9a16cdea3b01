"""
idetcd: collision-free DNS names for the nodes of a cluster, claimed in etcd.

The public API; everything else may change.
"""

from idetcd.claimer import SlotsExhausted
from idetcd.clusterspec import ClusterSpec, SpecError
from idetcd.corefile import CorefileError, IdetcdSettings, ServerBlock, load, parse
from idetcd.members import Member
from idetcd.pattern import Pattern, PatternError
from idetcd.service import IdetcdService
from idetcd.state import StateDirectoryBusy
from idetcd.training.rounds import Round

__version__ = "0.1.0"

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
    "load",
    "parse",
]
