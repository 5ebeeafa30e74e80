"""MkDocs hook: the configuration page's option table, generated at build time.

``ganserve.server.config.option_table()`` is the list ``ganserve serve --help`` is built
from, so the manual's table of flags, variables, defaults and meanings cannot drift from
the code: the marker below in a page is replaced by it. The hook also fails the strict
build (a warning) when a page names a ``GANSERVE_*`` variable that nothing reads, or when
the configuration page names a ``serve`` flag that does not exist.
"""

from __future__ import annotations

import html
import logging
import re
from typing import Any

from ganserve.server.config import option_table

MARKER = "<!-- ganserve:config-table -->"
CONFIG_PAGE = "configuration.md"
# Variables read outside `ganserve serve`: the client CLI's and the data root of training.
OTHER_VARIABLES = {"GANSERVE_TARGET", "GANSERVE_TOKEN", "GANSERVE_DATA_ROOT"}
# Flags the configuration page may name that are not `serve` options.
OTHER_FLAGS = {"--help"}
MIB = 1024 * 1024

log = logging.getLogger("mkdocs.hooks.config_table")
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")
_VARIABLE = re.compile(r"GANSERVE_[A-Z0-9_]*\*?")
_DEFAULT_PART = re.compile(r"^default ")


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    rows = option_table()
    _check_variables(markdown, page.file.src_uri, {row.env for row in rows})
    if page.file.src_uri == CONFIG_PAGE:
        _check_flags(markdown, rows)
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, render(rows))
    return markdown


def render(rows: list[Any]) -> str:
    """A Markdown table: flag, environment variable, default, meaning."""
    lines = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for row in rows:
        flag = f"`--[no-]{row.flag[2:]}`" if row.is_bool else f"`{row.flag}`"
        default = _default(row.default, row.is_bool)
        meaning = _meaning(row.help, drop_default=bool(row.default))
        lines.append(f"| {flag} | `{row.env}` | {default} | {meaning} |")
    return "\n".join(lines)


def _default(text: str, is_bool: bool) -> str:
    if not text:
        return "unset"
    if is_bool:
        return "on" if text == "true" else "off"
    if re.fullmatch(r"\d+", text):
        value = int(text)
        if value >= MIB and value % MIB == 0:
            return f"{value // MIB} MiB"
        return f"{value:,}" if value >= 100_000 else text  # ports stay 50051
    if re.fullmatch(r"\d+\.0", text):
        return text[:-2]
    return f"`{text}`" if " " not in text else _escape(text)


def _meaning(help_text: str, drop_default: bool) -> str:
    """The help text with flags as code; its "(default X; ...)" part is dropped when the
    default column shows the value (a "default 0: what 0 means" part keeps the meaning)."""
    if drop_default:
        help_text = re.sub(r"\(([^()]*)\)", _without_default, help_text).replace(" ()", "")
    flags = _FLAG.findall(help_text)
    pieces = _FLAG.split(help_text)
    coded = (f"`{flag}`{_escape(rest)}" for flag, rest in zip(flags, pieces[1:], strict=True))
    return (_escape(pieces[0]) + "".join(coded)).strip()


def _without_default(match: re.Match[str]) -> str:
    parts = []
    for part in match.group(1).split("; "):
        if _DEFAULT_PART.match(part):
            value, _, meaning = part.partition(": ")
            if not meaning:
                continue  # "default 8": the default column shows it
            part = f"{value.removeprefix('default ')}: {meaning}"  # "default 0: off" -> "0: off"
        parts.append(part)
    return f"({'; '.join(parts)})" if parts else ""


def _escape(text: str) -> str:
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*_|\[\]])", r"\\\1", text)


def _check_variables(markdown: str, page: str, known: set[str]) -> None:
    known = known | OTHER_VARIABLES
    for name in sorted(set(_VARIABLE.findall(markdown))):
        prefix = name.rstrip("*")
        if name in known or name == "GANSERVE_FOO_BAR":
            continue
        if (name.endswith("*") or name.endswith("_")) and any(k.startswith(prefix) for k in known):
            continue
        log.warning("%s names %s, which no ganserve option reads", page, name)


def _check_flags(markdown: str, rows: list[Any]) -> None:
    known = {row.flag for row in rows} | {f"--no-{row.flag[2:]}" for row in rows if row.is_bool}
    for flag in sorted(set(_FLAG.findall(markdown)) - known - OTHER_FLAGS):
        log.warning("%s names %s, which is not a `ganserve serve` option", CONFIG_PAGE, flag)
