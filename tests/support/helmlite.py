"""A pure-Python renderer for the Helm template subset that deploy/helm/etbridge uses.

No ``helm`` binary can be installed here (neither PyPI nor Debian ships one),
so CI renders the chart with this: Go ``text/template`` actions (``if``/``else
if``/``else``, ``range`` over lists and maps with ``$k, $v :=``, ``with``,
``define``, ``$x :=``, ``{{-``/``-}}`` trimming, comments, pipelines) and the
Sprig/Helm functions listed in :data:`FUNCTIONS`. Anything else is an error,
never a silent guess, so a template that renders here renders the same with
Helm. Values are merged like ``helm -f``: maps deeply, everything else replaced.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class TemplateError(Exception):
    """A template this renderer cannot render (or one that calls ``fail``/``required``)."""


# --- lexing ------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<assign>:=)
    | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
    | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<punct>[|(),])
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot parse {text[pos:]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


# --- parsing -----------------------------------------------------------------------------


@dataclass
class Node:
    kind: str  # text | output | if | range | with | assign
    text: str = ""
    tokens: list[tuple[str, str]] = field(default_factory=list)
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # variables declared by range/assign


def _split_actions(source: str) -> list[tuple[str, str]]:
    """[("text", ...), ("action", ...)] with the trim markers applied."""
    parts: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", m.group(2).strip()))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = source[pos:]
    parts.append(("text", tail.lstrip() if trim_next else tail))
    return parts


# One branch per template tag.
def parse(source: str, defines: dict[str, list[Node]]) -> list[Node]:  # noqa: C901, PLR0912
    """Parse a template; ``define`` blocks go into ``defines``."""
    root: list[Node] = []
    # Each frame: (node, or None for define/root; the list being filled; a tag:
    # "elif" for the links of an `else if` chain, "chain" for the `if` it started from).
    stack: list[tuple[Node | None, list[Node], str]] = [(None, root, "")]
    for kind, value in _split_actions(source):
        body = stack[-1][1]
        if kind == "text":
            if value:
                body.append(Node("text", text=value))
            continue
        if value.startswith("/*"):
            continue
        word, _, rest = value.partition(" ")
        if word in ("if", "with"):
            node = Node(word, tokens=_tokens(rest))
            body.append(node)
            stack.append((node, node.body, ""))
        elif word == "range":
            toks = _tokens(rest)
            names: list[str] = []
            if any(k == "assign" for k, _ in toks):
                idx = next(i for i, (k, _) in enumerate(toks) if k == "assign")
                names = [v for k, v in toks[:idx] if k == "var"]
                toks = toks[idx + 1 :]
            node = Node("range", tokens=toks, names=names)
            body.append(node)
            stack.append((node, node.body, ""))
        elif word == "define":
            name = _tokens(rest)[0][1].strip('"')
            defines[name] = []
            stack.append((None, defines[name], "define"))
        elif word == "else":
            current = stack[-1][0]
            if current is None:
                raise TemplateError("else outside if/range/with")
            if rest.startswith("if "):
                # `else if X` is an `if X` inside the else branch, closed by the same `end`.
                nested = Node("if", tokens=_tokens(rest[3:]))
                current.orelse.append(nested)
                tag = "elif" if stack[-1][2] == "elif" else "chain"
                stack[-1] = (current, current.orelse, tag)
                stack.append((nested, nested.body, "elif"))
            else:
                stack[-1] = (current, current.orelse, stack[-1][2])
        elif word == "end":
            if len(stack) == 1:
                raise TemplateError("end without a block")
            # An `else if` chain closes every link at once, then the `if` it started from.
            while stack[-1][2] == "elif":
                stack.pop()
            stack.pop()
        else:
            toks = _tokens(value)
            if len(toks) > 1 and toks[1][0] == "assign":
                body.append(Node("assign", tokens=toks[2:], names=[toks[0][1]]))
            else:
                body.append(Node("output", tokens=toks))
    if len(stack) != 1:
        raise TemplateError("unclosed block")
    return root


# --- evaluation --------------------------------------------------------------------------


def truthy(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings, lists and maps are false."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, (str, list, dict, tuple)):
        return len(value) > 0
    return True


def to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        raise TemplateError(f"cannot print a map or list ({value!r}): use toYaml")
    return str(value)


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    dumped: str = yaml.safe_dump(value, default_flow_style=False, sort_keys=True)
    return dumped.rstrip("\n")


def _indent(n: int, text: str) -> str:
    return "\n".join((" " * n + line) if line else line for line in str(text).split("\n"))


def _printf(fmt: str, *args: Any) -> str:
    out = re.sub(r"%[sdv]", "{}", fmt).replace("%%", "%")
    return out.format(*(to_text(a) for a in args))


def _required(message: str, value: Any) -> Any:
    if not truthy(value):
        raise TemplateError(f"required: {message}")
    return value


def _fail(message: str) -> Any:
    raise TemplateError(f"fail: {message}")


def _eq(a: Any, *others: Any) -> bool:
    return any(a == b for b in others)


def _and(*args: Any) -> Any:
    for a in args:
        if not truthy(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args:
        if truthy(a):
            return a
    return args[-1]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": _to_yaml,
    "nindent": lambda n, text: "\n" + _indent(int(n), text),
    "indent": lambda n, text: _indent(int(n), text),
    "quote": lambda *v: " ".join('"' + to_text(x).replace('"', '\\"') + '"' for x in v),
    "default": lambda dflt, value=None: value if truthy(value) else dflt,
    "eq": _eq,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "and": _and,
    "or": _or,
    "not": lambda v: not truthy(v),
    "empty": lambda v: not truthy(v),
    "printf": _printf,
    "required": _required,
    "fail": _fail,
    "trunc": lambda n, s: s[: int(n)],
    "trimSuffix": lambda suffix, s: s.removesuffix(suffix),
    "lower": lambda s: s.lower(),
    "toString": to_text,
    "sha256sum": lambda s: hashlib.sha256(s.encode()).hexdigest(),
    "hasKey": lambda d, k: isinstance(d, dict) and k in d,
    "int": lambda v: int(v or 0),
    "add": lambda *v: int(sum(int(x) for x in v)),
}


class Renderer:
    def __init__(self, defines: dict[str, list[Node]]) -> None:
        self.defines = defines

    def render(self, nodes: list[Node], dot: Any, scope: dict[str, Any]) -> str:
        out: list[str] = []
        scope = dict(scope)
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "output":
                out.append(to_text(self.pipeline(node.tokens, dot, scope)))
            elif node.kind == "assign":
                scope[node.names[0]] = self.pipeline(node.tokens, dot, scope)
            elif node.kind == "if":
                branch = (
                    node.body if truthy(self.pipeline(node.tokens, dot, scope)) else node.orelse
                )
                out.append(self.render(branch, dot, scope))
            elif node.kind == "with":
                value = self.pipeline(node.tokens, dot, scope)
                if truthy(value):
                    out.append(self.render(node.body, value, scope))
                else:
                    out.append(self.render(node.orelse, dot, scope))
            elif node.kind == "range":
                out.append(self._range(node, dot, scope))
        return "".join(out)

    def _range(self, node: Node, dot: Any, scope: dict[str, Any]) -> str:
        value = self.pipeline(node.tokens, dot, scope)
        if isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif value is None:
            items = []
        else:
            raise TemplateError(f"cannot range over {value!r}")
        if not items:
            return self.render(node.orelse, dot, scope)
        out = []
        for key, item in items:
            inner = dict(scope)
            if len(node.names) == 2:
                inner[node.names[0]], inner[node.names[1]] = key, item
            elif len(node.names) == 1:
                inner[node.names[0]] = item
            out.append(self.render(node.body, item, inner))
        return "".join(out)

    # --- pipelines ---------------------------------------------------------------------

    def pipeline(self, tokens: list[tuple[str, str]], dot: Any, scope: dict[str, Any]) -> Any:
        commands: list[list[tuple[str, str]]] = [[]]
        depth = 0
        for tok in tokens:
            if tok == ("punct", "|") and depth == 0:
                commands.append([])
                continue
            if tok == ("punct", "("):
                depth += 1
            elif tok == ("punct", ")"):
                depth -= 1
            commands[-1].append(tok)
        value: Any = None
        for n, command in enumerate(commands):
            value = self.command(command, dot, scope, piped=(value,) if n else ())
        return value

    def command(
        self,
        tokens: list[tuple[str, str]],
        dot: Any,
        scope: dict[str, Any],
        piped: tuple[Any, ...],
    ) -> Any:
        if not tokens:
            raise TemplateError("empty command")
        kind, text = tokens[0]
        if kind == "ident" and text not in ("true", "false", "nil"):
            args = [*self.arguments(tokens[1:], dot, scope), *piped]
            if text == "include":
                name, arg = args
                return self.render(self.defines[name], arg, {"$": arg})
            if text not in FUNCTIONS:
                raise TemplateError(f"function {text!r} is not supported by this renderer")
            return FUNCTIONS[text](*args)
        if piped or (len(tokens) > 1 and kind != "punct"):
            raise TemplateError(f"{text!r} is not a function")
        (value,) = self.arguments(tokens, dot, scope)
        return value

    def arguments(
        self, tokens: list[tuple[str, str]], dot: Any, scope: dict[str, Any]
    ) -> list[Any]:
        out: list[Any] = []
        i = 0
        while i < len(tokens):
            kind, text = tokens[i]
            if tokens[i] == ("punct", "("):
                depth, j = 1, i + 1
                while depth:
                    depth += (
                        {"(": 1, ")": -1}.get(tokens[j][1], 0) if tokens[j][0] == "punct" else 0
                    )
                    j += 1
                out.append(self.pipeline(tokens[i + 1 : j - 1], dot, scope))
                i = j
                continue
            out.append(self.term(kind, text, dot, scope))
            i += 1
        return out

    def term(self, kind: str, text: str, dot: Any, scope: dict[str, Any]) -> Any:
        if kind == "str":
            return bytes(text[1:-1], "utf-8").decode("unicode_escape")
        if kind == "raw":
            return text[1:-1]
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "ident":
            return {"true": True, "false": False, "nil": None}[text]
        if kind == "field":
            return _walk(dot, text.strip(".").split(".") if text != "." else [])
        if kind == "var":
            name, _, path = text.partition(".")
            if name not in scope:
                raise TemplateError(f"undefined variable {name}")
            return _walk(scope[name], path.split(".") if path else [])
        raise TemplateError(f"unexpected {text!r}")


def _walk(value: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


# --- charts ------------------------------------------------------------------------------


def merge(base: Any, override: Any) -> Any:
    """Helm's values merge: maps deeply, anything else replaced (null deletes)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out
    return override


def render_chart(
    chart_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    release: str = "etbridge",
    namespace: str = "default",
) -> dict[str, str]:
    """``{template path: rendered text}`` for every template that renders non-empty."""
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    values = merge(yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}, overrides or {})
    root = {
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart.get("appVersion", ""),
        },
    }
    defines: dict[str, list[Node]] = {}
    templates = sorted((chart_dir / "templates").glob("*"))
    parsed = {}
    for path in templates:
        if path.suffix in (".yaml", ".yml", ".tpl"):
            parsed[path] = parse(path.read_text(), defines)
    renderer = Renderer(defines)
    out = {}
    for path, nodes in parsed.items():
        if path.name.startswith("_"):
            continue
        text = renderer.render(nodes, root, {"$": root})
        if text.strip():
            out[f"{chart['name']}/templates/{path.name}"] = text
    return out


def manifests(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every non-empty YAML document of the rendered templates."""
    docs: list[dict[str, Any]] = []
    for name, text in rendered.items():
        try:
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        except yaml.YAMLError as exc:
            raise TemplateError(f"{name} does not render to YAML: {exc}\n{text}") from None
    return docs
