"""
The registry: one read, then a watch; its logic on idetcd.testing's etcd,
its behaviour through etcd's failures on a real one.
"""

import shutil

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher

from idetcd.etcd import prefix_range_end
from idetcd.members._registry import Registry
from tests.etcdserver import EtcdTestCase, restart
from tests.memberdata import PREFIX, value
from tests.memoryetcd import FakeEtcdCase
from tests.proxy import CuttableProxy
from tests.waiting import wait_for


class RegistryCase:
    """
    A registry of C{self.client}'s etcd, timed by C{self.reactor}, and the
    warnings it logs.
    """

    def watch_warnings(self):
        self.warnings = []

        def observe(event):
            if event.get("log_namespace") == "idetcd.members._registry" and event["log_level"].name == "warn":
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    @defer.inlineCallbacks
    def start(self):
        registry = Registry(self.client, PREFIX, self.reactor)
        self.changes = 0

        def changed():
            self.changes += 1

        registry.subscribe(changed)
        registry.startService()
        self.addCleanup(registry.stopService)
        yield registry.when_ready()
        return registry

    @defer.inlineCallbacks
    def etcd_view(self):
        """
        What etcd holds, read independently of the registry.
        """
        kvs, _ = yield self.client.range(PREFIX, prefix_range_end(PREFIX))
        return {kv.key[len(PREFIX):].decode(): kv.value for kv in kvs}

    def addresses(self, registry):
        return {name: m.ipv4 + m.ipv6 for name, m in registry.members.items()}


class RegistryLogicTests(RegistryCase, FakeEtcdCase):
    """
    How the registry reads and follows etcd, on idetcd.testing's etcd: its
    watch delivers each change by the time the write returns.
    """

    def setUp(self):
        FakeEtcdCase.setUp(self)
        self.reactor = self.clock
        self.watch_warnings()

    @defer.inlineCallbacks
    def test_reads_then_follows(self):
        yield self.client.put(PREFIX + b"worker1.tf.local.", value("10.0.0.1"))
        registry = yield self.start()
        self.assertEqual(self.addresses(registry), {"worker1.tf.local.": ("10.0.0.1",)})
        yield self.client.put(PREFIX + b"ps1.tf.local.", value("", "fd00::1"))
        yield self.client.put(PREFIX + b"worker1.tf.local.", value("10.0.0.9"))
        yield self.client.delete(PREFIX + b"worker1.tf.local.")
        self.assertNotIn("worker1.tf.local.", registry.members)
        self.assertEqual(self.addresses(registry), {"ps1.tf.local.": ("fd00::1",)})
        _, revision = yield self.client.range(PREFIX)
        self.assertEqual(registry.revision, revision)

    @defer.inlineCallbacks
    def test_when_caught_up(self):
        registry = yield self.start()
        revision = yield self.client.put(PREFIX + b"worker7.tf.local.", value("10.0.0.7"))
        yield registry.when_caught_up(revision)
        self.assertIn("worker7.tf.local.", registry.members)
        self.assertTrue(registry.when_caught_up(revision - 1).called)

    @defer.inlineCallbacks
    def test_empty_prefix_reads_every_key(self):
        """
        With prefix "" (the original plugin's keys) every key is a
        candidate; keys that are not names are skipped.
        """
        yield self.client.put(b"worker1.tf.local.", value("10.0.0.1"))
        yield self.client.put(b"/somebody/else", b"x")
        registry = Registry(self.client, b"", self.reactor)
        registry.startService()
        self.addCleanup(registry.stopService)
        yield registry.when_ready()
        self.assertEqual(list(registry.members), ["worker1.tf.local."])
        changes = []
        registry.subscribe(lambda: changes.append(registry.revision))
        revision = registry.revision
        for i in range(20):  # other users of the same etcd
            yield self.client.put(b"/somebody/else", b"%d" % i)
        yield self.client.put(b"worker2.tf.local.", value("10.0.0.2"))
        self.assertIn("worker2.tf.local.", registry.members)
        # Only the member's write moved the zone.
        self.assertEqual(len(changes), 1)
        self.assertGreater(changes[0], revision)

    @defer.inlineCallbacks
    def test_names_are_lower_case(self):
        yield self.client.put(PREFIX + b"Worker1.TF.local.", value())
        registry = yield self.start()
        self.assertEqual(list(registry.members), ["worker1.tf.local."])

    @defer.inlineCallbacks
    def test_garbage_is_logged_once_and_skipped(self):
        yield self.client.put(PREFIX + b"worker1.tf.local.", b"not json")
        yield self.client.put(PREFIX + b"worker2.tf.local.", b'{"ipv4": 5}')
        yield self.client.put(PREFIX + b"worker3.tf.local.", b'{"ipv4": "300.1.1.1"}')
        yield self.client.put(PREFIX + b"bad_name!.tf.local.", value())
        yield self.client.put(PREFIX + b"worker4.tf.local.", value("10.0.0.4"))
        registry = yield self.start()
        self.assertEqual(list(registry.members), ["worker4.tf.local."])
        self.assertEqual(len(self.warnings), 4)
        # The same garbage written again is not logged again.
        yield self.client.put(PREFIX + b"worker1.tf.local.", b"still not json")
        yield self.client.put(PREFIX + b"worker5.tf.local.", value("10.0.0.5"))
        self.assertIn("worker5.tf.local.", registry.members)
        self.assertEqual(len(self.warnings), 4)
        # Fixed, it is a member.
        yield self.client.put(PREFIX + b"worker1.tf.local.", value("10.0.0.1"))
        self.assertIn("worker1.tf.local.", registry.members)

    @defer.inlineCallbacks
    def test_valid_member_turned_garbage_is_dropped(self):
        yield self.client.put(PREFIX + b"worker1.tf.local.", value())
        registry = yield self.start()
        yield self.client.put(PREFIX + b"worker1.tf.local.", b"[]")
        self.assertEqual(registry.members, {})

    @defer.inlineCallbacks
    def test_change_subscribers_get_the_names(self):
        """
        Change subscribers learn which names were added, changed or removed,
        before the plain subscribers are called; a put that changes nothing
        calls nobody, and the registry still counts it as read.
        """
        yield self.client.put(PREFIX + b"worker1.tf.local.", value("10.0.0.1"))
        registry = Registry(self.client, PREFIX, reactor)
        calls = []
        registry.subscribe_changes(lambda names: calls.append(names))
        registry.subscribe(lambda: calls.append("plain"))
        registry.startService()
        self.addCleanup(registry.stopService)
        yield registry.when_ready()
        self.assertEqual(calls, [{"worker1.tf.local."}, "plain"])
        key1, key2 = PREFIX + b"worker1.tf.local.", PREFIX + b"worker2.tf.local."
        changes = []
        for change, args in (
            (self.client.put, (key2, value("10.0.0.2"))),
            (self.client.put, (key2, value("10.0.0.2"))),
            (self.client.put, (key1, value("10.0.0.9"))),
            (self.client.delete, (key2,)),
        ):
            del calls[:]
            yield change(*args)
            _, revision = yield self.client.range(PREFIX)
            yield registry.when_caught_up(revision)
            self.assertEqual(calls[1:], ["plain"] if calls else [])
            changes.append(calls[0] if calls else None)
        self.assertEqual(
            changes,
            [{"worker2.tf.local."}, None, {"worker1.tf.local."}, {"worker2.tf.local."}],
        )

    @defer.inlineCallbacks
    def test_full_read_in_pages(self):
        """
        A full read comes in pages of at most C{page} keys, one request
        each, all at the revision of the first page.
        """
        for i in range(25):
            yield self.client.put(PREFIX + b"worker%02d.tf.local." % i, value())
        yield self.client.put(b"/other/key", b"x")
        _, revision = yield self.client.range(PREFIX)
        before = yield self.range_requests()
        kvs, read_at = yield self.client.range_paged(PREFIX, prefix_range_end(PREFIX), page=10)
        after = yield self.range_requests()
        self.assertEqual(after - before, 3)
        self.assertEqual(read_at, revision)
        self.assertEqual(
            [kv.key for kv in kvs], [PREFIX + b"worker%02d.tf.local." % i for i in range(25)]
        )

    def range_requests(self):
        return self.etcd.served("/v3/kv/range")


class RegistryTests(RegistryCase, EtcdTestCase):
    """
    The registry through etcd's failures: restarts, compaction during a
    partition, a store gone back in time.
    """

    reactor = reactor

    @defer.inlineCallbacks
    def setUp(self):
        yield EtcdTestCase.setUp(self)
        self.watch_warnings()

    @defer.inlineCallbacks
    def test_keeps_members_while_etcd_is_down_and_catches_up(self):
        """
        The registry answers from memory while etcd restarts, and afterwards
        equals what etcd holds, including changes it missed.  Meanwhile it
        says since when it has not heard from etcd, and tells when that
        changes.
        """
        yield self.client.put(PREFIX + b"worker1.tf.local.", value("10.0.0.1"))
        yield self.client.put(PREFIX + b"worker2.tf.local.", value("10.0.0.2"))
        registry = yield self.start()
        self.assertIsNone(registry.unheard_since)
        told = []
        registry.subscribe_contact(lambda: told.append(registry.unheard_since))
        killed = reactor.seconds()
        yield self.etcd.kill()
        yield wait_for(lambda: registry.unheard_since is not None, timeout=15)
        self.assertGreaterEqual(registry.unheard_since, killed)
        self.assertEqual(set(registry.members), {"worker1.tf.local.", "worker2.tf.local."})
        self.etcd.running = 0
        yield self.etcd.startService()
        yield self.client.delete(PREFIX + b"worker1.tf.local.")
        yield self.client.put(PREFIX + b"worker3.tf.local.", value("10.0.0.3"))
        yield wait_for(lambda: set(registry.members) == {"worker2.tf.local.", "worker3.tf.local."}, timeout=15)
        view = yield self.etcd_view()
        self.assertEqual(set(view), set(registry.members))
        self.assertIsNone(registry.unheard_since)
        self.assertEqual(len(told), 2)
        self.assertIsNotNone(told[0])
        self.assertIsNone(told[1])

    @defer.inlineCallbacks
    def test_rereads_after_compaction(self):
        """
        When the watch cannot resume because etcd compacted what it missed
        during a partition, the registry reads everything again and ends
        equal to etcd.
        """
        proxy = CuttableProxy(self.etcd.client_port)
        proxy.start()
        self.addCleanup(proxy.close)
        client = self.make_client([proxy.url])
        yield self.client.put(PREFIX + b"worker1.tf.local.", value("10.0.0.1"))
        registry = Registry(client, PREFIX, self.reactor)
        changes = []
        registry.subscribe_changes(changes.append)
        registry.startService()
        self.addCleanup(registry.stopService)
        yield registry.when_ready()
        yield proxy.cut()
        yield self.client.delete(PREFIX + b"worker1.tf.local.")
        yield self.client.put(PREFIX + b"worker2.tf.local.", value("10.0.0.2"))
        revision = yield self.client.put(b"/unrelated", b"x")
        yield self.client.call("/v3/kv/compaction", {"revision": str(revision)})
        proxy.start()
        yield wait_for(lambda: set(registry.members) == {"worker2.tf.local."}, timeout=15)
        self.assertEqual(registry.revision, revision)
        self.assertTrue(any("compacted" in e.get("why", "") for e in self.warnings))
        # The second full read reports only what it found changed.
        self.assertEqual(changes[-1], {"worker1.tf.local.", "worker2.tf.local."})

    @defer.inlineCallbacks
    def test_rereads_when_etcd_goes_back_in_time(self):
        """
        An etcd wiped (or restored from an old snapshot) behind a running
        registry has lower revisions than the watch resumes from; the
        registry notices and reads everything again.
        """
        for i in range(5):
            yield self.client.put(PREFIX + f"worker{i}.tf.local.".encode(), value(f"10.0.0.{i}"))
        registry = yield self.start()
        self.assertEqual(len(registry.members), 5)
        before = registry.revision
        yield self.etcd.kill()
        shutil.rmtree(self.etcd.data_dir)
        self.etcd.running = 0
        yield self.etcd.startService()
        yield self.client.put(PREFIX + b"fresh.tf.local.", value("10.0.0.99"))
        yield wait_for(lambda: list(registry.members) == ["fresh.tf.local."], timeout=15)
        self.assertGreater(registry.revision, before)

    @defer.inlineCallbacks
    def test_restart_helper_keeps_data(self):
        yield self.client.put(PREFIX + b"worker1.tf.local.", value())
        yield restart(self.etcd)
        view = yield self.etcd_view()
        self.assertEqual(list(view), ["worker1.tf.local."])
