"""
The whole test suite in one command, ``python -m tests``, run in lanes:

- C{fast}: unit tests (no etcd, no node process), two trial workers;
- C{integration}: real etcd servers, nodes and DNS clients, two trial
  workers, since these tests mostly wait on processes and timers;
- C{serial}: storms and floods, one at a time, alone on the box, since
  they load every core and measure what a node does under that load.

A test module joins C{integration} unless listed in another lane (whole,
or the test classes listed there).  Each
lane is one trial run with its own temporary directory
(C{_trial_temp.LANE}); the last line sums them in trial's own words
(C{PASSED (skips=1, successes=549)}), so whatever reads trial's summary
reads this one.  ``python -m tests fast`` runs the named lanes only.
"""

import importlib
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.runner import TestLoader

FAST = (
    "tests.test_authority",
    "tests.test_claimer",
    "tests.test_claimer_states",
    "tests.test_clusterspec",
    "tests.test_contrib",
    "tests.test_corefile",
    "tests.test_decision",
    "tests.test_faultproxy",
    "tests.test_faults",
    "tests.test_freshness",
    "tests.test_launchers",
    "tests.test_lease",
    "tests.test_layout",
    "tests.test_logs",
    "tests.test_members",
    "tests.test_ordered",
    "tests.test_pattern",
    "tests.test_peerproxy",
    "tests.test_peers",
    "tests.test_ratelimit",
    "tests.test_server",
    "tests.test_wire",
)

#: Modules, or single test classes, that load every core (storms and
#: floods), or time their own computation.
SERIAL = (
    "tests.test_claim_race",
    "tests.test_forward.NodeTests",
    "tests.test_fuzz",
    "tests.test_hostile",
    "tests.test_nemesis",
    "tests.test_pattern.CheckTests",
    "tests.test_scale",
)

#: Trial's counts, in the order its summary line gives them.
COUNTS = ("skips", "expectedFailures", "failures", "errors", "unexpectedSuccesses", "successes")


def lanes():
    """
    The lanes in the order they run: (name, trial workers, what to run).
    """
    found = sorted(
        f"tests.{module.name}"
        for module in pkgutil.iter_modules([str(Path(__file__).parent)])
        if module.name.startswith("test_")
    )
    fast = without(FAST, SERIAL)
    integration = without([module for module in found if module not in FAST + SERIAL], SERIAL)
    return [("fast", 2, fast), ("integration", 2, integration), ("serial", 1, SERIAL)]


def without(modules, classes):
    """
    C{modules}, each replaced by its other test classes where C{classes}
    lists some of its own.
    """
    kept = []
    for module in modules:
        if any(name.startswith(module + ".") for name in classes):
            kept.extend(name for name in test_classes(module) if name not in classes)
        else:
            kept.append(module)
    return tuple(kept)


def test_classes(module):
    """
    The names of the test classes in C{module}, as trial finds them.
    """
    loaded = importlib.import_module(module)
    return [
        f"{module}.{cls.__name__}" for cls in TestLoader().findTestClasses(loaded) if cls.__module__ == module
    ]


def run_lane(name, jobs, modules):
    """
    Run C{modules} in one trial process with C{jobs} workers, its output
    passed on; the counts its summary line gives, and its wall time.
    """
    command = [sys.executable, "-m", "twisted.trial", f"--temp-directory=_trial_temp.{name}"]
    if jobs > 1:
        command.append(f"--jobs={jobs}")
    print(f"== lane {name}: {len(modules)} modules, {jobs} worker(s)", flush=True)
    started = time.monotonic()
    trial = subprocess.Popen(command + list(modules), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in trial.stdout:
        sys.stdout.write(line)
        if line.strip():
            last = line.strip()
    trial.wait()
    counts = summary_counts(last)
    if trial.returncode != 0 and not (counts["failures"] or counts["errors"]):
        # Trial ended without saying what failed (it crashed, or was killed).
        counts["errors"] += 1
    return counts, time.monotonic() - started


def summary_counts(line):
    """
    The counts in trial's last line, e.g. C{FAILED (failures=2, successes=40)}.
    """
    counts = dict.fromkeys(COUNTS, 0)
    for key, value in re.findall(r"\b(\w+)=(\d+)", line):
        if key in counts:
            counts[key] += int(value)
    return counts


def main(argv):
    chosen = [lane for lane in lanes() if not argv or lane[0] in argv]
    unknown = set(argv) - {lane[0] for lane in lanes()}
    if unknown:
        print(f"usage: python -m tests [{' | '.join(lane[0] for lane in lanes())} ...]", file=sys.stderr)
        return 64
    total = dict.fromkeys(COUNTS, 0)
    said = []
    started = time.monotonic()
    for name, jobs, modules in chosen:
        counts, seconds = run_lane(name, jobs, modules)
        for key in COUNTS:
            total[key] += counts[key]
        said.append(f"{name} {sum(counts.values())} tests in {seconds:.0f}s")
    passed = not (total["failures"] or total["errors"] or total["unexpectedSuccesses"])
    print("\nlanes: " + ", ".join(said))
    print(f"Ran {sum(total.values())} tests in {time.monotonic() - started:.0f}s\n")
    shown = ", ".join(f"{key}={total[key]}" for key in COUNTS if total[key])
    print(f"{'PASSED' if passed else 'FAILED'} ({shown})", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
