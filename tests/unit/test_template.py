"""Tests for ollamafs.template: Ollama's Go text/template dialect."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollamafs.template import DEFAULT_TEMPLATE, Template, TemplateError, capabilities

TEMPLATES = Path(__file__).resolve().parents[3] / "shared/testdata/templates"

HELLO = {"role": "user", "content": "Hello, how are you?"}
GREAT = {"role": "assistant", "content": "I'm doing great. How can I help you today?"}
SHOW = {"role": "user", "content": "I'd like to show off how chat templating works!"}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = {
    "user": [HELLO],
    "user-assistant-user": [HELLO, GREAT, SHOW],
    "system-user-assistant-user": [SYSTEM, HELLO, GREAT, SHOW],
}
TEMPLATE_NAMES = sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir()) if TEMPLATES.is_dir() else []


def run(source: str, data: dict[str, Any] | None = None) -> str:
    """Execute source on data; Response is set so the implicit {{ .Response }} prints nothing."""
    return Template.parse(source).execute({"Response": "", **(data or {})})


def parse_error(source: str) -> str:
    with pytest.raises(TemplateError) as info:
        Template.parse(source)
    return str(info.value)


def exec_error(source: str, data: dict[str, Any] | None = None) -> str:
    template = Template.parse(source)
    with pytest.raises(TemplateError) as info:
        template.execute({"Response": "", **(data or {})})
    return str(info.value)


# --- the reference renderings -----------------------------------------------------------------


def test_reference_templates_are_all_present() -> None:
    assert TEMPLATE_NAMES == [
        "alpaca",
        "chatml",
        "gemma-instruct",
        "llama2-chat",
        "llama3-instruct",
        "mistral-instruct",
        "openchat",
        "phi-3",
    ]


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_reference_rendering_is_byte_exact(name: str, conversation: str) -> None:
    folder = TEMPLATES / name
    template = Template.parse((folder / "template.gotmpl").read_text(encoding="utf-8"))
    expected = (folder / conversation).read_bytes()
    assert template.render(CONVERSATIONS[conversation]).encode("utf-8") == expected


# --- parse, text, variables, capabilities -----------------------------------------------------


def test_parse_keeps_original_text_and_default_template() -> None:
    template = Template.parse(DEFAULT_TEMPLATE)
    assert DEFAULT_TEMPLATE == "{{ .Prompt }}"
    assert template.text == "{{ .Prompt }}"
    assert str(template) == "{{ .Prompt }}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ .Prompt }}", ["prompt", "response"]),
        ("{{ .System }} {{ .Prompt }}", ["prompt", "response", "system"]),
        ("{{ .System }} {{ .Prompt }} {{ .Response }}", ["prompt", "response", "system"]),
        ("{{ .A.B }}", ["a", "b", "response"]),
        ("{{ $x := .Foo }}{{ $x }}{{ $ }}", ["$", "$x", "foo", "response"]),
        ('{{ printf "%s" 1 true nil }}', ["response"]),
        ("{{ (.A).B }}", ["response"]),
        ("{{ if .X }}{{ .Y }}{{ else }}{{ .Z }}{{ end }}", ["response", "x", "y", "z"]),
        ("{{ with .Tools }}{{ . }}{{ end }} {{ .System }} {{ .Prompt }}", ["prompt", "response", "system", "tools"]),
        ("{{ range .Messages }}{{ .Role }} {{ .Content }}{{ end }}", ["content", "messages", "role"]),
        ('{{ define "t" }}{{ .Inner }}{{ end }}{{ template "t" .Outer }}', ["inner", "outer", "response"]),
        ("{{ .ToolName }}{{ .toolname }}{{ .Response }}", ["response", "toolname"]),
    ],
)
def test_variables(source: str, expected: list[str]) -> None:
    assert Template.parse(source).variables() == expected


def test_implicit_response_is_appended_and_rendered() -> None:
    template = Template.parse("{{ .Prompt }}")
    assert template.execute({"Prompt": "Q", "Response": "A"}) == "QA"
    assert template.text == "{{ .Prompt }}"


def test_no_implicit_response_with_messages() -> None:
    template = Template.parse("{{ range .Messages }}{{ .Content }}{{ end }}")
    assert template.execute({"Messages": [{"Content": "x"}], "Response": "A"}) == "x"


def test_variables_returns_a_copy() -> None:
    template = Template.parse("{{ .Prompt }}")
    template.variables().append("junk")
    assert template.variables() == ["prompt", "response"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ .Prompt }}", set()),
        ("{{ if .Tools }}{{ json .Tools }}{{ end }}{{ .Prompt }}", {"tools"}),
        ("<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>", {"insert"}),
        ("{{ if .Think }}<think>{{ end }}{{ .Prompt }}", {"thinking"}),
        ("{{ range .Messages }}{{ end }}{{ .Tools }}{{ .Suffix }}", {"tools", "insert"}),
    ],
)
def test_capabilities(source: str, expected: set[str]) -> None:
    assert capabilities(Template.parse(source)) == expected


# --- text, trimming, comments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a  {{- 1 -}}  b", "a1b"),
        ("a \n\t{{- 1 }} b", "a1 b"),
        ("a {{ 1 -}} \n b", "a 1b"),
        ("{{-3}}", "-3"),
        ("x {{- /* a comment */ -}} y", "xy"),
        ("x {{/* multi\nline */}} y", "x  y"),
        ("plain }} text", "plain }} text"),
    ],
)
def test_text_trimming_and_comments(source: str, expected: str) -> None:
    assert run(source) == expected


# --- fields, variables, missing values --------------------------------------------------------


def test_field_chains_and_dot() -> None:
    assert run("{{ .A.B }}/{{ with .A }}{{ .B }}{{ end }}/{{ $.A.B }}", {"A": {"B": "ok"}}) == "ok/ok/ok"


def test_field_lookup_ignores_case_and_underscores() -> None:
    data = {"role": "user", "tool_calls": [1, 2], "Content": "exact"}
    assert run("{{ .Role }}|{{ .role }}|{{ .ToolCalls }}|{{ .Content }}", data) == "user|user|[1 2]|exact"


def test_exact_key_wins_over_folded_key() -> None:
    assert run("{{ .Role }}", {"role": "lower", "Role": "exact"}) == "exact"


def test_field_lookup_on_objects() -> None:
    @dataclass
    class Message:
        role: str

        def Greet(self, name: str) -> str:
            return f"hi {name} from {self.role}"

    assert run('{{ .M.Role }} {{ .M.Greet "bob" }}', {"M": Message("user")}) == "user hi bob from user"


def test_missing_values_print_like_go() -> None:
    assert run("{{ .Missing }}|{{ print .Missing }}|{{ html .Missing }}|{{ if .Missing }}y{{ else }}n{{ end }}") == (
        "<no value>|<nil>|&lt;no value&gt;|n"
    )


def test_field_of_missing_value_is_an_error() -> None:
    assert exec_error("{{ .Missing.X }}") == (
        'template: :1:11: executing "" at <.Missing.X>: nil pointer evaluating interface {}.X'
    )


def test_variable_scoping_and_assignment() -> None:
    source = "{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ $y }}{{ end }}{{ $x }}"
    assert run(source) == "32"
    assert parse_error("{{ if true }}{{ $y := 3 }}{{ end }}{{ $y }}") == 'template: :1: undefined variable "$y"'


def test_printing_values_like_fmt() -> None:
    data = {"L": [1, "a", None, {"k": 1.5}], "T": True, "M": {"b": 2, "a": 1}}
    assert run("{{ .L }} {{ .T }} {{ .M }}", data) == "[1 a <nil> map[k:1.5]] true map[a:1 b:2]"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "{{ 1e6 }} {{ 100000.0 }} {{ 1234567.0 }} {{ 0.0001 }} {{ 0.00001 }}",
            "1e+06 100000 1.234567e+06 0.0001 1e-05",
        ),
        ("{{ 3.14 }} {{ 2.0 }} {{ -0.0 }} {{ 1e21 }}", "3.14 2 -0 1e+21"),
        (
            "{{ 'a' }} {{ '\\n' }} {{ 0x1F }} {{ 0o17 }} {{ 017 }} {{ 0b101 }} {{ 1_000 }} {{ -5 }}",
            "97 10 31 15 15 5 1000 -5",
        ),
        ('{{ `raw\\n` }} {{ "\\u00e9\\x41\\t|" }} {{ true }}', "raw\\n \u00e9A\t| true"),
    ],
)
def test_literals(source: str, expected: str) -> None:
    assert run(source) == expected


# --- control structures -----------------------------------------------------------------------


def test_if_else_if_else() -> None:
    source = '{{ if eq .X 1 }}one{{ else if eq .X 2 }}two{{ else }}many{{ end }}'
    assert [run(source, {"X": x}) for x in (1, 2, 3)] == ["one", "two", "many"]


def test_go_truthiness() -> None:
    source = "{{ range .Values }}{{ if . }}T{{ else }}F{{ end }}{{ end }}"
    values = [0, 1, 0.0, "", "x", [], [0], {}, {"a": 1}, None, False, True]
    assert run(source, {"Values": values}) == "FTFFTFTFTFFT"


def test_range_with_index_and_element_and_else() -> None:
    source = "{{ range $i, $e := .L }}{{ $i }}={{ $e }};{{ else }}empty{{ end }}"
    assert run(source, {"L": ["a", "b"]}) == "0=a;1=b;"
    assert run(source, {"L": []}) == "empty"
    assert run(source) == "empty"


def test_range_over_map_is_sorted_by_key() -> None:
    assert run("{{ range $k, $v := .M }}{{ $k }}={{ $v }} {{ end }}", {"M": {"b": 2, "a": 1}}) == "a=1 b=2 "


def test_range_break_continue_and_int() -> None:
    source = "{{ range 6 }}{{ if eq . 1 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
    assert run(source) == "023"


def test_range_single_variable_and_assignment_form() -> None:
    assert run("{{ range $e := .L }}{{ $e }}{{ end }}", {"L": ["x", "y"]}) == "xy"
    source = "{{ $i := 0 }}{{ $e := 0 }}{{ range $i, $e = .L }}{{ end }}{{ $i }}{{ $e }}"
    assert run(source, {"L": ["x", "y"]}) == "1y"


def test_range_over_string_is_an_error() -> None:
    assert exec_error("{{ range .S }}{{ end }}", {"S": "abc"}).endswith("range can't iterate over abc")


def test_with_else_and_else_with() -> None:
    source = "{{ with .X }}[{{ . }}]{{ else with .Y }}y={{ . }}{{ else }}none{{ end }}"
    assert run(source, {"X": "v"}) == "[v]"
    assert run(source, {"X": "", "Y": 3}) == "y=3"
    assert run(source) == "none"


def test_define_template_and_block() -> None:
    source = (
        '{{ define "item" }}<{{ . }}|{{ $ }}>{{ end }}'
        '{{ template "item" "hi" }}{{ template "item" }}'
        '{{ block "b" .N }}b{{ . }}{{ end }}'
    )
    assert run(source, {"N": 5}) == "<hi|hi><<no value>|<no value>>b5"


def test_template_recursion_is_bounded() -> None:
    message = exec_error('{{ define "loop" }}{{ template "loop" . }}{{ end }}{{ template "loop" . }}')
    assert message.endswith("exceeded maximum template depth (64)")


# --- functions --------------------------------------------------------------------------------


def test_comparisons() -> None:
    source = '{{ eq 1 2 3 1 }} {{ eq "a" "b" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt "b" "a" }} {{ ge 1 2 }}'
    assert run(source) == "true false true true true true false"
    assert run('{{ eq .Missing "x" }}') == "false"
    assert exec_error("{{ eq 1 1.0 }}") == (
        'template: :1:3: executing "" at <eq 1 1.0>: error calling eq: incompatible types for comparison'
    )


def test_and_or_not_short_circuit_and_return_values() -> None:
    source = '{{ or .A "default" }} {{ and 1 0 2 }} {{ and false (index .L 99) }} {{ or 0 "" }} {{ not .L }}'
    assert run(source, {"A": "", "L": []}) == 'default 0 false  true'


def test_len_index_slice() -> None:
    source = (
        '{{ len "h\u00e9llo" }} {{ len .L }} {{ slice "hello" 1 3 }} {{ slice .L 1 }} '
        '{{ index .M "k" }} {{ index "abc" 1 }} {{ index .N 1 0 }} {{ len (slice .L 0 2) }}'
    )
    assert run(source, {"L": [1, 2, 3], "M": {"k": "v"}, "N": [[0], ["x"]]}) == "6 3 el [2 3] v 98 x 2"


def test_printf_verbs() -> None:
    source = (
        '{{ printf "%s|%d|%v|%q|%t|%f|%.2f|%5.1f|%-4s|%04d|%x|%X|%e|%g|%c|%%" '
        '"s" 42 1.5 "q\\n" true 3.14159 2.5 2.25 "ab" 7 255 255 1234.5 0.00001 65 }}'
    )
    assert run(source) == 's|42|1.5|"q\\n"|true|3.141590|2.50|  2.2|ab  |0007|ff|FF|1.234500e+03|1e-05|A|%'


def test_printf_bad_and_missing_arguments() -> None:
    assert run('{{ printf "%d %s" "x" }}') == "%!d(string=x) %!s(MISSING)"
    assert run('{{ printf "%s" 1 2 }}') == "%!s(int=1)%!(EXTRA int=2)"
    assert run('{{ printf "%v %T %T" nil 1 "s" }}') == "<nil> int string"


def test_print_println_and_pipelines() -> None:
    assert run('{{ print 1 2 "a" "b" 3 }}|{{ println 1 "a" }}|') == "1 2ab3|1 a\n|"
    assert run('{{ "a" | printf "%s-%s" "b" }}') == "b-a"
    assert run('{{ "x" | printf "%s%s" "y" | len }}') == "2"


def test_html_js_urlquery() -> None:
    source = "{{ html \"<a href='x'>&\\\"\" }} {{ js \"a'b<c>=\\n\" }} {{ urlquery \"a b&c/d\" }}"
    assert run(source) == "&lt;a href=&#39;x&#39;&gt;&amp;&#34; a\\'b\\u003Cc\\u003E\\u003D\\u000A a+b%26c%2Fd"


def test_json_is_compact_sorted_and_html_escaped() -> None:
    data = {"X": {"b": "<a&b>", "a": [1, 2.5, None, True, 1e21, 1e-7, 1.0, "\u2028\n"]}}
    assert run("{{ json .X }}", data) == (
        '{"a":[1,2.5,null,true,1e+21,1e-7,1,"\\u2028\\n"],"b":"\\u003ca\\u0026b\\u003e"}'
    )


def test_json_of_unencodable_value_is_empty_like_ollama() -> None:
    assert run("[{{ json .X }}]", {"X": float("nan")}) == "[]"


def test_call() -> None:
    assert run("{{ call .F 2 3 }}", {"F": lambda a, b: a * b}) == "6"
    assert exec_error("{{ call .F }}", {"F": lambda: 1 / 0}).endswith("error calling call: division by zero")


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("Hello {{ .Name", "template: :1: unclosed action"),
        ("{{ if .X }}\nabc", "template: :2: unexpected EOF"),
        ("{{ foo 1 }}", 'template: :1: function "foo" not defined'),
        ("a\n{{ end }}", "template: :2: unexpected {{end}}"),
        ("{{ else }}", "template: :1: unexpected {{else}}"),
        ("{{ $x }}", 'template: :1: undefined variable "$x"'),
        ("{{ break }}", "template: :1: {{break}} outside {{range}}"),
        ('{{ .A "b }}', "template: :1: unterminated quoted string"),
        ("{{ (.A }}", "template: :1: unclosed left paren"),
        ("{{/* x }}", "template: :1: unclosed comment"),
        ("{{ if }}{{ end }}", "template: :1: missing value for if"),
        ("x\ny\n{{ .A | 3 }}", "template: :3: non executable command in pipeline stage 2"),
        ("{{ .A.B$ }}", "template: :1: bad character U+0024 '$'"),
        ("{{ 08 }}", 'template: :1: illegal number syntax: "08"'),
        ("{{ 'ab' }}", "template: :1: malformed character constant: 'ab'"),
        ("{{ range $a, $b, $c := .X }}{{ end }}", "template: :1: too many declarations in range"),
        (
            '{{ define "a" }}x{{ end }}{{ define "a" }}y{{ end }}',
            'template: :1: template: multiple definition of template "a"',
        ),
    ],
)
def test_parse_errors(source: str, message: str) -> None:
    assert parse_error(source) == message


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "line one\n{{ index .L 5 }}",
            'template: :2:3: executing "" at <index .L 5>: error calling index: index out of range: 5',
        ),
        ("{{ nil }}", 'template: :1:3: executing "" at <nil>: nil is not a command'),
        ("{{ .A 1 }}", 'template: :1:3: executing "" at <.A>: A is not a method but has arguments'),
        (
            '{{ template "nope" }}',
            'template: :1:12: executing "" at <{{template "nope"}}>: template "nope" not defined',
        ),
        ("{{ len 3 }}", 'template: :1:3: executing "" at <len 3>: error calling len: len of type int'),
        ("{{ not 1 2 }}", 'template: :1:3: executing "" at <not>: wrong number of args for not: want 1 got 2'),
        # Go places a field chain at its second field, as here (column 5)
        ('{{ .S.X }}', 'template: :1:5: executing "" at <.S.X>: can\'t evaluate field X in type string'),
    ],
)
def test_execution_errors(source: str, message: str) -> None:
    assert exec_error(source, {"L": [1], "A": {}, "S": "s"}) == message


def test_template_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Template.parse("{{")


# --- render: Ollama's modes -------------------------------------------------------------------

TURNS = [
    {"role": "user", "content": "Hello friend!"},
    {"role": "assistant", "content": "Hello human!"},
    {"role": "user", "content": "What is your name?"},
]


@pytest.mark.parametrize(
    "source",
    [
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ",
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}",
    ],
)
def test_legacy_mode_runs_once_per_turn(source: str) -> None:
    template = Template.parse(source)
    assert template.render(TURNS) == "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    with_system = [{"role": "system", "content": "Be nice."}, *TURNS]
    assert template.render(with_system) == (
        "[INST] Be nice.\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] "
    )
    partial = [*TURNS, {"role": "assistant", "content": "My name is"}]
    assert template.render(partial) == (
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is"
    )


def test_legacy_mode_cuts_the_last_turn_after_response() -> None:
    source = (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
    )
    assert Template.parse(source).render([{"role": "system", "content": "S"}, *TURNS]) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n"
        "<|im_start|>assistant\nHello human!<|im_end|>\n"
        "<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prompt_and_suffix_mode() -> None:
    template = Template.parse(
        "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"
    )
    assert template.render([], prompt="def add(", suffix="return x") == "<PRE> def add( <SUF>return x <MID>"
    assert template.render([{"role": "user", "content": "hello"}]) == "hello"


def test_system_and_prompt_arguments() -> None:
    template = Template.parse("{{ .System }}|{{ .Prompt }}")
    assert template.render([], system="S", prompt="hi") == "S|hi"
    chat = Template.parse("{{ .System }}{{ range .Messages }}|{{ .Role }}:{{ .Content }}{{ end }}")
    assert chat.render([{"role": "user", "content": "u"}], system="S") == "S|system:S|user:u"
    own_system = [{"role": "system", "content": "mine"}, {"role": "user", "content": "u"}]
    assert chat.render(own_system, system="S") == "mine|system:mine|user:u"


def test_messages_are_collated() -> None:
    chat = Template.parse("{{ .System }}{{ range .Messages }}|{{ .Role }}:{{ .Content }}{{ end }}")
    messages = [
        {"role": "system", "content": "a"},
        {"role": "system", "content": "b"},
        {"role": "user", "content": "1"},
        {"role": "user", "content": "2"},
        {"role": "tool", "content": "t1"},
        {"role": "tool", "content": "t2"},
    ]
    assert chat.render(messages) == "a\n\nb|system:a\n\nb|user:1\n\n2|tool:t1|tool:t2"


def test_tools_tool_calls_and_think() -> None:
    template = Template.parse(
        "{{ range .Tools }}{{ . }}\n{{ end }}"
        "{{ range .Messages }}{{ .Role }}:{{ .Content }}"
        "{{ range .ToolCalls }}[{{ .Function.Name }} {{ .Function.Arguments }}]{{ end }}"
        "{{ .ToolName }}{{ len .Images }}\n{{ end }}"
        "{{ if .Think }}think{{ end }}"
    )
    tool = {"type": "function", "function": {"name": "weather", "description": "<w>", "parameters": {"type": "object"}}}
    messages = [
        {"role": "user", "content": "?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris", "days": 2}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
    ]
    assert template.render(messages, tools=[tool], think=True) == (
        '{"type":"function","function":{"name":"weather",'
        '"description":"\\u003cw\\u003e","parameters":{"type":"object"}}}\n'
        "user:?0\n"
        'assistant:[weather {"city":"Paris","days":2}]0\n'
        "tool:sunnyweather0\n"
        "think"
    )


def test_no_tools_is_a_nil_slice() -> None:
    template = Template.parse("{{ json .Tools }}|{{ .Tools }}|{{ if .Tools }}y{{ else }}n{{ end }}{{ .Messages }}")
    assert template.render([]) == "null|[]|n[]"


# --- properties -------------------------------------------------------------------------------


@given(st.text().filter(lambda s: "{{" not in s))
def test_text_without_actions_renders_to_itself(text: str) -> None:
    template = Template.parse(text)
    assert template.execute({"Response": ""}) == text
    assert template.variables() == ["response"]


@given(st.text())
def test_printf_q_output_parses_back_to_the_string(text: str) -> None:
    quoted = run('{{ printf "%q" .S }}', {"S": text})
    assert run("{{ " + quoted + " }}") == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


def same_json(decoded: Any, value: Any) -> bool:
    """Equal, reading floats as floats: Go writes 6.4e16 as 64000000000000000."""
    if isinstance(value, float):
        return isinstance(decoded, (int, float)) and float(decoded) == value
    if isinstance(value, list):
        return isinstance(decoded, list) and len(decoded) == len(value) and all(map(same_json, decoded, value))
    if isinstance(value, dict):
        return isinstance(decoded, dict) and decoded.keys() == value.keys() and all(
            same_json(decoded[k], value[k]) for k in value
        )
    return bool(decoded == value) and type(decoded) is type(value)


@given(json_values)
def test_json_round_trips_and_never_emits_html_characters(value: Any) -> None:
    encoded = run("{{ json .X }}", {"X": value})
    assert same_json(json.loads(encoded), value)
    assert not set("<>&") & set(encoded)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_printing_round_trips(value: float) -> None:
    printed = run("{{ .F }}", {"F": value})
    assert float(printed) == value
    assert math.copysign(1.0, float(printed)) == math.copysign(1.0, value)
