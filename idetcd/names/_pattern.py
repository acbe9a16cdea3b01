"""
The name pattern: which DNS name each slot claims.

A pattern such as ``worker{{.ID}}.tf.local.`` is a Jinja2 template with one
variable, ``ID``.  The Go-template spelling of the 2018 plugin, ``.ID``, is
read as ``ID`` so its Corefiles keep working.  Templates run sandboxed: a
Corefile is configuration, not code.
"""

import re

import attr
from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from idetcd.names._hostname import absolute, name_problem


class PatternError(ValueError):
    """
    A pattern that cannot name every slot; the message says why.
    """


# Template actions (``{{ … }}`` and ``{% … %}``) and, inside them, either a
# string literal (kept as it is) or a Go-style ``.ID`` (read as ``ID``).
_ACTION = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
_DOT_ID = re.compile(
    r"""("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')|(?<![\w.)\]])\.ID\b"""
)

_environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def _from_go(text):
    def action(match):
        return _DOT_ID.sub(lambda m: m.group(1) or "ID", match.group(0))

    return _ACTION.sub(action, text)


def _parent(name):
    return name.partition(".")[2]


@attr.s(frozen=True, slots=True)
class Pattern:
    """
    A compiled pattern; build it with L{Pattern.parse}.

    @ivar text: the pattern as the user wrote it, for messages.
    @ivar zone: the zone every name lies in, the parent of the first label.
    @ivar role: what its names are for, the literal text of the first label
        (``worker`` for ``worker{{.ID}}.tf.local.``, ``node`` if none); nodes
        of several patterns share a zone, one role each.
    """

    text = attr.ib()
    zone = attr.ib()
    _macro = attr.ib(eq=False, repr=False)
    role = attr.ib(default="node")

    @classmethod
    def parse(cls, text):
        """
        Compile C{text}; L{PatternError} says what is wrong with it.

        The pattern is compiled as a macro of one argument so that rendering
        a slot costs a function call, which keeps L{check} fast.
        """
        try:
            template = _environment.from_string(
                "{% macro idetcd_slot_name(ID) %}" + _from_go(text) + "{% endmacro %}"
            )
            macro = template.module.idetcd_slot_name
        except TemplateError as e:
            raise PatternError(f"pattern {text!r} is not a valid template: {e}") from None
        first = _name(text, macro, 1)
        second = _name(text, macro, 2)
        if first == second:
            raise PatternError(
                f"pattern {text!r} has no ID: slots 1 and 2 both give {first!r}"
                " (put {{.ID}} in the first label)"
            )
        zone = _parent(first)
        if not zone:
            raise PatternError(
                f"pattern {text!r} gives {first!r}, a name with no zone:"
                " add at least one zone label, as in worker{{.ID}}.example."
            )
        if _parent(second) != zone:
            raise PatternError(
                f"pattern {text!r} puts slots 1 and 2 in different zones"
                f" ({first!r}, {second!r}): the ID must be in the first label"
            )
        label = _ACTION.sub("", text).partition(".")[0]
        role = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "node"
        return cls(text, zone, macro, role)

    def render(self, slot):
        """
        The absolute, lower-case name of C{slot}.
        """
        if not isinstance(slot, int) or slot < 1:
            raise ValueError(f"slot must be a positive integer, got {slot!r}")
        name = _name(self.text, self._macro, slot)
        if _parent(name) != self.zone:
            raise PatternError(
                f"pattern {self.text!r} gives {name!r} for slot {slot}, outside"
                f" zone {self.zone!r}: the ID must be in the first label"
            )
        return name

    def check(self, limit):
        """
        Make sure slots 1 to C{limit} all get valid, distinct names.
        """
        seen = {}
        for slot in range(1, limit + 1):
            name = self.render(slot)
            if name in seen:
                raise PatternError(
                    f"pattern {self.text!r} gives {name!r} to both slot"
                    f" {seen[name]} and slot {slot}"
                )
            seen[name] = slot


def _name(text, macro, slot):
    try:
        name = absolute(macro(slot))
    except TemplateError as e:
        raise PatternError(
            f"pattern {text!r} uses an unknown variable: {e} (only ID is defined)"
            if isinstance(e, UndefinedError)
            else f"pattern {text!r} fails for slot {slot}: {e}"
        ) from None
    except Exception as e:
        # Arithmetic in a template can fail for some slots only: 1 // (ID - 3).
        raise PatternError(
            f"pattern {text!r} fails for slot {slot}: {type(e).__name__}: {e}"
        ) from None
    problem = name_problem(name)
    if problem:
        raise PatternError(
            f"pattern {text!r} gives an invalid host name for slot {slot}:"
            f" {name!r} {problem}"
        )
    return name
