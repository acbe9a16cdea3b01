"""
The launchers' side of a job's rounds (L{idetcd.training.launcher}), against
a stand-in for the idetcd command that gives scripted answers.  torch and
TensorFlow themselves, with real nodes, are in C{checks.test_launchers_real}.
"""

import json
import os
import sys
import time

from twisted.trial import unittest

from idetcd.training.launcher import (
    Idetcd,
    IdetcdError,
    LatestRound,
    NotInRound,
    RoundWatch,
    Seat,
    nnodes_text,
    nodes_waiting,
)

#: The stand-in: logs its arguments to DIR/calls, answers the Nth call of a
#: command with the Nth [status, stdout, stderr] of DIR/COMMAND.json (the
#: last one again once they run out).
STAND_IN = """\
import json, os, sys
where, command = sys.argv[1], sys.argv[2]
with open(os.path.join(where, "calls"), "a") as f:
    f.write(json.dumps(sys.argv[2:]) + "\\n")
with open(os.path.join(where, command + ".json")) as f:
    replies = json.load(f)
count = os.path.join(where, command + ".count")
n = int(open(count).read()) if os.path.exists(count) else 0
with open(count, "w") as f:
    f.write(str(n + 1))
status, out, err = replies[min(n, len(replies) - 1)]
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(status)
"""


def member(name, slot, address="127.0.0.1"):
    return {
        "name": name, "role": "worker", "slot": slot, "addresses": [address],
        "port": None, "srv": 2222, "node": f"node{slot}", "lease": f"{slot:x}",
    }


MEMBERS = [member("worker1.tf.local.", 1, "10.0.0.1"), member("worker2.tf.local.", 2, "10.0.0.2")]

ENV = {
    "job": "mnist", "round": 3, "name": "worker2.tf.local.", "role": "worker", "slot": 2, "index": 1,
    "world_size": 2, "master": "worker1.tf.local", "master_port": 2222, "local_addr": "10.0.0.2",
    "interface": "eth0", "members": MEMBERS, "cluster": {"worker": MEMBERS},
}


def latest(number, members=("worker1.tf.local.", "worker2.tf.local."), alive=True, waiting=()):
    return {"job": "mnist", "round": number, "members": list(members), "alive": alive, "waiting": list(waiting)}


def ok(data):
    return [0, json.dumps(data), ""]


class StandInCase(unittest.TestCase):

    def stand_in(self, **replies):
        """
        An L{Idetcd} running the stand-in, which answers each command as
        C{replies} says (a list of [status, stdout, stderr] per command).
        """
        self.where = os.path.abspath(self.mktemp())
        os.makedirs(self.where)
        script = os.path.join(self.where, "idetcd.py")
        with open(script, "w") as f:
            f.write(STAND_IN)
        for command, answers in replies.items():
            with open(os.path.join(self.where, command + ".json"), "w") as f:
                json.dump(answers, f)
        return Idetcd("/etc/idetcd/Corefile", "/var/lib/idetcd", program=(sys.executable, script, self.where))

    def calls(self):
        with open(os.path.join(self.where, "calls")) as f:
            return [json.loads(line) for line in f]


class ArgumentTests(unittest.TestCase):

    def test_nnodes(self):
        self.assertEqual([nnodes_text(n) for n in (3, "3", "2:4", (2, 4))], ["3", "3", "2:4", "2:4"])
        for bad in (0, "0", "a", "3:", ":3", "2:4:6", "-1"):
            self.assertRaises(ValueError, nnodes_text, bad)

    def test_env_and_round_command_lines(self):
        node = Idetcd("/etc/idetcd/Corefile", "/var/lib/idetcd")
        self.assertEqual(node.env_argv("mnist", (2, 4), 12.345, 3, 0.5), [
            sys.executable, "-m", "idetcd.cli", "env", "--format", "json", "--nnodes", "2:4", "--job", "mnist",
            "--timeout", "12.3", "--after", "3", "--settle", "0.5",
            "--corefile", "/etc/idetcd/Corefile", "--state", "/var/lib/idetcd",
        ])
        # The command's own defaults where nothing is given; a spent
        # timeout is still one idetcd accepts.
        self.assertEqual(Idetcd().env_argv(None, 3)[3:], ["env", "--format", "json", "--nnodes", "3"])
        self.assertEqual(Idetcd().env_argv("j", 3, -2)[-2:], ["--timeout", "0.1"])
        self.assertEqual(Idetcd().round_argv("mnist")[3:], ["round", "--job", "mnist", "--json"])


class CommandTests(StandInCase):

    def test_env_reads_the_round(self):
        node = self.stand_in(env=[ok(ENV)])
        agreed = node.env("mnist", "2:4", 30)
        self.assertEqual(
            (agreed.job, agreed.number, agreed.name, agreed.role, agreed.rank, agreed.world_size),
            ("mnist", 3, "worker2.tf.local.", "worker", 1, 2),
        )
        self.assertEqual(
            (agreed.master, agreed.master_port, agreed.master_address), ("worker1.tf.local", 2222, "10.0.0.1")
        )
        self.assertEqual((agreed.local_addr, agreed.interface), ("10.0.0.2", "eth0"))
        self.assertEqual(agreed.members, MEMBERS)
        self.assertEqual(self.calls(), [[
            "env", "--format", "json", "--nnodes", "2:4", "--job", "mnist", "--timeout", "30.0",
            "--corefile", "/etc/idetcd/Corefile", "--state", "/var/lib/idetcd",
        ]])

    def test_latest_round(self):
        node = self.stand_in(round=[ok(latest(2, alive=False, waiting=["worker3.tf.local."]))])
        self.assertEqual(
            node.latest("mnist"),
            LatestRound("mnist", 2, ["worker1.tf.local.", "worker2.tf.local."], False, ["worker3.tf.local."]),
        )

    def test_failures_are_the_commands_last_line(self):
        node = self.stand_in(env=[
            [3, "", "a warning\nidetcd: etcd did not answer at http://127.0.0.1:2379\n"],
            [6, "", "idetcd: spare: worker3.tf.local. is not in round 4 of job 'mnist' (2 members: w1 w2)\n"],
            [6, "", "idetcd: a spare\n"],
            [0, "not JSON", ""],
            ok({"job": "mnist"}),
            [1, "", ""],
        ])
        e = self.assertRaises(IdetcdError, node.env, "mnist", 3)
        self.assertEqual((e.status, e.message), (3, "idetcd: etcd did not answer at http://127.0.0.1:2379"))
        e = self.assertRaises(NotInRound, node.env, "mnist", 3)
        self.assertEqual((e.status, e.round), (6, 4))
        self.assertIsNone(self.assertRaises(NotInRound, node.env, "mnist", 3).round)
        e = self.assertRaises(IdetcdError, node.env, "mnist", 3)
        self.assertEqual(e.message, "idetcd env printed no JSON: 'not JSON'")
        e = self.assertRaises(IdetcdError, node.env, "mnist", 3)
        self.assertEqual(e.message, "idetcd env printed JSON without 'round'")
        e = self.assertRaises(IdetcdError, node.env, "mnist", 3)
        self.assertEqual((e.status, e.message), (1, "idetcd exited with status 1"))


class JoinTests(StandInCase):

    def test_a_spare_joins_the_next_round_that_has_it(self):
        spare = [6, "", "idetcd: spare: w3 is not in round 4 of job 'mnist' (2 members: w1 w2)\n"]
        node = self.stand_in(
            env=[spare, [6, "", "idetcd: spare: w3 is not in round 5 of job 'mnist' (2 members: w1 w4)\n"],
                 ok(ENV)],
            round=[ok(latest(4)), ok(latest(4)), ok(latest(5)), ok(latest(6))],
        )
        self.assertEqual(node.join("mnist", (2, 4), 30, interval=0.01).number, 3)
        # It asks again only once a round newer than the one without it is
        # recorded, and asks for the one after that.
        self.assertEqual([(call[0], call[call.index("--after") + 1] if "--after" in call else None)
                          for call in self.calls()], [
            ("env", None), ("round", None), ("round", None), ("round", None),
            ("env", "4"), ("round", None), ("env", "5"),
        ])

    def test_a_spare_times_out(self):
        node = self.stand_in(env=[[6, "", "idetcd: a spare\n"]], round=[ok(latest(2))])
        started = time.monotonic()
        e = self.assertRaises(IdetcdError, node.join, "mnist", 3, 0.5, 1, interval=0.05)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(
            (e.status, e.message),
            (5, "idetcd: timed out after 0.5s: this node is a spare, not in round 2 of job mnist"),
        )
        self.assertEqual(self.calls()[0][-6:-4], ["--after", "1"])

    def test_other_failures_end_the_join(self):
        node = self.stand_in(env=[[5, "", "idetcd: timed out after 30s: 1 of 2 worker members\n"]])
        e = self.assertRaises(IdetcdError, node.join, "mnist", "2", 30)
        self.assertEqual(e.status, 5)


def agreed(number, world_size):
    return Seat.from_json(json.dumps(dict(ENV, round=number, world_size=world_size)))


class NodesWaitingTests(unittest.TestCase):

    def test_nodes_waiting(self):
        current = agreed(3, 2)
        self.assertEqual(nodes_waiting(None, current, 4), 0)
        self.assertEqual(nodes_waiting(LatestRound.from_json(json.dumps(latest(3))), current, 4), 0)
        # Read before this round: it says nothing.
        self.assertEqual(nodes_waiting(LatestRound("mnist", 2, [], False, ["w3", "w4"]), current, 4), 0)
        # Live members left out, while there is room.
        self.assertEqual(nodes_waiting(LatestRound("mnist", 3, [], True, ["w3"]), current, 4), 1)
        self.assertEqual(nodes_waiting(LatestRound("mnist", 3, [], True, ["w3", "w4", "w5"]), current, 4), 2)
        self.assertEqual(nodes_waiting(LatestRound("mnist", 3, [], True, ["w3", "w4"]), agreed(3, 4), 4), 0)
        # A member died, or the others moved on: rendezvous again.
        self.assertEqual(nodes_waiting(LatestRound("mnist", 3, [], False, []), agreed(3, 4), 4), 1)
        self.assertEqual(nodes_waiting(LatestRound("mnist", 4, [], True, []), agreed(3, 4), 4), 1)


class RoundWatchTests(StandInCase):

    def finished(self, watch):
        """
        Poll C{watch} until its read in progress is done (at most 30 s).
        """
        deadline = time.monotonic() + 30
        while watch._process is not None and watch._process.poll() is None:
            self.assertLess(time.monotonic(), deadline, "the read did not end")
            time.sleep(0.01)
        return watch.poll()

    def test_reads_in_the_background_at_most_every_interval(self):
        node = self.stand_in(round=[ok(latest(1)), [3, "", "idetcd: etcd did not answer\n"], ok(latest(2))])
        now = [100.0]
        watch = RoundWatch(node, "mnist", 5.0, clock=lambda: now[0])
        self.addCleanup(watch.stop)
        self.assertIsNone(watch.poll())
        self.assertEqual(self.finished(watch).number, 1)
        self.assertEqual(len(self.calls()), 1)
        # Not due: no new read.
        now[0] += 4.9
        self.assertEqual(watch.poll().number, 1)
        self.assertIsNone(watch._process)
        # A failed read keeps what was read before, and says why.
        now[0] += 0.1
        watch.poll()
        with self.assertLogs("idetcd.training.launcher", "WARNING") as logged:
            self.assertEqual(self.finished(watch).number, 1)
        self.assertEqual(logged.output, [
            "WARNING:idetcd.training.launcher:idetcd: job mnist: could not read the latest round: "
            "idetcd: etcd did not answer"
        ])
        self.assertEqual(len(self.calls()), 2)
        now[0] += 5
        watch.poll()
        self.assertEqual(self.finished(watch).number, 2)

    def test_stop_ends_a_read(self):
        node = self.stand_in(round=[ok(latest(1))])
        watch = RoundWatch(node, "mnist")
        watch.poll()
        process = watch._process
        watch.stop()
        self.assertIsNotNone(process.returncode)
        self.assertIsNone(watch.latest)
