"""Ollama's prompt-template dialect (Go's text/template), written fresh in Python.

Ollama stores a model's chat template as Go text/template source and builds prompts with it.
This module parses that dialect and runs it with Go's semantics, in three stages:

    _Lexer      source text -> tokens (delimiters, ``{{-``/``-}}`` trimming, comments, literals)
    _Parser     tokens -> frozen node dataclasses (ListNode, ActionNode, IfNode, RangeNode, ...)
    _Executor   nodes + data -> text (Go's exec rules: truthiness, variable scoping, fmt printing)

:class:`Template` is the public face (``parse``, ``variables``, ``execute``, ``render``); ``render``
adds Ollama's ``template.Execute`` on top: messages mode, legacy mode and prompt+suffix mode.

Go values are modelled by Python values: ``None`` is nil, ``bool``, ``int``, ``float`` (float64),
``str``, ``list``/``tuple`` (slices), ``dict``/``Mapping`` (maps) and other objects (structs).
Where Python data is not Go data, these are the choices made (each has a test):

- ``.Name`` on a mapping tries the exact key, then the first key equal to the name ignoring case
  and underscores, so ``.Role`` finds ``role`` and ``.ToolCalls`` finds ``tool_calls``.  On other
  objects it tries attributes the same way; bound methods are called, like Go methods.
- A missing key yields nil: that is Go's ``missingkey=zero`` on the ``map[string]any`` Ollama
  passes at the top level.  An action prints it as ``<no value>`` (as Go does), ``print`` as
  ``<nil>``, ``if`` sees it as false; a field *of* nil (``.Missing.X``) is an error, as in Go.
  Ollama's message structs have no missing fields: ``render`` gives every message Ollama's
  ``api.Message`` fields (role, content, thinking, images, tool_calls, tool_name), empty when
  absent, so they print as ``""`` like Go's zero values.  None of the reference renderings in
  ``testdata/templates`` depends on this.
- Mapping keys print and range in sorted order (Go's fmt and range sort map keys); ``json`` sorts
  them too, except for the tool definitions and tool-call arguments that ``render`` builds, which
  keep the caller's key order, as Go's structs keep their field order.  Tools and tool-call
  arguments print as their JSON, like Ollama's ``String()`` methods on those types.
- Strings are Unicode text: ``len`` and ``slice``/``index`` on a string count UTF-8 bytes as Go
  does, and a slice that splits a character is decoded with U+FFFD.

Not supported: complex numbers, custom delimiters, ``{{template}}`` on templates added after
parsing, Go's ``%#v`` Go-syntax printing (``#`` is honoured only for ``%x``/``%o``/``%b``), and
range over functions or channels.
"""

from __future__ import annotations

import errno as errno_module
import bisect
import dataclasses
import enum
import inspect
import logging
import math
import urllib.parse
from base64 import b64encode
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import OllamaFSError

__all__ = ["DEFAULT_TEMPLATE", "Template", "TemplateError", "capabilities"]

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{{ .Prompt }}"

_MAX_TEMPLATE_DEPTH = 64  # nested {{template}} calls; Go allows more, Python's stack does not


class TemplateError(OllamaFSError, ValueError):
    """A template failed to parse or to execute; the message says where (line) and why."""

    errno = errno_module.EINVAL
    level = logging.WARNING


# --------------------------------------------------------------------------------------------
# Tokens and lexer
# --------------------------------------------------------------------------------------------


class _Kind(enum.Enum):
    ERROR = enum.auto()
    EOF = enum.auto()
    TEXT = enum.auto()
    LEFT_DELIM = enum.auto()
    RIGHT_DELIM = enum.auto()
    SPACE = enum.auto()
    ASSIGN = enum.auto()
    DECLARE = enum.auto()
    PIPE = enum.auto()
    LEFT_PAREN = enum.auto()
    RIGHT_PAREN = enum.auto()
    CHAR = enum.auto()
    BOOL = enum.auto()
    CHAR_CONSTANT = enum.auto()
    COMPLEX = enum.auto()
    NUMBER = enum.auto()
    STRING = enum.auto()
    RAW_STRING = enum.auto()
    FIELD = enum.auto()
    IDENTIFIER = enum.auto()
    VARIABLE = enum.auto()
    # Go shows these as <word> in messages
    DOT = enum.auto()
    NIL = enum.auto()
    BLOCK = enum.auto()
    BREAK = enum.auto()
    CONTINUE = enum.auto()
    DEFINE = enum.auto()
    ELSE = enum.auto()
    END = enum.auto()
    IF = enum.auto()
    RANGE = enum.auto()
    TEMPLATE = enum.auto()
    WITH = enum.auto()


_KEYWORDS = {
    "block": _Kind.BLOCK,
    "break": _Kind.BREAK,
    "continue": _Kind.CONTINUE,
    "define": _Kind.DEFINE,
    "else": _Kind.ELSE,
    "end": _Kind.END,
    "if": _Kind.IF,
    "nil": _Kind.NIL,
    "range": _Kind.RANGE,
    "template": _Kind.TEMPLATE,
    "with": _Kind.WITH,
}
_SHOWN_AS_KEYWORD = frozenset(_KEYWORDS.values()) | {_Kind.DOT}

_SPACE_CHARS = " \t\r\n"
_LEFT_DELIM = "{{"
_RIGHT_DELIM = "}}"
_LEFT_COMMENT = "/*"
_RIGHT_COMMENT = "*/"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    val: str
    pos: int
    line: int

    def __str__(self) -> str:
        if self.kind is _Kind.EOF:
            return "EOF"
        if self.kind is _Kind.ERROR:
            return self.val
        if self.kind in _SHOWN_AS_KEYWORD:
            return f"<{self.val}>"
        if len(self.val) > 10:
            return _go_quote(self.val[:10]) + "..."
        return _go_quote(self.val)


class _LexError(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.pos = pos


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdecimal()


def _has_left_trim(text: str, i: int) -> bool:
    return len(text) >= i + 2 and text[i] == "-" and text[i + 1] in _SPACE_CHARS


def _has_right_trim(text: str, i: int) -> bool:
    return i >= 0 and len(text) >= i + 2 and text[i] in _SPACE_CHARS and text[i + 1] == "-"


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE_CHARS:
        i += 1
    return i


class _Lexer:
    """Splits template source into tokens, the way Go's text/template/parse lexer does."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.tokens: list[_Token] = []
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def run(self) -> list[_Token]:
        try:
            self._lex()
        except _LexError as exc:
            self._emit(_Kind.ERROR, str(exc), exc.pos)
        self._emit(_Kind.EOF, "", len(self.text))
        return self.tokens

    def _emit(self, kind: _Kind, val: str, pos: int) -> None:
        self.tokens.append(_Token(kind, val, pos, self.line(pos)))

    def _lex(self) -> None:
        text = self.text
        while True:
            start = text.find(_LEFT_DELIM, self.pos)
            if start < 0:
                if self.pos < len(text):
                    self._emit(_Kind.TEXT, text[self.pos :], self.pos)
                return
            trim = _has_left_trim(text, start + len(_LEFT_DELIM))
            end = start
            if trim:
                end = self.pos + len(text[self.pos : start].rstrip(_SPACE_CHARS))
            if end > self.pos:
                self._emit(_Kind.TEXT, text[self.pos : end], self.pos)
            self.pos = start
            self._lex_action(trim)

    def _at_right_delim(self, i: int) -> tuple[bool, bool]:
        """(at a right delimiter, it carries a trim marker)."""
        if _has_right_trim(self.text, i) and self.text.startswith(_RIGHT_DELIM, i + 2):
            return True, True
        return self.text.startswith(_RIGHT_DELIM, i), False

    def _at_terminator(self, i: int) -> bool:
        text = self.text
        if i >= len(text) or text[i] in _SPACE_CHARS or text[i] in ".,|:()":
            return True
        return text.startswith(_RIGHT_DELIM, i)

    def _lex_action(self, trim_left: bool) -> None:
        text = self.text
        start = self.pos
        self.pos += len(_LEFT_DELIM)
        after_marker = 2 if trim_left else 0
        if text.startswith(_LEFT_COMMENT, self.pos + after_marker):
            self._lex_comment(start, self.pos + after_marker)
            return
        self._emit(_Kind.LEFT_DELIM, _LEFT_DELIM, start)
        self.pos += after_marker
        depth = 0
        while True:
            delim, trim = self._at_right_delim(self.pos)
            if delim:
                if depth:
                    raise _LexError("unclosed left paren", self.pos)
                if trim:
                    self.pos += 2
                self._emit(_Kind.RIGHT_DELIM, _RIGHT_DELIM, self.pos)
                self.pos += len(_RIGHT_DELIM)
                if trim:
                    self.pos = _skip_space(text, self.pos)
                return
            if self.pos >= len(text):
                raise _LexError("unclosed action", self.pos)
            c = text[self.pos]
            if c in _SPACE_CHARS:
                self._lex_space()
            elif c == "=":
                self._single(_Kind.ASSIGN)
            elif c == ":":
                if not text.startswith(":=", self.pos):
                    raise _LexError("expected :=", self.pos)
                self._emit(_Kind.DECLARE, ":=", self.pos)
                self.pos += 2
            elif c == "|":
                self._single(_Kind.PIPE)
            elif c == '"':
                self._lex_quote('"', "unterminated quoted string", _Kind.STRING)
            elif c == "'":
                self._lex_quote("'", "unterminated character constant", _Kind.CHAR_CONSTANT)
            elif c == "`":
                end = text.find("`", self.pos + 1)
                if end < 0:
                    raise _LexError("unterminated raw quoted string", self.pos)
                self._emit(_Kind.RAW_STRING, text[self.pos : end + 1], self.pos)
                self.pos = end + 1
            elif c == "$":
                self._lex_field_or_variable(_Kind.VARIABLE)
            elif c == "." and self.pos + 1 < len(text) and not "0" <= text[self.pos + 1] <= "9":
                self._lex_field_or_variable(_Kind.FIELD)
            elif c in "+-." or "0" <= c <= "9":
                self._lex_number()
            elif _is_alnum(c):
                self._lex_identifier()
            elif c == "(":
                self._single(_Kind.LEFT_PAREN)
                depth += 1
            elif c == ")":
                self._single(_Kind.RIGHT_PAREN)
                depth -= 1
                if depth < 0:
                    raise _LexError("unexpected right paren", self.pos)
            elif c < "\x7f" and c.isprintable():
                self._single(_Kind.CHAR)
            else:
                raise _LexError(f"unrecognized character in action: {_go_rune_name(c)}", self.pos)

    def _single(self, kind: _Kind) -> None:
        self._emit(kind, self.text[self.pos], self.pos)
        self.pos += 1

    def _lex_comment(self, start: int, i: int) -> None:
        end = self.text.find(_RIGHT_COMMENT, i + len(_LEFT_COMMENT))
        if end < 0:
            raise _LexError("unclosed comment", start)
        i = end + len(_RIGHT_COMMENT)
        delim, trim = self._at_right_delim(i)
        if not delim:
            raise _LexError("comment ends before closing delimiter", start)
        i += (2 if trim else 0) + len(_RIGHT_DELIM)
        self.pos = _skip_space(self.text, i) if trim else i

    def _lex_space(self) -> None:
        text = self.text
        i = self.pos
        count = 0
        while i < len(text) and text[i] in _SPACE_CHARS:
            i += 1
            count += 1
        # " -}}": the last space belongs to the trim-marked delimiter
        if _has_right_trim(text, i - 1) and text.startswith(_RIGHT_DELIM, i + 1):
            i -= 1
            if count == 1:
                return
        self._emit(_Kind.SPACE, text[self.pos : i], self.pos)
        self.pos = i

    def _lex_quote(self, quote: str, message: str, kind: _Kind) -> None:
        text = self.text
        i = self.pos + 1
        while True:
            if i >= len(text) or text[i] == "\n":
                raise _LexError(message, self.pos)
            if text[i] == "\\":
                i += 1
                if i >= len(text) or text[i] == "\n":
                    raise _LexError(message, self.pos)
            elif text[i] == quote:
                break
            i += 1
        self._emit(kind, text[self.pos : i + 1], self.pos)
        self.pos = i + 1

    def _lex_field_or_variable(self, kind: _Kind) -> None:
        text = self.text
        i = self.pos + 1
        if self._at_terminator(i):  # a bare "$" or "."
            self._emit(_Kind.VARIABLE if kind is _Kind.VARIABLE else _Kind.DOT, text[self.pos], self.pos)
            self.pos = i
            return
        while i < len(text) and _is_alnum(text[i]):
            i += 1
        if not self._at_terminator(i):
            raise _LexError(f"bad character {_go_rune_name(text[i])}", self.pos)
        self._emit(kind, text[self.pos : i], self.pos)
        self.pos = i

    def _lex_identifier(self) -> None:
        text = self.text
        i = self.pos
        while i < len(text) and _is_alnum(text[i]):
            i += 1
        if not self._at_terminator(i):
            raise _LexError(f"bad character {_go_rune_name(text[i])}", self.pos)
        word = text[self.pos : i]
        kind = _KEYWORDS.get(word) or (_Kind.BOOL if word in ("true", "false") else _Kind.IDENTIFIER)
        self._emit(kind, word, self.pos)
        self.pos = i

    def _lex_number(self) -> None:
        text = self.text
        end, ok = self._scan_number(self.pos)
        if not ok:
            raise _LexError(f"bad number syntax: {_go_quote(text[self.pos : end])}", self.pos)
        if end < len(text) and text[end] in "+-":  # complex: 1+2i
            end, ok = self._scan_number(end)
            if not ok or text[end - 1] != "i":
                raise _LexError(f"bad number syntax: {_go_quote(text[self.pos : end])}", self.pos)
            self._emit(_Kind.COMPLEX, text[self.pos : end], self.pos)
        else:
            self._emit(_Kind.NUMBER, text[self.pos : end], self.pos)
        self.pos = end

    def _scan_number(self, i: int) -> tuple[int, bool]:
        text = self.text

        def accept(valid: str) -> bool:
            nonlocal i
            if i < len(text) and text[i] in valid:
                i += 1
                return True
            return False

        def accept_run(valid: str) -> None:
            nonlocal i
            while i < len(text) and text[i] in valid:
                i += 1

        accept("+-")
        digits = "0123456789_"
        if accept("0"):
            if accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif accept("oO"):
                digits = "01234567_"
            elif accept("bB"):
                digits = "01_"
        accept_run(digits)
        if accept("."):
            accept_run(digits)
        if len(digits) == 11 and accept("eE"):
            accept("+-")
            accept_run("0123456789_")
        if len(digits) == 23 and accept("pP"):
            accept("+-")
            accept_run("0123456789_")
        accept("i")
        if i < len(text) and _is_alnum(text[i]):
            return i + 1, False
        return i, True


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """A parsed template node; ``pos`` is its offset in the source text."""

    pos: int


@dataclass(frozen=True, slots=True)
class TextNode(Node):
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class FieldNode(Node):
    ident: tuple[str, ...]

    def __str__(self) -> str:
        return "".join("." + name for name in self.ident)


@dataclass(frozen=True, slots=True)
class VariableNode(Node):
    ident: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.ident)


@dataclass(frozen=True, slots=True)
class IdentifierNode(Node):
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class DotNode(Node):
    def __str__(self) -> str:
        return "."


@dataclass(frozen=True, slots=True)
class NilNode(Node):
    def __str__(self) -> str:
        return "nil"


@dataclass(frozen=True, slots=True)
class BoolNode(Node):
    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(frozen=True, slots=True)
class NumberNode(Node):
    value: int | float
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class StringNode(Node):
    value: str
    quoted: str

    def __str__(self) -> str:
        return self.quoted


@dataclass(frozen=True, slots=True)
class CommandNode(Node):
    args: tuple[Node, ...]

    def __str__(self) -> str:
        return " ".join(f"({arg})" if isinstance(arg, PipeNode) else str(arg) for arg in self.args)


@dataclass(frozen=True, slots=True)
class PipeNode(Node):
    decl: tuple[VariableNode, ...]
    is_assign: bool
    cmds: tuple[CommandNode, ...]

    def __str__(self) -> str:
        head = ""
        if self.decl:
            head = ", ".join(map(str, self.decl)) + (" = " if self.is_assign else " := ")
        return head + " | ".join(map(str, self.cmds))


@dataclass(frozen=True, slots=True)
class ChainNode(Node):
    node: Node
    field: tuple[str, ...]

    def __str__(self) -> str:
        base = f"({self.node})" if isinstance(self.node, PipeNode) else str(self.node)
        return base + "".join("." + name for name in self.field)


@dataclass(frozen=True, slots=True)
class ListNode(Node):
    nodes: tuple[Node, ...]

    def __str__(self) -> str:
        return "".join(map(str, self.nodes))


@dataclass(frozen=True, slots=True)
class ActionNode(Node):
    pipe: PipeNode

    def __str__(self) -> str:
        return f"{{{{{self.pipe}}}}}"


@dataclass(frozen=True, slots=True)
class BranchNode(Node):
    """Common shape of if, range and with."""

    pipe: PipeNode
    list: ListNode
    else_list: ListNode | None

    keyword = ""

    def __str__(self) -> str:
        tail = f"{{{{else}}}}{self.else_list}" if self.else_list is not None else ""
        return f"{{{{{self.keyword} {self.pipe}}}}}{self.list}{tail}{{{{end}}}}"


@dataclass(frozen=True, slots=True)
class IfNode(BranchNode):
    keyword = "if"


@dataclass(frozen=True, slots=True)
class RangeNode(BranchNode):
    keyword = "range"


@dataclass(frozen=True, slots=True)
class WithNode(BranchNode):
    keyword = "with"


@dataclass(frozen=True, slots=True)
class BreakNode(Node):
    def __str__(self) -> str:
        return "{{break}}"


@dataclass(frozen=True, slots=True)
class ContinueNode(Node):
    def __str__(self) -> str:
        return "{{continue}}"


@dataclass(frozen=True, slots=True)
class TemplateNode(Node):
    name: str
    pipe: PipeNode | None

    def __str__(self) -> str:
        if self.pipe is None:
            return f"{{{{template {_go_quote(self.name)}}}}}"
        return f"{{{{template {_go_quote(self.name)} {self.pipe}}}}}"


@dataclass(frozen=True, slots=True)
class _EndMarker(Node):
    def __str__(self) -> str:
        return "{{end}}"


@dataclass(frozen=True, slots=True)
class _ElseMarker(Node):
    def __str__(self) -> str:
        return "{{else}}"


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------

_OPERAND_START = frozenset(
    {
        _Kind.BOOL,
        _Kind.CHAR_CONSTANT,
        _Kind.COMPLEX,
        _Kind.DOT,
        _Kind.FIELD,
        _Kind.IDENTIFIER,
        _Kind.NUMBER,
        _Kind.NIL,
        _Kind.RAW_STRING,
        _Kind.STRING,
        _Kind.VARIABLE,
        _Kind.LEFT_PAREN,
    }
)


class _Parser:
    """Builds the node tree from tokens, with Go's parse-time checks and error wording."""

    def __init__(self, tokens: list[_Token], name: str = "") -> None:
        self.tokens = tokens
        self.name = name
        self.i = 0
        self.last = tokens[0]
        self.defs: dict[str, ListNode] = {}
        self.vars: list[str] = ["$"]
        self.range_depth = 0

    # token stream ---------------------------------------------------------------------------

    def next(self) -> _Token:
        tok = self.tokens[min(self.i, len(self.tokens) - 1)]
        self.i += 1
        self.last = tok
        if tok.kind is _Kind.ERROR:
            raise self.error(tok.val)
        return tok

    def backup(self) -> None:
        self.i -= 1

    def peek(self) -> _Token:
        tok = self.next()
        self.backup()
        return tok

    def next_non_space(self) -> _Token:
        while True:
            tok = self.next()
            if tok.kind is not _Kind.SPACE:
                return tok

    def peek_non_space(self) -> _Token:
        tok = self.next_non_space()
        self.backup()
        return tok

    def expect(self, kind: _Kind, context: str) -> _Token:
        tok = self.next_non_space()
        if tok.kind is not kind:
            raise self.unexpected(tok, context)
        return tok

    def error(self, message: str) -> TemplateError:
        return TemplateError(f"template: {self.name}:{self.last.line}: {message}")

    def unexpected(self, tok: _Token, context: str) -> TemplateError:
        if tok.kind is _Kind.ERROR:
            return self.error(tok.val)
        return self.error(f"unexpected {tok} in {context}")

    # structure ------------------------------------------------------------------------------

    def parse(self) -> tuple[ListNode, dict[str, ListNode]]:
        nodes: list[Node] = []
        while self.peek().kind is not _Kind.EOF:
            if self.peek().kind is _Kind.LEFT_DELIM:
                mark = self.i
                self.next()
                if self.next_non_space().kind is _Kind.DEFINE:
                    self.parse_definition()
                    continue
                self.i = mark
            node = self.text_or_action()
            if isinstance(node, (_EndMarker, _ElseMarker)):
                raise self.error(f"unexpected {node}")
            nodes.append(node)
        return ListNode(0, tuple(nodes)), self.defs

    def parse_definition(self) -> None:
        context = "define clause"
        tok = self.next_non_space()
        if tok.kind not in (_Kind.STRING, _Kind.RAW_STRING):
            raise self.unexpected(tok, context)
        name = self.unquote(tok)
        self.expect(_Kind.RIGHT_DELIM, context)
        self.add_definition(name, self.subtree(context))

    def subtree(self, context: str) -> ListNode:
        """Parse a define/block body: a new tree, with its own variables and no enclosing range."""
        saved = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        try:
            body, end = self.item_list()
        finally:
            self.vars, self.range_depth = saved
        if not isinstance(end, _EndMarker):
            raise self.error(f"unexpected {end} in {context}")
        return body

    def add_definition(self, name: str, body: ListNode) -> None:
        old = self.defs.get(name)
        if old is not None and not _is_empty(old):
            if not _is_empty(body):
                raise self.error(f"template: multiple definition of template {_go_quote(name)}")
            return
        self.defs[name] = body

    def item_list(self) -> tuple[ListNode, Node]:
        pos = self.peek().pos
        nodes: list[Node] = []
        while self.peek_non_space().kind is not _Kind.EOF:
            node = self.text_or_action()
            if isinstance(node, (_EndMarker, _ElseMarker)):
                return ListNode(pos, tuple(nodes)), node
            nodes.append(node)
        raise self.error("unexpected EOF")

    def text_or_action(self) -> Node:
        tok = self.next_non_space()
        if tok.kind is _Kind.TEXT:
            return TextNode(tok.pos, tok.val)
        if tok.kind is _Kind.LEFT_DELIM:
            return self.action()
        raise self.unexpected(tok, "input")

    def action(self) -> Node:
        tok = self.next_non_space()
        match tok.kind:
            case _Kind.BLOCK:
                return self.block_control()
            case _Kind.BREAK | _Kind.CONTINUE:
                return self.loop_control(tok)
            case _Kind.ELSE:
                return self.else_control()
            case _Kind.END:
                return _EndMarker(self.expect(_Kind.RIGHT_DELIM, "end").pos)
            case _Kind.IF:
                return IfNode(*self.parse_control("if"))
            case _Kind.RANGE:
                return RangeNode(*self.parse_control("range"))
            case _Kind.TEMPLATE:
                return self.template_control()
            case _Kind.WITH:
                return WithNode(*self.parse_control("with"))
        self.backup()
        return ActionNode(self.peek().pos, self.pipeline("command", _Kind.RIGHT_DELIM))

    def loop_control(self, keyword: _Token) -> Node:
        tok = self.next_non_space()
        if tok.kind is not _Kind.RIGHT_DELIM:
            raise self.unexpected(tok, f"{{{{{keyword.val}}}}}")
        if self.range_depth == 0:
            raise self.error(f"{{{{{keyword.val}}}}} outside {{{{range}}}}")
        return BreakNode(keyword.pos) if keyword.kind is _Kind.BREAK else ContinueNode(keyword.pos)

    def else_control(self) -> Node:
        peek = self.peek_non_space()
        if peek.kind in (_Kind.IF, _Kind.WITH):  # "else if" / "else with": the keyword stays pending
            return _ElseMarker(peek.pos)
        return _ElseMarker(self.expect(_Kind.RIGHT_DELIM, "else").pos)

    def parse_control(self, context: str) -> tuple[int, PipeNode, ListNode, ListNode | None]:
        saved_vars = len(self.vars)
        try:
            pipe = self.pipeline(context, _Kind.RIGHT_DELIM)
            if context == "range":
                self.range_depth += 1
            body, nxt = self.item_list()
            if context == "range":
                self.range_depth -= 1
            else_list: ListNode | None = None
            if isinstance(nxt, _ElseMarker):
                chained = {"if": _Kind.IF, "with": _Kind.WITH}.get(context)
                if chained is not None and self.peek().kind is chained:
                    self.next()
                    inner: Node = IfNode(*self.parse_control("if")) if chained is _Kind.IF else WithNode(
                        *self.parse_control("with")
                    )
                    else_list = ListNode(nxt.pos, (inner,))
                else:
                    else_list, end = self.item_list()
                    if not isinstance(end, _EndMarker):
                        raise self.error(f"expected end; found {end}")
            return pipe.pos, pipe, body, else_list
        finally:
            del self.vars[saved_vars:]

    def template_control(self) -> Node:
        context = "template clause"
        tok = self.next_non_space()
        name = self.template_name(tok, context)
        pipe: PipeNode | None = None
        if self.next_non_space().kind is not _Kind.RIGHT_DELIM:
            self.backup()
            pipe = self.pipeline(context, _Kind.RIGHT_DELIM)
        return TemplateNode(tok.pos, name, pipe)

    def block_control(self) -> Node:
        context = "block clause"
        tok = self.next_non_space()
        name = self.template_name(tok, context)
        pipe = self.pipeline(context, _Kind.RIGHT_DELIM)
        self.add_definition(name, self.subtree(context))
        return TemplateNode(tok.pos, name, pipe)

    def template_name(self, tok: _Token, context: str) -> str:
        if tok.kind not in (_Kind.STRING, _Kind.RAW_STRING):
            raise self.unexpected(tok, context)
        return self.unquote(tok)

    # pipelines ------------------------------------------------------------------------------

    def pipeline(self, context: str, end: _Kind) -> PipeNode:
        pos = self.peek_non_space().pos
        decl: list[VariableNode] = []
        is_assign = False
        while self.peek_non_space().kind is _Kind.VARIABLE:
            mark = self.i
            var = self.next_non_space()
            nxt = self.peek_non_space()
            if nxt.kind in (_Kind.ASSIGN, _Kind.DECLARE):
                is_assign = nxt.kind is _Kind.ASSIGN
                self.next_non_space()
                decl.append(VariableNode(var.pos, (var.val,)))
                self.vars.append(var.val)
                break
            if nxt.kind is _Kind.CHAR and nxt.val == ",":
                self.next_non_space()
                decl.append(VariableNode(var.pos, (var.val,)))
                self.vars.append(var.val)
                if context == "range" and len(decl) < 2:
                    if self.peek_non_space().kind in (_Kind.VARIABLE, _Kind.RIGHT_DELIM, _Kind.RIGHT_PAREN):
                        continue
                    raise self.error("range can only initialize variables")
                raise self.error(f"too many declarations in {context}")
            self.i = mark
            break
        cmds: list[CommandNode] = []
        while True:
            tok = self.next_non_space()
            if tok.kind is end:
                self.check_pipeline(cmds, context)
                return PipeNode(pos, tuple(decl), is_assign, tuple(cmds))
            if tok.kind not in _OPERAND_START:
                raise self.unexpected(tok, context)
            self.backup()
            cmds.append(self.command())

    def check_pipeline(self, cmds: list[CommandNode], context: str) -> None:
        if not cmds:
            raise self.error(f"missing value for {context}")
        for i, cmd in enumerate(cmds[1:], start=2):
            if isinstance(cmd.args[0], (BoolNode, DotNode, NilNode, NumberNode, StringNode)):
                raise self.error(f"non executable command in pipeline stage {i}")

    def command(self) -> CommandNode:
        pos = self.peek_non_space().pos
        args: list[Node] = []
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind is _Kind.SPACE:
                continue
            if tok.kind in (_Kind.RIGHT_DELIM, _Kind.RIGHT_PAREN):
                self.backup()
            elif tok.kind is not _Kind.PIPE:
                raise self.unexpected(tok, "operand")
            break
        if not args:
            raise self.error("empty command")
        return CommandNode(pos, tuple(args))

    def operand(self) -> Node | None:
        node = self.term()
        if node is None or self.peek().kind is not _Kind.FIELD:
            return node
        pos = self.peek().pos
        fields: list[str] = []
        while self.peek().kind is _Kind.FIELD:
            fields.append(self.next().val[1:])
        if isinstance(node, FieldNode):
            return FieldNode(pos, node.ident + tuple(fields))
        if isinstance(node, VariableNode):
            return VariableNode(pos, node.ident + tuple(fields))
        if isinstance(node, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
            raise self.error(f"unexpected . after term {_go_quote(str(node))}")
        return ChainNode(pos, node, tuple(fields))

    def term(self) -> Node | None:
        tok = self.next_non_space()
        match tok.kind:
            case _Kind.IDENTIFIER:
                if tok.val not in _FUNCS:
                    raise self.error(f"function {_go_quote(tok.val)} not defined")
                return IdentifierNode(tok.pos, tok.val)
            case _Kind.DOT:
                return DotNode(tok.pos)
            case _Kind.NIL:
                return NilNode(tok.pos)
            case _Kind.VARIABLE:
                if tok.val not in self.vars:
                    raise self.error(f"undefined variable {_go_quote(tok.val)}")
                return VariableNode(tok.pos, (tok.val,))
            case _Kind.FIELD:
                return FieldNode(tok.pos, (tok.val[1:],))
            case _Kind.BOOL:
                return BoolNode(tok.pos, tok.val == "true")
            case _Kind.CHAR_CONSTANT | _Kind.COMPLEX | _Kind.NUMBER:
                return NumberNode(tok.pos, self.number(tok), tok.val)
            case _Kind.LEFT_PAREN:
                return self.pipeline("parenthesized pipeline", _Kind.RIGHT_PAREN)
            case _Kind.STRING | _Kind.RAW_STRING:
                return StringNode(tok.pos, self.unquote(tok), tok.val)
        self.backup()
        return None

    def unquote(self, tok: _Token) -> str:
        try:
            return _unquote(tok.val)
        except ValueError:
            raise self.error("invalid syntax") from None

    def number(self, tok: _Token) -> int | float:
        text = tok.val
        if tok.kind is _Kind.CHAR_CONSTANT:
            try:
                return _unquote_char(text)
            except ValueError:
                raise self.error(f"malformed character constant: {text}") from None
        if tok.kind is _Kind.COMPLEX or text.endswith("i"):
            raise self.error(f"complex constants are not supported: {text}")
        try:
            return _go_number(text)
        except ValueError:
            raise self.error(f"illegal number syntax: {_go_quote(text)}") from None


def _go_number(text: str) -> int | float:
    """A Go number literal as the value text/template passes to functions (its ideal constant)."""
    is_hex = text.lstrip("+-")[:2] in ("0x", "0X")
    if any(c in text for c in ".eEpP") and not (is_hex and not any(c in text for c in ".pP")):
        if is_hex:
            return float.fromhex(text.replace("_", ""))
        return float(text.replace("_", ""))
    return _go_int(text)  # "09" is neither octal nor a float literal: Go rejects it too


def _go_int(text: str) -> int:
    body = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    if len(text) - len(body) > 1 or not body:
        raise ValueError(text)
    if len(body) > 1 and body[0] == "0" and body[1] not in "xXoObB":
        return sign * int("0o" + body[1:], 0)  # Go: a leading 0 means octal
    return sign * int(body, 0)


_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}


def _unescape(body: str, i: int, quote: str) -> tuple[int, int, bool]:
    """Decode the escape after a backslash at ``body[i-1]``: (value, next index, value is a byte)."""
    if i >= len(body):
        raise ValueError("invalid syntax")
    c = body[i]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 1, False
    if c in "'\"":
        if c != quote:
            raise ValueError("invalid syntax")
        return ord(c), i + 1, False
    if c in "xuU":
        size = {"x": 2, "u": 4, "U": 8}[c]
        digits = body[i + 1 : i + 1 + size]
        if len(digits) != size or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise ValueError("invalid syntax")
        value = int(digits, 16)
        if c != "x" and (value > 0x10FFFF or 0xD800 <= value <= 0xDFFF):
            raise ValueError("invalid syntax")
        return value, i + 1 + size, c == "x"
    if c in "01234567":
        digits = body[i : i + 3]
        if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
            raise ValueError("invalid syntax")
        return int(digits, 8), i + 3, True
    raise ValueError("invalid syntax")


def _unquote(token: str) -> str:
    """Go's strconv.Unquote for "..." and `...` string literals."""
    quote = token[:1]
    if len(token) < 2 or quote not in "\"`" or token[-1] != quote:
        raise ValueError("invalid syntax")
    body = token[1:-1]
    if quote == "`":
        if "`" in body:
            raise ValueError("invalid syntax")
        return body.replace("\r", "")
    buf = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c == quote or c == "\n":
            raise ValueError("invalid syntax")
        if c != "\\":
            buf += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        value, i, is_byte = _unescape(body, i + 1, quote)
        if is_byte:
            buf.append(value)
        else:
            buf += chr(value).encode("utf-8", "surrogatepass")
    return buf.decode("utf-8", "replace")


def _unquote_char(token: str) -> int:
    """Go's character constant ('a', '\\n', '\\x41') as its rune value."""
    if len(token) < 3 or token[0] != "'" or token[-1] != "'":
        raise ValueError(token)
    body = token[1:-1]
    if body[0] == "\\":
        value, end, _ = _unescape(body, 1, "'")
    else:
        value, end = ord(body[0]), 1
    if end != len(body):
        raise ValueError(token)
    return value


def _is_empty(node: Node) -> bool:
    """Go's parse.IsEmptyTree: only whitespace text."""
    if isinstance(node, ListNode):
        return all(_is_empty(n) for n in node.nodes)
    return isinstance(node, TextNode) and not node.text.strip(_SPACE_CHARS)


# --------------------------------------------------------------------------------------------
# Tree walks used by Ollama: identifiers (Vars) and the legacy cut at .Response
# --------------------------------------------------------------------------------------------


def _identifiers(node: Node | None) -> Iterator[str]:
    """Ollama's template.Identifiers: field and variable names, walking conditions and bodies."""
    match node:
        case ListNode():
            for child in node.nodes:
                yield from _identifiers(child)
        case ActionNode() | TemplateNode():
            yield from _identifiers(node.pipe)
        case BranchNode():
            yield from _identifiers(node.pipe)
            yield from _identifiers(node.list)
            yield from _identifiers(node.else_list)
        case PipeNode():
            for cmd in node.cmds:
                for arg in cmd.args:
                    yield from _identifiers(arg)
        case FieldNode() | VariableNode():
            yield from node.ident


def _response_action(pos: int) -> ActionNode:
    field = FieldNode(pos, ("Response",))
    return ActionNode(pos, PipeNode(pos, (), False, (CommandNode(pos, (field,)),)))


def _cut_after_response(root: ListNode) -> ListNode:
    """Ollama's deleteNode: keep the tree up to the first ``.Response`` field in an action.

    Like Ollama, if/range/with conditions are not searched, the ``.Response`` field itself is
    kept, and every node met after it is dropped (a dropped else branch becomes no else).
    """
    cut = False

    def walk(node: Node) -> Node | None:
        nonlocal cut
        if isinstance(node, FieldNode) and "Response" in node.ident:
            cut = True
            return node
        if cut:
            return None
        match node:
            case ListNode():
                kept = tuple(n for n in map(walk, node.nodes) if n is not None)
                return dataclasses.replace(node, nodes=kept)
            case BranchNode():
                body = walk(node.list)
                rest = walk(node.else_list) if node.else_list is not None else None
                return dataclasses.replace(
                    node,
                    list=body if isinstance(body, ListNode) else ListNode(node.list.pos, ()),
                    else_list=rest if isinstance(rest, ListNode) else None,
                )
            case ActionNode():
                pipe = walk(node.pipe)
                return dataclasses.replace(node, pipe=pipe) if isinstance(pipe, PipeNode) else None
            case PipeNode():
                cmds: list[CommandNode] = []
                for cmd in node.cmds:
                    args = tuple(a for a in map(walk, cmd.args) if a is not None)
                    if not args:
                        return None
                    cmds.append(dataclasses.replace(cmd, args=args))
                return dataclasses.replace(node, cmds=tuple(cmds))
        return node

    result = walk(root)
    return result if isinstance(result, ListNode) else ListNode(root.pos, ())


# --------------------------------------------------------------------------------------------
# Executor
# --------------------------------------------------------------------------------------------


class _Missing:
    """Go's missingVal: no value piped in from a previous command."""


_MISSING: Any = _Missing()


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _FuncError(Exception):
    """A builtin failed; reported as Go's "error calling NAME: ..."."""


class _ArgError(Exception):
    """A builtin got a wrong argument; reported without the "error calling" prefix."""


_BASIC_TYPES = (str, bytes, bytearray, int, float, complex, bool, list, tuple)


class _Executor:
    """Runs one tree of a template on data; one instance per execution."""

    def __init__(self, template: Template, out: list[str]) -> None:
        self.template = template
        self.out = out
        self.name = ""
        self.vars: list[list[Any]] = []
        self.depth = 0
        self.at: Node | None = None

    def run(self, root: ListNode, data: Any) -> None:
        self.vars = [["$", data]]
        self.walk(data, root)

    # errors ---------------------------------------------------------------------------------

    def error(self, message: str) -> TemplateError:
        if self.at is None:
            return TemplateError(f"template: {self.name}: {message}")
        text = self.template.text
        pos = min(self.at.pos, len(text))
        line_start = text.rfind("\n", 0, pos) + 1
        line = text.count("\n", 0, pos) + 1
        column = len(text[line_start:pos].encode("utf-8", "surrogatepass"))
        context = str(self.at)
        if len(context) > 20:
            context = context[:20] + "..."
        return TemplateError(
            f"template: {self.name}:{line}:{column}: executing {_go_quote(self.name)} at <{context}>: {message}"
        )

    # variables ------------------------------------------------------------------------------

    def var_value(self, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise self.error(f"undefined variable: {name}")

    def set_var(self, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise self.error(f"undefined variable: {name}")

    # statements -----------------------------------------------------------------------------

    def walk(self, dot: Any, node: Node) -> None:
        self.at = node
        match node:
            case TextNode():
                self.out.append(node.text)
            case ActionNode():
                value = self.eval_pipeline(dot, node.pipe)
                if not node.pipe.decl:
                    self.print_value(node, value)
            case ListNode():
                for child in node.nodes:
                    self.walk(dot, child)
            case RangeNode():
                self.walk_range(dot, node)
            case IfNode() | WithNode():
                mark = len(self.vars)
                try:
                    value = self.eval_pipeline(dot, node.pipe)
                    if _truth(value):
                        self.walk(value if isinstance(node, WithNode) else dot, node.list)
                    elif node.else_list is not None:
                        self.walk(dot, node.else_list)
                finally:
                    del self.vars[mark:]
            case TemplateNode():
                self.walk_template(dot, node)
            case BreakNode():
                raise _Break
            case ContinueNode():
                raise _Continue
            case _:
                raise self.error(f"unknown node: {node}")

    def walk_range(self, dot: Any, node: RangeNode) -> None:
        outer = len(self.vars)
        try:
            value = self.eval_pipeline(dot, node.pipe)
            mark = len(self.vars)
            decl, assign = node.pipe.decl, node.pipe.is_assign
            ran = False
            try:
                for index, elem in self.range_items(value, len(decl)):
                    ran = True
                    if decl:
                        if assign:
                            self.set_var(decl[0].ident[0], index if len(decl) > 1 else elem)
                        else:
                            self.vars[-1][1] = elem
                    if len(decl) > 1:
                        if assign:
                            self.set_var(decl[1].ident[0], elem)
                        else:
                            self.vars[-2][1] = index
                    try:
                        self.walk(elem, node.list)
                    except _Continue:
                        pass
                    finally:
                        del self.vars[mark:]
            except _Break:
                return
            if not ran and node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            del self.vars[outer:]

    def range_items(self, value: Any, n_decl: int) -> Iterator[tuple[Any, Any]]:
        if value is None:
            return iter(())
        if isinstance(value, int) and not isinstance(value, bool):
            if n_decl > 1:
                raise self.error(f"can't use {_format_v(value)} to iterate over more than one variable")
            return ((i, i) for i in range(value))
        if isinstance(value, Mapping):
            return ((key, value[key]) for key in _sorted_keys(value))
        if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
            raise self.error(f"range can't iterate over {_format_v(value)}")
        return enumerate(value)

    def walk_template(self, dot: Any, node: TemplateNode) -> None:
        tree = self.template._defs.get(node.name)
        if tree is None:
            raise self.error(f"template {_go_quote(node.name)} not defined")
        if self.depth >= _MAX_TEMPLATE_DEPTH:
            raise self.error(f"exceeded maximum template depth ({_MAX_TEMPLATE_DEPTH})")
        new_dot = self.eval_pipeline(dot, node.pipe)
        saved = self.vars, self.name
        self.vars, self.name = [["$", new_dot]], node.name
        self.depth += 1
        try:
            self.walk(new_dot, tree)
        finally:
            self.vars, self.name = saved
            self.depth -= 1

    def print_value(self, node: Node, value: Any) -> None:
        self.at = node
        if value is None:
            self.out.append("<no value>")
        elif inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
            raise self.error(f"can't print {node} of type {_go_type(value)}")
        else:
            self.out.append(_format_v(value))

    # expressions ----------------------------------------------------------------------------

    def eval_pipeline(self, dot: Any, pipe: PipeNode | None) -> Any:
        if pipe is None:
            return None
        self.at = pipe
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        for var in pipe.decl:
            if pipe.is_assign:
                self.set_var(var.ident[0], value)
            else:
                self.vars.append([var.ident[0], value])
        return value

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        match first:
            case FieldNode():
                return self.eval_field_chain(dot, dot, first, first.ident, cmd.args, final)
            case ChainNode():
                return self.eval_chain(dot, first, cmd.args, final)
            case IdentifierNode():
                return self.eval_function(dot, first, cmd, cmd.args, final)
            case PipeNode():
                self.not_a_function(cmd.args, final)
                return self.eval_pipeline(dot, first)
            case VariableNode():
                return self.eval_variable(dot, first, cmd.args, final)
        self.at = first
        self.not_a_function(cmd.args, final)
        match first:
            case BoolNode() | NumberNode() | StringNode():
                return first.value
            case DotNode():
                return dot
            case NilNode():
                raise self.error("nil is not a command")
        raise self.error(f"can't evaluate command {first}")

    def not_a_function(self, args: Sequence[Node], final: Any) -> None:
        if len(args) > 1 or final is not _MISSING:
            raise self.error(f"can't give argument to non-function {args[0]}")

    def eval_arg(self, dot: Any, node: Node) -> Any:
        self.at = node
        match node:
            case DotNode():
                return dot
            case NilNode():
                return None
            case FieldNode():
                return self.eval_field_chain(dot, dot, node, node.ident, (node,), _MISSING)
            case VariableNode():
                return self.eval_variable(dot, node, (node,), _MISSING)
            case PipeNode():
                return self.eval_pipeline(dot, node)
            case IdentifierNode():
                return self.eval_function(dot, node, node, (node,), _MISSING)
            case ChainNode():
                return self.eval_chain(dot, node, (), _MISSING)
            case BoolNode() | NumberNode() | StringNode():
                return node.value
        raise self.error(f"can't handle {node} for arg")

    def eval_variable(self, dot: Any, node: VariableNode, args: Sequence[Node], final: Any) -> Any:
        self.at = node
        value = self.var_value(node.ident[0])
        if len(node.ident) == 1:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(dot, value, node, node.ident[1:], args, final)

    def eval_chain(self, dot: Any, node: ChainNode, args: Sequence[Node], final: Any) -> Any:
        self.at = node
        if isinstance(node.node, NilNode):
            raise self.error(f"indirection through explicit nil in {node}")
        receiver = self.eval_arg(dot, node.node)
        self.at = node
        return self.eval_field_chain(dot, receiver, node, node.field, args, final)

    def eval_field_chain(
        self, dot: Any, receiver: Any, node: Node, ident: Sequence[str], args: Sequence[Node], final: Any
    ) -> Any:
        self.at = node
        for i, name in enumerate(ident[:-1]):
            receiver = self.eval_field(dot, name, node, (), _MISSING, receiver, first=i == 0)
        return self.eval_field(dot, ident[-1], node, args, final, receiver, first=len(ident) == 1)

    def eval_field(
        self, dot: Any, name: str, node: Node, args: Sequence[Node], final: Any, receiver: Any, *, first: bool
    ) -> Any:
        if receiver is None:
            if first:  # nil data or a nil variable: Go yields no value
                return None
            raise self.error(f"nil pointer evaluating interface {{}}.{name}")
        has_args = len(args) > 1 or final is not _MISSING
        if isinstance(receiver, Mapping):
            if has_args:
                raise self.error(f"{name} is not a method but has arguments")
            return _lookup_key(receiver, name)
        if not isinstance(receiver, _BASIC_TYPES):
            found, attr = _lookup_attr(receiver, name)
            if found:
                if inspect.ismethod(attr) or inspect.isbuiltin(attr):
                    return self.call(dot, attr, node, name, args, final)
                if has_args:
                    raise self.error(f"{name} has arguments but cannot be invoked as function")
                return attr
        raise self.error(f"can't evaluate field {name} in type {_go_type(receiver)}")

    def call(self, dot: Any, fn: Callable[..., Any], node: Node, name: str, args: Sequence[Node], final: Any) -> Any:
        argv = [self.eval_arg(dot, arg) for arg in args[1:]]
        if final is not _MISSING:
            argv.append(final)
        self.at = node
        try:
            return fn(*argv)
        except TemplateError:
            raise
        except Exception as exc:  # a Go method returning an error
            raise self.error(f"error calling {name}: {exc}") from exc

    def eval_function(self, dot: Any, ident: IdentifierNode, cmd: Node, args: Sequence[Node], final: Any) -> Any:
        self.at = ident
        name = ident.name
        spec = _FUNCS.get(name)
        if spec is None:
            raise self.error(f"{_go_quote(name)} is not a defined function")
        given = len(args) - 1
        count = given + (final is not _MISSING)
        if spec.variadic and count < spec.arity:
            raise self.error(f"wrong number of args for {name}: want at least {spec.arity} got {given}")
        if not spec.variadic and count != spec.arity:
            raise self.error(f"wrong number of args for {name}: want {spec.arity} got {count}")
        self.at = cmd
        if name in ("and", "or"):  # short-circuit: return the deciding value itself
            value: Any = None
            for arg in args[1:]:
                value = self.eval_arg(dot, arg)
                if _truth(value) == (name == "or"):
                    return value
            return final if final is not _MISSING else value
        argv = [self.eval_arg(dot, arg) for arg in args[1:]]
        if final is not _MISSING:
            argv.append(final)
        self.at = cmd
        try:
            return spec.fn(*argv)
        except _ArgError as exc:
            raise self.error(str(exc)) from None
        except _FuncError as exc:
            raise self.error(f"error calling {name}: {exc}") from None


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def _lookup_key(mapping: Mapping[Any, Any], name: str) -> Any:
    if name in mapping:
        return mapping[name]
    wanted = name.lower()
    for key in mapping:
        if isinstance(key, str) and _norm(key) == wanted:
            return mapping[key]
    return None


def _lookup_attr(obj: Any, name: str) -> tuple[bool, Any]:
    if name.startswith("_"):
        return False, None
    if hasattr(obj, name):
        return True, getattr(obj, name)
    wanted = name.lower()
    for attr in dir(obj):
        if not attr.startswith("_") and _norm(attr) == wanted:
            return True, getattr(obj, attr)
    return False, None


def _truth(value: Any) -> bool:
    """Go's truth: false, 0, nil, and empty strings, slices and maps are false."""
    if value is None:
        return False
    if isinstance(value, (bool, int, float, complex)):
        return value != 0
    if isinstance(value, Sized):
        return len(value) > 0
    return True


def _sorted_keys(mapping: Mapping[Any, Any]) -> list[Any]:
    try:
        return sorted(mapping)
    except TypeError:
        return list(mapping)


# --------------------------------------------------------------------------------------------
# Builtin functions
# --------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _index_arg(index: Any, cap: int) -> int:
    if index is None:
        raise _FuncError("cannot index slice/array with nil")
    if not _is_int(index):
        raise _FuncError(f"cannot index slice/array with type {_go_type(index)}")
    if index < 0 or index > cap:
        raise _FuncError(f"index out of range: {index}")
    return int(index)


def _fn_index(item: Any, *indexes: Any) -> Any:
    for index in indexes:
        if item is None:
            raise _FuncError("index of untyped nil")
        if isinstance(item, Mapping):
            try:
                item = item.get(index)
            except TypeError:
                raise _FuncError(f"value has type {_go_type(index)}; should be string") from None
        elif isinstance(item, (str, bytes, bytearray, Sequence)):
            seq = item.encode() if isinstance(item, str) else item
            position = _index_arg(index, len(seq))
            if position == len(seq):
                raise _FuncError(f"index out of range: {position}")
            item = seq[position]
        else:
            raise _FuncError(f"can't index item of type {_go_type(item)}")
    return item


def _fn_slice(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise _FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise _FuncError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _FuncError("cannot 3-index slice a string")
        seq: Any = item.encode()
    elif isinstance(item, (bytes, bytearray, Sequence)):
        seq = item
    else:
        raise _FuncError(f"can't slice item of type {_go_type(item)}")
    bounds = [0, len(seq), len(seq)]
    for i, index in enumerate(indexes):
        bounds[i] = _index_arg(index, len(seq))
    if bounds[0] > bounds[1]:
        raise _FuncError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    if len(indexes) == 3 and bounds[1] > bounds[2]:
        raise _FuncError(f"invalid slice index: {bounds[1]} > {bounds[2]}")
    part = seq[bounds[0] : bounds[1]]
    if isinstance(item, str):
        return part.decode("utf-8", "replace")
    return part if isinstance(part, (bytes, bytearray)) else list(part)


def _fn_len(item: Any) -> int:
    if item is None:
        raise _FuncError("len of nil pointer")
    if isinstance(item, str):
        return len(item.encode("utf-8", "surrogatepass"))
    if isinstance(item, (bytes, bytearray, Mapping, Sequence)) or hasattr(item, "__len__"):
        return len(item)
    raise _FuncError(f"len of type {_go_type(item)}")


def _fn_call(fn: Any, *args: Any) -> Any:
    if fn is None:
        raise _FuncError("call of nil")
    if not callable(fn):
        raise _FuncError(f"non-function of type {_go_type(fn)}")
    try:
        return fn(*args)
    except Exception as exc:
        raise _FuncError(str(exc)) from exc


def _basic_kind(value: Any) -> str:
    if value is None:
        return "invalid"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, complex):
        return "complex"
    if isinstance(value, str):
        return "string"
    return "other"


def _fn_eq(arg1: Any, *others: Any) -> bool:
    if not others:
        raise _FuncError("missing argument for comparison")
    kind1 = _basic_kind(arg1)
    for arg in others:
        kind2 = _basic_kind(arg)
        if kind1 != kind2:
            if arg1 is not None and arg is not None:
                raise _FuncError("incompatible types for comparison")
            continue
        if kind1 == "other":
            for value in (arg1, arg):
                if isinstance(value, (list, dict, set, bytearray, Mapping)):
                    raise _FuncError(f"non-comparable type {_format_v(value)}: {_go_type(value)}")
        if arg1 == arg:
            return True
    return False


def _fn_ne(arg1: Any, arg2: Any) -> bool:
    return not _fn_eq(arg1, arg2)


def _fn_lt(arg1: Any, arg2: Any) -> bool:
    kind1, kind2 = _basic_kind(arg1), _basic_kind(arg2)
    if kind1 in ("invalid", "other") or kind2 in ("invalid", "other"):
        raise _FuncError("invalid type for comparison")
    if kind1 != kind2:
        raise _FuncError("incompatible types for comparison")
    if kind1 in ("bool", "complex"):
        raise _FuncError("invalid type for comparison")
    return bool(arg1 < arg2)


def _fn_le(arg1: Any, arg2: Any) -> bool:
    return _fn_lt(arg1, arg2) or _fn_eq(arg1, arg2)


def _fn_gt(arg1: Any, arg2: Any) -> bool:
    return not _fn_le(arg1, arg2)


def _fn_ge(arg1: Any, arg2: Any) -> bool:
    return not _fn_lt(arg1, arg2)


def _fn_not(arg: Any) -> bool:
    return not _truth(arg)


def _eval_args(args: Sequence[Any]) -> str:
    """text/template's evalArgs: one string as is, otherwise fmt.Sprint with nil as <no value>."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return _sprint(["<no value>" if arg is None else arg for arg in args])


_HTML_ESCAPES = {'"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\0": "\ufffd"}
_JS_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "<": "\\u003C",
    ">": "\\u003E",
    "&": "\\u0026",
    "=": "\\u003D",
}


def _fn_html(*args: Any) -> str:
    return "".join(_HTML_ESCAPES.get(c, c) for c in _eval_args(args))


def _fn_js(*args: Any) -> str:
    out: list[str] = []
    for c in _eval_args(args):
        if c in _JS_ESCAPES:
            out.append(_JS_ESCAPES[c])
        elif c < " ":
            out.append(f"\\u{ord(c):04X}")
        elif c >= "\x80" and not c.isprintable():
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return "".join(out)


def _fn_urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_eval_args(args), safe="")


def _fn_print(*args: Any) -> str:
    return _sprint(args)


def _fn_println(*args: Any) -> str:
    return " ".join(_format_v(arg) for arg in args) + "\n"


def _fn_printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise _ArgError(f"wrong type for value; expected string; got {_go_type(fmt)}")
    return _sprintf(fmt, args)


def _fn_json(value: Any) -> str:
    """Ollama's json: Go's json.Marshal, or "" when the value cannot be encoded."""
    out: list[str] = []
    try:
        _json_encode(value, out)
    except _JSONUnsupported:
        return ""
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Func:
    fn: Callable[..., Any]
    arity: int  # exact, or the minimum when variadic
    variadic: bool


_FUNCS: dict[str, _Func] = {
    "and": _Func(lambda *a: None, 1, True),
    "or": _Func(lambda *a: None, 1, True),
    "not": _Func(_fn_not, 1, False),
    "len": _Func(_fn_len, 1, False),
    "index": _Func(_fn_index, 1, True),
    "slice": _Func(_fn_slice, 1, True),
    "call": _Func(_fn_call, 1, True),
    "eq": _Func(_fn_eq, 1, True),
    "ne": _Func(_fn_ne, 2, False),
    "lt": _Func(_fn_lt, 2, False),
    "le": _Func(_fn_le, 2, False),
    "gt": _Func(_fn_gt, 2, False),
    "ge": _Func(_fn_ge, 2, False),
    "print": _Func(_fn_print, 0, True),
    "printf": _Func(_fn_printf, 1, True),
    "println": _Func(_fn_println, 0, True),
    "html": _Func(_fn_html, 0, True),
    "js": _Func(_fn_js, 0, True),
    "urlquery": _Func(_fn_urlquery, 0, True),
    "json": _Func(_fn_json, 1, False),
}


# --------------------------------------------------------------------------------------------
# Go's fmt: %v printing, Sprint and a Sprintf subset
# --------------------------------------------------------------------------------------------


def _go_type(value: Any) -> str:
    if value is None:
        return "interface {}"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, complex):
        return "complex128"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bytes, bytearray)):
        return "[]uint8"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    if callable(value) and not isinstance(value, type):
        return "func"
    return type(value).__name__


_QUOTE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _go_quote(text: str, quote: str = '"', ascii_only: bool = False) -> str:
    """Go's strconv.Quote (QuoteToASCII with ascii_only, QuoteRune's quoting with quote="'")."""
    out = [quote]
    for c in text:
        code = ord(c)
        if c == quote or c == "\\":
            out.append("\\" + c)
        elif c.isprintable() and (code < 0x80 or not ascii_only):
            out.append(c)
        elif c in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[c])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append(quote)
    return "".join(out)


def _go_rune_name(c: str) -> str:
    """Go's %#U: U+0007, or U+00E9 'é' for printable runes."""
    name = f"U+{ord(c):04X}"
    return f"{name} '{c}'" if c.isprintable() else name


def _rune(code: int) -> str:
    if 0 <= code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
        return chr(code)
    return "\ufffd"


@dataclass(slots=True)
class _Spec:
    """Flags, width and precision of one printf verb."""

    minus: bool = False
    plus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    width: int | None = None
    prec: int | None = None


_PLAIN = _Spec()


def _pad(text: str, spec: _Spec) -> str:
    if spec.width is None or len(text) >= spec.width:
        return text
    fill = " " * (spec.width - len(text))
    return text + fill if spec.minus else fill + text


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of a finite value >= 0 and its point position."""
    if value == 0:
        return "0", 1
    _, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent
    return text.rstrip("0") or "0", point


def _digits_fixed(digits: str, point: int) -> str:
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def _digits_exp(digits: str, point: int, min_exp_digits: int = 2) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exp = point - 1
    return f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):0{min_exp_digits}d}"


def _float_shortest_g(value: float) -> str:
    """Go's %v / %g without precision for a finite value >= 0."""
    digits, point = _shortest_digits(value)
    exp = point - 1
    if exp < -4 or exp >= 6:
        return _digits_exp(digits, point)
    return _digits_fixed(digits, point)


def _format_float(value: float, verb: str, spec: _Spec) -> str:
    nozero = dataclasses.replace(spec, zero=False)
    if math.isnan(value) or math.isinf(value):
        if math.isnan(value):
            text = "+NaN" if spec.plus else " NaN" if spec.space else "NaN"
        elif value < 0:
            text = "-Inf"
        else:
            text = " Inf" if spec.space and not spec.plus else "+Inf"
        return _pad(text, nozero)
    negative = math.copysign(1.0, value) < 0
    magnitude = abs(value)
    if verb == "v" or (verb in "gG" and spec.prec is None):
        body = _float_shortest_g(magnitude)
    elif verb in "gG":
        body = format(magnitude, f".{spec.prec}g")
    elif verb in "eE":
        body = format(magnitude, f".{6 if spec.prec is None else spec.prec}e")
    else:
        body = format(magnitude, f".{6 if spec.prec is None else spec.prec}f")
    if verb in "GE":
        body = body.upper()
    sign = "-" if negative else "+" if spec.plus else " " if spec.space else ""
    if spec.zero and spec.width is not None:
        body = body.rjust(spec.width - len(sign), "0")
    return _pad(sign + body, nozero)


_INT_BASES = {"v": "d", "d": "d", "b": "b", "o": "o", "O": "o", "x": "x", "X": "X"}


def _format_int(value: int, verb: str, spec: _Spec) -> str:
    nozero = dataclasses.replace(spec, zero=False)
    if verb == "c":
        return _pad(_rune(value), nozero)
    if verb == "q":
        return _pad(_go_quote(_rune(value), "'", spec.plus), nozero)
    if verb == "U":
        text = f"U+{value:04X}"
        if spec.sharp and _rune(value).isprintable():
            text += f" '{_rune(value)}'"
        return _pad(text, nozero)
    sign = "-" if value < 0 else "+" if spec.plus else " " if spec.space else ""
    digits = format(abs(value), _INT_BASES[verb])
    if spec.prec is not None:
        if spec.prec == 0 and value == 0:
            return " " * (spec.width or 0)
        digits = digits.rjust(spec.prec, "0")
    elif spec.zero and spec.width is not None:
        digits = digits.rjust(spec.width - len(sign), "0")
    prefix = "0o" if verb == "O" else ""
    if spec.sharp:
        prefix = {"b": "0b", "x": "0x", "X": "0X"}.get(verb, prefix)
        if verb == "o" and not digits.startswith("0"):
            prefix = "0"
    return _pad(sign + prefix + digits, nozero)


def _bad_verb(verb: str, value: Any) -> str:
    if value is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({_go_type(value)}={_format_v(value)})"


def _format(value: Any, verb: str, spec: _Spec, nested: bool = False) -> str:
    """Format one operand like Go's fmt does for ``verb``."""
    if verb == "T":
        return _pad("<nil>" if value is None else _go_type(value), spec)
    if value is None:
        return _pad("<nil>", spec) if verb == "v" or nested else _bad_verb(verb, value)
    if isinstance(value, _JSONStringer) and verb in "vsqxX":
        value = _fn_json(value)
    if isinstance(value, bool):
        return _pad("true" if value else "false", spec) if verb in "tv" else _bad_verb(verb, value)
    if isinstance(value, int):
        return _format_int(value, verb, spec) if verb in "vdbcoOqxXU" else _bad_verb(verb, value)
    if isinstance(value, float):
        return _format_float(value, verb, spec) if verb in "veEfFgG" else _bad_verb(verb, value)
    if isinstance(value, complex):
        if verb not in "veEfFgG":
            return _bad_verb(verb, value)
        real = _format_float(value.real, verb, _PLAIN)
        imag = _format_float(value.imag, verb, _Spec(plus=True))
        return _pad(f"({real}{imag}i)", spec)
    if isinstance(value, (bytes, bytearray)) and verb in "sqxX":
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        if verb in "vs":
            return _pad(value if spec.prec is None else value[: spec.prec], spec)
        if verb == "q":
            return _pad(_go_quote(value, '"', spec.plus), spec)
        if verb in "xX":
            data = value.encode("utf-8", "surrogatepass")
            return _pad(data.hex() if verb == "x" else data.hex().upper(), spec)
        return _bad_verb(verb, value)
    if isinstance(value, Mapping):
        items = (f"{_format(k, verb, spec, True)}:{_format(value[k], verb, spec, True)}" for k in _sorted_keys(value))
        return "map[" + " ".join(items) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = (
            (f"{f.name}:" if spec.plus else "") + _format(getattr(value, f.name), verb, spec, True)
            for f in dataclasses.fields(value)
        )
        return "{" + " ".join(parts) + "}"
    if isinstance(value, (list, tuple, bytes, bytearray, Sequence)):
        return "[" + " ".join(_format(item, verb, spec, True) for item in value) + "]"
    return _pad(str(value), spec) if verb in "vs" else _bad_verb(verb, value)


def _format_v(value: Any) -> str:
    return _format(value, "v", _PLAIN)


def _sprint(args: Sequence[Any]) -> str:
    """fmt.Sprint: a space between operands when neither side is a string."""
    out: list[str] = []
    previous_string = False
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if i > 0 and not is_string and not previous_string:
            out.append(" ")
        out.append(_format_v(arg))
        previous_string = is_string
    return "".join(out)


def _sprintf(fmt: str, args: Sequence[Any]) -> str:
    """fmt.Sprintf for the verbs v s d q t f F e E g G x X o O b c U T and %%."""
    out: list[str] = []
    argi = 0
    i, n = 0, len(fmt)

    def star() -> int | None:
        nonlocal argi
        value = args[argi] if argi < len(args) else None
        argi += 1
        return int(value) if _is_int(value) else None

    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        i = j + 1
        spec = _Spec()
        while i < n and fmt[i] in "+-# 0":
            flag = fmt[i]
            if flag == "+":
                spec.plus = True
            elif flag == "-":
                spec.minus, spec.zero = True, False
            elif flag == "#":
                spec.sharp = True
            elif flag == " ":
                spec.space = True
            else:
                spec.zero = not spec.minus
            i += 1
        if i < n and fmt[i] == "*":
            i += 1
            spec.width = star()
            if spec.width is None:
                out.append("%!(BADWIDTH)")
            elif spec.width < 0:
                spec.width, spec.minus, spec.zero = -spec.width, True, False
        else:
            start = i
            while i < n and "0" <= fmt[i] <= "9":
                i += 1
            if i > start:
                spec.width = int(fmt[start:i])
        if i < n and fmt[i] == ".":
            i += 1
            if i < n and fmt[i] == "*":
                i += 1
                spec.prec = star()
                if spec.prec is None or spec.prec < 0:
                    spec.prec = None
                    out.append("%!(BADPREC)")
            else:
                start = i
                while i < n and "0" <= fmt[i] <= "9":
                    i += 1
                spec.prec = int(fmt[start:i] or "0")
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
        elif argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
        else:
            out.append(_format(args[argi], verb, spec))
            argi += 1
    if argi < len(args):
        extra = ("<nil>" if a is None else f"{_go_type(a)}={_format_v(a)}" for a in args[argi:])
        out.append("%!(EXTRA " + ", ".join(extra) + ")")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Go's encoding/json (compact, HTML-safe)
# --------------------------------------------------------------------------------------------


class _JSONUnsupported(Exception):
    pass


class _Struct(dict):  # type: ignore[type-arg]
    """A mapping that stands for a Go struct: JSON keeps its key order instead of sorting."""


class _JSONStringer(_Struct):
    """A struct whose Go String() is its JSON (api.Tool, api.ToolFunction, tool-call arguments)."""


class _NilSlice(list):  # type: ignore[type-arg]
    """An empty Go slice that is nil: JSON null, otherwise an empty list."""


def _json_string(text: str) -> str:
    out = ['"']
    for c in text:
        code = ord(c)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif c == "\b":
            out.append("\\b")
        elif c == "\f":
            out.append("\\f")
        elif code < 0x20 or c in "<>&\u2028\u2029":
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _json_float(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        raise _JSONUnsupported("unsupported value")
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    magnitude = abs(value)
    digits, point = _shortest_digits(magnitude)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        exp = point - 1
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp) if exp < 0 else f'{exp:02d}'}"
    return sign + _digits_fixed(digits, point)


def _json_encode(value: Any, out: list[str]) -> None:
    if value is None or isinstance(value, _NilSlice) and not value:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_json_float(value))
    elif isinstance(value, str):
        out.append(_json_string(value))
    elif isinstance(value, (bytes, bytearray)):
        out.append('"' + b64encode(bytes(value)).decode("ascii") + '"')
    elif isinstance(value, Mapping):
        items: list[tuple[str, Any]] = []
        for key, item in value.items():
            if isinstance(key, str):
                items.append((key, item))
            elif _is_int(key):
                items.append((str(key), item))
            else:
                raise _JSONUnsupported(f"unsupported map key type {_go_type(key)}")
        if not isinstance(value, _Struct):
            items.sort(key=lambda kv: kv[0])
        out.append("{")
        for i, (key, item) in enumerate(items):
            if i:
                out.append(",")
            out.append(_json_string(key) + ":")
            _json_encode(item, out)
        out.append("}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _json_encode(_Struct((f.name, getattr(value, f.name)) for f in dataclasses.fields(value)), out)
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _json_encode(item, out)
        out.append("]")
    else:
        raise _JSONUnsupported(f"unsupported type {_go_type(value)}")


# --------------------------------------------------------------------------------------------
# Ollama's data shapes for render()
# --------------------------------------------------------------------------------------------

# api.Message's fields: (JSON name, Go name, zero value)
_MESSAGE_FIELDS: tuple[tuple[str, str, Callable[[], Any]], ...] = (
    ("role", "Role", str),
    ("content", "Content", str),
    ("thinking", "Thinking", str),
    ("images", "Images", list),
    ("tool_calls", "ToolCalls", list),
    ("tool_name", "ToolName", str),
)
_MESSAGE_KEYS = frozenset(_norm(go) for _, go, _ in _MESSAGE_FIELDS)


def _as_struct(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _Struct((key, _as_struct(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return [_as_struct(item) for item in value]
    return value


def _tool(tool: Any) -> Any:
    if not isinstance(tool, Mapping):
        return tool
    result = _JSONStringer()
    for key, item in tool.items():
        converted = _as_struct(item)
        if isinstance(key, str) and _norm(key) == "function" and isinstance(converted, Mapping):
            converted = _JSONStringer(converted)
        result[key] = converted
    return result


def _tool_call(call: Any) -> Any:
    if not isinstance(call, Mapping):
        return call
    result = _as_struct(call)
    for key, function in result.items():
        if isinstance(key, str) and _norm(key) == "function" and isinstance(function, Mapping):
            for name, arguments in function.items():
                if isinstance(name, str) and _norm(name) == "arguments" and isinstance(arguments, Mapping):
                    function[name] = _JSONStringer(arguments)
    return result


def _message(message: Mapping[str, Any]) -> _Struct:
    """A message with all of api.Message's fields, keyed by their JSON names."""
    result = _Struct()
    for json_name, go_name, zero in _MESSAGE_FIELDS:
        value = _lookup_key(message, go_name)
        result[json_name] = zero() if value is None else value
    result["tool_calls"] = [_tool_call(call) for call in result["tool_calls"]]
    for key, value in message.items():
        if not (isinstance(key, str) and _norm(key) in _MESSAGE_KEYS):
            result[key] = value
    return result


def _collate(messages: list[_Struct]) -> tuple[str, list[_Struct]]:
    """Ollama's collate: all system texts joined, consecutive same-role messages merged (not tool)."""
    system: list[str] = []
    collated: list[_Struct] = []
    for message in messages:
        role = message["role"]
        if role == "system":
            system.append(message["content"])
        if collated and collated[-1]["role"] == role and role != "tool":
            collated[-1]["content"] = f"{collated[-1]['content']}\n\n{message['content']}"
        else:
            collated.append(_Struct(message))
    return "\n\n".join(system), collated


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


class Template:
    """A parsed Ollama prompt template."""

    __slots__ = ("text", "_root", "_defs", "_variables")

    def __init__(self, text: str, root: ListNode, defs: dict[str, ListNode], variables: list[str]) -> None:
        self.text = text
        self._root = root
        self._defs = defs
        self._variables = variables

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse ``text``; raise :class:`TemplateError` with the line of the first problem.

        Like Ollama, a template that references neither ``.Messages`` nor ``.Response`` gets an
        implicit ``{{ .Response }}`` appended; ``text`` keeps the original source.
        """
        root, defs = _Parser(_Lexer(text).run()).parse()
        trees = [root, *defs.values()]
        names = {name.lower() for tree in trees for name in _identifiers(tree)}
        if "messages" not in names and "response" not in names:
            root = ListNode(root.pos, (*root.nodes, _response_action(len(text))))
            names.add("response")
        return cls(text, root, defs, sorted(names))

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def __str__(self) -> str:
        return self.text

    def variables(self) -> list[str]:
        """Ollama's Vars(): lower-cased, de-duplicated, sorted field and variable names."""
        return list(self._variables)

    def execute(self, data: Any) -> str:
        """Run the template on ``data`` with Go's semantics (missing keys are nil)."""
        return self._run(self._root, data)

    def _run(self, root: ListNode, data: Any) -> str:
        out: list[str] = []
        executor = _Executor(self, out)
        try:
            executor.run(root, data)
        except RecursionError:
            raise executor.error("template nesting too deep") from None
        return "".join(out)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        tools: Sequence[Any] | None = None,
        prompt: str | None = None,
        suffix: str | None = None,
        think: bool | None = None,
    ) -> str:
        """Build a prompt the way Ollama's ``template.Execute`` does.

        ``system`` (the model's SYSTEM) is put first unless the messages start with a system
        message; a ``prompt`` without a ``suffix`` becomes a final user message.  With both a
        prompt and a suffix the template runs once on {Prompt, Suffix, Response: ""}.  A template
        that references ``.Messages`` runs once on {System, Messages, Tools, Response: ""};
        otherwise (legacy) it runs once per completed turn on {System, Prompt, Response}, and the
        last turn renders only up to ``.Response``.  ``think`` sets ``.Think``/``.IsThinkSet``.
        """
        flags = {"Think": bool(think), "IsThinkSet": think is not None}
        if prompt and suffix:
            log.debug("rendering prompt+suffix")
            return self.execute({"Prompt": prompt, "Suffix": suffix, "Response": "", **flags})
        turns = [_message(m) for m in messages]
        if system and not (turns and turns[0]["role"] == "system"):
            turns.insert(0, _message({"role": "system", "content": system}))
        if prompt:
            turns.append(_message({"role": "user", "content": prompt}))
        system_text, collated = _collate(turns)
        if "messages" in self._variables:
            log.debug("rendering %d messages", len(collated))
            tool_list: list[Any] = _NilSlice() if tools is None else [_tool(t) for t in tools]
            data = {"System": system_text, "Messages": collated, "Tools": tool_list, "Response": "", **flags}
            return self.execute(data)
        log.debug("rendering %d messages in legacy mode", len(collated))
        return self._render_legacy(collated, flags)

    def _render_legacy(self, messages: list[_Struct], flags: dict[str, bool]) -> str:
        parts: list[str] = []
        system = prompt = response = ""
        for message in messages:
            role, content = message["role"], message["content"]
            if (role == "system" and (prompt or response)) or (role == "user" and response):
                parts.append(self._run(self._root, {"System": system, "Prompt": prompt, "Response": response, **flags}))
                system = prompt = response = ""
            if role == "system":
                system = content
            elif role == "user":
                prompt = content
            elif role == "assistant":
                response = content
        last = _cut_after_response(self._root)
        parts.append(self._run(last, {"System": system, "Prompt": prompt, "Response": response, **flags}))
        return "".join(parts)


def capabilities(template: Template) -> set[str]:
    """What a template enables: "tools" (.Tools), "insert" (.Suffix), "thinking" (.Think)."""
    names = set(template.variables())
    found = {"tools": "tools", "suffix": "insert", "think": "thinking"}
    return {capability for name, capability in found.items() if name in names}
