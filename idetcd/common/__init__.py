"""
Small tools every part uses: a retry backoff, rate-limited warnings, the
waiters of an event, and the exit statuses its errors carry.
"""

from idetcd.common._backoff import Backoff
from idetcd.common._ratelimit import LinesPerSecond, RateLimitedLog
from idetcd.common._sysexits import (
    EXIT_CANTCREAT,
    EXIT_CONFIG,
    EXIT_NOPERM,
    EXIT_SOFTWARE,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PERMANENT,
)
from idetcd.common._waiters import Waiters

__all__ = [
    "EXIT_CANTCREAT",
    "EXIT_CONFIG",
    "EXIT_NOPERM",
    "EXIT_SOFTWARE",
    "EXIT_TEMPFAIL",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "PERMANENT",
    "Backoff",
    "LinesPerSecond",
    "RateLimitedLog",
    "Waiters",
]
