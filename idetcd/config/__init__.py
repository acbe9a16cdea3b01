"""
The Corefile as text: read, split into words and server blocks of
directives, with the keys of each block and the values directives take.
Each part reads its own directives (as CoreDNS plugins do) and names
their readers to L{server_blocks}; the node puts them together
(L{idetcd.node.load}).
"""

from idetcd.config._blocks import DEFAULT_PORT, Block, server_blocks
from idetcd.config._corefile import CorefileError, Directive, read
from idetcd.config._values import (
    choice,
    duration,
    duration_between,
    ip_addresses,
    number,
    seconds,
    text,
    zone,
)

__all__ = [
    "DEFAULT_PORT",
    "Block",
    "CorefileError",
    "Directive",
    "choice",
    "duration",
    "duration_between",
    "ip_addresses",
    "number",
    "read",
    "seconds",
    "server_blocks",
    "text",
    "zone",
]
