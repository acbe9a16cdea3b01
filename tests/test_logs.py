"""
The node's logs: priorities journald reads, JSON lines, the query log
(CoreDNS's C{log}) and the error log (C{errors}), rate-limited.  Fast
tests of the logic here; real node processes in L{tests.test_logs_node}.
"""

import io
import json
import os
import struct
import subprocess
import sys

import dns.message
from twisted.internet import task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from idetcd.common import LinesPerSecond
from idetcd.config import CorefileError
from idetcd.dns import _tally as tally
from idetcd.dns._querylog import (
    QueryLog,
    fields,
    response_class,
    servfail_reason,
    twisted_format,
)
from idetcd.node import _logs as logs
from idetcd.node import parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCK = """\
.:1053 {
    idetcd {
        pattern worker{{.ID}}.tf.local.
    }
%s
}
"""


def events_of(observer, *events):
    for event in events:
        observer(event)


def event(level, text, **fields):
    return dict(
        log_level=level, log_format=text, log_namespace="test.logs", log_time=1765000000.25,
        **fields,
    )


class PriorityTests(unittest.TestCase):
    def written(self, *events, priority="yes", log_format="text", environ=None):
        out = io.StringIO()
        events_of(logs.stdout_observer(out, log_format, priority, environ), *events)
        return out.getvalue()

    def test_each_level_gets_its_priority(self):
        text = self.written(*(event(level, level.name) for level in logs.PRIORITIES))
        self.assertEqual(
            [line[:3] for line in text.splitlines()], ["<2>", "<3>", "<4>", "<6>", "<7>"]
        )
        self.assertIn("[test.logs#warn] warn", text)

    def test_every_line_of_a_traceback_keeps_the_priority(self):
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        text = self.written(event(LogLevel.error, "it broke", log_failure=failure))
        lines = text.splitlines()
        self.assertGreater(len(lines), 3)
        self.assertEqual({line[:3] for line in lines}, {"<3>"})
        self.assertIn("ZeroDivisionError", text)

    def test_no_prefix_unless_asked_or_the_journal(self):
        self.assertTrue(self.written(event(LogLevel.info, "x"), priority="no").startswith("20"))
        self.assertTrue(self.written(event(LogLevel.info, "x"), priority="auto").startswith("20"))

    def test_journal_stream_names_the_stream(self):
        """
        C{$JOURNAL_STREAM} is device:inode; only the stream it names is the
        journal.
        """
        path = self.mktemp()
        with open(path, "w") as stream:
            status = os.fstat(stream.fileno())
            named = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
            self.assertTrue(logs.is_journal(stream, named))
            self.assertFalse(logs.is_journal(stream, {"JOURNAL_STREAM": f"{status.st_dev}:1"}))
            self.assertFalse(logs.is_journal(stream, {"JOURNAL_STREAM": "garbage"}))
            self.assertFalse(logs.is_journal(stream, {}))
            self.assertFalse(logs.is_journal(io.StringIO(), named))
            observer = logs.stdout_observer(stream, "text", "auto", named)
            observer(event(LogLevel.warn, "w"))
        with open(path) as f:
            self.assertTrue(f.read().startswith("<4>"))


class JsonTests(unittest.TestCase):
    def test_one_object_per_line_with_fields(self):
        out = io.StringIO()
        observer = logs.stdout_observer(out, "json", "no")
        observer(event(LogLevel.info, "claimed {name}", name="worker1.tf.local.", lease=7, opaque=object()))
        (line,) = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(
            record,
            {
                "time": "2025-12-06T05:46:40.250000+00:00", "level": "info",
                "namespace": "test.logs", "text": "claimed worker1.tf.local.",
                "name": "worker1.tf.local.", "lease": 7,
            },
        )

    def test_a_failure_has_its_traceback(self):
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        out = io.StringIO()
        logs.stdout_observer(out, "json", "no")(event(LogLevel.critical, "broke", log_failure=failure))
        (line,) = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_journal_json_lines_are_prefixed(self):
        out = io.StringIO()
        logs.stdout_observer(out, "json", "yes")(event(LogLevel.error, "e"))
        self.assertTrue(out.getvalue().startswith("<3>{"))


class LinesPerSecondTests(unittest.TestCase):
    def test_at_most_limit_per_second_and_the_rest_counted(self):
        clock = task.Clock()
        said = []
        limit = LinesPerSecond(clock, 5, lambda held, most: said.append((held, most)))
        allowed = sum(limit.allow() for _ in range(12))
        self.assertEqual((allowed, said), (5, []))
        clock.advance(1)
        self.assertEqual(said, [(7, 5)])
        allowed = sum(limit.allow() for _ in range(7))
        self.assertEqual(allowed, 5)
        limit.stop()
        self.assertEqual(said, [(7, 5), (2, 5)])
        self.assertEqual(clock.getDelayedCalls(), [])


class QueryLogTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.clock = task.Clock()

    def lines(self, namespace):
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == namespace]

    def reply(self, query, rcode=0, answers=1, ede=None):
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        wire = bytearray(response.to_wire())
        wire[6:8] = struct.pack("!H", answers)
        if ede is not None:
            wire[10:12] = struct.pack("!H", 1)
            wire += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x06\x00\x0f\x00\x02" + struct.pack("!H", ede)
        return bytes(wire)

    def test_fields_are_coredns_placeholders(self):
        query = dns.message.make_query("Worker1.tf.local.", "AAAA", use_edns=0, payload=1232, want_dnssec=True)
        data = query.to_wire()
        reply = self.reply(query)
        values = fields(data, reply, ("127.0.0.1", 5353), "udp", 0.000125)
        self.assertEqual(
            values,
            {
                "remote": "127.0.0.1", "port": 5353, "id": query.id, "type": "AAAA", "class": "IN",
                "name": "worker1.tf.local.", "proto": "udp", "size": len(data), "do": "true",
                "bufsize": 1232, "rcode": "NOERROR", "rflags": "qr,rd", "rsize": len(reply),
                "duration": "0.000125s", "opcode": 0,
            },
        )
        self.assertEqual(response_class(reply), "success")
        self.assertEqual(response_class(self.reply(query, answers=0)), "denial")
        self.assertEqual(response_class(self.reply(query, rcode=3, answers=0)), "denial")
        self.assertEqual(response_class(self.reply(query, rcode=5, answers=0)), "error")

    def test_format_keeps_other_braces(self):
        self.assertEqual(twisted_format('{name} {1} "{>id}" }'), '{name} {{1}} "{id}" }}')

    def test_servfail_reason_from_the_extended_error(self):
        query = dns.message.make_query("worker1.tf.local.", "A")
        self.assertEqual(servfail_reason(self.reply(query, 2, 0, ede=22)), "no reachable authority")
        self.assertEqual(servfail_reason(self.reply(query, 2, 0, ede=3)), "stale answer")
        self.assertEqual(servfail_reason(self.reply(query, 2, 0)), "server failure")

    def block(self, text):
        return parse(BLOCK % text)[0]

    def test_names_and_classes_choose_the_lines(self):
        block = self.block("    log other.example. {\n class all\n }\n    log tf.local. {\n class denial\n }")
        querylog = QueryLog(self.clock, block.log, block.errors)
        for name, rcode, answers in (
            ("worker1.tf.local.", 0, 1), ("worker9.tf.local.", 3, 0), ("a.other.example.", 0, 1),
            ("elsewhere.example.", 3, 0),
        ):
            query = dns.message.make_query(name, "A")
            querylog(query.to_wire(), self.reply(query, rcode, answers), ("127.0.0.1", 1), "udp", tally.now())
        lines = self.lines("idetcd.dns.querylog")
        self.assertEqual(len(lines), 2)
        self.assertIn('"A IN worker9.tf.local. udp', lines[0])
        self.assertIn(" NXDOMAIN qr,rd ", lines[0])
        self.assertIn('"A IN a.other.example. udp', lines[1])

    def test_errors_consolidate_and_limit(self):
        block = self.block('    errors {\n consolidate 10s "stale answer$" warning\n limit 2\n }')
        querylog = QueryLog(self.clock, block.log, block.errors)
        query = dns.message.make_query("worker1.tf.local.", "A")
        data = query.to_wire()
        for _ in range(4):
            querylog(data, self.reply(query, 2, 0, ede=3), ("127.0.0.1", 1), "udp", 0)
        for _ in range(5):
            querylog(data, self.reply(query, 2, 0, ede=22), ("127.0.0.1", 1), "udp", 0)
        querylog(data, self.reply(query, 0, 1), ("127.0.0.1", 1), "udp", 0)
        errors = self.lines("idetcd.dns.errors")
        self.assertEqual(
            errors, ["2 worker1.tf.local. A: no reachable authority (from 127.0.0.1:1)"] * 2
        )
        self.clock.advance(1)
        self.assertEqual(
            self.lines("idetcd.dns.querylog"),
            ["error log: 3 lines suppressed in the last second (at most 2 lines/s)"],
        )
        self.clock.advance(9)
        summary = [e for e in self.events if e.get("log_namespace") == "idetcd.dns.errors"][-1]
        self.assertEqual(summary["log_level"], LogLevel.warn)
        self.assertEqual(
            self.lines("idetcd.dns.errors")[-1], "4 errors like 'stale answer$' occurred in last 10s"
        )
        querylog(data, self.reply(query, 2, 0, ede=3), ("127.0.0.1", 1), "udp", 0)
        querylog.stop()
        self.assertEqual(self.lines("idetcd.dns.errors")[-1], "1 errors like 'stale answer$' occurred in last 10s")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CorefileTests(unittest.TestCase):
    def fails(self, text, message):
        with self.assertRaises(CorefileError) as caught:
            parse(BLOCK % text, "/etc/idetcd/Corefile")
        self.assertEqual(str(caught.exception), f"/etc/idetcd/Corefile:{message}")

    def test_settings(self):
        block = parse(BLOCK % '    log tf.local {combined} {\n class denial error\n limit 20\n }\n    errors')[0]
        (rule,) = block.log
        self.assertEqual(rule.names, ("tf.local.",))
        self.assertTrue(rule.format.endswith('{duration} "{>opcode}"'))
        self.assertEqual((rule.classes, rule.limit), ({"denial", "error"}, 20))
        self.assertEqual((block.errors.consolidate, block.errors.limit), ((), 100))
        self.assertIsNone(parse(BLOCK % "")[0].errors)

    def test_mistakes_name_the_line(self):
        self.fails("    log {\n class nope\n }", "6: class must be one of all, success, denial, error, got 'nope'")
        self.fails("    log . {x}", "5: log format has an unknown placeholder {x} (expected {common},"
                   " {combined} or: {remote}, {port}, {type}, {class}, {name}, {proto}, {size},"
                   " {rcode}, {rsize}, {duration}, {>id}, {>do}, {>bufsize}, {>rflags}, {>opcode})")
        self.fails("    log {\n limit 0\n }", "6: limit must be a whole number of lines per second from 1 to 100000, got '0'")
        self.fails("    errors x", "5: 'errors' takes no arguments, got 1")
        self.fails("    errors\n    errors", "6: duplicate 'errors' in this server block (first on line 5)")
        self.fails("    errors {\n stacktrace\n }", "6: unknown directive 'stacktrace' in errors (expected one of: consolidate, limit)")
        self.fails("    errors {\n consolidate 5m (\n }", "6: consolidate's pattern '(' is not a regular expression: missing ), unterminated subpattern at position 0")
        self.fails("    errors {\n consolidate 5m x loud\n }", "6: consolidate's level must be one of error, warning, info, debug, got 'loud'")

    def test_needs_idetcd(self):
        with self.assertRaises(CorefileError) as caught:
            parse(".:53 {\n    log\n}\n")
        self.assertEqual(str(caught.exception), "Corefile:2: 'log' serves beside idetcd: this server block has no idetcd directive")


class OptionTests(unittest.TestCase):
    def twistd(self, *options):
        corefile = self.mktemp()
        with open(corefile, "w") as f:
            f.write(BLOCK % "")
        return subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *options[:-1],
             "idetcd", "--corefile", corefile, options[-1]],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
        )

    def test_wrong_log_options_are_usage_errors(self):
        done = self.twistd("-n", "--pidfile=", "--log-format=yaml")
        self.assertEqual((done.returncode, done.stderr), (
            64, "twistd idetcd: --log-format must be one of text, json, got 'yaml' (see twistd idetcd --help)\n",
        ))
        done = self.twistd("-n", "--pidfile=", "--logfile", self.mktemp(), "--log-format=json")
        self.assertEqual(done.returncode, 64)
        self.assertIn("--log-format json writes to standard output", done.stderr)
