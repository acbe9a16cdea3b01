"""
Checks that run idetcd with real things around it, beyond what the unit
tests in C{tests} can: several hosts, real training frameworks.  Run as
root by C{.ci/frameworks}: C{python -m twisted.trial checks}.
"""
