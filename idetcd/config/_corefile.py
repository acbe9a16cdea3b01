"""
Read a Corefile, the configuration format of CoreDNS and of the 2018 idetcd
plugin, so that one file configures either.

Words follow the CoreDNS (Caddy v1) lexer: they split on white space; ``#``
at the start of a word comments out the rest of the line; double quotes make
one word of anything, across lines too, with ``\\"`` and ``\\\\`` as escapes;
``{$NAME}`` and ``{$NAME:default}`` take text from the environment.  One
addition: a template action ``{{ … }}`` stays in its word with its spaces and
quotes, so ``pattern w{{ "%02d" % ID }}.tf.local.`` needs no quoting.
"""

import os
import re

import attr

from idetcd.common import EXIT_CONFIG


class CorefileError(ValueError):
    """
    A Corefile that cannot be used; C{str()} gives C{file:line: message}.
    """

    exit_status = EXIT_CONFIG

    def __init__(self, filename, line, message):
        super().__init__(f"{filename}:{line}: {message}")
        self.filename = filename
        self.line = line
        self.message = message


def read(path):
    """
    The text of the Corefile at C{path}, or a L{CorefileError} saying why
    it cannot be had.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CorefileError(filename, 0, f"cannot read the Corefile: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CorefileError(filename, line, "is not UTF-8 text") from None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Token:
    text: str
    line: int
    end: int  # the line the token ends on
    brace: str = ""  # "{" or "}" for a block brace, "" for a word


# "{$" and, when it is well formed, the rest of the reference.
_ENV = re.compile(r"\{\$(?:([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\})?")


class _Failing:
    """
    Raise errors that name the Corefile (C{self.filename}).
    """

    __slots__ = ()  # a Directive stays slotted

    def fail(self, line, message):
        raise CorefileError(self.filename, line, message)


class _Lexer(_Failing):
    """
    Split a Corefile into words and braces, each with its line.
    """

    def __init__(self, text, filename, environ):
        self.text = text
        self.filename = filename
        self.environ = environ
        self.pos = 0
        self.line = 1

    def tokens(self):
        out = []
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c == "\n":
                self.line += 1
                self.pos += 1
            elif c.isspace():
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif c == '"':
                out.append(self._quoted())
            else:
                out.extend(self._bare())
        return out

    def _quoted(self):
        text = self.text
        start = self.line
        chars = []
        i = self.pos + 1
        while True:
            if i >= len(text):
                self.fail(start, "unterminated quoted word: missing closing '\"'")
            c = text[i]
            if c == "\\" and text[i + 1 : i + 2] in ('"', "\\"):
                chars.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                break
            if c == "\n":
                self.line += 1
            chars.append(c)
            i += 1
        self.pos = i + 1
        return self._word("".join(chars), start)

    def _bare(self):
        text = self.text
        start = self.line
        i = self.pos
        while i < len(text) and not text[i].isspace():
            if text.startswith("{{", i):
                end = text.find("}}", i + 2)
                if end < 0:
                    self.fail(self.line, "unterminated template: '{{' without '}}'")
                self.line += text.count("\n", i, end)
                i = end + 2
            else:
                i += 1
        raw = text[self.pos : i]
        self.pos = i
        if raw in ("{", "}"):
            return [_Token(raw, start, start, raw)]
        if raw.endswith("{"):
            return [self._word(raw[:-1], start), _Token("{", self.line, self.line, "{")]
        return [self._word(raw, start)]

    def _word(self, raw, line):
        def variable(match):
            name, default = match.groups()
            if name is None:
                self.fail(
                    line,
                    f"bad environment reference in {raw!r}:"
                    " expected {$NAME} or {$NAME:default}",
                )
            value = self.environ.get(name, default)
            if value is None:
                self.fail(
                    line,
                    f"environment variable {name} is not set"
                    f" (give a default with {{${name}:default}})",
                )
            return value

        return _Token(_ENV.sub(variable, raw), line, self.line)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Directive(_Failing):
    """
    One directive as written: its name, its arguments, the directives of
    its block (C{None} without one) and where it stands.  The part a
    directive configures reads it with these helpers, which fail with a
    L{CorefileError} naming the file and line, as CoreDNS plugins read
    their own tokens.
    """

    name: str
    args: tuple
    block: tuple = None
    filename: str = "Corefile"
    line: int = 0

    def arguments(self, fewest, most, block=False):
        """
        The arguments, if there are C{fewest} to C{most} (L{None}: any
        number) of them, and a block only where C{block} allows one.
        """
        n = len(self.args)
        name = repr(self.name)
        if most == 0 and n:
            self.fail(self.line, f"{name} takes no arguments, got {n}")
        if most is None and n < fewest:
            self.fail(self.line, f"{name} needs at least {fewest} argument")
        if fewest == most == 1 and n != 1:
            self.fail(self.line, f"{name} needs 1 argument, got {n}")
        if fewest == 0 and most == 1 and n > 1:
            self.fail(self.line, f"{name} takes at most 1 argument, got {n}")
        if n < fewest or (most is not None and n > most):
            self.fail(self.line, f"{name} takes {fewest} to {most} arguments, got {n}")
        if self.block is not None and not block:
            self.fail(self.line, f"{name} takes no block")
        return self.args

    def once(self, seen, where):
        """
        Note this directive's line in C{seen} (lines by directive name),
        failing if it is there already: it may stand once in C{where}.
        """
        if self.name in seen:
            self.fail(
                self.line,
                f"duplicate {self.name!r} in {where} (first on line {seen[self.name]})",
            )
        seen[self.name] = self.line

    def convert(self, convert):
        """
        C{convert()}, whose L{ValueError} becomes a L{CorefileError} at
        this directive's line.
        """
        try:
            return convert()
        except ValueError as e:
            self.fail(self.line, str(e))

    def settings(self, table, repeated=()):
        """
        The settings in this directive's block by the C{table} of their
        directives (name: (field, fewest arguments, most, convert)), each
        at most once unless C{repeated} names it: (the line of each
        setting, values by field, a tuple for a repeated one).
        """
        seen = {}
        values = {}
        for setting in self.block or ():
            if setting.name not in table:
                setting.fail(
                    setting.line,
                    f"unknown directive {setting.name!r} in {self.name}"
                    f" (expected one of: {', '.join(table)})",
                )
            if setting.name not in repeated:
                setting.once(seen, self.name)
            field, fewest, most, convert = table[setting.name]
            args = setting.arguments(fewest, most)
            value = setting.convert(lambda: convert(args))
            if setting.name in repeated:
                values[field] = values.get(field, ()) + (value,)
            else:
                values[field] = value
        return seen, values


class _Parser(_Failing):
    """
    Group tokens into server blocks of directives, nested as written.
    """

    def __init__(self, tokens, filename, last_line):
        self.tokens = tokens
        self.filename = filename
        self.last_line = last_line
        self.pos = 0

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def server_blocks(self):
        """
        Yield (key tokens, directives) for each server block.
        """
        while self.peek():
            keys, opened = self._keys()
            yield keys, self._block(opened)

    def _keys(self):
        first = self.peek()
        if first.brace == "}":
            self.fail(first.line, "unexpected '}': no block is open")
        if first.brace == "{":
            self.fail(first.line, "expected server block keys (such as .:1053) before '{'")
        if first.text == "import":
            self.fail(first.line, "'import' is not supported: write the configuration out")
        keys = [first]
        self.pos += 1
        # Keys go on until '{'; a trailing comma carries them to the next line.
        while True:
            token = self.peek()
            last = keys[-1]
            if token is None or token.brace or (
                token.line != last.end and not last.text.endswith(",")
            ):
                break
            keys.append(token)
            self.pos += 1
        if token is None or token.brace != "{" or token.line != last.end:
            self.fail(last.end, "expected '{' after server block keys")
        self.pos += 1
        return keys, token

    def _block(self, opened):
        directives = []
        while True:
            token = self.peek()
            if token is None:
                self.fail(
                    self.last_line,
                    f"missing '}}' at the end of the file to close the block"
                    f" opened on line {opened.line}",
                )
            self.pos += 1
            if token.brace == "}":
                return tuple(directives)
            if token.brace == "{":
                self.fail(
                    token.line,
                    "unexpected '{': a block opens at the end of its directive's line",
                )
            args = []
            last = token
            while self.peek() and not self.peek().brace and self.peek().line == last.end:
                last = self.peek()
                args.append(last.text)
                self.pos += 1
            block = None
            after = self.peek()
            if after and after.brace == "{" and after.line == last.end:
                self.pos += 1
                block = self._block(after)
            directives.append(Directive(token.text, tuple(args), block, self.filename, token.line))
