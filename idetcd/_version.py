"""
The version of idetcd, in one place: the package, its metadata and the
commands that print it read it here.
"""

__version__ = "0.1.0"
