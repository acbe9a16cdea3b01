"""
Ownership of a name: the claimer that takes a free slot (the requests of
a claim made apart, what it does next decided apart, the queue it waits
its turn in), the lease that keeps it, what the node announces with it,
and the state directory that lets a restarted node take it back.
"""

from idetcd.claim._announcement import (
    Announcement,
    NoAddress,
    NodeIdentity,
    announced_address,
)
from idetcd.claim._claimer import Claimer, SlotsExhausted
from idetcd.claim._lease import LeaseKeeper
from idetcd.claim._queue import QUEUE, ClaimQueue
from idetcd.claim._state_directory import NodeState, StateDirectoryBusy, state_path

__all__ = [
    "QUEUE",
    "Announcement",
    "ClaimQueue",
    "Claimer",
    "LeaseKeeper",
    "NoAddress",
    "NodeIdentity",
    "NodeState",
    "SlotsExhausted",
    "StateDirectoryBusy",
    "announced_address",
    "state_path",
]
