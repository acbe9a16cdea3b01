"""
etcd's v3 API, spoken through its JSON gateway with treq.

All etcd I/O of idetcd lives in this package: requests (L{client}), watches
(L{watch}), the connections under them (L{connections}, with L{tls}), users
and tokens (L{auth}), the check a node makes before it relies on etcd
(L{check}), the values and errors they hand back (L{values},
L{replies}, L{errors}), and the Corefile's etcd settings (L{settings}).
The gateway answers on ``/v3`` from etcd 3.4 on.
"""

from idetcd.etcd.auth import Credentials
from idetcd.etcd.client import RANGE_PAGE, EtcdClient
from idetcd.etcd.connections import KEEPALIVE
from idetcd.etcd.errors import (
    AuthenticationFailed,
    Compacted,
    EtcdError,
    EtcdSetupError,
    EtcdTooOld,
    EtcdUnavailable,
    LeaseExists,
    LeaseNotFound,
    NoSpace,
    NotEtcdGateway,
    PermissionDenied,
    ResyncNeeded,
    SchemeMismatch,
    TlsFailed,
    describe,
)
from idetcd.etcd.settings import read_credentials, read_endpoints, read_tls
from idetcd.etcd.tls import TlsSettings
from idetcd.etcd.values import (
    Event,
    KeyValue,
    LeaseInfo,
    TxnResult,
    b64_text,
    prefix_range_end,
)
from idetcd.etcd.watch import MAX_WATCH_LINE, Watch, WatchStream

__all__ = [
    "AuthenticationFailed",
    "Compacted",
    "Credentials",
    "EtcdClient",
    "EtcdError",
    "EtcdSetupError",
    "EtcdTooOld",
    "EtcdUnavailable",
    "Event",
    "KEEPALIVE",
    "KeyValue",
    "LeaseExists",
    "LeaseInfo",
    "LeaseNotFound",
    "MAX_WATCH_LINE",
    "NoSpace",
    "NotEtcdGateway",
    "PermissionDenied",
    "RANGE_PAGE",
    "ResyncNeeded",
    "SchemeMismatch",
    "TlsFailed",
    "TlsSettings",
    "TxnResult",
    "Watch",
    "WatchStream",
    "b64_text",
    "describe",
    "prefix_range_end",
    "read_credentials",
    "read_endpoints",
    "read_tls",
]
