"""
The DNS front end: the zone authority answering from memory, the UDP
and TCP server in front of it, replies as bytes, forwarding of other
names, zone transfers to secondaries, and how far a node can vouch for its answers;
and its Corefile directives (C{forward}, C{cache}, C{transfer}, C{log},
C{errors}), read into their settings.
"""

from idetcd.dns._authority import ZoneAuthority
from idetcd.dns._forward import Forwarder
from idetcd.dns._forward_settings import (
    PRIVATE_NETWORKS,
    CacheSettings,
    ForwardSettings,
    Upstream,
    read_cache,
    read_forward,
)
from idetcd.dns._freshness import Freshness
from idetcd.dns._log_settings import (
    ErrorsSettings,
    QueryLogSettings,
    read_errors,
    read_log,
)
from idetcd.dns._peers import reverse_zones
from idetcd.dns._querylog import QueryLog, query_log
from idetcd.dns._server import DNSServer
from idetcd.dns._tally import BOUNDS as DURATION_BOUNDS
from idetcd.dns._tally import SIZE_BOUNDS, DnsTally
from idetcd.dns._transfer import ZoneTransfer
from idetcd.dns._transfer_settings import (
    TransferSettings,
    read_transfer,
    transfer_for_zone,
)

__all__ = [
    "DURATION_BOUNDS",
    "PRIVATE_NETWORKS",
    "SIZE_BOUNDS",
    "CacheSettings",
    "DNSServer",
    "DnsTally",
    "ErrorsSettings",
    "ForwardSettings",
    "Forwarder",
    "Freshness",
    "QueryLog",
    "QueryLogSettings",
    "TransferSettings",
    "Upstream",
    "ZoneAuthority",
    "ZoneTransfer",
    "query_log",
    "read_cache",
    "read_errors",
    "read_forward",
    "read_log",
    "read_transfer",
    "reverse_zones",
    "transfer_for_zone",
]
