"""
The Corefile: read, parsed and checked into the settings every part
of a node takes.
"""

from idetcd.config._corefile import (
    LOG_PLACEHOLDER,
    CacheSettings,
    CorefileError,
    ErrorsSettings,
    ForwardSettings,
    HttpAddress,
    IdetcdSettings,
    QueryLogSettings,
    ServerBlock,
    TransferSettings,
    Upstream,
    load,
    parse,
    read,
)

__all__ = [
    "CacheSettings",
    "LOG_PLACEHOLDER",
    "CorefileError",
    "ErrorsSettings",
    "ForwardSettings",
    "HttpAddress",
    "IdetcdSettings",
    "QueryLogSettings",
    "ServerBlock",
    "TransferSettings",
    "Upstream",
    "load",
    "parse",
    "read",
]
