"""
Makes ``twistd idetcd`` known to twistd.
"""

from twisted.application.service import ServiceMaker

idetcd = ServiceMaker(
    "idetcd",
    "idetcd.node._tap",
    "Collision-free cluster node names in etcd, served over DNS",
    "idetcd",
)
