"""
Host names as idetcd stores and serves them: absolute, lower case, LDH.
"""

import re

# A whole absolute host name of LDH labels, for the fast path of check().
_HOST = re.compile(r"(?:(?!-)[a-z0-9-]{1,63}(?<!-)\.)+\Z")
_LDH = re.compile(r"[a-z0-9-]+\Z")


def absolute(name):
    """
    C{name} in the form names are compared in: lower case, ending in a dot.
    """
    name = name.lower()
    return name if name.endswith(".") else name + "."


def name_problem(name):
    """
    Why the absolute name C{name} is not a valid host name, or L{None}.

    Host names are stricter than DNS names (RFC 952/1123): resolvers and
    TLS libraries refuse underscores and the like in them.
    """
    if _HOST.match(name) and len(name) <= 254:
        return None
    if name == ".":
        return "is empty"
    if len(name) > 254:
        return f"is {len(name) - 1} characters long (at most 253)"
    for label in name[:-1].split("."):
        if not label:
            return "has an empty label"
        if len(label) > 63:
            return f"has a label of {len(label)} characters (at most 63)"
        if not _LDH.match(label):
            return f"has label {label!r}: only letters, digits and hyphens are allowed"
        if label.startswith("-") or label.endswith("-"):
            return f"has label {label!r}, which starts or ends with a hyphen"
    return None


def normalize_name(text):
    """
    C{text} as an absolute lower-case host name; L{ValueError} says why it
    is not one.
    """
    name = absolute(text)
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{text!r} is not a host name: it {problem}")
    return name
