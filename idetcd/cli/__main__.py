"""
C{python -m idetcd.cli}: the C{idetcd} command run by the Python at hand.
"""

from idetcd.cli._main import run

run()
