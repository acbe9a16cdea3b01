"""
Host names as idetcd stores and serves them: absolute, lower case, LDH.
"""

import re

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def normalize_name(text):
    """
    C{text} as an absolute lower-case host name; L{ValueError} says why it
    is not one.
    """
    name = text.lower()
    if not name.endswith("."):
        name += "."
    if name == ".":
        raise ValueError(f"{text!r} is not a host name")
    if len(name) > 254:
        raise ValueError(f"{text!r} is longer than 253 characters")
    for label in name[:-1].split("."):
        if not _LABEL.match(label):
            raise ValueError(
                f"{text!r} is not a host name: label {label!r} must be 1 to 63 "
                "letters, digits or inner hyphens"
            )
    return name
