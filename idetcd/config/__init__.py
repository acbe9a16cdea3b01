"""
The Corefile: read, parsed and checked into the settings every part
of a node takes.
"""

from idetcd.config._corefile import (
    CacheSettings,
    CorefileError,
    ForwardSettings,
    HttpAddress,
    IdetcdSettings,
    ServerBlock,
    TransferSettings,
    Upstream,
    load,
    parse,
    read,
)

__all__ = [
    "CacheSettings",
    "CorefileError",
    "ForwardSettings",
    "HttpAddress",
    "IdetcdSettings",
    "ServerBlock",
    "TransferSettings",
    "Upstream",
    "load",
    "parse",
    "read",
]
