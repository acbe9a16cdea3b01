"""
The DNS front end: the zone authority answering from memory, the UDP
and TCP server in front of it, replies as bytes, forwarding of other
names, zone transfers to secondaries, and how far a node can vouch for its answers.
"""

from idetcd.dns._authority import ZoneAuthority
from idetcd.dns._forward import Forwarder
from idetcd.dns._freshness import Freshness
from idetcd.dns._peers import reverse_zones
from idetcd.dns._querylog import QueryLog, query_log
from idetcd.dns._server import DNSServer
from idetcd.dns._tally import BOUNDS as DURATION_BOUNDS
from idetcd.dns._tally import SIZE_BOUNDS, DnsTally
from idetcd.dns._transfer import ZoneTransfer

__all__ = [
    "DURATION_BOUNDS",
    "SIZE_BOUNDS",
    "DNSServer",
    "DnsTally",
    "Forwarder",
    "Freshness",
    "QueryLog",
    "ZoneAuthority",
    "ZoneTransfer",
    "query_log",
    "reverse_zones",
]
