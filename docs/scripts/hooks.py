"""MkDocs hooks: pages generated from the code, so nothing is written twice.

A page holding ``<!-- generated: settings -->`` gets every setting of ``config.yaml`` (key,
default, meaning: its comments), checked against the validated model in ``geosearch/config.py``;
``<!-- generated: exit-codes -->`` gets the exit codes from ``geosearch/errors.py``. A setting
missing from either side, or without a comment, fails the build.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.yaml"
ERRORS = ROOT / "geosearch" / "errors.py"

KEY_LINE = re.compile(
    r"^(?P<indent> *)(?P<key>[a-z_0-9]+):(?P<value>[^#]*?)\s*(?:#\s?(?P<note>.*))?$"
)
NOTE_LINE = re.compile(r"^(?P<indent> +)#\s?(?P<note>.*)$")
HEADER_LINE = re.compile(r"^#\s?(?P<note>.*)$")


class Setting:
    """One key of config.yaml: its dotted name, default as written, and comment."""

    def __init__(self, name: str, default: str, note: str) -> None:
        self.name = name
        self.default = default
        self.notes = [note] if note else []

    @property
    def section(self) -> bool:
        return self.default == ""

    @property
    def text(self) -> str:
        return " ".join(note.strip() for note in self.notes if note.strip())


def read_config(path: Path = CONFIG) -> tuple[list[str], list[Setting]]:
    """config.yaml's header comment (paragraph lines) and its settings, in file order."""
    header: list[str] = []
    settings: list[Setting] = []
    stack: list[tuple[int, str]] = []
    for line in path.read_text().splitlines():
        if not settings and (match := HEADER_LINE.match(line)):
            header.append(match["note"])
            continue
        if match := KEY_LINE.match(line):
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            name = ".".join([*(key for _, key in stack), match["key"]])
            stack.append((indent, match["key"]))
            settings.append(Setting(name, match["value"].strip(), match["note"] or ""))
        elif (match := NOTE_LINE.match(line)) and settings:
            settings[-1].notes.append(match["note"])
        elif line.strip():
            raise ValueError(f"{path}: can't read this line for the settings page: {line!r}")
    return header, settings


def model_keys() -> set[str]:
    """Every setting the validated model (geosearch.config.Settings) accepts, dotted."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's geosearch, whatever is installed
    from geosearch.config import Settings

    def walk(value: Any, prefix: str) -> set[str]:
        if isinstance(value, dict):
            keys = {prefix} if prefix else set()
            for key, inner in value.items():
                keys |= walk(inner, f"{prefix}.{key}" if prefix else key)
            return keys
        return {prefix}

    return walk(Settings().model_dump(), "")


def settings_markdown() -> str:
    """The settings page's body: one table per section of config.yaml."""
    header, settings = read_config()
    written = {setting.name for setting in settings}
    accepted = model_keys()
    if written != accepted:
        raise ValueError(
            "config.yaml and geosearch/config.py disagree: only in config.yaml "
            f"{sorted(written - accepted)}, only in the model {sorted(accepted - written)}"
        )
    silent = [s.name for s in settings if not s.section and not s.text]
    if silent:
        raise ValueError(f"config.yaml: settings without a comment: {silent}")
    intro = " ".join(line.strip() for line in header if line.strip())
    intro = intro.replace("[db]", "**db**")
    out = [intro, ""]
    general = [s for s in settings if "." not in s.name and not s.section]
    out += _table("General", "", general, 2)
    for section in (s for s in settings if s.section):
        members = [
            s for s in settings if not s.section and s.name.rpartition(".")[0] == section.name
        ]
        out += _table(f"`{section.name}`", section.text, members, 2 + section.name.count("."))
    return "\n".join(out)


def _table(title: str, text: str, settings: list[Setting], level: int) -> list[str]:
    out = [f"{'#' * level} {title}", ""]
    if text:
        out += [_cell(text), ""]
    if not settings:
        return out
    out += ["| setting | default | db | meaning |", "|---|---|---|---|"]
    for setting in settings:
        note = setting.text
        stored = "db" if note.startswith("[db]") else ""
        note = note.removeprefix("[db]").strip()
        out.append(f"| `{setting.name}` | `{setting.default}` | {stored} | {_cell(note)} |")
    return [*out, ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def exit_codes_markdown() -> str:
    """The exit-code table: every code, the exceptions that end with it and what they mean."""
    tree = ast.parse(ERRORS.read_text())
    codes: dict[int, list[str]] = {}
    classes: dict[str, int] = {}
    source = ERRORS.read_text().splitlines()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            code = next(
                (
                    item.value.value
                    for item in node.body
                    if isinstance(item, ast.Assign)
                    and [getattr(t, "id", None) for t in item.targets] == ["exit_code"]
                ),
                None,
            )
            if code is None:
                code = next(classes[b.id] for b in node.bases if getattr(b, "id", "") in classes)
            classes[node.name] = code
            doc = (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " ")
            codes.setdefault(code, []).append(f"`{node.name}`: {doc}")
        elif isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "").startswith(
            "EXIT_"
        ):
            comment = source[node.lineno - 1].partition("#")[2].strip()
            if not comment:
                raise ValueError(f"{ERRORS}: {node.targets[0].id} needs a comment saying when")
            codes.setdefault(node.value.value, []).insert(0, comment)
    out = ["| code | when |", "|---|---|"]
    for code in sorted(codes):
        out.append(f"| {code} | {'<br>'.join(_cell(text) for text in codes[code])} |")
    return "\n".join(out)


GENERATED = {"settings": settings_markdown, "exit-codes": exit_codes_markdown}
MARKER = re.compile(r"<!-- generated: (?P<name>[a-z-]+) -->")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each ``<!-- generated: NAME -->`` with the generated text."""
    return MARKER.sub(lambda match: GENERATED[match["name"]](), markdown)


OPENAPI_PAGE = "serve.md"


def openapi_schema() -> dict[str, Any]:
    """The service's schema, as ``geosearch serve`` answers at /api/openapi.json."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from geosearch.config import Settings
    from geosearch.serve import create_app

    return create_app(ROOT / "no-database.gpkg", Settings()).openapi()


def on_files(files: Any, config: Any) -> Any:
    """Add the schema to the site as ``api/openapi.json``; fail if the page misses a path."""
    from mkdocs.structure.files import File

    schema = openapi_schema()
    page = (Path(config["docs_dir"]) / OPENAPI_PAGE).read_text()
    missing = [path for path in schema["paths"] if path not in page]
    if missing:
        raise ValueError(f"docs/{OPENAPI_PAGE} does not describe these API paths: {missing}")
    files.append(File.generated(config, "api/openapi.json", content=json.dumps(schema, indent=1)))
    return files
