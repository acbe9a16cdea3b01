"""
The C{idetcd} command: C{members}, C{wait}, C{env} and C{round}, reading
the Corefile a node runs with.
"""

from idetcd.cli._commands import EXIT_ETCD, EXIT_SPARE, EXIT_TIMEOUT
from idetcd.cli._main import run

__all__ = [
    "EXIT_ETCD",
    "EXIT_SPARE",
    "EXIT_TIMEOUT",
    "run",
]
