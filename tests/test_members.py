"""
Tests for L{idetcd.members._record}: the etcd value of a claimed name.
"""

import json

from twisted.trial.unittest import SynchronousTestCase

from idetcd.members._record import Member, role_and_slot
from idetcd.names._pattern import Pattern


class MemberValueTests(SynchronousTestCase):
    def test_round_trip_with_role_slot_and_srv(self):
        member = Member(
            "worker3.tf.local.", ("10.0.0.3",), ("fd00::3",), "53", "n3", role="worker", slot=3, srv=2222
        )
        self.assertEqual(Member.from_value(member.name, member.to_value()), member)
        self.assertEqual(
            json.loads(member.to_value()),
            {"ipv4": "10.0.0.3", "ipv6": "fd00::3", "port": "53", "node": "n3", "role": "worker", "slot": 3, "srv": 2222},
        )

    def test_original_plugin_value_gets_role_and_slot_from_its_name(self):
        value = b'{"ipv4":"10.0.0.12","ipv6":"","port":"53"}'
        member = Member.from_value("worker12.tf.local.", value)
        self.assertEqual((member.role, member.slot, member.srv), ("worker", 12, 0))
        self.assertEqual(json.loads(Member("x.", ("10.0.0.1",)).to_value()), {"ipv4": "10.0.0.1", "ipv6": "", "port": "", "node": ""})

    def test_names_without_digits_or_role(self):
        self.assertEqual(role_and_slot("gpu-07-a.tf.local."), ("gpu--a", 7))
        self.assertEqual(role_and_slot("07.tf.local."), ("node", 7))
        self.assertEqual(role_and_slot("chief.tf.local."), ("chief", 0))

    def test_bad_fields_are_refused(self):
        for field, bad in [("srv", 70000), ("srv", "x"), ("slot", -1), ("slot", True), ("role", 3)]:
            value = json.dumps({"ipv4": "10.0.0.1", field: bad})
            with self.assertRaises(ValueError, msg=f"{field}={bad!r}"):
                Member.from_value("worker1.tf.local.", value.encode())

    def test_string_numbers_are_read(self):
        value = b'{"ipv4":"10.0.0.1","srv":"2222","slot":"4","role":"ps"}'
        member = Member.from_value("ps4.tf.local.", value)
        self.assertEqual((member.role, member.slot, member.srv), ("ps", 4, 2222))


class PatternRoleTests(SynchronousTestCase):
    def test_role_is_the_literal_text_of_the_first_label(self):
        cases = {
            "worker{{.ID}}.tf.local.": "worker",
            "ps{{.ID}}.tf.local.": "ps",
            'w{{ "%02d" % ID }}.tf.local.': "w",
            "{{.ID}}.tf.local.": "node",
            "GPU-{{.ID}}-x.tf.local.": "gpu-x",
        }
        for text, role in cases.items():
            self.assertEqual(Pattern.parse(text).role, role, text)
