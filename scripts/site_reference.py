"""The site's reference pages, generated from the code at every ``make site`` so they cannot drift.

A MkDocs hook (``mkdocs.yml``: ``hooks``) that adds three pages before the build reads its nav:

- ``reference/config.md``: every key of the run's schema (:class:`stagetune.config.RunConfig` and
  the dataclasses it holds) with its type, default, allowed values and comment, read from the
  source; every ``trainer.*`` key with Lightning's default; and every option of every config
  group in ``conf/`` with its keys, their values and comments, and the constructor it builds.
- ``reference/commands.md``: each console command of ``pyproject.toml`` and its ``--help``.
- ``reference/errors.md``: the cases of ``tests/test_error_catalogue.py``, read without running them.

Nothing here is typed by hand and nothing reaches the network.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import tokenize
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

CONF = ROOT / "conf"
CATALOGUE = ROOT / "tests" / "test_error_catalogue.py"
PAGES = ("reference/config.md", "reference/commands.md", "reference/errors.md")


def cell(text: Any) -> str:
    """Text for a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def prose(text: Any) -> str:
    """A comment or docstring for a table cell: one line, Markdown's ``_`` and ``*`` kept literal outside code spans."""
    parts = cell(str(text).replace("``", "`")).split("`")
    return "`".join(part if k % 2 else re.sub(r"([_*])", r"\\\1", part) for k, part in enumerate(parts))


def code(value: Any) -> str:
    """A value as inline code, in the form a command line or YAML writes it."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, tuple):
        value = list(value)
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (list, dict)):
        text = json.dumps(value).replace('"', "")
    else:
        text = str(value)
    return f"`{cell(text)}`" if text else "`''`"


# -- the schema: dataclasses, their fields, comments and checks ------------------------------------


def field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` on each field's line in the class's source."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: tok.string.lstrip("#").strip() for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    (node,) = ast.parse(source).body
    return {
        item.target.id: comments[item.lineno]
        for item in node.body
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.lineno in comments
    }


def literal_text(node: ast.AST) -> str:
    """A message as the source writes it: a string, or an f-string with its fields shown as ``{...}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}" for v in node.values)
    return ""


def config_error_message(function: ast.AST) -> str:
    """The message of the first ``ConfigError(key, value, message)`` a function raises."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "ConfigError" and len(node.args) >= 3:
            return literal_text(node.args[2])
    return ""


def checked_fields(cls: type) -> dict[str, str]:
    """What a dataclass's ``check`` method allows for each field, from the ConfigErrors it raises.

    A call whose key argument is ``f"{key}.FIELD"`` names the field; its message is what is
    allowed, or, for a helper such as ``check_positive(f"{key}.div", ...)``, the helper's message.
    """
    method = getattr(cls, "check", None)
    if method is None:
        return {}
    module = sys.modules[cls.__module__]
    tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
    allowed: dict[str, str] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.JoinedStr)):
            continue
        last = node.args[0].values[-1]
        match = re.fullmatch(r"\.(\w+)", last.value) if isinstance(last, ast.Constant) else None
        if match is None or match.group(1) in allowed:
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", "")
        if name == "ConfigError":
            message = literal_text(node.args[2]) if len(node.args) >= 3 else ""
        else:
            helper = getattr(module, name, None)
            message = config_error_message(ast.parse(textwrap.dedent(inspect.getsource(helper)))) if inspect.isfunction(helper) else ""
        allowed[match.group(1)] = message
    return allowed


def type_text(tp: Any) -> str:
    """A field's type in words: an enum lists its values, a dataclass points to its own table."""
    if tp is Any:
        return "any"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in tp)
    if dataclasses.is_dataclass(tp):
        return f"group ({tp.__name__})"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin is not None and args:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_text(a) for a in args)}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


@dataclasses.dataclass
class Key:
    """One key of the schema as the reference shows it."""

    key: str
    type: str
    default: str
    allowed: str
    doc: str


def schema_keys(cls: type, prefix: str) -> tuple[list[Key], list[tuple[str, type]]]:
    """The keys of one dataclass under ``prefix``, and the dataclasses its fields hold (to list after it)."""
    hints = typing.get_type_hints(cls)
    comments, checks = field_comments(cls), checked_fields(cls)
    keys, nested = [], []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        value_type = typing.get_args(tp)[1] if typing.get_origin(tp) is dict and len(typing.get_args(tp)) == 2 else None
        if dataclasses.is_dataclass(tp):
            nested.append((key, tp))
        elif value_type is not None and dataclasses.is_dataclass(value_type):
            nested.append((f"{key}.NAME", value_type))
        default = default_of(f)
        if dataclasses.is_dataclass(default) or default == "???":
            shown = "(see below)" if dataclasses.is_dataclass(default) else "required"
        else:
            shown = code(default)
        allowed = checks.get(f.name, "")
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            allowed = allowed or ", ".join(m.value for m in tp)
        keys.append(Key(key, type_text(tp) if value_type is None else f"mapping of NAME to {type_text(value_type)}", shown, allowed, comments.get(f.name, "")))
    return keys, nested


def schema_sections(root: type) -> list[tuple[str, type, list[Key]]]:
    """Every dataclass reachable from ``root``, depth first: (prefix, class, keys)."""
    sections, todo = [], [("", root)]
    while todo:
        prefix, cls = todo.pop(0)
        keys, nested = schema_keys(cls, prefix)
        sections.append((prefix, cls, keys))
        todo = nested + todo
    return sections


def all_schema_keys() -> list[str]:
    """Every dotted key of the run's schema (what the reference must list)."""
    from stagetune.config import RunConfig

    return [k.key for _, _, keys in schema_sections(RunConfig) for k in keys]


def key_table(keys: list[Key]) -> str:
    lines = ["| key | type | default | allowed | what it is |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| `{k.key}` | {cell(k.type)} | {k.default} | {prose(k.allowed)} | {prose(k.doc)} |" for k in keys]
    return "\n".join(lines)


def docstring(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "").replace(":class:", "").replace(":func:", "").replace(":mod:", "").replace("~stagetune.", "stagetune.")


# -- conf/: groups, options, their keys and comments -------------------------------------------------


def yaml_comments(text: str) -> tuple[str, dict[str, str]]:
    """A YAML file's leading comment and the ``# comment`` after each key, by dotted key."""
    head, comments, stack = [], {}, []
    body_started = False
    for line in text.splitlines():
        stripped = line.strip()
        if not body_started and stripped.startswith("#"):
            if not stripped.startswith("# @package"):
                head.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^(\s*)([\w/@.~+-]+):(.*)$", line)
        if not match or stripped.startswith("#") or stripped.startswith("-"):
            continue
        body_started = True
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, key)]
        comment = trailing_comment(rest)
        if comment:
            comments[".".join(k for _, k in stack)] = comment
    return " ".join(head), comments


def trailing_comment(rest: str) -> str:
    """The ``# comment`` after a YAML value: the first `` #`` outside the value's quotes."""
    for match in re.finditer(r"\s#", rest):
        before = rest[: match.start()]
        if before.count('"') % 2 == 0 and (before.strip()[:1] != "'" or before.count("'") % 2 == 0):
            return rest[match.end() :].strip()
    return ""


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A YAML mapping as dotted keys to leaf values (lists and empty mappings are leaves)."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def constructor_keys(target: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments the ``_target_`` class takes (what ``group.KEY`` may set)."""
    module, _, name = target.rpartition(".")
    obj = getattr(importlib.import_module(module), name)
    params = inspect.signature(obj).parameters
    return {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def annotation_text(param: inspect.Parameter) -> str:
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return "any"
    return ann if isinstance(ann, str) else type_text(ann)


def option_section(group: str, path: Path) -> str:
    """One option of a config group: what it is, the keys it sets and the constructor it builds."""
    text = path.read_text()
    head, comments = yaml_comments(text)
    loaded = yaml.safe_load(text)
    loaded = loaded if isinstance(loaded, dict) else {}
    defaults = loaded.get("defaults")
    values = {k: v for k, v in loaded.items() if k != "defaults"}
    title = f"### `{group}={path.stem}`" if group else f"### `{path.stem}`"
    lines = [title, "", prose(head), ""]
    if defaults:
        lines += [f"Starts from: {', '.join(code(d) for d in defaults)}.", ""]
    target = values.get("_target_")
    package_global = "# @package _global_" in text
    flat = flatten(values)
    if target:
        module, _, name = target.rpartition(".")
        summary = docstring(getattr(importlib.import_module(module), name)).split("\n\n")[0]
        lines += [f"Builds `{target}`: {prose(summary)}", ""]
    rows = []
    for key, value in flat.items():
        if key == "_target_" or not key:
            continue
        shown = key if package_global or not group else f"{group.split('/')[-1]}.{key}"
        rows.append(f"| `{shown}` | {code(value)} | {prose(comments.get(key, ''))} |")
    if target:
        for pname, param in constructor_keys(target).items():
            if pname in values or pname == "self":
                continue
            default = "required" if param.default is inspect.Parameter.empty else code(param.default)
            rows.append(
                f"| `{group}.{pname}` | {default} | constructor argument ({prose(annotation_text(param))}); sizes and statistics the data module hands the model are set for you |"
            )
    if rows:
        lines += ["| key | value | what it is |", "| --- | --- | --- |", *rows, ""]
    return "\n".join(lines)


def groups() -> list[tuple[str, list[Path]]]:
    """Each config group of ``conf/`` (a folder of YAML options) with its options."""
    found = []
    for folder in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        options = sorted(folder.glob("*.yaml"))
        if options:
            found.append((folder.relative_to(CONF).as_posix(), options))
    return found


def config_reference() -> str:
    from stagetune.config import RunConfig
    from stagetune.engine.trainer import trainer_defaults

    parts = [
        "# Configuration reference",
        "",
        "Generated from the code by `make site` (`scripts/site_reference.py`): the schema's dataclasses "
        "(`stagetune.config.RunConfig` and the types it holds), Lightning's `Trainer` signature and the files "
        "in `conf/`. Every key can be set on the command line as `KEY=VALUE`; a group is picked with `GROUP=NAME`. "
        "Values are checked when a run starts, and a bad one stops it in one line naming the key "
        "(see the [error catalogue](errors.md)).",
        "",
        "## The run's schema",
        "",
    ]
    for prefix, cls, keys in schema_sections(RunConfig):
        where = f"`{prefix}`" if prefix else "top level"
        parts += [f"### {where}: `{cls.__module__}.{cls.__name__}`", "", docstring(cls) or "The run's top-level keys.", "", key_table(keys), ""]
    trainer = trainer_defaults()
    parts += [
        "### `trainer`: any `pytorch_lightning.Trainer` argument",
        "",
        "Every argument of the installed Trainer that stagetune does not set itself, with Lightning's own default "
        "(a `trainer=` file below sets some of them). Keys are checked against the Trainer's signature at start-up.",
        "",
        "| key | Lightning's default |",
        "| --- | --- |",
        *[f"| `trainer.{k}` | {code(v if not isinstance(v, type) else v.__name__)} |" for k, v in trainer.items()],
        "",
        "## Config groups",
        "",
        "Each folder of `conf/` is a group; each file an option. `experiment=NAME` files are `@package _global_`: they set keys anywhere.",
        "",
    ]
    for group, options in groups():
        parts += [f"## `{group}`", ""]
        parts += [option_section(group, path) for path in options]
    parts += ["## Top-level files", ""]
    parts += [option_section("", path) for path in sorted(CONF.glob("*.yaml"))]
    return "\n".join(parts) + "\n"


# -- console commands ---------------------------------------------------------------------------------

HELP_SCRIPT = """
import contextlib, importlib, io, json, sys
out = {}
for name, target in json.loads(sys.argv[1]).items():
    module, _, function = target.partition(":")
    buffer = io.StringIO()
    sys.argv = [name, "--help"]
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            getattr(importlib.import_module(module), function)()
        except SystemExit:
            pass
    out[name] = buffer.getvalue()
print(json.dumps(out))
"""


def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def command_helps() -> dict[str, str]:
    """Each console command's ``--help``, all in one process (one start-up of torch and Hydra)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", HELP_SCRIPT, json.dumps(console_scripts())], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"--help of the console commands failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def commands_reference() -> str:
    parts = [
        "# Commands reference",
        "",
        "Generated by `make site` from each console command's `--help` (the commands are `pyproject.toml`'s `[project.scripts]`).",
        "",
        "| command | entry point |",
        "| --- | --- |",
        *[f"| [`{name}`](#{name}) | `{target}` |" for name, target in console_scripts().items()],
        "",
    ]
    for name, text in command_helps().items():
        parts += [f"## {name}", "", f"```text\n$ {name} --help\n{text.rstrip()}\n```", ""]
    return "\n".join(parts)


# -- the error catalogue ------------------------------------------------------------------------------


def case_text(source: str, node: ast.AST) -> str:
    """One field of a case as a reader types it: a string bare, a list of strings joined by spaces, else its source."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.List) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return " ".join(e.value for e in node.elts)
    return ast.get_source_segment(source, node) or ast.unparse(node)


def catalogue_cases() -> list[tuple[str, str, list[str], list[list[str]]]]:
    """Each parametrized category of the catalogue: (list name, test's docstring or name, columns, rows as source text)."""
    source = CATALOGUE.read_text()
    tree = ast.parse(source)
    lists = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.List)
    }
    out = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if (
                isinstance(deco, ast.Call)
                and ast.unparse(deco.func).endswith("parametrize")
                and isinstance(deco.args[1], ast.Name)
                and deco.args[1].id in lists
            ):
                columns = [c.strip() for c in deco.args[0].value.split(",")]
                rows = [
                    [case_text(source, e) for e in item.elts] if isinstance(item, ast.Tuple) else [case_text(source, item)]
                    for item in lists[deco.args[1].id].elts
                ]
                out.append((deco.args[1].id, ast.get_docstring(node) or node.name.removeprefix("test_").replace("_", " "), columns, rows))
    return out


def errors_reference() -> str:
    cases = catalogue_cases()
    parts = [
        "# Error catalogue",
        "",
        "Generated by `make site` from the cases of `tests/test_error_catalogue.py`: each row is a bad input or a fault, "
        "and the suite checks that it stops with one line naming what to change (exit 2 for configuration, 1 at run time). "
        f"{sum(len(rows) for *_, rows in cases)} cases in {len(cases)} categories. The [errors how-to](../howto/errors.md) shows the lines a user sees.",
        "",
    ]
    for name, doc, columns, rows in cases:
        parts += [f"## {name.lower().replace('_', ' ')} ({len(rows)})", "", prose(doc), "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        parts += ["| " + " | ".join(f"`{cell(v)}`" if v.strip() else "" for v in row) + " |" for row in rows]
        parts.append("")
    return "\n".join(parts)


GENERATORS = {"reference/config.md": config_reference, "reference/commands.md": commands_reference, "reference/errors.md": errors_reference}


def on_files(files, config):
    """MkDocs hook: add the generated reference pages to the site's files."""
    from mkdocs.structure.files import File

    for page, generate in GENERATORS.items():
        files.append(File.generated(config, page, content=generate()))
    return files
