"""
Host names as idetcd stores and serves them, and the pattern of the
names a node may claim (C{worker{}.tf.local.}).
"""

from idetcd.names._hostname import absolute, name_problem, normalize_name
from idetcd.names._pattern import Pattern, PatternError

__all__ = [
    "Pattern",
    "PatternError",
    "absolute",
    "name_problem",
    "normalize_name",
]
