"""
A node as a running program: the service tree made of the parts, the
twistd plugin's options, the embedded etcd, the operator's HTTP
endpoints, metrics, systemd and signals, why a start failed, and the
Corefile read into its server blocks (each directive by its part).
"""

from idetcd.node._configured import Unusable, build_nodes, dns_port, idetcd_blocks
from idetcd.node._corefile import HttpAddress, ReloadSettings, ServerBlock, load, parse
from idetcd.node._embedded import EtcdNotFound, EtcdProcess, find_etcd
from idetcd.node._idetcd_block import IdetcdSettings
from idetcd.node._ordered import OrderedMultiService
from idetcd.node._service import IdetcdService

__all__ = [
    "EtcdNotFound",
    "EtcdProcess",
    "HttpAddress",
    "IdetcdService",
    "IdetcdSettings",
    "OrderedMultiService",
    "ReloadSettings",
    "ServerBlock",
    "Unusable",
    "build_nodes",
    "dns_port",
    "find_etcd",
    "idetcd_blocks",
    "load",
    "parse",
]
