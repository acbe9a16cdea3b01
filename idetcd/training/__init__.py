"""
What a training job needs from idetcd beyond names: an agreed world
(L{idetcd.training.rounds}) and the launchers' own interfaces.
"""

from idetcd.training._clusterspec import (
    FORMATS,
    ClusterSpec,
    Local,
    SpecError,
    member_json,
)

__all__ = ["FORMATS", "ClusterSpec", "Local", "SpecError", "member_json"]
