"""A small document model rendered both as Markdown and as one self-contained HTML page.

Reports are built once as a list of blocks (headings, paragraphs, tables, images) and written in both formats,
so the two never drift apart. The HTML embeds its images as base64 data URIs: the page can be mailed or attached
to a ticket alone.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Heading:
    """A section title (level 1–3)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """Text; `backticks` mark code."""

    text: str


@dataclass(frozen=True)
class Table:
    """Rows of equal keys; the keys of the first row are the columns."""

    rows: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Image:
    """A PNG file next to the documents (``path`` relative to the output folder)."""

    path: str
    caption: str = ""


Block = Heading | Paragraph | Table | Image


def to_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as Markdown."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Table):
            parts.append(markdown_table(block.rows))
        elif isinstance(block, Image):
            parts.append(f"![{block.caption}]({block.path})" + (f"\n\n*{block.caption}*" if block.caption else ""))
    return "\n\n".join(p for p in parts if p) + "\n"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Dict rows (the keys of the first row are the columns) as a Markdown table; ``""`` for no rows."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
.value, .interval { white-space: nowrap; display: inline-block; }  /* a narrow cell breaks between the two only */
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
code { background: #f3f3f3; padding: 0 0.2em; border-radius: 3px; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


#: A table cell's ``value [low, high]``: its parts are kept whole, so a narrow column wraps between them only.
_VALUE_INTERVAL = re.compile(r"^(\S+) (\[[^\[\]]+\])$")


def _cell(text: str) -> str:
    match = _VALUE_INTERVAL.match(text)
    if match is None:
        return _inline(text)
    value, interval = (_inline(part) for part in match.groups())
    return f'<span class="value">{value}</span> <span class="interval">{interval}</span>'


def to_html(blocks: Sequence[Block], root: str | Path, title: str) -> str:
    """The blocks as one HTML page with its images embedded (read from ``root``)."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            body.append(f"<h{level}>{_inline(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table) and block.rows:
            keys = list(block.rows[0])
            head = "".join(f"<th>{_inline(str(k))}</th>" for k in keys)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_cell(str(row.get(k, '')))}</td>" for k in keys) + "</tr>" for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode((Path(root) / block.path).read_bytes()).decode("ascii")
            caption = f"<figcaption>{_inline(block.caption)}</figcaption>" if block.caption else ""
            alt = html.escape(block.caption or block.path)
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">{caption}</figure>')
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
