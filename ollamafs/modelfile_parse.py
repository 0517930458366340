'''Parse Modelfile text into commands, as Ollama's ``parser.ParseFile`` does (a pure module).

The grammar (Ollama's ``parser/parser.go``, restated; the renderer is :mod:`ollamafs.modelfile`):

* An instruction is a word of ASCII letters, matched case-insensitively: ``FROM`` (the command
  is named ``model``), ``ADAPTER``, ``TEMPLATE``, ``SYSTEM``, ``LICENSE``, ``MESSAGE``,
  ``PARAMETER``, and the newer ``DRAFT``, ``RENDERER``, ``PARSER``, ``REQUIRES``.  A space or
  tab separates it from its value; an instruction followed directly by a line break is an
  error.  ``PARAMETER <key> <value>`` gives a command named after the key (letters, digits,
  ``_``; case kept); ``MESSAGE <role> <content>`` takes one of ``system``, ``user``,
  ``assistant`` (case-sensitive) and gives the args ``"<role>: <content>"`` as Ollama does.
* A ``#`` where an instruction could start comments out the rest of the line; blank lines and
  leading blanks are skipped.  A ``#`` inside a value is part of it.
* A value runs to the end of its line and is trimmed.  A value that starts with ``"`` goes on
  over line breaks until, at the end of some line (or of the text), the value so far, trimmed,
  ends with the closing quote: ``"""`` for a value that starts with ``"""`` (at least six
  characters in all), else ``"`` (at least two).  The quotes are then cut off, nothing else:
  there are no escapes, a backslash is an ordinary character, and quotes in the middle stay.
  A value whose closing quote never comes is an error at the line where it began.
* Characters that are not printable (Go's ``strconv.IsPrint``, which is Python's
  ``str.isprintable``: control and format characters, non-ASCII spaces, a byte order mark) are
  dropped, except tab, CR and LF.  CR, LF and CRLF end a line; inside a quoted value they are
  kept as written.
* The text needs at least one ``FROM``; it need not come first.

Where this differs from Ollama, it is on purpose: errors carry the line of the instruction
(Ollama counts CR and LF of a CRLF as two lines and reports several errors without one);
extra blanks between ``PARAMETER``/``MESSAGE`` and their key or role are skipped (Ollama then
sees an empty key or role); and a float parameter that is not finite is refused here (Ollama
accepts ``inf``/``nan`` and then cannot write them as JSON).

Typing parameters follows ``api.FormatParams`` with the field types of ``api.Options``: float
fields are parsed as Go's ``strconv.ParseFloat(v, 32)`` (a float32, which Ollama's JSON writes
with the shortest digits), int fields as ``strconv.ParseInt(v, 10, 64)``, bool fields as
``strconv.ParseBool``, and ``stop`` collects one string per line.
'''

from __future__ import annotations

import bisect
import errno
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from fractions import Fraction

from .errors import OllamaFSError

#: Instruction words Ollama accepts (lower-cased).
INSTRUCTIONS = frozenset(
    {"from", "adapter", "template", "system", "license", "message", "parameter",
     "draft", "renderer", "parser", "requires"}
)
#: Command names that are not parameters (``FROM`` is named ``model``).
COMMAND_NAMES = frozenset(INSTRUCTIONS - {"from", "parameter"} | {"model"})
MESSAGE_ROLES = ("system", "user", "assistant")

#: The JSON type of each parameter: the fields of Ollama's ``api.Options`` and ``api.Runner``,
#: including those of earlier releases, so that a params layer written by any release parses.
PARAMETER_TYPES: dict[str, type] = {
    # api.Options
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
    # api.Runner
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    # Ollama now warns "parameter ... is deprecated" and leaves these out of the params layer.
    "penalize_newline": bool,
    "low_vram": bool,
    "f16_kv": bool,
    "logits_all": bool,
    "vocab_only": bool,
    "use_mlock": bool,
    "mirostat": int,
    "mirostat_tau": float,
    "mirostat_eta": float,
    # Fields of earlier releases that Ollama has since removed.
    "numa": bool,
    "tfs_z": float,
    "num_gqa": int,
    "rope_frequency_base": float,
    "rope_frequency_scale": float,
    "embedding_only": bool,
}
#: Ollama's ``deprecatedParameters``: typed here, dropped (with a warning) by ``ollama create``.
DEPRECATED_PARAMETERS = frozenset(
    {"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
     "mirostat", "mirostat_tau", "mirostat_eta"}
)


class ModelfileError(OllamaFSError):
    """Modelfile text that does not parse, or a parameter whose key or value is invalid.

    ``line`` is the 1-based line the error is about (None for a value checked on its own);
    ``reason`` is the message without the ``line N:`` prefix.
    """

    errno = errno.EINVAL
    level = logging.INFO
    exit_code = 2

    def __init__(self, reason: str, *, line: int | None = None) -> None:
        super().__init__(reason if line is None else f"line {line}: {reason}")
        self.reason = reason
        self.line = line


@dataclass(frozen=True, slots=True)
class Command:
    """One instruction: ``name`` lower-cased (``model`` for FROM, the key for PARAMETER)."""

    name: str
    args: str
    line: int


# --- the grammar -------------------------------------------------------------------------------

_BLANKS_RE = re.compile(r"[ \t]*")
_SPACE_RE = re.compile(r"[ \t\r\n]*")
_NEWLINE_RE = re.compile(r"[\r\n]")
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
_WORD_RE = re.compile(r"[^ \t\r\n]*")
_KEY_RE = re.compile(r"[A-Za-z0-9_]+")
_KEEP = str.maketrans("", "", "\t\r\n")
_NEEDS = {"parameter": "a key and a value", "message": "a role and a message"}


def _printable(text: str) -> str:
    """Drop what Ollama's parser drops: characters ``strconv.IsPrint`` rejects, but tab/CR/LF."""
    if text.translate(_KEEP).isprintable():
        return text
    return "".join(ch for ch in text if ch.isprintable() or ch in "\t\r\n")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        # Offsets where each line starts: CRLF, CR and LF are one line break each.
        self._starts = [0] + [m.end() for m in _LINE_BREAK_RE.finditer(text)]

    def line_of(self, pos: int) -> int:
        return bisect.bisect_right(self._starts, pos)

    def at_end_of_line(self) -> bool:
        return self.pos >= len(self.text) or self.text[self.pos] in "\r\n"

    def skip(self, pattern: re.Pattern[str]) -> None:
        self.pos = pattern.match(self.text, self.pos).end()

    def word(self) -> str:
        word = _WORD_RE.match(self.text, self.pos).group()
        self.pos += len(word)
        return word

    def value(self) -> str:
        """The value starting at ``pos`` (blanks before it already skipped), unquoted."""
        text, start = self.text, self.pos
        if text.startswith('"""', start):
            close = '"""'
        elif text.startswith('"', start):
            close = '"'
        else:
            m = _NEWLINE_RE.search(text, start)
            self.pos = m.start() if m else len(text)
            return text[start:self.pos].rstrip(" \t")
        # Ollama checks at every line break (and at the end) whether the value so far, trimmed,
        # is quoted; ``last`` is the end of its last non-blank character.
        last = i = start
        while True:
            m = _NEWLINE_RE.search(text, i)
            end = m.start() if m else len(text)
            k = end
            while k > i and text[k - 1] in " \t":
                k -= 1
            if k > i:
                last = k
            if last - start >= 2 * len(close) and text.startswith(close, last - len(close)):
                self.pos = end
                return text[start + len(close):last - len(close)]
            if m is None:
                raise ModelfileError(f"unterminated {close} quote", line=self.line_of(start))
            i = end + 1


def parse(text: str) -> list[Command]:
    """The commands of a Modelfile, in order; ModelfileError ("line N: ...") if it is invalid."""
    scan = _Scanner(_printable(text))
    commands: list[Command] = []
    while True:
        scan.skip(_SPACE_RE)
        if scan.pos >= len(scan.text):
            break
        if scan.text[scan.pos] == "#":
            m = _NEWLINE_RE.search(scan.text, scan.pos)
            scan.pos = m.start() if m else len(scan.text)
            continue
        line = scan.line_of(scan.pos)
        word = scan.word()
        instruction = word.lower()
        if not (word.isascii() and word.isalpha()) or instruction not in INSTRUCTIONS:
            raise ModelfileError(f"unknown command {word!r}", line=line)
        if scan.at_end_of_line():
            raise ModelfileError(f"{word} needs {_NEEDS.get(instruction, 'a value')}", line=line)
        scan.skip(_BLANKS_RE)
        name, prefix = ("model" if instruction == "from" else instruction), ""
        if instruction in ("parameter", "message"):
            if scan.at_end_of_line():
                raise ModelfileError(f"{word} needs {_NEEDS[instruction]}", line=line)
            field = scan.word()
            if instruction == "parameter":
                if not _KEY_RE.fullmatch(field):
                    raise ModelfileError(f"invalid parameter name {field!r}", line=line)
                name = field
            else:
                if field not in MESSAGE_ROLES:
                    raise ModelfileError(
                        f"invalid message role {field!r}: must be one of "
                        '"system", "user" or "assistant"',
                        line=line,
                    )
                prefix = field + ": "
            if scan.at_end_of_line():
                raise ModelfileError(f"{word} {field} needs a value", line=line)
            scan.skip(_BLANKS_RE)
        commands.append(Command(name, prefix + scan.value(), line))
    if not any(c.name == "model" for c in commands):
        raise ModelfileError("no FROM line", line=1)
    return commands


def split_message(command: Command) -> tuple[str, str]:
    """(role, content) of a ``message`` command, cut at the first ``": "`` as Ollama does."""
    role, _, content = command.args.partition(": ")
    return role, content


# --- parameter values --------------------------------------------------------------------------

_DIGITS = r"[0-9](?:_?[0-9])*"  # Go allows "_" between digits in ParseFloat
_HEX_DIGITS = r"[0-9a-fA-F](?:_?[0-9a-fA-F])*"
_DECIMAL_RE = re.compile(
    rf"([+-]?)(?:({_DIGITS})(?:\.({_DIGITS})?)?|\.({_DIGITS}))(?:[eE]([+-]?{_DIGITS}))?"
)
_HEX_RE = re.compile(
    rf"([+-]?)0[xX](?:_?({_HEX_DIGITS})(?:\.({_HEX_DIGITS})?)?|\.({_HEX_DIGITS}))[pP]([+-]?{_DIGITS})"
)
_INT_RE = re.compile(r"[+-]?[0-9]+")
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_INT64 = 1 << 63
_DIGIT_LIMIT = 200  # significant digits kept exactly; the rest only as a sticky last digit


class _Overflow(Exception):
    pass


def _exponent(text: str) -> int:
    """A decimal exponent; absurdly long ones are clamped (they over- or underflow anyway)."""
    text = text.replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-").lstrip("0") or "0"
    return sign * (10**12 if len(digits) > 12 else int(digits))


def _exact_decimal(int_digits: str, frac_digits: str, exponent: int) -> Fraction:
    digits = (int_digits + frac_digits).replace("_", "").lstrip("0")
    exponent -= len(frac_digits.replace("_", ""))
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    if not digits:
        return Fraction(0)
    magnitude = len(digits) - 1 + exponent  # the value is in [10**magnitude, 10**(magnitude+1))
    if magnitude > 39:
        raise _Overflow
    if magnitude < -47:  # below half the smallest float32 subnormal (about 7e-46)
        return Fraction(0)
    if len(digits) > _DIGIT_LIMIT:  # the last digit is not 0: keep it as a sticky digit
        exponent += len(digits) - _DIGIT_LIMIT - 1
        digits = digits[:_DIGIT_LIMIT] + "1"
    if exponent >= 0:
        return Fraction(int(digits) * 10**exponent)
    return Fraction(int(digits), 10**-exponent)


def _exact_hex(int_digits: str, frac_digits: str, exponent: int) -> Fraction:
    digits = (int_digits + frac_digits).replace("_", "").lstrip("0")
    if not digits:
        return Fraction(0)
    exponent -= 4 * len(frac_digits.replace("_", ""))
    bits = 4 * len(digits) + exponent
    if bits > 140:
        raise _Overflow
    if bits < -160:
        return Fraction(0)
    mantissa = int(digits, 16)
    return Fraction(mantissa << exponent) if exponent >= 0 else Fraction(mantissa, 1 << -exponent)


def _round_float32(q: Fraction) -> float:
    """The float32 nearest to ``q`` (ties to even), as a Python float; _Overflow past float32."""
    a = abs(q)
    if a == 0:
        return 0.0
    e = a.numerator.bit_length() - a.denominator.bit_length()  # 2**(e-1) < a < 2**(e+1)
    if a < Fraction(2) ** e:
        e -= 1
    ulp = Fraction(2) ** (max(e, -126) - 23)
    rounded = round(a / ulp) * ulp
    if rounded >= 2**128:  # from halfway past the largest float32 up: infinity
        raise _Overflow
    return float(rounded) if q > 0 else -float(rounded)


def _same_float32(candidate: Decimal, x: float) -> bool:
    try:
        return _round_float32(Fraction(candidate)) == x
    except _Overflow:
        return False


def _shortest_float32(x: float) -> float:
    """The float with the fewest digits that is the same float32, as Go writes float32 in JSON.

    Of the shortest decimals that round back to ``x`` it takes the nearest, and of two as near
    the one whose last digit is even, as Go's ``ftoa`` (Ryu) does.
    """
    if x == 0:
        return x
    exact = Decimal(x)

    def nearest_then_even(candidate: Decimal) -> tuple[Fraction, int]:
        return abs(Fraction(candidate) - Fraction(exact)), candidate.as_tuple().digits[-1] % 2

    for precision in range(1, 10):
        candidates = {
            Context(prec=precision, rounding=rounding).plus(exact)
            for rounding in (ROUND_FLOOR, ROUND_CEILING)
        }
        fits = [c for c in candidates if _same_float32(c, x)]
        if fits:
            return float(min(fits, key=nearest_then_even))
    return x  # not reached: 9 significant digits always tell float32 values apart


def _parse_float32(value: str) -> float:
    """Go's ``strconv.ParseFloat(value, 32)``, exactly rounded; ValueError where Go errs."""
    if m := _DECIMAL_RE.fullmatch(value):
        exact = _exact_decimal
    elif m := _HEX_RE.fullmatch(value):
        exact = _exact_hex
    else:  # also "inf" and "nan", which Go accepts but JSON cannot carry
        raise ValueError(value)
    sign, int_part, frac_part, frac_only, exponent = m.groups()
    try:
        x = _round_float32(exact(int_part or "", frac_part or frac_only or "", _exponent(exponent or "0")))
    except _Overflow:
        raise ValueError(value) from None
    x = _shortest_float32(x)
    return -x if sign == "-" else x


def _parse_int64(value: str) -> int:
    """Go's ``strconv.ParseInt(value, 10, 64)``: optional sign, ASCII digits, no "_"."""
    if not _INT_RE.fullmatch(value):
        raise ValueError(value)
    digits = value.lstrip("+-").lstrip("0") or "0"
    n = int(digits) if len(digits) <= 19 else _INT64
    n = -n if value.startswith("-") else n
    if not -_INT64 <= n < _INT64:
        raise ValueError(value)
    return n


def _shown(value: str, limit: int = 60) -> str:
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def parse_parameter(key: str, value: str, *, line: int | None = None) -> object:
    """A PARAMETER's value as the JSON value Ollama stores in the params layer.

    float/int/bool for scalar options, a one-element list for ``stop`` (lines accumulate, see
    :func:`params_json`).  ModelfileError for an unknown key or a value of the wrong type.
    """
    kind = PARAMETER_TYPES.get(key)
    if kind is None:
        raise ModelfileError(f"unknown parameter {_shown(key)}", line=line)
    if kind is list:
        return [value]
    try:
        if kind is float:
            return _parse_float32(value)
        if kind is int:
            return _parse_int64(value)
        return _BOOLS[value]
    except (ValueError, KeyError):
        reason = f"invalid {kind.__name__} value {_shown(value)} for parameter {key!r}"
        raise ModelfileError(reason, line=line) from None


def params_json(commands: Iterable[Command]) -> dict[str, object]:
    """Every PARAMETER folded into the params layer's object, as ``ollama create`` does.

    A later value of a scalar parameter replaces an earlier one; ``stop`` lists every value in
    order.  Deprecated parameters are kept (Ollama drops them); errors carry the line.
    """
    params: dict[str, object] = {}
    for command in commands:
        if command.name in COMMAND_NAMES:
            continue
        value = parse_parameter(command.name, command.args, line=command.line)
        if isinstance(value, list):
            previous = params.get(command.name)
            params[command.name] = (previous if isinstance(previous, list) else []) + value
        else:
            params[command.name] = value
    return params
