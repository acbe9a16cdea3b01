"""
Tests for reading a Corefile: L{idetcd.config}, and the directives
read by the parts they configure (L{idetcd.node.parse}).
"""

import os

from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from idetcd.common import EXIT_CONFIG
from idetcd.config import CorefileError, Directive, number, server_blocks
from idetcd.dns import PRIVATE_NETWORKS, ForwardSettings, Upstream
from idetcd.etcd.auth import Credentials
from idetcd.etcd.tls import TlsSettings
from idetcd.names._pattern import Pattern
from idetcd.node import (
    HttpAddress,
    IdetcdSettings,
    ReloadSettings,
    ServerBlock,
    load,
    parse,
)
from tests.certs import make_certificates

ORIGINAL = """\
. {
    idetcd {
        endpoint http://127.0.0.1:2379
        limit 5
        pattern worker{{.ID}}.tf.local.
    }
}
"""


def idetcd(*lines):
    """
    A Corefile with one idetcd block holding C{lines}, the first on line 3.
    """
    return ". {\n    idetcd {\n" + "".join(f"        {line}\n" for line in lines) + "    }\n}\n"


def settings(*lines, environ=None):
    (block,) = parse(idetcd(*lines), environ={} if environ is None else environ)
    return block.idetcd


class ErrorAssertions:
    def assertCorefileError(self, text, line, *words, environ=None, filename="Corefile"):
        """
        Parsing C{text} fails at C{line} with a message holding C{words}.
        """
        with self.assertRaises(CorefileError) as caught:
            parse(text, filename, environ={} if environ is None else environ)
        error = caught.exception
        self.assertEqual((error.filename, error.line), (filename, line), str(error))
        for word in words:
            self.assertIn(word, error.message, text)
        self.assertEqual(str(error), f"{filename}:{line}: {error.message}")
        return error


class OriginalTests(TestCase):
    """
    The Corefiles idetcd is known by still work unchanged.
    """

    def test_original(self):
        """
        The 2018 plugin's example Corefile reads as it meant.
        """
        self.assertEqual(
            parse(ORIGINAL),
            (
                ServerBlock(
                    zones=(".",),
                    port=53,
                    binds=(),
                    idetcd=IdetcdSettings(
                        pattern=Pattern.parse("worker{{.ID}}.tf.local."),
                        endpoints=("http://127.0.0.1:2379",),
                        limit=5,
                        filename="Corefile",
                        line=2,
                    ),
                    filename="Corefile",
                    line=1,
                ),
            ),
        )

    def test_sample(self):
        """
        Corefile.sample is the quick start: embedded etcd on 127.0.0.1:1053.
        """
        path = FilePath(__file__).parent().parent().child("Corefile.sample")
        (block,) = load(path.path, environ={})
        self.assertEqual((block.zones, block.port, block.binds), ((".",), 1053, ("127.0.0.1",)))
        self.assertEqual(block.idetcd.endpoints, ("embedded",))
        self.assertEqual(block.idetcd.limit, 5)
        self.assertEqual(block.idetcd.pattern.render(5), "worker5.tf.local.")
        self.assertEqual(block.idetcd.filename, path.path)


class SettingsTests(TestCase):
    """
    Every setting of the idetcd block and its default.
    """

    def test_defaults(self):
        """
        Only the pattern is needed.
        """
        self.assertEqual(
            settings("pattern w{{.ID}}.tf.local."),
            IdetcdSettings(
                pattern=Pattern.parse("w{{.ID}}.tf.local."),
                endpoints=("http://127.0.0.1:2379",),
                limit=10,
                ttl=5,
                lease=10,
                addresses=(),
                prefix="/idetcd/",
                state=None,
                node=None,
                wait=False,
                filename="Corefile",
                line=2,
            ),
        )

    def test_all(self):
        """
        Each setting lands in its field, normalized.
        """
        got = settings(
            "endpoint https://etcd1:2379 HTTP://[::1]:2380/ http://10.0.0.3 http://etcd_1:2379",
            "limit 50000",
            'pattern w{{ "%06d" % ID }}.tf.local.',
            "ttl 0",
            "lease 2",
            "nameservers 5",
            "address 10.0.0.1 2001:DB8:0:0::1 ::ffff:10.0.0.2",
            "prefix /cluster/names/",
            "state /var/lib/idetcd",
            "node node-a.1",
            "wait",
        )
        self.assertEqual(
            got.endpoints, ("https://etcd1:2379", "http://[::1]:2380", "http://10.0.0.3", "http://etcd_1:2379")
        )
        self.assertEqual((got.limit, got.ttl, got.lease), (50000, 0, 2))
        self.assertEqual(got.nameservers, 5)
        self.assertEqual(got.pattern.render(7), "w000007.tf.local.")
        self.assertEqual(got.addresses, ("10.0.0.1", "2001:db8::1", "::ffff:a00:2"))
        self.assertEqual(got.prefix, "/cluster/names/")
        self.assertEqual((got.state, got.node, got.wait), ("/var/lib/idetcd", "node-a.1", True))

    def test_ranges(self):
        """
        Numbers are accepted at both ends of their range.
        """
        for line, field, value in [
            ("limit 1", "limit", 1),
            ("limit 50000", "limit", 50000),
            ("ttl 0", "ttl", 0),
            ("ttl 86400", "ttl", 86400),
            ("lease 2", "lease", 2),
            ("lease 3600", "lease", 3600),
            ("nameservers 1", "nameservers", 1),
            ("nameservers 13", "nameservers", 13),
            ("srv 2222", "srv", 2222),
            ("stale 0", "stale", 0),
            ("stale 259200", "stale", 259200),
        ]:
            got = settings("pattern w{{.ID}}.x.", line)
            self.assertEqual(getattr(got, field), value, line)

    def test_empty_prefix(self):
        """
        A quoted empty prefix gives the original plugin's keys.
        """
        self.assertEqual(settings("pattern w{{.ID}}.x.", 'prefix ""').prefix, "")

    def test_embedded(self):
        """
        The word embedded stands for an etcd run inside this process.
        """
        self.assertEqual(
            settings("pattern w{{.ID}}.x.", "endpoint embedded").endpoints, ("embedded",)
        )


class SettingErrorTests(ErrorAssertions, TestCase):
    """
    Bad settings are refused at their line, saying what was expected.
    """

    def test_errors(self):
        cases = [
            # (lines of the idetcd block, line of the error, words)
            (["limit 0", "pattern w{{.ID}}.x."], 3, "limit must be a whole number from 1 to 50000, got '0'"),
            (["limit 50001", "pattern w{{.ID}}.x."], 3, "from 1 to 50000", "'50001'"),
            (["limit five", "pattern w{{.ID}}.x."], 3, "whole number", "'five'"),
            (["limit -1", "pattern w{{.ID}}.x."], 3, "whole number", "'-1'"),
            (["limit 1" + "0" * 5000, "pattern w{{.ID}}.x."], 3, "whole number"),
            (["limit ５", "pattern w{{.ID}}.x."], 3, "whole number"),
            (["pattern w{{.ID}}.x.", "ttl 86401"], 4, "ttl must be a whole number of seconds from 0 to 86400", "'86401'"),
            (["pattern w{{.ID}}.x.", "ttl 5s"], 4, "ttl", "'5s'"),
            (["pattern w{{.ID}}.x.", "lease 1"], 4, "lease must be a whole number of seconds from 2 to 3600", "'1'"),
            (["pattern w{{.ID}}.x.", "lease 3601"], 4, "lease", "3600"),
            (["pattern w{{.ID}}.x.", "nameservers 0"], 4, "nameservers must be a whole number from 1 to 13", "'0'"),
            (["pattern w{{.ID}}.x.", "srv 65536"], 4, "srv must be a whole number from 1 to 65535", "'65536'"),
            (["pattern w{{.ID}}.x.", "nameservers 14"], 4, "nameservers", "'14'"),
            (["pattern w{{.ID}}.x.", "stale 259201"], 4, "stale must be a whole number of seconds from 0 to 259200", "'259201'"),
            (["limit"], 3, "'limit' needs 1 argument", "got 0"),
            (["limit 1 2"], 3, "'limit' needs 1 argument", "got 2"),
            (["pattern"], 3, "'pattern' needs 1 argument"),
            (["pattern a{{.ID}}.x. b{{.ID}}.x."], 3, "'pattern' needs 1 argument", "got 2"),
            (["pattern w{{.ID}}.x.", "prefix"], 4, "'prefix' needs 1 argument"),
            (["pattern w{{.ID}}.x.", "prefix idetcd"], 4, "prefix must start and end with '/', such as /idetcd/, or be \"\"", "got 'idetcd'"),
            (["pattern w{{.ID}}.x.", "prefix /idetcd"], 4, "prefix must start and end with '/'", "got '/idetcd'"),
            (["pattern w{{.ID}}.x.", "prefix idetcd/"], 4, "prefix must start and end with '/'", "got 'idetcd/'"),
            (["pattern w{{.ID}}.x.", "endpoint"], 4, "'endpoint' needs at least 1 argument"),
            (["pattern w{{.ID}}.x.", "address"], 4, "'address' needs at least 1 argument"),
            (["pattern w{{.ID}}.x.", "wait yes"], 4, "'wait' takes no arguments", "got 1"),
            (["pattern w{{.ID}}.x.", "limit 3 {", "}"], 4, "'limit' takes no block"),
            (["limt 3"], 3, "unknown directive 'limt' in idetcd", "expected one of: address, credentials, endpoint, lease, limit, nameservers, node, pattern, prefix, srv, stale, state, tls, ttl, wait"),
            (["pattern w{{.ID}}.x.", "log"], 4, "unknown directive 'log' in idetcd"),
            (["limit 3", "ttl 1", "limit 4", "pattern w{{.ID}}.x."], 5, "duplicate 'limit'", "first on line 3"),
            (["pattern w{{.ID}}.x.", "pattern v{{.ID}}.x."], 4, "duplicate 'pattern'", "line 3"),
            (["wait", "pattern w{{.ID}}.x.", "wait"], 5, "duplicate 'wait'", "line 3"),
            (["limit 3"], 2, "idetcd needs a pattern"),
            ([], 2, "idetcd needs a pattern"),
            (["pattern worker.tf.local."], 3, "pattern 'worker.tf.local.' has no ID"),
            (["pattern w{{ ID + }}.x."], 3, "not a valid template"),
            (["pattern w{{.ID}.x."], 3, "unterminated template"),
            (["pattern w{{ name }}.x."], 3, "unknown variable", "'name'"),
            (["pattern w_{{.ID}}.x."], 3, "invalid host name", "'w_1.x.'"),
            (["pattern a.{{.ID}}.x."], 3, "first label"),
            (["pattern w{{.ID}}."], 3, "no zone"),
            (["pattern w{{ ID % 4 }}.x.", "limit 5"], 3, "slot 1 and slot 5"),
            (["limit 64", "pattern {{ 'a' * ID }}.x."], 4, "slot 64", "at most 63"),
            (["pattern w{{.ID}}.x.", "endpoint 127.0.0.1:2379"], 4, "'127.0.0.1:2379' is not an etcd URL", "embedded"),
            (["pattern w{{.ID}}.x.", "endpoint ftp://h:21"], 4, "'ftp://h:21' is not an etcd URL"),
            (["pattern w{{.ID}}.x.", "endpoint http://"], 4, "'http://' is not an etcd URL"),
            (["pattern w{{.ID}}.x.", "endpoint http://h:99999"], 4, "'http://h:99999' is not an etcd URL", "out of range"),
            (["pattern w{{.ID}}.x.", "endpoint http://h:0"], 4, "'http://h:0' is not an etcd URL"),
            (["pattern w{{.ID}}.x.", "endpoint http://h:port"], 4, "'http://h:port' is not an etcd URL"),
            (["pattern w{{.ID}}.x.", "endpoint http://[::1"], 4, "'http://[::1' is not an etcd URL"),
            (["pattern w{{.ID}}.x.", "endpoint http://[fe80::1%eth0]:2379"], 4, "is not an etcd URL", "invalid IPv6 host"),
            (["pattern w{{.ID}}.x.", "endpoint http://h:2379/v3"], 4, "must not have a path"),
            (["pattern w{{.ID}}.x.", "endpoint http://h:2379?x=1"], 4, "path, query or fragment"),
            (["pattern w{{.ID}}.x.", "endpoint http://u:p@h:2379"], 4, "passwords are not supported"),
            (["pattern w{{.ID}}.x.", "endpoint http://h:1 http://h:1/"], 4, "lists http://h:1 twice"),
            (["pattern w{{.ID}}.x.", "endpoint embedded http://h:1"], 4, "embedded", "cannot be listed with other endpoints"),
            (["pattern w{{.ID}}.x.", "endpoint http://h:1 embedded"], 4, "embedded", "other endpoints"),
            (["pattern w{{.ID}}.x.", "address eth0"], 4, "address takes IPv4 or IPv6 addresses, got 'eth0'"),
            (["pattern w{{.ID}}.x.", "address 10.0.0.256"], 4, "'10.0.0.256'"),
            (["pattern w{{.ID}}.x.", "address 10.0.0.0/8"], 4, "'10.0.0.0/8'"),
            (["pattern w{{.ID}}.x.", "address ::1 0::1"], 4, "lists ::1 twice"),
            (["pattern w{{.ID}}.x.", "address 0.0.0.0"], 4, "0.0.0.0 cannot be announced"),
            (["pattern w{{.ID}}.x.", "address ::"], 4, ":: cannot be announced"),
            (["pattern w{{.ID}}.x.", "address 224.0.0.1"], 4, "cannot be announced"),
            (["pattern w{{.ID}}.x.", 'node ""'], 4, "node must be a name without spaces", "''"),
            (["pattern w{{.ID}}.x.", 'node "a b"'], 4, "node must be a name without spaces", "'a b'"),
            (["pattern w{{.ID}}.x.", 'state ""'], 4, "state must be a directory, got ''"),
            (["pattern w{{.ID}}.x.", 'state " "'], 4, "state must be a directory"),
            (["pattern w{{.ID}}.x.", 'state "a\nb"'], 4, "state must be a directory"),
        ]
        for lines, line, *words in cases:
            self.assertCorefileError(idetcd(*lines), line, *words)

    def test_pattern_outside_zones(self):
        """
        The pattern's names must lie in one of the block's zones.
        """
        text = "example.org tf {\n    idetcd {\n        pattern worker{{.ID}}.tf.local.\n    }\n}\n"
        self.assertCorefileError(
            text,
            3,
            "pattern 'worker{{.ID}}.tf.local.' lies outside this block's zones"
            " (example.org., tf.)",
            "its names are in tf.local.",
        )

    def test_pattern_in_zones(self):
        """
        A pattern zone equal to or below a block zone is in the block.
        """
        for keys in (".", "tf.local", "local", "example.org, TF.local", "tf.local.:1053"):
            text = keys + " {\n    idetcd {\n        pattern worker{{.ID}}.tf.local.\n    }\n}\n"
            (block,) = parse(text, environ={})
            self.assertEqual(block.idetcd.pattern.zone, "tf.local.", keys)
        self.assertCorefileError(
            "cal {\n idetcd {\n pattern w{{.ID}}.tf.local.\n }\n}", 3, "outside"
        )
        self.assertCorefileError(
            "w1.tf.local {\n idetcd {\n pattern w{{.ID}}.tf.local.\n }\n}", 3, "outside"
        )


class EtcdAccessTests(ErrorAssertions, TestCase):
    """
    C{tls} and C{credentials} take CoreDNS's etcd plugin's arguments; the
    files they name are read when the Corefile is, so a bad one is reported
    at its line.
    """

    def setUp(self):
        self.certs = make_certificates(self.mktemp())
        self.password_file = os.path.abspath(self.mktemp())
        with open(self.password_file, "w") as f:
            f.write("s3cret pass\n")

    def access(self, *lines, environ=None):
        return settings("pattern w{{.ID}}.x.", "endpoint https://127.0.0.1:2379", *lines, environ=environ)

    def test_tls_arguments(self):
        c = self.certs
        for line, expected in [
            ("tls", TlsSettings()),
            (f"tls {c.ca}", TlsSettings(ca=c.ca)),
            (f"tls {c.client_cert} {c.client_key}", TlsSettings(c.client_cert, c.client_key)),
            (
                f"tls {c.client_cert} {c.client_key} {c.ca}",
                TlsSettings(c.client_cert, c.client_key, c.ca),
            ),
        ]:
            self.assertEqual(self.access(line).tls, expected, line)
        self.assertIsNone(self.access().tls)

    def test_credentials(self):
        got = self.access("credentials idetcd {$ETCD_PASSWORD}", environ={"ETCD_PASSWORD": "from env"})
        self.assertEqual(got.credentials, Credentials("idetcd", "from env"))
        got = self.access(f"credentials idetcd file {self.password_file}")
        self.assertEqual(got.credentials, Credentials("idetcd", "s3cret pass"))
        # A password that is the word "file" is still a password.
        self.assertEqual(self.access("credentials idetcd file").credentials.password, "file")
        self.assertNotIn("s3cret", repr(got))

    def test_errors(self):
        c = self.certs
        missing = os.path.abspath(self.mktemp())
        empty = os.path.abspath(self.mktemp())
        open(empty, "w").close()
        cases = [
            ([f"tls {missing}"], f"cannot read the CA file {missing}"),
            ([f"tls {c.client_key}"], f"the CA file {c.client_key} holds no PEM certificate"),
            ([f"tls {c.client_cert} {missing}"], f"cannot read the client key {missing}"),
            ([f"tls {c.client_cert} {c.client_cert}"], f"the client key {c.client_cert} holds no PEM private key"),
            ([f"tls {c.client_cert} {c.server_key} {c.ca}"], f"{c.server_key} does not belong to the certificate {c.client_cert}"),
            ([f"tls {c.client_cert} {c.client_key} {c.ca} {c.ca}"], "'tls' takes 0 to 3 arguments, got 4"),
            (["credentials idetcd"], "'credentials' takes 2 to 3 arguments, got 1"),
            (["credentials idetcd secret more words"], "'credentials' takes 2 to 3 arguments, got 4"),
            (["credentials idetcd from /path"], "credentials takes USERNAME PASSWORD or USERNAME file PATH", "'from'"),
            ([f"credentials idetcd file {missing}"], f"cannot read the password file {missing}", "No such file"),
            ([f"credentials idetcd file {empty}"], f"the password file {empty} is empty"),
            (['credentials "" secret'], "not empty"),
            (["credentials idetcd \"\""], "not empty"),
        ]
        for lines, *words in cases:
            text = idetcd("pattern w{{.ID}}.x.", "endpoint https://127.0.0.1:2379", *lines)
            self.assertCorefileError(text, 5, *words)

    def test_encrypted_key(self):
        from cryptography.hazmat.primitives import serialization

        with open(self.certs.client_key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        encrypted = os.path.abspath(self.mktemp())
        with open(encrypted, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"pw"),
                )
            )
        text = idetcd("endpoint https://h:1", f"tls {self.certs.client_cert} {encrypted}", "pattern w{{.ID}}.x.")
        self.assertCorefileError(text, 4, f"the client key {encrypted} is encrypted")

    def test_tls_needs_https(self):
        for lines in [["tls"], ["endpoint http://h:2379", "tls"], ["endpoint embedded", "tls"]]:
            text = idetcd("pattern w{{.ID}}.x.", *lines)
            self.assertCorefileError(
                text, 3 + len(lines), "tls is for https:// endpoints", "this idetcd block has none"
            )
        got = settings("pattern w{{.ID}}.x.", "endpoint http://a:2379 https://b:2379", "tls")
        self.assertEqual(got.tls, TlsSettings())


class ServerBlockTests(ErrorAssertions, TestCase):
    """
    Server block keys, bind and the directives a block may hold.
    """

    def test_keys(self):
        """
        Keys name zones and a port in the CoreDNS forms.
        """
        cases = [
            (".", (".",), 53),
            (".:1053", (".",), 1053),
            ("tf.local:1053", ("tf.local.",), 1053),
            ("tf.local.:1053", ("tf.local.",), 1053),
            ("dns://.:1053", (".",), 1053),
            ("DNS://TF.Local", ("tf.local.",), 53),
            ("a.org b.org", ("a.org.", "b.org."), 53),
            ("a.org:5300,b.org:5300", ("a.org.", "b.org."), 5300),
            ("a.org:5300, b.org:5300", ("a.org.", "b.org."), 5300),
            ("a.org ,b.org", ("a.org.", "b.org."), 53),
            ("a.org,\n    b.org", ("a.org.", "b.org."), 53),
            (".:0", (".",), 0),
            (".:65535", (".",), 65535),
            ('"tf.local:1053"', ("tf.local.",), 1053),
        ]
        for keys, zones, port in cases:
            (block,) = parse(keys + " {\n}\n", environ={})
            self.assertEqual((block.zones, block.port), (zones, port), keys)
            self.assertEqual((block.binds, block.idetcd, block.line), ((), None, 1))

    def test_key_errors(self):
        cases = [
            (".:x {\n}", 1, "server block key '.:x' has a bad port 'x'", "0 to 65535"),
            (".:65536 {\n}", 1, "bad port '65536'"),
            (".: {\n}", 1, "bad port ''"),
            (".:-1 {\n}", 1, "bad port '-1'"),
            ("\n\n.:53 a.org:54 {\n}", 3, "must share one port", "'.:53' and 'a.org:54'"),
            ("a.org, b.org:54 {\n}", 1, "share one port"),
            (":1053 {\n}", 1, "':1053' has no zone", "'.'"),
            ("tls://.:853 {\n}", 1, "'tls://.:853'", "only dns://"),
            ("grpc://. {\n}", 1, "only dns://"),
            ("a..b {\n}", 1, "'a..b' is not a valid zone", "empty label"),
            ("_tcp.example {\n}", 1, "not a valid zone", "letters, digits and hyphens"),
            ("10.0.0.0/8 {\n}", 1, "not a valid zone"),
            ("a.org A.ORG. {\n}", 1, "zone a.org. is listed twice"),
            ("(common) {\n}", 1, "snippets such as '(common)' are not supported"),
            ("import common.conf\n", 1, "'import' is not supported"),
            (", {\n}", 1, "expected server block keys"),
            ("{\n}", 1, "expected server block keys"),
            (".\n{\n}", 1, "expected '{' after server block keys"),
            ("a.org,\nb.org\n{\n}", 2, "expected '{' after server block keys"),
            (". }", 1, "expected '{' after server block keys"),
            (".", 1, "expected '{' after server block keys"),
        ]
        for text, line, *words in cases:
            self.assertCorefileError(text, line, *words)

    def test_bind(self):
        """
        bind takes IPv4 and IPv6 addresses, over one or more lines.
        """
        (block,) = parse(". {\n bind 127.0.0.1 ::0:1\n bind 10.0.0.1\n}\n", environ={})
        self.assertEqual(block.binds, ("127.0.0.1", "::1", "10.0.0.1"))
        for text, line, *words in [
            (". {\n bind lo\n}", 2, "bind takes IPv4 or IPv6 addresses, got 'lo'"),
            (". {\n bind\n}", 2, "'bind' needs at least 1 argument"),
            (". {\n bind ::1 127.0.0.1\n bind 0::1\n}", 3, "bind lists ::1 twice"),
            (". {\n bind 127.0.0.1 {\n except 127.0.0.2\n }\n}", 2, "'bind' takes no block"),
        ]:
            self.assertCorefileError(text, line, *words)

    def test_directive_errors(self):
        cases = [
            (". {\n    whoami\n}", 2, "unknown directive 'whoami' (expected one of: bind, cache, forward, health, ready, prometheus, reload, transfer, log, errors, idetcd)"),
            (". {\n    import snippet\n}", 2, "unknown directive 'import'"),
            (". {\n    idetcd\n}", 2, "idetcd needs a block", "pattern"),
            (". {\n    idetcd x {\n    pattern w{{.ID}}.x.\n    }\n}", 2, "'idetcd' takes no arguments, got 1"),
            (ORIGINAL.replace("    }\n}", "    }\n    idetcd {\n        pattern v{{.ID}}.x.\n    }\n}"), 7, "duplicate 'idetcd'", "first on line 2"),
        ]
        for text, line, *words in cases:
            self.assertCorefileError(text, line, *words)

    def test_several_blocks(self):
        """
        Each server block is read on its own, in order.
        """
        text = (
            "tf.local:1053 {\n"
            "    bind 127.0.0.1\n"
            "    idetcd {\n"
            "        pattern a{{.ID}}.tf.local.\n"
            "    }\n"
            "}\n"
            "\n"
            "example.org:1053 {\n"
            "    idetcd {\n"
            "        pattern b{{.ID}}.example.org.\n"
            "        limit 3\n"
            "    }\n"
            "}\n"
            ".:1053 {\n"
            "}\n"
        )
        blocks = parse(text, environ={})
        self.assertEqual([b.zones for b in blocks], [("tf.local.",), ("example.org.",), (".",)])
        self.assertEqual([b.line for b in blocks], [1, 8, 14])
        self.assertEqual([b.idetcd and b.idetcd.line for b in blocks], [3, 9, None])
        self.assertEqual(blocks[1].idetcd.limit, 3)

    def test_overlaps(self):
        """
        Two blocks cannot serve one zone on one socket; other binds are fine.
        """
        self.assertCorefileError(
            ". {\n}\n\ndns://.:53 {\n}\n", 4, "zone . on port 53", "block on line 1"
        )
        self.assertCorefileError(
            "a.org:1053 b.org:1053 {\n bind ::1\n}\nb.org {\n}\nb.org:1053 {\n}\n",
            6,
            "zone b.org. on port 1053",
            "line 1",
        )
        self.assertCorefileError(
            ". {\n bind ::1 127.0.0.1\n}\n. {\n bind 127.0.0.1\n}\n", 4, "already served"
        )
        blocks = parse(
            ". {\n bind 127.0.0.1\n}\n. {\n bind 127.0.0.2\n}\n.:54 {\n}\n", environ={}
        )
        self.assertEqual(len(blocks), 3)

    def test_no_idetcd(self):
        """
        A Corefile without idetcd still parses; the caller decides.
        """
        (block,) = parse(".:1053 {\n    bind ::1\n}\n", environ={})
        self.assertIsNone(block.idetcd)
        self.assertEqual(block.binds, ("::1",))

    def test_empty(self):
        """
        A Corefile needs a server block.
        """
        for text in ("", "\n\n", "# just a comment\n", "  \t\r\n"):
            self.assertCorefileError(text, 1, "no server block")


class LexerTests(ErrorAssertions, TestCase):
    """
    Words, quotes, comments and braces as CoreDNS reads them.
    """

    def test_comments(self):
        """
        C{#} at the start of a word comments out the rest of the line, also
        around blocks; inside a word it is text.
        """
        text = (
            "# a Corefile\n"
            ". { # the root\n"
            "    # bind 10.0.0.1\n"
            "    idetcd {   # ours\n"
            "        pattern w{{.ID}}.x. #comment\n"
            "        node a#b\n"
            "    }\n"
            "} # done"
        )
        (block,) = parse(text, environ={})
        self.assertEqual(block.binds, ())
        self.assertEqual(block.idetcd.node, "a#b")
        self.assertEqual(block.idetcd.pattern.text, "w{{.ID}}.x.")

    def test_quotes(self):
        """
        Quotes make one word, with escapes, even across lines, and keep the
        line count right for the words after them.
        """
        text = idetcd(
            "pattern w{{.ID}}.x.",
            r'state "/var/lib/my idetcd/\"x\"\\y#z\n"',
            'prefix "/a\n{b}\n/"',
        )
        block = parse(text, environ={})[0].idetcd
        self.assertEqual(block.state, '/var/lib/my idetcd/"x"\\y#z\\n')
        self.assertEqual(block.prefix, "/a\n{b}\n/")
        self.assertCorefileError(
            idetcd("pattern w{{.ID}}.x.", 'prefix "/a\n\nb/"', "limit 0"), 7, "limit"
        )
        self.assertCorefileError(
            idetcd("pattern w{{.ID}}.x.", 'prefix "/idetcd/'), 4, "unterminated quoted word"
        )

    def test_quoted_braces(self):
        """
        Quoted braces are words, not blocks.
        """
        (block,) = parse('. {\n idetcd {\n pattern w{{.ID}}.x.\n prefix "/{/"\n node "}"\n }\n}\n', environ={})
        self.assertEqual((block.idetcd.prefix, block.idetcd.node), ("/{/", "}"))

    def test_layouts(self):
        """
        Blocks may open glued to their directive, sit on one line, use tabs
        and CRLF line ends.
        """
        for text in [
            ".:1053{\n idetcd{\n  pattern w{{.ID}}.x.\n }\n}\n",
            ".:1053 { idetcd { pattern w{{.ID}}.x. } }",
            ".:1053 {\n\tidetcd {\n\t\tpattern w{{.ID}}.x.\n\t}\n}\n",
            ".:1053 {\r\n  idetcd {\r\n    pattern w{{.ID}}.x.\r\n  }\r\n}\r\n",
            "\n\n  .:1053   {\n\n\n  idetcd   {\n  pattern   w{{.ID}}.x.   \n\n  }\n\n}\n\n",
        ]:
            (block,) = parse(text, environ={})
            self.assertEqual(block.port, 1053, text)
            self.assertEqual(block.idetcd.pattern.render(3), "w3.x.", text)

    def test_template_words(self):
        """
        A template action keeps its spaces and quotes in its word.
        """
        for pattern, name in [
            ('w{{ "%02d" % ID }}.tf.local.', "w03.tf.local."),
            ("w{{ '%02d' % .ID }}.tf.local.", "w03.tf.local."),
            ("w{{ ID + 100 }}.tf.local.", "w103.tf.local."),
            ("w{{ ID\n + 0 }}.tf.local.", "w3.tf.local."),
            ("w{{ ID }}{#note#}.tf.local.", "w3.tf.local."),
            ('"w{{ ID }}.tf.local."', "w3.tf.local."),
        ]:
            self.assertEqual(settings("pattern " + pattern).pattern.render(3), name, pattern)
        self.assertCorefileError(idetcd("pattern w{{ ID.x.", "limit 3"), 3, "unterminated template")

    def test_structure_errors(self):
        cases = [
            (". {\n idetcd {\n pattern w{{.ID}}.x.\n }\n\n\n\n\n", 8, "missing '}'", "block opened on line 1"),
            (". {\n idetcd {\n pattern w{{.ID}}.x.\n", 3, "missing '}'", "opened on line 2"),
            (". {\n idetcd {\n pattern w{{.ID}}.x.", 3, "missing '}'", "opened on line 2"),
            (". {\n}\n}\n", 3, "unexpected '}'"),
            (". {\n idetcd\n {\n pattern w{{.ID}}.x.\n }\n}\n", 3, "unexpected '{'", "its directive's line"),
            (". {\n {\n }\n}\n", 2, "unexpected '{'"),
        ]
        for text, line, *words in cases:
            self.assertCorefileError(text, line, *words)

    def test_error(self):
        """
        L{CorefileError} is a L{ValueError} that says where.
        """
        error = CorefileError("conf/Corefile", 7, "limit must be ...")
        self.assertIsInstance(error, ValueError)
        self.assertEqual(str(error), "conf/Corefile:7: limit must be ...")
        self.assertEqual(
            (error.filename, error.line, error.message), ("conf/Corefile", 7, "limit must be ...")
        )
        self.assertCorefileError(". {\n log\n}", 2, "log", filename="/etc/idetcd/Corefile")


class EnvironmentTests(ErrorAssertions, TestCase):
    """
    C{{$NAME}} and C{{$NAME:default}} take words from the environment.
    """

    def test_substitution(self):
        environ = {
            "PORT": "5353",
            "ZONE": "tf.local",
            "LIMIT": "7",
            "PATTERN": 'w{{ "%02d" % ID }}.tf.local.',
            "EMPTY": "",
            "SPACED": "a b",
        }
        text = (
            "{$ZONE}:{$PORT} {\n"
            "    idetcd {\n"
            "        limit {$LIMIT}\n"
            "        pattern {$PATTERN}\n"
            "        ttl {$TTL:30}\n"
            "        lease {$LEASE:}1{$EMPTY}5\n"
            '        prefix "/{$ZONE}/"\n'
            "        state {$SPACED}\n"
            "        node n-{$NODE:{default}\n"
            "    }\n"
            "}\n"
        )
        (block,) = parse(text, environ=environ)
        got = block.idetcd
        self.assertEqual((block.zones, block.port), (("tf.local.",), 5353))
        self.assertEqual((got.limit, got.ttl, got.lease), (7, 30, 15))
        self.assertEqual(got.pattern.render(4), "w04.tf.local.")
        self.assertEqual((got.prefix, got.state, got.node), ("/tf.local/", "a b", "n-{default"))

    def test_default_overridden(self):
        """
        A set variable wins over its default, even when set empty.
        """
        text = idetcd("pattern w{{.ID}}.x.", "prefix {$P:/x/}")
        self.assertEqual(parse(text, environ={"P": "/y/"})[0].idetcd.prefix, "/y/")
        self.assertEqual(parse(text, environ={"P": ""})[0].idetcd.prefix, "")
        self.assertEqual(parse(text, environ={})[0].idetcd.prefix, "/x/")

    def test_braces_stay_words(self):
        """
        A variable holding a brace is a word, not a block.
        """
        (block,) = parse(
            idetcd("pattern w{{.ID}}.x.", "node {$B}"), environ={"B": "{"}
        )
        self.assertEqual(block.idetcd.node, "{")

    def test_os_environ(self):
        """
        Without C{environ}, the process environment is used.
        """
        self.patch(os, "environ", dict(os.environ, IDETCD_TEST_PORT="2053"))
        (block,) = parse(".:{$IDETCD_TEST_PORT} {\n}\n")
        self.assertEqual(block.port, 2053)

    def test_errors(self):
        cases = [
            (".:{$PORT} {\n}", 1, "environment variable PORT is not set", "{$PORT:default}"),
            (idetcd("pattern w{{.ID}}.x.", "limit {$LIMIT}"), 4, "LIMIT is not set"),
            (idetcd("pattern w{{.ID}}.x.", 'prefix "{$P}"'), 4, "P is not set"),
            (idetcd("pattern w{{.ID}}.x.", "prefix {$1}"), 4, "bad environment reference in '{$1}'", "{$NAME}"),
            (idetcd("pattern w{{.ID}}.x.", "prefix {$P"), 4, "bad environment reference"),
            (idetcd("pattern w{{.ID}}.x.", "limit {$LIMIT:0}"), 4, "limit must be", "'0'"),
        ]
        for text, line, *words in cases:
            self.assertCorefileError(text, line, *words)


class LoadTests(ErrorAssertions, TestCase):
    """
    L{load} reads a file and names it in errors.
    """

    def test_load(self):
        path = FilePath(self.mktemp())
        path.setContent(b"\xef\xbb\xbf" + ORIGINAL.encode("ascii"))
        (block,) = load(path.path, environ={})
        self.assertEqual(block.idetcd.limit, 5)
        self.assertEqual((block.filename, block.idetcd.filename), (path.path, path.path))

    def test_errors(self):
        path = FilePath(self.mktemp())
        with self.assertRaises(CorefileError) as caught:
            load(path.path)
        self.assertEqual((caught.exception.filename, caught.exception.line), (path.path, 0))
        self.assertIn("cannot read the Corefile", caught.exception.message)

        path.setContent(b". {\n    log\n}\n")
        with self.assertRaises(CorefileError) as caught:
            load(path.path)
        self.assertEqual(str(caught.exception)[: len(path.path) + 3], path.path + ":2:")

        path.setContent(b". {\n    bind \xff\n}\n")
        with self.assertRaises(CorefileError) as caught:
            load(path.path)
        self.assertEqual(caught.exception.line, 2)
        self.assertIn("not UTF-8", caught.exception.message)


def with_http(*lines):
    """
    The original Corefile with C{lines} in its server block, from line 2.
    """
    return ORIGINAL.replace(". {\n", ". {\n" + "".join(f"    {line}\n" for line in lines), 1)


class HttpEndpointTests(TestCase, ErrorAssertions):
    """
    C{health} and C{ready}: server block directives with CoreDNS's address
    shapes and defaults.
    """

    def endpoints(self, *lines):
        (block,) = parse(with_http(*lines), environ={})
        return block.health, block.ready

    def test_absent(self):
        self.assertEqual(self.endpoints(), (None, None))

    def test_defaults(self):
        self.assertEqual(
            self.endpoints("health", "ready"), (HttpAddress("", 8080), HttpAddress("", 8181))
        )

    def test_address_shapes(self):
        self.assertEqual(self.endpoints("health :0"), (HttpAddress("", 0), None))
        self.assertEqual(
            self.endpoints("ready 127.0.0.1:8181"), (None, HttpAddress("127.0.0.1", 8181))
        )
        self.assertEqual(self.endpoints("ready [::1]:8181"), (None, HttpAddress("::1", 8181)))
        self.assertEqual(self.endpoints("health localhost:8091"), (HttpAddress("127.0.0.1", 8091), None))
        self.assertEqual(str(HttpAddress("::1", 1)), "[::1]:1")
        self.assertEqual(str(HttpAddress("", 8080)), ":8080")

    def test_port_zero_never_clashes(self):
        self.assertEqual(
            self.endpoints("health 127.0.0.1:0", "ready 127.0.0.1:0"),
            (HttpAddress("127.0.0.1", 0), HttpAddress("127.0.0.1", 0)),
        )

    def test_different_addresses_share_a_port(self):
        self.assertEqual(
            self.endpoints("health 127.0.0.1:9000", "ready [::1]:9000"),
            (HttpAddress("127.0.0.1", 9000), HttpAddress("::1", 9000)),
        )

    def test_errors(self):
        cases = [
            (["health 8080"], 2, "health takes an address such as :8080", "a colon goes before the port"),
            (["ready :99999"], 2, "ready takes an address such as :8181", "port must be 0 to 65535"),
            (["ready :http"], 2, "port must be 0 to 65535"),
            (["health ::1:8080"], 2, "write an IPv6 address in brackets"),
            (["health [10.0.0.1]:8080"], 2, "brackets are for IPv6 addresses"),
            (["health example.com:8080"], 2, "the host must be an IP address"),
            (["health :1 :2"], 2, "'health' takes at most 1 argument, got 2"),
            (["ready {", "}"], 2, "'ready' takes no block"),
            (["health", "bind 127.0.0.1", "health :9"], 4, "duplicate 'health'", "first on line 2"),
            (["health", "ready :8080"], 3, "ready :8080 cannot listen: health on line 2 already uses port 8080"),
            (["health 127.0.0.1:7", "ready :7"], 3, "health on line 2"),
        ]
        for lines, line, *words in cases:
            self.assertCorefileError(with_http(*lines), line, *words)

    def test_needs_idetcd(self):
        self.assertCorefileError(
            ".:1053 {\n    bind ::1\n    ready\n}\n", 3, "'ready' reports on idetcd", "no idetcd directive"
        )

    def test_clash_between_blocks(self):
        second = "example.org {\n    health :8181\n    idetcd {\n        pattern w{{.ID}}.example.org.\n    }\n}\n"
        self.assertCorefileError(
            with_http("ready") + second, 10, "health :8181 cannot listen: ready of the block on line 1"
        )
        blocks = parse(with_http("ready :0") + second.replace(":8181", ":0"), environ={})
        self.assertEqual([b.ready for b in blocks], [HttpAddress("", 0), None])


class ForwardTests(TestCase, ErrorAssertions):
    """
    C{forward . UPSTREAM…}: CoreDNS's syntax, with only C{.} as FROM.
    """

    def forward(self, *lines):
        (block,) = parse(with_http(*lines), environ={})
        return block.forward

    def test_absent(self):
        self.assertIsNone(self.forward())

    def test_defaults(self):
        self.assertEqual(
            self.forward("forward . 10.0.0.1"),
            ForwardSettings(
                (Upstream("10.0.0.1", 53),), "random", 1000, 4.0, PRIVATE_NETWORKS, 2, 0.5, False, False, 10.0,
                "Corefile", 2,
            ),
        )
        self.assertEqual(
            [str(network) for network in PRIVATE_NETWORKS],
            [
                "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                "::1/128", "fc00::/7", "fe80::/10",
            ],
        )

    def test_upstream_shapes(self):
        forward = self.forward(
            "forward dns://. 10.0.0.1:5353 DNS://10.0.0.2 [fd00::1]:54 fd00::2 [fd00::3]"
            " dns://[::1]:55 /etc/resolv.conf ./resolv.conf"
        )
        self.assertEqual(
            forward.upstreams,
            (
                Upstream("10.0.0.1", 5353), Upstream("10.0.0.2"), Upstream("fd00::1", 54),
                Upstream("fd00::2"), Upstream("fd00::3"), Upstream("::1", 55),
                "/etc/resolv.conf", "./resolv.conf",
            ),
        )
        self.assertEqual([str(u) for u in forward.upstreams[:4]], ["10.0.0.1:5353", "10.0.0.2:53", "[fd00::1]:54", "[fd00::2]:53"])

    def test_settings(self):
        forward = self.forward(
            "forward . 10.0.0.1 {",
            "    policy sequential",
            "    max_concurrent 20",
            "    timeout 1.5",
            "    allow_recursion 10.1.0.0/16 192.0.2.7 fd00::/8",
            "}",
        )
        self.assertEqual(
            (forward.policy, forward.max_concurrent, forward.timeout, [str(n) for n in forward.allowed]),
            ("sequential", 20, 1.5, ["10.1.0.0/16", "192.0.2.7/32", "fd00::/8"]),
        )
        self.assertEqual(self.forward("forward . 10.0.0.1 {", "}").policy, "random")
        self.assertEqual(self.forward("forward . 10.0.0.1 {", "policy round_robin", "}").policy, "round_robin")

    def test_errors(self):
        cases = [
            (["forward"], 2, "forward needs FROM and at least one upstream, such as: forward . 10.0.0.1"),
            (["forward ."], 2, "forward needs FROM and at least one upstream"),
            (["forward example.com 10.0.0.1"], 2, "FROM must be '.', got 'example.com'"),
            (["forward . tls://9.9.9.9"], 2, "forward to 'tls://9.9.9.9': only plain DNS (dns://) is supported"),
            (["forward . dns.google"], 2, "got 'dns.google' (the host must be an IP address)"),
            (["forward . 10.0.0.1:0"], 2, "the port must be 1 to 65535"),
            (["forward . 10.0.0.1:dns"], 2, "the port must be 1 to 65535"),
            (["forward . [10.0.0.1]:53"], 2, "brackets hold an IPv6 address"),
            (["forward . [fd00::1]53"], 2, "brackets hold an IPv6 address"),
            (["forward . 10.0.0.1 10.0.0.1:53"], 2, "forward lists 10.0.0.1:53 twice"),
            (["forward . " + " ".join(f"10.0.0.{i}" for i in range(1, 17))], 2, "at most 15 upstreams, got 16"),
            (["forward . 10.0.0.1", "forward . 10.0.0.2"], 3, "duplicate 'forward' in this server block", "first on line 2"),
            (["forward . 10.0.0.1 {", "tls", "}"], 3, "unknown directive 'tls' in forward", "expected one of: allow_recursion, expire, force_tcp, health_check, max_concurrent, max_fails, policy, prefer_udp, timeout"),
            (["forward . 10.0.0.1 {", "policy fastest", "}"], 3, "policy must be one of random, round_robin, sequential, got 'fastest'"),
            (["forward . 10.0.0.1 {", "max_concurrent 0", "}"], 3, "max_concurrent must be a whole number from 1 to 10000"),
            (["forward . 10.0.0.1 {", "timeout 0.05", "}"], 3, "timeout must be a number of seconds from 0.1 to 10"),
            (["forward . 10.0.0.1 {", "timeout 5s", "}"], 3, "timeout must be a number of seconds"),
            (["forward . 10.0.0.1 {", "timeout 2", "timeout 3", "}"], 4, "duplicate 'timeout' in forward"),
            (["forward . 10.0.0.1 {", "allow_recursion", "}"], 3, "'allow_recursion' needs at least 1 argument"),
            (["forward . 10.0.0.1 {", "allow_recursion 10.0.0.1/8", "}"], 3, "allow_recursion takes networks", "has host bits set"),
            (["forward . 10.0.0.1 {", "allow_recursion any", "}"], 3, "allow_recursion takes networks", "got 'any'"),
            (["forward . 10.0.0.1 {", "allow_recursion ::1 0::1", "}"], 3, "allow_recursion lists ::1/128 twice"),
        ]
        for lines, line, *words in cases:
            self.assertCorefileError(with_http(*lines), line, *words)

    def test_needs_idetcd(self):
        self.assertCorefileError(
            ".:1053 {\n    forward . 10.0.0.1\n}\n", 2, "'forward' serves beside idetcd", "no idetcd directive"
        )


class ReloadDirectiveTests(TestCase, ErrorAssertions):
    def test_reload(self):
        """
        C{reload [INTERVAL [JITTER]]}: Go durations with CoreDNS's defaults
        and bounds; a jitter over half the interval is cut to half.
        """

        def reload(*lines):
            (block,) = parse(with_http(*lines), environ={})
            return block.reload

        self.assertIsNone(reload())
        self.assertEqual(reload("reload"), ReloadSettings(30.0, 15.0, "Corefile", 2))
        self.assertEqual(reload("reload 1m30s 2s"), ReloadSettings(90.0, 2.0, "Corefile", 2))
        self.assertEqual(reload("reload 10s"), ReloadSettings(10.0, 5.0, "Corefile", 2))
        for lines, line, *words in [
            (["reload 1s"], 2, "reload's interval must be at least 2s, got '1s'"),
            (["reload 5s 500ms"], 2, "reload's jitter must be at least 1s, got '500ms'"),
            (["reload 10"], 2, "reload's interval must be a duration such as 30s, 1m or 1m30s, got '10'"),
            (["reload 3s 2s 1s"], 2, "'reload' takes 0 to 2 arguments, got 3"),
            (["reload", "reload 5s"], 3, "duplicate 'reload' in this server block", "first on line 2"),
        ]:
            self.assertCorefileError(with_http(*lines), line, *words)
        self.assertCorefileError(".:1053 {\n    reload\n}\n", 2, "'reload' serves beside idetcd")


class PrometheusTests(TestCase, ErrorAssertions):
    def test_prometheus(self):
        """
        C{prometheus}: CoreDNS's default (localhost:9153), its address
        shapes, and the clash checks of the other endpoints.
        """

        def prometheus(*lines):
            (block,) = parse(with_http(*lines), environ={})
            return block.prometheus

        self.assertIsNone(prometheus())
        self.assertEqual(prometheus("prometheus"), HttpAddress("127.0.0.1", 9153))
        self.assertEqual(prometheus("prometheus :9253"), HttpAddress("", 9253))
        self.assertEqual(prometheus("prometheus [::1]:9153"), HttpAddress("::1", 9153))
        self.assertEqual(prometheus("health :9153", "prometheus [::1]:9153"), HttpAddress("::1", 9153))
        cases = [
            (["prometheus 9153"], 2, "prometheus takes an address such as :9153, 127.0.0.1:9153", "a colon"),
            (["prometheus localhost"], 2, "prometheus takes an address such as :9153"),
            (["prometheus", "prometheus :1"], 3, "duplicate 'prometheus'", "first on line 2"),
            (["health :9153", "prometheus"], 3, "prometheus 127.0.0.1:9153 cannot listen: health on line 2"),
            (["prometheus :8181", "ready"], 3, "ready :8181 cannot listen: prometheus on line 2"),
        ]
        for lines, line, *words in cases:
            self.assertCorefileError(with_http(*lines), line, *words)


class PartReaderTests(TestCase):
    """
    L{server_blocks} with a table of directive readers other than the
    node's, as a part registers them: the reader gets the directive's
    words and block, and the helpers of L{Directive} fail at its line.
    """

    def read(self, text, readers):
        return list(server_blocks(text, "Corefile", readers, environ={}))

    def assertFails(self, text, readers, message):
        with self.assertRaises(CorefileError) as caught:
            self.read(text, readers)
        self.assertEqual(str(caught.exception), message)
        self.assertEqual(caught.exception.exit_status, EXIT_CONFIG)

    def test_each_directive_goes_to_its_reader(self):
        """
        Each directive reaches the reader of its name; what the reader
        returns is the block's value for that name, which a directive
        that comes again builds on; the block keeps its first line.
        """
        seen = []

        def greet(directive, block):
            seen.append(directive)
            return block.values.get("greet", ()) + directive.args

        (block,) = self.read("example:1054 {\n    greet hello world\n    greet again { sub 1 }\n}\n", {"greet": greet})
        self.assertEqual((block.zones, block.port, block.line), (("example.",), 1054, 1))
        self.assertEqual((block.values, block.lines), ({"greet": ("hello", "world", "again")}, {"greet": 2}))
        self.assertEqual(
            seen,
            [
                Directive("greet", ("hello", "world"), None, "Corefile", 2),
                Directive("greet", ("again",), (Directive("sub", ("1",), None, "Corefile", 3),), "Corefile", 3),
            ],
        )

    def test_unknown_directive_names_the_readers(self):
        readers = {"greet": lambda directive, block: None, "bye": lambda directive, block: None}
        self.assertFails(
            ". {\n    greet\n    wave\n}\n",
            readers,
            "Corefile:3: unknown directive 'wave' (expected one of: greet, bye)",
        )

    def test_once(self):
        def greet(directive, block):
            block.once(directive)
            return directive.args

        self.assertFails(
            ". {\n    greet a\n    greet b\n}\n",
            {"greet": greet},
            "Corefile:3: duplicate 'greet' in this server block (first on line 2)",
        )

    def test_settings(self):
        """
        L{Directive.settings} reads a block by a table: each setting at
        most once unless repeated, its arguments counted, its value
        converted, every mistake at its own line.
        """
        table = {"size": ("size", 1, 1, number("size", 1, 9)), "tag": ("tags", 1, None, lambda args: args)}
        readers = {"shop": lambda directive, block: directive.settings(table, repeated=("tag",))}

        def shop(*lines):
            return ". {\n    shop {\n" + "".join(f"        {line}\n" for line in lines) + "    }\n}\n"

        (block,) = self.read(shop("tag a b", "size 3", "tag c"), readers)
        # (the line of each setting that may come once, the values)
        self.assertEqual(block.values["shop"], ({"size": 4}, {"tags": (("a", "b"), ("c",)), "size": 3}))
        for lines, message in [
            (["size 3", "size 4"], "Corefile:4: duplicate 'size' in shop (first on line 3)"),
            (["size 10"], "Corefile:3: size must be a whole number from 1 to 9, got '10'"),
            (["tag a", "size"], "Corefile:4: 'size' needs 1 argument, got 0"),
            (["colour red"], "Corefile:3: unknown directive 'colour' in shop (expected one of: size, tag)"),
        ]:
            self.assertFails(shop(*lines), readers, message)
