"""
etcd's v3 API, spoken through its JSON gateway with treq.

All etcd I/O of idetcd lives in this package: requests (L{client}), watches
(L{watch}), the connections under them (L{connections}), and the values and
errors they hand back (L{values}, L{errors}).  The gateway answers on
``/v3`` from etcd 3.4 on.
"""

from idetcd.etcd.client import RANGE_PAGE, EtcdClient
from idetcd.etcd.connections import KEEPALIVE
from idetcd.etcd.errors import (
    Compacted,
    EtcdError,
    EtcdUnavailable,
    LeaseNotFound,
    ResyncNeeded,
)
from idetcd.etcd.values import Event, KeyValue, LeaseInfo, TxnResult, _b64, prefix_range_end
from idetcd.etcd.watch import MAX_WATCH_LINE, Watch, _WatchStream

__all__ = [
    "Compacted",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "Event",
    "KEEPALIVE",
    "KeyValue",
    "LeaseInfo",
    "LeaseNotFound",
    "MAX_WATCH_LINE",
    "RANGE_PAGE",
    "ResyncNeeded",
    "TxnResult",
    "Watch",
    "_WatchStream",
    "_b64",
    "prefix_range_end",
]
