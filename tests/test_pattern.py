"""
Tests for L{idetcd.names._pattern}.
"""

import time

import attr
from twisted.trial.unittest import TestCase

from idetcd.names._pattern import Pattern, PatternError, absolute, name_problem


def _zone244():
    """
    A zone of 244 characters, leaving 9 for a first label and its dot.
    """
    return ".".join(["a" * 60] * 3 + ["a" * 58, "ab"])


class PatternAssertions:
    def assertPatternError(self, call, text, *words):
        """
        C{call()} raises a L{PatternError} quoting C{text} and C{words}.
        """
        with self.assertRaises(PatternError) as caught:
            call()
        message = str(caught.exception)
        self.assertIn(repr(text), message)
        for word in words:
            self.assertIn(word, message, text)


class RenderTests(TestCase):
    """
    Patterns in both spellings give the expected names.
    """

    def test_forms(self):
        """
        The Go form of the 2018 plugin and Jinja2 expressions both work;
        names come out absolute and lower case.
        """
        cases = [
            ("worker{{.ID}}.tf.local.", {1: "worker1.tf.local.", 12: "worker12.tf.local."}),
            ("worker{{ .ID }}.tf.local.", {3: "worker3.tf.local."}),
            ("worker{{- .ID -}}.tf.local.", {3: "worker3.tf.local."}),
            ("worker{{ID}}.tf.local", {7: "worker7.tf.local."}),
            ("worker{{ ID }}.tf.local.", {7: "worker7.tf.local."}),
            ('w{{ "%02d" % ID }}.tf.local.', {1: "w01.tf.local.", 42: "w42.tf.local.", 100: "w100.tf.local."}),
            ('w{{ "%03d" % .ID }}.tf.local.', {5: "w005.tf.local."}),
            ("w{{ '%04d'|format(ID) }}.x.", {9: "w0009.x."}),
            ("node-{{ ID + 100 }}.example.org.", {1: "node-101.example.org.", 5: "node-105.example.org."}),
            ("{% if ID < 10 %}0{% endif %}{{ID}}.x.", {3: "03.x.", 10: "10.x."}),
            ("{% if .ID < 10 %}0{% endif %}{{.ID}}.x.", {3: "03.x.", 10: "10.x."}),
            ("{{.ID}}.rack.example.", {8: "8.rack.example."}),
            ("Worker{{.ID}}.TF.Local", {2: "worker2.tf.local."}),
        ]
        for text, names in cases:
            pattern = Pattern.parse(text)
            self.assertEqual(pattern.text, text)
            for slot, name in names.items():
                self.assertEqual(pattern.render(slot), name, (text, slot))

    def test_string_literal_kept(self):
        """
        Only C{.ID} in expressions means the ID: inside a string literal it
        is text.
        """
        pattern = Pattern.parse("{{ 'id' if '.ID' == '.ID' else '' }}{{.ID}}.x.")
        self.assertEqual(pattern.render(4), "id4.x.")

    def test_zone(self):
        """
        The zone is everything after the first label.
        """
        cases = [
            ("worker{{.ID}}.tf.local.", "tf.local."),
            ("worker{{.ID}}.tf.local", "tf.local."),
            ("w{{.ID}}.example.", "example."),
            ("w{{.ID}}.a.b.c.d.example.org.", "a.b.c.d.example.org."),
            ("W{{.ID}}.Example.ORG", "example.org."),
        ]
        for text, zone in cases:
            self.assertEqual(Pattern.parse(text).zone, zone, text)

    def test_slot(self):
        """
        Slots are positive integers.
        """
        pattern = Pattern.parse("w{{.ID}}.x.")
        for slot in (0, -1, "1", 1.0):
            self.assertRaises(ValueError, pattern.render, slot)

    def test_value(self):
        """
        Patterns are immutable values compared by their text.
        """
        one = Pattern.parse("w{{.ID}}.x.")
        self.assertEqual(one, Pattern.parse("w{{.ID}}.x."))
        self.assertEqual(hash(one), hash(Pattern.parse("w{{.ID}}.x.")))
        self.assertNotEqual(one, Pattern.parse("w{{ID}}.x."))
        self.assertRaises(attr.exceptions.FrozenInstanceError, setattr, one, "text", "y")


class ParseErrorTests(PatternAssertions, TestCase):
    """
    L{Pattern.parse} refuses patterns that cannot name slots, saying why.
    """

    def test_errors(self):
        """
        Each kind of bad pattern gets its own message.
        """
        cases = [
            ("worker{{.ID}.tf.local.", "not a valid template"),
            ("w{{ printf .ID }}.x.", "not a valid template"),
            ("w{% if ID %}{{ID}}.x.", "not a valid template"),
            ("worker.tf.local.", "has no ID", "'worker.tf.local.'"),
            ("w{{ ID // 100 }}.x.", "has no ID", "'w0.x.'"),
            ("", "slot 1", "is empty"),
            ("w{{ foo }}.x.", "unknown variable", "'foo' is undefined"),
            ("w{{ name }}{{ ID }}.x.", "unknown variable", "'name' is undefined"),
            ("w{{ ID.foo }}.x.", "unknown variable"),
            ("w{{.ID}}.", "no zone", "'w1.'"),
            ("w{{.ID}}", "no zone"),
            ("a.{{.ID}}.x.", "different zones", "'a.1.x.'", "'a.2.x.'", "first label"),
            ("w{{.ID}}.{{.ID}}.x.", "different zones", "first label"),
            ("w_{{.ID}}.x.", "slot 1", "'w_1.x.'", "letters, digits and hyphens"),
            ("w {{.ID}}.x.", "slot 1", "letters, digits and hyphens"),
            ("wé{{.ID}}.x.", "slot 1", "letters, digits and hyphens"),
            ("w*{{.ID}}.x.", "slot 1", "letters, digits and hyphens"),
            ("-w{{.ID}}.x.", "slot 1", "hyphen"),
            ("w{{.ID}}-.x.", "slot 1", "hyphen"),
            ("w{{.ID}}.-x.", "slot 1", "hyphen"),
            ("w{{.ID}}..x.", "slot 1", "empty label"),
            (".w{{.ID}}.x.", "slot 1", "empty label"),
            ("w{{.ID}}" + "a" * 62 + ".x.", "slot 1", "64 characters", "at most 63"),
            ("w{{.ID}}.x" + ".abcdefghi" * 25, "slot 1", "at most 253"),
            ("w{{ ''.__class__ }}{{.ID}}.x.", "fails for slot 1", "unsafe"),
            ("w{{ 1 // (ID - 2) }}{{ID}}.x.", "fails for slot 2", "ZeroDivisionError"),
        ]
        for text, *words in cases:
            self.assertPatternError(lambda: Pattern.parse(text), text, *words)

    def test_is_value_error(self):
        """
        Callers that handle L{ValueError} handle pattern errors too.
        """
        self.assertTrue(issubclass(PatternError, ValueError))


class CheckTests(PatternAssertions, TestCase):
    """
    L{Pattern.check} vouches for every slot up to the limit.
    """

    def assertCheckFails(self, text, good, bad, *words):
        """
        C{text} passes up to slot C{good} and fails at slot C{bad}.
        """
        pattern = Pattern.parse(text)
        pattern.check(good)
        self.assertPatternError(lambda: pattern.check(bad), text, *words)

    def test_duplicates(self):
        """
        Two slots with one name are refused, naming both slots.
        """
        self.assertCheckFails(
            "w{{ ID % 3 }}.x.", 3, 4, "'w1.x.'", "slot 1 and slot 4"
        )
        self.assertCheckFails(
            "w{{ '%d' % (ID // 2) }}.x.", 1, 3, "'w1.x.'", "slot 2 and slot 3"
        )

    def test_later_slots(self):
        """
        A name that only goes wrong for a high slot is found.
        """
        # 8 + 1 + 244 = 253 characters up to slot 9; slot 10 has 254.
        zone = _zone244()
        self.assertCheckFails(
            "wwwwwww{{.ID}}." + zone, 9, 10, "slot 10", "at most 253"
        )
        self.assertCheckFails("{{ 'a' * ID }}.x.", 63, 64, "slot 64", "at most 63")
        self.assertCheckFails(
            "{{ 'a.' if ID > 3 else '' }}w{{ID}}.x.", 3, 4, "slot 4", "first label"
        )
        self.assertCheckFails(
            "w{{ 100 // (5 - ID) }}.x.", 4, 5, "slot 5", "ZeroDivisionError"
        )

    def test_valid_edges(self):
        """
        Labels of 63 characters and names of 253 are allowed.
        """
        pattern = Pattern.parse("w{{.ID}}" + "a" * 61 + ".x.")
        pattern.check(9)
        self.assertEqual(len(pattern.render(9).split(".")[0]), 63)
        pattern = Pattern.parse("wwwwwww{{.ID}}." + _zone244())
        self.assertEqual(len(pattern.render(9)), 254)

    def test_fast(self):
        """
        The largest limit checks in well under a second or so, even with
        a formatting expression.
        """
        pattern = Pattern.parse('worker{{ "%05d" % ID }}.tf.local.')
        start = time.perf_counter()
        pattern.check(100000)
        elapsed = time.perf_counter() - start
        self.assertEqual(pattern.render(100000), "worker100000.tf.local.")
        self.assertLess(elapsed, 3.0)


class NameTests(TestCase):
    """
    The name helpers shared with the Corefile reader.
    """

    def test_absolute(self):
        """
        Names are compared lower case with a trailing dot.
        """
        self.assertEqual(absolute("TF.Local"), "tf.local.")
        self.assertEqual(absolute("tf.local."), "tf.local.")
        self.assertEqual(absolute("."), ".")

    def test_name_problem(self):
        """
        Valid host names have no problem; others say what is wrong.
        """
        for name in ("a.", "worker1.tf.local.", "x-1.y2.", "1.2.3.", "a" * 63 + ".b."):
            self.assertIsNone(name_problem(name), name)
        cases = [
            (".", "empty"),
            ("a..b.", "empty label"),
            ("a_b.c.", "'a_b'"),
            ("-a.c.", "hyphen"),
            ("a" * 64 + ".b.", "64 characters"),
            (("abcdefghi." * 26), "at most 253"),
        ]
        for name, word in cases:
            self.assertIn(word, name_problem(name), name)
