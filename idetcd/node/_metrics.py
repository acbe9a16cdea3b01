"""
A node's Prometheus metrics, named after CoreDNS's so that dashboards carry
over.

Nothing here runs per DNS query: the DNS server counts in plain structures
(L{idetcd.dns._tally}), the lease keeper counts its keepalives, the etcd client
tells L{EtcdCalls} of each call, and L{NodeCollector} reads those counts and
the registry's and claimer's state only when Prometheus scrapes
(L{DnsCollector}, L{ForwardCollector}, L{NodeCollector}).  Each node
has a registry of its own, so several nodes in one process (an embedding
application, the tests) each report their own.
"""

import collections
import platform
from itertools import accumulate

import attr
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString
from twisted.internet import defer
from twisted.internet.error import ConnectError
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

import twisted
from idetcd._version import __version__
from idetcd.dns import DURATION_BOUNDS, SIZE_BOUNDS
from idetcd.etcd import EtcdUnavailable

#: etcd's gRPC method for each gateway path, as etcd's own metrics name it
#: (grpc_server_handled_total{grpc_method}), for the calls idetcd makes;
#: any other path counts as itself.
METHODS = {
    "/v3/kv/range": "Range",
    "/v3/kv/put": "Put",
    "/v3/kv/deleterange": "DeleteRange",
    "/v3/kv/txn": "Txn",
    "/v3/lease/grant": "LeaseGrant",
    "/v3/lease/revoke": "LeaseRevoke",
    "/v3/lease/keepalive": "LeaseKeepAlive",
    "/v3/lease/timetolive": "LeaseTimeToLive",
    # The gateway's plain HTTP GETs: the start-up check's and the embedded
    # etcd's readiness probes.
    "/version": "Version",
    "/health": "Health",
}

#: Every outcome of a lease keepalive, reported from 0 so alerts on their
#: rate work from the start.
KEEPALIVE_OUTCOMES = ("ok", "failed", "gone")


def etcd_outcome(result):
    """
    How an etcd call ended: "ok"; "error" (etcd refused it); "unavailable"
    (no endpoint answered; for a single GET, its endpoint did not);
    "cancelled" (given up by its caller).
    """
    if not isinstance(result, Failure):
        return "ok"
    if result.check(defer.CancelledError):
        return "cancelled"
    if result.check(EtcdUnavailable, ConnectError, defer.TimeoutError, ResponseNeverReceived):
        return "unavailable"
    return "error"


@attr.s(eq=False)
class EtcdCalls:
    """
    The etcd client's C{on_call} hook: counts calls by (method, outcome).
    """

    counts = attr.ib(factory=collections.Counter, init=False)

    def __call__(self, path, result):
        self.counts[METHODS.get(path, path), etcd_outcome(result)] += 1


def _counter(name, documentation, labels, counts):
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(counts.items()):
        family.add_metric(key if isinstance(key, tuple) else (key,), value)
    return family


@attr.s(eq=False)
class DnsCollector:
    """
    A prometheus_client collector of the answers counted in C{tally} (a
    L{DnsTally}) by the server that C{server()} names as CoreDNS does
    (C{dns://:PORT}: known once it listens).
    """

    tally = attr.ib()
    server = attr.ib()

    def collect(self):
        zone = self.tally.zone
        yield _counter(
            "idetcd_dns_requests",
            "DNS requests answered, per zone, protocol, family and query type.",
            ("zone", "proto", "family", "type"),
            {(zone, *key): count for key, count in self.tally.requests().items()},
        )
        yield _counter(
            "idetcd_dns_responses", "DNS responses, per zone and response code.",
            ("zone", "rcode"),
            {(zone, rcode): count for rcode, count in self.tally.responses().items()},
        )
        durations = HistogramMetricFamily(
            "idetcd_dns_request_duration_seconds",
            "Time from reading a DNS request to handing its response to the kernel, per zone and query type.",
            labels=("zone", "type"),
        )
        for type_label, (cumulative, count, seconds) in sorted(self.tally.durations().items()):
            durations.add_metric((zone, type_label), _buckets(DURATION_BOUNDS, cumulative, count), seconds)
        yield durations
        requests, responses = self.tally.sizes()
        for name, what, sizes in (
            ("idetcd_dns_request_size_bytes", "DNS requests", requests),
            ("idetcd_dns_response_size_bytes", "DNS responses", responses),
        ):
            family = HistogramMetricFamily(
                name, f"Size of {what} in bytes, per server, zone and protocol.",
                labels=("server", "zone", "proto"),
            )
            for proto, (cumulative, count, total) in sorted(sizes.items()):
                family.add_metric(
                    (self.server(), zone, proto), _buckets(SIZE_BOUNDS, cumulative, count), total
                )
            yield family


def _buckets(bounds, cumulative, count):
    """
    Histogram buckets for prometheus_client: each of C{bounds} with its
    C{cumulative} count, then +Inf with C{count}.
    """
    return [(floatToGoString(bound), n) for bound, n in zip(bounds, cumulative)] + [("+Inf", count)]


@attr.s(eq=False)
class ForwardCollector:
    """
    A prometheus_client collector of what C{forwarder} (an
    L{idetcd.dns._forward.Forwarder}) sent upstream and got back, and of
    its cache, labelled with the name C{server()} gives its DNS server.
    """

    forwarder = attr.ib()
    server = attr.ib()

    def collect(self):
        forwarder = self.forwarder
        tries = {str(upstream): 0 for upstream in forwarder.upstreams}
        tries.update(forwarder.tries)
        yield _counter(
            "idetcd_forward_requests", "Queries sent upstream, per upstream; each try counts.",
            ("to",), tries,
        )
        yield _counter(
            "idetcd_forward_responses", "Replies taken from upstreams, per upstream and response code.",
            ("to", "rcode"), forwarder.replies,
        )
        yield _counter(
            "idetcd_forward_max_concurrent_rejects",
            "Queries to forward dropped because max_concurrent were in flight.",
            (), {(): forwarder.dropped},
        )
        latency = HistogramMetricFamily(
            "idetcd_forward_request_duration_seconds",
            "Time an upstream took to answer a try, per upstream.",
            labels=("to",),
        )
        for to, buckets in sorted(forwarder.latency.items()):
            cumulative = list(accumulate(buckets.get(k, 0) for k in range(len(DURATION_BOUNDS))))
            latency.add_metric(
                (to,), _buckets(DURATION_BOUNDS, cumulative, sum(buckets.values())), forwarder.latency_ns[to] / 1e9
            )
        yield latency
        health = forwarder.health
        yield _counter(
            "idetcd_forward_healthcheck_failures",
            "Health probes an upstream did not answer, per upstream.",
            ("to",), {str(upstream): health[upstream].probe_failures for upstream in forwarder.upstreams},
        )
        up = GaugeMetricFamily(
            "idetcd_forward_up", "1 while an upstream is used, 0 while it is down (max_fails failures in a row).",
            labels=("to",),
        )
        for upstream in forwarder.upstreams:
            up.add_metric((str(upstream),), 0 if health[upstream].down else 1)
        yield up
        yield _counter(
            "idetcd_forward_tcp_connections", "TCP connections opened to upstreams.", (),
            {(): forwarder.pool.opened},
        )
        yield _counter(
            "idetcd_forward_tcp_reuses", "Queries sent on a TCP connection kept from an earlier one (expire).", (),
            {(): forwarder.pool.reused},
        )
        cache = forwarder.cache
        if cache is not None:
            server = self.server()
            entries = GaugeMetricFamily(
                "idetcd_cache_entries", "Forwarded answers kept, per kind.", labels=("server", "type")
            )
            for kind, count in sorted(cache.sizes().items()):
                entries.add_metric((server, kind), count)
            yield entries
            yield _counter(
                "idetcd_cache_hits", "Queries answered from the cache, per kind.", ("server", "type"),
                {(server, kind): count for kind, count in cache.hits.items()},
            )
            yield _counter(
                "idetcd_cache_misses", "Queries to forward the cache could not answer.", ("server",),
                {(server,): cache.misses},
            )
            yield _counter(
                "idetcd_cache_evictions", "Answers dropped from a full cache, per kind.", ("server", "type"),
                {(server, kind): count for kind, count in cache.evictions.items()},
            )
            yield _counter(
                "idetcd_cache_prefetch", "Popular answers asked again before they expire.", ("server",),
                {(server,): cache.prefetches},
            )


@attr.s(eq=False)
class NodeCollector:
    """
    A prometheus_client collector of one node's state: its registry, its
    claim, its lease keepalives, and its etcd calls as C{etcd} (its
    client's L{EtcdCalls}) counted them.
    """

    node = attr.ib()
    etcd = attr.ib()
    _claimed = attr.ib(factory=set, init=False)  # every name seen held

    def collect(self):
        node = self.node
        yield GaugeMetricFamily(
            "idetcd_members", "Names claimed in etcd, as this node's registry holds them.",
            value=len(node.registry.members),
        )
        yield GaugeMetricFamily(
            "idetcd_registry_revision",
            "etcd revision of the last membership change the registry applied.",
            value=node.registry.revision,
        )
        held = node.held_name
        if held is not None:
            self._claimed.add(held)
        claimed = GaugeMetricFamily(
            "idetcd_claimed",
            "1 for the name this node holds on a live lease; 0 for names it held before.",
            labels=("name",),
        )
        for name in sorted(self._claimed):
            claimed.add_metric((name,), 1 if name == held else 0)
        yield claimed
        yield GaugeMetricFamily(
            "idetcd_etcd_nospace",
            "1 while etcd's NOSPACE alarm refuses this node's claim (database space exceeded), else 0.",
            value=int(node.claimer.nospace),
        )
        keepalives = node.claimer.keepalives
        yield _counter(
            "idetcd_lease_keepalives", "Keepalives of this node's lease, by outcome.",
            ("outcome",), {outcome: keepalives[outcome] for outcome in KEEPALIVE_OUTCOMES},
        )
        yield _counter(
            "idetcd_etcd_requests", "Calls to etcd, by gRPC method and outcome.",
            ("method", "outcome"), self.etcd.counts,
        )


def build_info():
    """
    A prometheus_client collector of C{idetcd_build_info}: 1, labelled with
    the versions running, as CoreDNS's C{coredns_build_info}.
    """
    info = GaugeMetricFamily(
        "idetcd_build_info", "A metric with a constant '1' value labeled by version, python and twisted.",
        labels=("version", "python", "twisted"),
    )
    info.add_metric((__version__, platform.python_version(), twisted.__version__), 1)
    return _Fixed(info)


@attr.s(eq=False)
class _Fixed:
    """
    A collector of one metric family that never changes.
    """

    family = attr.ib()

    def collect(self):
        yield self.family


def node_registry(node, dns, calls):
    """
    A new registry of C{node}'s metrics (and of its process, as every
    Prometheus client reports them), read from what counts them: C{dns},
    the L{DnsTally} its DNS server was given, and C{calls}, the
    L{EtcdCalls} its etcd client was given.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(build_info())

    def server():
        return f"dns://:{node.dns.port}"  # its port once bound

    registry.register(DnsCollector(dns, server))
    registry.register(NodeCollector(node, calls))
    if node.dns.forwarder is not None:
        registry.register(ForwardCollector(node.dns.forwarder, server))
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    return registry
