"""Tests for ollamafs.modelfile_parse: Ollama's Modelfile grammar and parameter types.

Expected values come from Ollama's ``parser/parser.go`` and ``api.FormatParams`` (several cases
are the ones of Ollama's own ``parser_test.go``), and from the round trip with
:func:`ollamafs.modelfile.render`: what ``ollama show --modelfile`` prints must parse back to the
same model, except for the values Ollama's quoting cannot carry, which ``representable`` below
states independently of the parser.
"""

from __future__ import annotations

import errno
import json
import math
import struct
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ollamafs.errors import OllamaFSError
from ollamafs.modelfile import ModelDescription, go_value, quote, render
from ollamafs.modelfile_parse import (
    DEPRECATED_PARAMETERS,
    PARAMETER_TYPES,
    Command,
    ModelfileError,
    params_json,
    parse,
    parse_parameter,
    split_message,
)

GOLDEN = Path(__file__).parent / "golden"
BLANK = " \t\r\n"


def pairs(text: str) -> list[tuple[str, str]]:
    return [(c.name, c.args) for c in parse(text)]


def parse_error(text: str) -> ModelfileError:
    with pytest.raises(ModelfileError) as info:
        parse(text)
    return info.value


def value_of(text: str, instruction: str = "SYSTEM") -> str:
    """The args of the one command after ``FROM m`` that ``<instruction> <text>`` gives."""
    commands = parse(f"FROM m\n{instruction} {text}")
    assert len(commands) == 2
    return commands[1].args


# --- instructions --------------------------------------------------------------------------------


def test_every_instruction_gives_its_command_and_line():
    text = (
        "FROM llama3.2\n"
        "ADAPTER ./lora.gguf\n"
        "TEMPLATE {{ .Prompt }}\n"
        "SYSTEM You are helpful.\n"
        "LICENSE MIT\n"
        "MESSAGE user Hello\n"
        "PARAMETER temperature 0.7\n"
        "DRAFT ./draft.gguf\n"
        "RENDERER qwen3\n"
        "PARSER qwen3\n"
        "REQUIRES 0.12.0\n"
    )
    assert parse(text) == [
        Command("model", "llama3.2", 1),
        Command("adapter", "./lora.gguf", 2),
        Command("template", "{{ .Prompt }}", 3),
        Command("system", "You are helpful.", 4),
        Command("license", "MIT", 5),
        Command("message", "user: Hello", 6),
        Command("temperature", "0.7", 7),
        Command("draft", "./draft.gguf", 8),
        Command("renderer", "qwen3", 9),
        Command("parser", "qwen3", 10),
        Command("requires", "0.12.0", 11),
    ]


SPELLINGS = {
    "lower": str.lower,
    "upper": str.upper,
    "title": str.title,
    "mixed": lambda word: "".join(ch.upper() if i % 2 else ch.lower() for i, ch in enumerate(word)),
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_instructions_are_case_insensitive(spelling):
    spell = SPELLINGS[spelling]
    text = "\n".join(
        f"{spell(word)} {rest}"
        for word, rest in [
            ("from", "base"), ("adapter", "a"), ("template", "t"), ("system", "s"), ("license", "l"),
            ("message", "user hi"), ("parameter", "top_k 1"), ("draft", "d"), ("renderer", "r"),
            ("parser", "p"), ("requires", "0.1.0"),
        ]
    )
    assert pairs(text) == [
        ("model", "base"), ("adapter", "a"), ("template", "t"), ("system", "s"), ("license", "l"),
        ("message", "user: hi"), ("top_k", "1"), ("draft", "d"), ("renderer", "r"), ("parser", "p"),
        ("requires", "0.1.0"),
    ]


def test_parameter_keys_keep_their_case():
    commands = parse("FROM m\nPARAMETER Temperature 1\n")
    assert commands[1] == Command("Temperature", "1", 2)
    with pytest.raises(ModelfileError, match="line 2: unknown parameter 'Temperature'"):
        params_json(commands)


def test_from_need_not_come_first_and_may_repeat():
    # Ollama's TestParseFileFrom: FROM after a PARAMETER is fine; several FROM lines (model,
    # then projectors, as ollama show prints them) stay in order.
    assert pairs("PARAMETER param1 value1\nFROM foo") == [("param1", "value1"), ("model", "foo")]
    assert pairs("FROM a\nFROM b\nfrom c") == [("model", "a"), ("model", "b"), ("model", "c")]


@pytest.mark.parametrize(
    "text, expected",
    [
        # Ollama's TestParseFileFrom
        ('FROM "FOO  BAR  "', [("model", "FOO  BAR  ")]),
        ('FROM "FOO BAR"\nPARAMETER param1 value1', [("model", "FOO BAR"), ("param1", "value1")]),
        ("FROM     FOOO BAR    ", [("model", "FOOO BAR")]),
        ("FROM /what/is/the path ", [("model", "/what/is/the path")]),
        ("FROM llama3:7b-instruct-q4_K_M", [("model", "llama3:7b-instruct-q4_K_M")]),
        ("PARAMETER what the \nFROM lemons make lemonade ", [("what", "the"), ("model", "lemons make lemonade")]),
        # Ollama's TestParseFileTrimSpace
        (
            'FROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\nPARAMETER param1        value1\n',
            [("model", "     model 1"), ("adapter", "adapter3"), ("license", "MIT       "), ("param1", "value1")],
        ),
    ],
)
def test_ollama_parser_cases(text, expected):
    assert pairs(text) == expected


# --- layout: comments, blank lines, blanks, line endings -----------------------------------------


def test_comments_and_blank_lines_are_skipped_and_counted():
    text = "# a comment\n\n   # indented\n\t# tabbed\nFROM m\n\n#FROM not-this\nSYSTEM s\n# last, no newline"
    assert parse(text) == [Command("model", "m", 5), Command("system", "s", 8)]


def test_a_hash_inside_a_value_is_not_a_comment():
    assert value_of("a # b") == "a # b"
    assert value_of('"""\n# heading\ntext\n"""') == "\n# heading\ntext\n"
    assert value_of("#not a comment") == "#not a comment"


def test_leading_blanks_and_tabs_separate():
    assert pairs("  \t FROM\tm\n\tSYSTEM \t  s \t\nPARAMETER\t top_k \t 3\nMESSAGE \tuser\t hi") == [
        ("model", "m"),
        ("system", "s"),
        ("top_k", "3"),
        ("message", "user: hi"),
    ]


def test_crlf_and_lone_cr_end_lines():
    assert parse("FROM m\r\nSYSTEM s\r\n\r\nLICENSE l\rTEMPLATE t") == [
        Command("model", "m", 1),
        Command("system", "s", 2),
        Command("license", "l", 4),
        Command("template", "t", 5),
    ]


def test_line_breaks_inside_quoted_values_are_kept_as_written():
    assert value_of('"a\r\nb"') == "a\r\nb"
    assert value_of('"""a\r\n"b"\r\n"""') == 'a\r\n"b"\r\n'


def test_unprintable_characters_are_dropped_as_ollama_does():
    # strconv.IsPrint: control and format characters and non-ASCII spaces go, tab stays.
    assert value_of("a\x00b\x1bc\u200bd\ufeffe\xa0f\x0bg") == "abcdefg"
    assert value_of("a\tb") == "a\tb"
    assert value_of('"\x07x\t"') == "x\t"
    assert parse("\ufeffFROM m") == [Command("model", "m", 1)]  # a byte order mark


def test_non_ascii_text_is_kept():
    assert value_of("你好👋 é") == "你好👋 é"


# --- values and quotes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("foo", "foo"),
        ("  foo  bar  ", "foo  bar"),
        ('"  foo  "', "  foo  "),
        ('"  foo  "   ', "  foo  "),
        ('""', ""),
        ('""""""', ""),
        ('"""a"""', "a"),
        ('"""This is a multiline system."""', "This is a multiline system."),
        ('"\'"', "'"),
        ('"""\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""', "''\"'\"\"'\"\"'\"'''''\"\"'\"\"'"),
        ('"a"b"', 'a"b'),  # only the outer quotes go
        ('"""a"b""""', 'a"b"'),
        ('a"b', 'a"b'),
        ('ab"', 'ab"'),
        ("it's", "it's"),
        # no escapes: a backslash is an ordinary character
        ('"a\\"b"', 'a\\"b'),
        ("a\\nb", "a\\nb"),
        ('"""C:\\path\\"""', "C:\\path\\"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_one_line_values(text, expected):
    assert value_of(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # Ollama's TestParseFileQuoted
        ('"""\nThis is a\nmultiline system.\n"""', "\nThis is a\nmultiline system.\n"),
        ('"""\nThis is a\nmultiline system."""', "\nThis is a\nmultiline system."),
        ('"""This is a\nmultiline system."""', "This is a\nmultiline system."),
        ('"""\nThis is a multiline system with "quotes".\n"""', '\nThis is a multiline system with "quotes".\n'),
        # double quotes span lines too
        ('"first\n  second\n"', "first\n  second\n"),
        ('"\n\n"', "\n\n"),
        # the closing quote may be followed by blanks; inner lines keep theirs
        ('"""\n  indented\t\n"""  \t', "\n  indented\t\n"),
        # a line that ends in "" only does not close """
        ('"""a""\nb"""', 'a""\nb'),
        # a value goes on until a line ends with its quote, whatever comes between
        ('"a" b\nc"', 'a" b\nc'),
        ('"""a""" b\nc"""', 'a""" b\nc'),
    ],
)
def test_multi_line_values(text, expected):
    assert value_of(text) == expected


def test_triple_quotes_close_at_the_first_line_that_ends_with_them():
    text = 'FROM m\nSYSTEM """a\nb"""\nc"""\n'
    error = parse_error(text)
    assert str(error) == "line 4: unknown command 'c\"\"\"'"


def test_a_multi_line_value_moves_the_line_count_on():
    text = 'FROM m\nTEMPLATE """\n1\n2\n"""\nSYSTEM "x\n\ny"\nLICENSE l\n'
    assert [c.line for c in parse(text)] == [1, 2, 6, 9]


# --- MESSAGE -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["system", "user", "assistant"])
def test_message_roles(role):
    (command,) = parse(f"FROM m\nMESSAGE {role} Hi: there")[1:]
    assert command == Command("message", f"{role}: Hi: there", 2)
    assert split_message(command) == (role, "Hi: there")


def test_message_content_may_be_quoted_empty_or_span_lines():
    commands = parse('FROM m\nMESSAGE system """\nmulti\n"""\nMESSAGE user \nMESSAGE assistant " a "')
    assert [split_message(c) for c in commands[1:]] == [
        ("system", "\nmulti\n"),
        ("user", ""),
        ("assistant", " a "),
    ]


@pytest.mark.parametrize("role", ["badguy", "User", "SYSTEM", "tool", "user:", "us3r"])
def test_message_role_must_be_system_user_or_assistant(role):
    error = parse_error(f"FROM m\n\nMESSAGE {role} hello\n")
    assert error.line == 3
    assert str(error) == f"line 3: invalid message role {role!r}: must be one of \"system\", \"user\" or \"assistant\""


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("FROM m\nBADCOMMAND param1 value1\n", 2, "unknown command 'BADCOMMAND'"),
        ("\nFROM foo\nBADCOMMAND param1 value1\n", 3, "unknown command 'BADCOMMAND'"),  # Ollama's case
        ("FROM m\nFR0M x\n", 2, "unknown command 'FR0M'"),
        ("FROM m\nFROM: x\n", 2, "unknown command 'FROM:'"),
        ("FROM m\n{{ .Prompt }}\n", 2, "unknown command '{{'"),
        ('FROM m\nSYSTEM "a"\n"b"\n', 3, "unknown command '\"b\"'"),
        ("FROM\n", 1, "FROM needs a value"),
        ("FROM m\n\nsystem", 3, "system needs a value"),
        ("FROM m\nPARAMETER\n", 2, "PARAMETER needs a key and a value"),
        ("FROM m\nPARAMETER   \n", 2, "PARAMETER needs a key and a value"),
        ("FROM m\nPARAMETER param1\n", 2, "PARAMETER param1 needs a value"),  # Ollama's case
        ("FROM m\nPARAMETER stop", 2, "PARAMETER stop needs a value"),
        ("FROM m\nPARAMETER top-k 1\n", 2, "invalid parameter name 'top-k'"),
        ("FROM m\nPARAMETER stop: x\n", 2, "invalid parameter name 'stop:'"),
        ("FROM m\nMESSAGE\n", 2, "MESSAGE needs a role and a message"),
        ("FROM m\nMESSAGE system\n", 2, "MESSAGE system needs a value"),  # Ollama's case
        ("FROM m\nMESSAGE system", 2, "MESSAGE system needs a value"),  # Ollama's case
        ('FROM m\nSYSTEM "\n', 2, 'unterminated " quote'),  # Ollama's case
        ('FROM m\nSYSTEM """This is a multiline system.""\n', 2, 'unterminated """ quote'),  # Ollama's
        ('FROM m\n\nTEMPLATE """\n{{ .Prompt }}\n""\nSYSTEM s\n', 3, 'unterminated """ quote'),
        ('FROM m\nLICENSE "MIT\n\nSYSTEM s\n', 2, 'unterminated " quote'),
        ('FROM m\nMESSAGE user "hi\n', 2, 'unterminated " quote'),
        ('FROM m\nPARAMETER stop """\n', 2, 'unterminated """ quote'),
        ('FROM m\r\n\r\nSYSTEM "\r\n', 3, 'unterminated " quote'),
        ("FROM m\r\n\r\nBAD x\r\n", 3, "unknown command 'BAD'"),
        ("", 1, "no FROM line"),
        ("PARAMETER param1 value1", 1, "no FROM line"),
        ("# FROM m\nSYSTEM s\n", 1, "no FROM line"),
    ],
)
def test_errors_name_their_line(text, line, reason):
    error = parse_error(text)
    assert (error.line, error.reason, str(error)) == (line, reason, f"line {line}: {reason}")


def test_modelfile_error_is_an_einval_ollamafs_error():
    error = parse_error("FROM m\nNOPE x")
    assert isinstance(error, OllamaFSError)
    assert error.errno == errno.EINVAL
    assert error.message == "line 2: unknown command 'NOPE'"
    assert ModelfileError("bad").message == "bad"


# --- PARAMETER types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0.7", 0.7),
        ("1", 1.0),
        ("1.0", 1.0),
        ("0", 0.0),
        ("-0.5", -0.5),
        ("+1.5", 1.5),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e-05", 1e-05),
        ("1E3", 1000.0),
        ("1e+21", 1e21),
        ("1_000.5", 1000.5),
        ("0x1p-2", 0.25),
        ("0X1.8P1", 3.0),
        # float32, written back with the fewest digits (as Go's JSON writes a float32)
        ("0.1", 0.1),
        ("0.123456789", 0.12345679),
        ("3.14159265358979", 3.1415927),
        ("16777217", 16777216.0),
        ("1915074.75", 1915074.8),  # halfway between two shortest: the even last digit, as Go
        ("446912.375", 446912.38),
        ("3.4028235e38", 3.4028235e38),
        ("3.40282356e38", 3.4028235e38),
        ("1e-45", 1e-45),
        ("7.1e-46", 1e-45),
        ("1e-50", 0.0),
        ("7e-46", 0.0),
        ("0e99999999999999999999", 0.0),
        ("0." + "0" * 5000 + "1", 0.0),
        # exactly rounded (a float64 first would land on the halfway point and round to 1)
        ("1.000000059604644775390625", 1.0),
        ("1.000000059604644775390625000000000000000001", 1.0000001),
        ("1.000000059604644775390625" + "0" * 300 + "1", 1.0000001),
    ],
)
def test_float_parameters_are_float32(value, expected):
    result = parse_parameter("temperature", value)
    assert type(result) is float
    assert result == expected


def test_float_parameters_serialise_with_the_shortest_digits():
    assert json.dumps({"temperature": parse_parameter("temperature", "0.7")}) == '{"temperature": 0.7}'
    assert json.dumps(parse_parameter("top_p", "0.95")) == "0.95"
    assert str(parse_parameter("min_p", "-0")) == "-0.0"


@pytest.mark.parametrize(
    "value",
    ["", "abc", "hot", "1,5", "0.7f", " 1", "1 ", "inf", "-Inf", "+infinity", "NaN", "0x1", "0x1.8", "1__0",
     "_1", "1_", "1_.5", "1e", "e5", ".", "+", "1.2.3", "\uff11", "\u0661", "3.4028236e38", "3.5e38",
     "-1e39", "1e999999999999", "0x1p128", "0x1.ffffffp127", "0x1p99999999999999999999"],
)
def test_invalid_float_values(value):
    with pytest.raises(ModelfileError) as info:
        parse_parameter("temperature", value)
    assert str(info.value) == f"invalid float value {value!r} for parameter 'temperature'"
    assert info.value.line is None


@pytest.mark.parametrize(
    "value, expected",
    [("4096", 4096), ("-1", -1), ("+5", 5), ("-0", 0), ("007", 7), ("0" * 5000 + "7", 7),
     ("9223372036854775807", 2**63 - 1), ("-9223372036854775808", -(2**63))],
)
def test_int_parameters(value, expected):
    result = parse_parameter("num_ctx", value)
    assert type(result) is int
    assert result == expected


@pytest.mark.parametrize(
    "value",
    ["", "abc", "1.0", "1e+06", "1.234567e+06", "1_000", "0x10", " 1", "\u0661", "\uff11",
     "9223372036854775808", "-9223372036854775809", "9" * 5000],
)
def test_invalid_int_values(value):
    with pytest.raises(ModelfileError, match="^invalid int value .* for parameter 'num_ctx'$"):
        parse_parameter("num_ctx", value)


@pytest.mark.parametrize(
    "value, expected",
    [("1", True), ("t", True), ("T", True), ("TRUE", True), ("true", True), ("True", True),
     ("0", False), ("f", False), ("F", False), ("FALSE", False), ("false", False), ("False", False)],
)
def test_bool_parameters(value, expected):
    assert parse_parameter("use_mmap", value) is expected


@pytest.mark.parametrize("value", ["", "yes", "no", "on", "tRUE", "2", "true "])
def test_invalid_bool_values(value):
    with pytest.raises(ModelfileError, match="^invalid bool value .* for parameter 'numa'$"):
        parse_parameter("numa", value)


def test_stop_is_a_list_of_strings():
    assert parse_parameter("stop", "</s>") == ["</s>"]
    assert parse_parameter("stop", "") == [""]


@pytest.mark.parametrize("key", ["foo", "Temperature", "from", "system", "", "x" * 100])
def test_unknown_parameters(key):
    with pytest.raises(ModelfileError, match="^line 7: unknown parameter "):
        parse_parameter(key, "1", line=7)


SAMPLE = {float: ("1.5", 1.5), int: ("3", 3), bool: ("true", True), list: ("x", ["x"])}


@pytest.mark.parametrize("key", sorted(PARAMETER_TYPES))
def test_every_known_parameter_has_its_type(key):
    text, expected = SAMPLE[PARAMETER_TYPES[key]]
    assert parse_parameter(key, text) == expected


def test_the_table_covers_ollamas_options():
    current = {
        "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n",
        "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty", "stop",
        "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
    }
    assert current | DEPRECATED_PARAMETERS | {"numa"} <= set(PARAMETER_TYPES)
    floats = {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty"}
    ints = {"num_ctx", "num_predict", "top_k", "seed", "repeat_last_n", "num_batch", "num_gpu", "num_thread",
            "num_keep"}
    assert {PARAMETER_TYPES[k] for k in floats} == {float}
    assert {PARAMETER_TYPES[k] for k in ints} == {int}
    assert PARAMETER_TYPES["use_mmap"] is PARAMETER_TYPES["numa"] is bool
    assert PARAMETER_TYPES["stop"] is list


# --- params_json ---------------------------------------------------------------------------------


def test_params_json_folds_parameters():
    text = (
        "FROM m\n"
        "PARAMETER stop <|user|>\n"
        "PARAMETER temperature 0.2\n"
        'PARAMETER stop " User:"\n'
        "SYSTEM not a parameter\n"
        "PARAMETER temperature 0.7\n"
        "PARAMETER num_ctx 4096\n"
        "PARAMETER use_mmap false\n"
        "PARAMETER stop </s>\n"
        "PARAMETER mirostat 2\n"
    )
    params = params_json(parse(text))
    assert params == {
        "stop": ["<|user|>", " User:", "</s>"],  # in order
        "temperature": 0.7,  # the last one wins
        "num_ctx": 4096,
        "use_mmap": False,
        "mirostat": 2,  # deprecated, but kept
    }
    assert json.dumps(params) == (
        '{"stop": ["<|user|>", " User:", "</s>"], "temperature": 0.7, "num_ctx": 4096, '
        '"use_mmap": false, "mirostat": 2}'
    )


def test_params_json_without_parameters_is_empty():
    assert params_json(parse("FROM m\nSYSTEM s\nMESSAGE user hi\nLICENSE l\nADAPTER a\n")) == {}


def test_a_parameter_named_like_a_command_is_that_command():
    # Ollama keeps PARAMETER <key> <value> as a command named <key>, so the key "system" makes a
    # SYSTEM command; there is no way to tell the two apart afterwards.
    commands = parse("FROM m\nPARAMETER system hi\n")
    assert commands[1] == Command("system", "hi", 2)
    assert params_json(commands) == {}


@pytest.mark.parametrize(
    "line, reason",
    [
        ("PARAMETER temperature hot", "invalid float value 'hot' for parameter 'temperature'"),
        ("PARAMETER num_ctx 4k", "invalid int value '4k' for parameter 'num_ctx'"),
        ("PARAMETER use_mmap yes", "invalid bool value 'yes' for parameter 'use_mmap'"),
        ("PARAMETER nonsense 1", "unknown parameter 'nonsense'"),
    ],
)
def test_params_json_errors_carry_the_line(line, reason):
    commands = parse(f"FROM m\nSYSTEM s\n\n{line}\nPARAMETER top_k 1\n")
    with pytest.raises(ModelfileError) as info:
        params_json(commands)
    assert str(info.value) == f"line 4: {reason}"


# --- what ollama show prints parses back ---------------------------------------------------------


def golden(case: str) -> tuple[dict, list[Command]]:
    spec = json.loads((GOLDEN / f"{case}.json").read_text())
    return spec, parse((GOLDEN / f"{case}.modelfile").read_text())


@pytest.mark.parametrize("case", ["chat", "coder", "numbers", "plain"])
def test_golden_modelfiles_parse_back_to_their_model(case):
    spec, commands = golden(case)
    by_name: dict[str, list[str]] = {}
    for command in commands:
        by_name.setdefault(command.name, []).append(command.args)
    assert len(by_name["model"]) == 1 + len(spec.get("projectors", []))
    assert len(by_name.get("adapter", [])) == len(spec.get("adapters", []))
    assert by_name["template"] == [spec.get("template", "{{ .Prompt }}")]
    assert by_name.get("system", [""]) == [spec.get("system", "")]
    assert by_name.get("license", []) == spec.get("licenses", [])
    messages = [split_message(c) for c in commands if c.name == "message"]
    assert messages == [(m["role"], m["content"]) for m in spec.get("messages", [])]
    # Each parameter line types to the stored value, except ints of 1e6 and more: ollama show
    # prints them as Go's %v of a float64 ("1e+06"), which Ollama's own parser then refuses.
    for command in commands:
        if command.name not in PARAMETER_TYPES:
            continue
        stored = spec["params"][command.name]
        if PARAMETER_TYPES[command.name] is int and abs(stored) >= 10**6:
            with pytest.raises(ModelfileError, match=r"^line \d+: invalid int value"):
                params_json([command])
        elif isinstance(stored, list):
            assert parse_parameter(command.name, command.args)[0] in stored
        else:
            assert parse_parameter(command.name, command.args) == stored


def test_golden_params_layers():
    assert params_json(golden("coder")[1]) == {"stop": ["\n\n", "</s>"]}
    assert params_json(golden("plain")[1]) == {}
    with pytest.raises(ModelfileError, match=r"^line 13: invalid int value '1e\+06' for parameter 'num_predict'$"):
        params_json(golden("chat")[1])
    with pytest.raises(ModelfileError, match=r"^line 13: invalid int value '1.23456789e\+08'"):
        params_json(golden("numbers")[1])


# --- the round trip with render(), property-based ------------------------------------------------


def representable(value: str) -> bool:
    """Whether Ollama's quote() + ParseFile carry ``value`` through unchanged.

    * unprintable characters other than tab, CR and LF are dropped by the parser;
    * a value printed bare (no LF, no leading or trailing space) must not start with a double
      quote (it would be taken as quoted), hold a CR (a line break) or start or end with a tab
      (trimmed);
    * a value in "..." (it has no double quote) always comes back;
    * a value in \"\"\"...\"\"\" comes back unless, at one of its own line breaks, the text before
      it (blanks trimmed) ends with \"\"\": the parser closes the value there.
    """
    if any(not (ch.isprintable() or ch in "\t\r\n") for ch in value):
        return False
    if quote(value) == value:
        return not value.startswith('"') and "\r" not in value and value == value.strip(BLANK)
    if '"' not in value:
        return True
    return not any(value[:i].rstrip(BLANK).endswith('"""') for i, ch in enumerate(value) if ch in "\r\n")


def test_representable_examples():
    assert representable("") and representable(" a ") and representable('a\n"b"')
    assert representable('a\nb"""') and representable('""" ') and representable('x"""y\nz')
    assert not representable('"quoted"')
    assert not representable('a"""\nb') and not representable('a""" \t\r\nb')
    assert not representable("\ta") and not representable("a\rb") and not representable("a\x00")


def description(**fields) -> ModelDescription:
    return ModelDescription(short_name="m:latest", model_path="/blobs/sha256-0", **fields)


FIELDS = {
    "template": (lambda v: description(template=v), lambda cs: [c.args for c in cs if c.name == "template"]),
    "system": (lambda v: description(system=v), lambda cs: [c.args for c in cs if c.name == "system"]),
    "license": (lambda v: description(licenses=(v,)), lambda cs: [c.args for c in cs if c.name == "license"]),
    "adapter": (lambda v: description(adapter_paths=(v,)), lambda cs: [c.args for c in cs if c.name == "adapter"]),
    "message": (
        lambda v: description(messages=(("user", v),)),
        lambda cs: [split_message(c)[1] for c in cs if c.name == "message"],
    ),
    "stop": (lambda v: description(options={"stop": [v]}), lambda cs: params_json(cs).get("stop")),
}
TRICKY = ["a", "b", " ", "\n", '"', "\t", "\r", "#", ":", "\\", "é", "\x00", "\u200b", "\xa0", "\ufeff"]
tricky_text = st.text(st.sampled_from(TRICKY) | st.characters(), max_size=16)


@given(field=st.sampled_from(sorted(FIELDS)), value=tricky_text)
@example(field="system", value='He said "hi"\nthen left')
@example(field="system", value='"quoted"')
@example(field="template", value='a"""\nb')
@example(field="template", value='a\nb"""')
@example(field="message", value=' Why? ')
@example(field="stop", value="\n\n")
@example(field="license", value="tab\t")
@example(field="adapter", value="a\rb")
def test_a_value_round_trips_exactly_when_ollama_can_carry_it(field, value):
    if field == "system" and not value:
        return  # render() prints no SYSTEM line for an empty system prompt
    make, read = FIELDS[field]
    try:
        back = read(parse(render(make(value))))
    except ModelfileError:
        back = None
    assert (back == [value]) == representable(value)


nice_text = st.text(st.sampled_from(["a", "Z", "0", " ", "\n", '"', "#", ":", "{", "}", ".", "\\", "é", "\t"]),
                    max_size=24).filter(representable)
paths = st.text(st.sampled_from("abc/._-0"), min_size=1, max_size=12).map(lambda p: "/" + p)


def decimal_float(mantissa: int, exponent: int) -> float:
    """A float of at most 6 significant digits: float32 keeps it and writes it back the same."""
    return float(f"{mantissa}e{exponent}")


def option_value(kind: type) -> st.SearchStrategy:
    if kind is float:
        return st.builds(decimal_float, st.integers(-999_999, 999_999), st.integers(-30, 30))
    if kind is int:
        return st.integers(-999_999, 999_999)  # from 1e6 on, show prints 1e+06 (see golden test)
    if kind is bool:
        return st.booleans()
    return st.lists(nice_text, min_size=1, max_size=3)


options = st.dictionaries(st.sampled_from(sorted(PARAMETER_TYPES)), st.none(), max_size=8).flatmap(
    lambda keys: st.fixed_dictionaries({k: option_value(PARAMETER_TYPES[k]) for k in keys})
)
descriptions = st.builds(
    ModelDescription,
    short_name=st.just("alice/m:latest"),
    model_path=paths,
    adapter_paths=st.lists(nice_text, max_size=2).map(tuple),
    projector_paths=st.lists(paths, max_size=2).map(tuple),
    template=nice_text,
    system=nice_text,
    options=options,
    licenses=st.lists(nice_text, max_size=2).map(tuple),
    messages=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), nice_text), max_size=3).map(tuple),
)


def read_back(commands: list[Command], short_name: str) -> ModelDescription:
    def args(name: str) -> tuple[str, ...]:
        return tuple(c.args for c in commands if c.name == name)

    models = args("model")
    return ModelDescription(
        short_name=short_name,
        model_path=models[0],
        adapter_paths=args("adapter"),
        projector_paths=models[1:],
        template=args("template")[-1],
        system=(args("system") or ("",))[-1],
        options=params_json(commands),
        licenses=args("license"),
        messages=tuple(split_message(c) for c in commands if c.name == "message"),
    )


@given(descriptions)
@example(
    ModelDescription(
        short_name="alice/m:latest",
        model_path="/blobs/sha256-1",
        template='{{ if .System }}"{{ .System }}"\n{{ end }}{{ .Prompt }}',
        system=" Say \"hi\"",
        options={"temperature": 0.7, "stop": ["\n\n", " User:", "</s>"], "num_ctx": 4096, "use_mmap": False},
        licenses=("MIT\n\n(c) me\n", "Apache-2.0"),
        messages=(("user", " Why? "), ("assistant", 'Rayleigh "scattering"\nof light.')),
    )
)
def test_render_then_parse_gives_the_model_back(model):
    text = render(model)
    assert read_back(parse(text), model.short_name) == model


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
@example(2.0**-149)
@example(3.4028234663852886e38)
@example(2.0**100)
def test_every_float32_that_show_prints_parses_back_with_the_fewest_digits(x):
    result = parse_parameter("temperature", go_value(x))
    assert type(result) is float
    assert as_float32(result) == x
    digits = len(Decimal(repr(result)).normalize().as_tuple().digits) if result else 1
    # No decimal with one digit less is the same float32: neither of those just below and above.
    for rounding in (ROUND_FLOOR, ROUND_CEILING):
        if digits > 1:
            shorter = float(Context(prec=digits - 1, rounding=rounding).plus(Decimal(x)))
            assert as_float32(shorter) != x


def as_float32(x: float) -> float:
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.inf


@given(st.integers(10**6, 2**53) | st.integers(-(2**53), -(10**6)))
def test_ints_from_a_million_on_do_not_survive_show(n):
    with pytest.raises(ModelfileError, match="^invalid int value"):
        parse_parameter("num_ctx", go_value(n))
