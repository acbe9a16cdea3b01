"""
Small tools every part uses: a retry backoff and rate-limited warnings.
"""

from idetcd.common._backoff import Backoff
from idetcd.common._ratelimit import LinesPerSecond, RateLimitedLog

__all__ = [
    "Backoff",
    "LinesPerSecond",
    "RateLimitedLog",
]
