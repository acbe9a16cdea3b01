"""
The Corefile: read, parsed and checked into the settings every part
of a node takes.
"""

from idetcd.config._corefile import (
    LOG_PLACEHOLDER,
    CorefileError,
    ErrorsSettings,
    ForwardSettings,
    HttpAddress,
    IdetcdSettings,
    QueryLogSettings,
    ServerBlock,
    Upstream,
    load,
    parse,
    read,
)

__all__ = [
    "LOG_PLACEHOLDER",
    "CorefileError",
    "ErrorsSettings",
    "ForwardSettings",
    "HttpAddress",
    "IdetcdSettings",
    "QueryLogSettings",
    "ServerBlock",
    "Upstream",
    "load",
    "parse",
    "read",
]
