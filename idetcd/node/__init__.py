"""
A node as a running program: the service tree made of the parts, the
twistd plugin's options, the embedded etcd, the operator's HTTP
endpoints, metrics, systemd and signals, and why a start failed.
"""

from idetcd.node._configured import Unusable, build_nodes, dns_port, idetcd_blocks
from idetcd.node._embedded import EtcdNotFound, EtcdProcess, find_etcd
from idetcd.node._ordered import OrderedMultiService
from idetcd.node._service import IdetcdService

__all__ = [
    "EtcdNotFound",
    "EtcdProcess",
    "IdetcdService",
    "OrderedMultiService",
    "Unusable",
    "build_nodes",
    "dns_port",
    "find_etcd",
    "idetcd_blocks",
]
