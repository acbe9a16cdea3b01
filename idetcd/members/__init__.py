"""
The members of the cluster as etcd holds them: what a claimed name
stores (L{Member}), the in-memory view fed by a watch (L{Registry}), a
barrier on it (L{when_members}), and one consistent read (L{read_members}).
"""

from idetcd.members._barrier import (
    live_filter,
    member_filter,
    next_change,
    when_members,
)
from idetcd.members._record import Member, member_order, role_and_slot
from idetcd.members._registry import BOOKKEEPING, DEAD, JOBS, Registry, dead_key
from idetcd.members._snapshot import lease_times, read_members

__all__ = [
    "BOOKKEEPING",
    "DEAD",
    "JOBS",
    "Member",
    "Registry",
    "dead_key",
    "lease_times",
    "live_filter",
    "member_filter",
    "member_order",
    "next_change",
    "read_members",
    "role_and_slot",
    "when_members",
]
