"""One document model and its one Markdown / HTML renderer, shared by eval's reports, the testbed's report and
the model card.

A document is a title and a list of blocks, plain tuples so that every layer can build them:

- ``("h2", text)`` and ``("h3", text)``: headings;
- ``("p", text)``: a paragraph, Markdown in ``.md`` and escaped text in HTML;
- ``("note", text)``: a paragraph set in smaller grey type in HTML (a table's reading notes);
- ``("table", (headers, rows))``: cells as strings;
- ``("img", caption, path)``: a PNG, referenced by file name beside the Markdown, embedded in the HTML.

The HTML page is self-contained (plots as base64); its look (``style``) belongs to the caller.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

Table = tuple[list[str], list[list[str]]]
Block = tuple  # ("h2" | "h3" | "p" | "note", text) | ("table", Table) | ("img", caption, path)

HEADINGS = {"h2": "##", "h3": "###"}
# Prose tables: left-aligned, top-aligned cells (eval's numeric tables pass their own).
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1250px}table{border-collapse:collapse;"
    "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}img{max-width:100%}"
)


def markdown_table(table: Table) -> str:
    headers, rows = table
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(table: Table) -> str:
    headers, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_lines(blocks: list[Block]) -> list[str]:
    """The blocks as Markdown lines, each block followed by a blank line."""
    parts: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in HEADINGS:
            parts += [f"{HEADINGS[kind]} {block[1]}", ""]
        elif kind in ("p", "note"):
            parts += [block[1], ""]
        elif kind == "table":
            parts += [markdown_table(block[1]), ""]
        elif kind == "img":
            parts += [f"![{block[1]}]({Path(block[2]).name})", ""]
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return parts


def render_markdown(blocks: list[Block], title: str) -> str:
    """The Markdown page: the title, then the blocks."""
    return "\n".join([f"# {title}", "", *markdown_lines(blocks)])


def _html_block(block: Block) -> str:
    kind = block[0]
    if kind in HEADINGS:
        return f"<{kind}>{html.escape(block[1])}</{kind}>"
    if kind == "p":
        return f"<p>{html.escape(block[1])}</p>"
    if kind == "note":
        return f"<p class='note'>{html.escape(block[1])}</p>"
    if kind == "table":
        return html_table(block[1])
    if kind == "img":
        data = base64.b64encode(Path(block[2]).read_bytes()).decode("ascii")
        alt = html.escape(block[1])
        img = f"<img alt='{alt}' src='data:image/png;base64,{data}'>"
        return f"<figure>{img}<figcaption>{alt}</figcaption></figure>"
    raise ValueError(f"unknown block kind {kind!r}")


def render_html(blocks: list[Block], title: str, style: str = STYLE) -> str:
    """One self-contained page: tables as HTML, plots embedded as base64 PNG, styled by ``style`` (CSS)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>")
    parts += [_html_block(block) for block in blocks]
    parts.append("</body></html>")
    return "\n".join(parts)
