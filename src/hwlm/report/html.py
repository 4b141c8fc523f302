"""HTML building blocks of the report: the page shell with its inline CSS, sections, tables, notes.

The page is one file with no external assets (no scripts, fonts, images or style sheets by
URL), so it opens offline and can be mailed or archived as is. Every piece of text that
comes from an input file passes through :func:`html.escape`.
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterable, Sequence

__all__ = ["page", "section", "figure", "table", "missing", "notes", "esc", "CSS"]

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 0;
       color: #1d1d1f; background: #f6f7f9; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 18px 28px 48px; }
header.top { background: #1f2a38; color: #f3f5f8; padding: 18px 28px; }
header.top h1 { margin: 0 0 4px; font-size: 1.6rem; }
header.top .sub { color: #b9c3d0; font-size: 0.92rem; }
nav { margin-top: 8px; font-size: 0.9rem; }
nav a { color: #9fd0ff; margin-right: 14px; text-decoration: none; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 14px 22px 18px;
          margin: 18px 0; }
section h2 { margin: 4px 0 8px; font-size: 1.25rem; }
p.intro { color: #3d4550; margin: 4px 0 10px; }
figure { margin: 8px 0 12px; }
figure svg { display: block; max-width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: 0.86rem; margin: 8px 0; }
th, td { border-bottom: 1px solid #e3e6ea; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.nofit td { color: #8a8a8a; }
tr.nofit td.fit { color: #b03a2e; font-weight: 600; }
tr.noestimate td { color: #8a8a8a; font-style: italic; }
.missing { background: #fff7e6; border-left: 4px solid #e0a030; padding: 8px 12px; color: #5a4410; }
.missing code, p code, li code { background: #f0f1f3; padding: 1px 4px; border-radius: 3px; }
span.small { font-size: 0.74rem; color: #555; display: inline-block; min-width: 18em; }
div.tablewrap { overflow-x: auto; }
ul.notes { font-size: 0.84rem; color: #555; margin: 6px 0 0; padding-left: 20px; }
.tag { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 0.78rem; font-weight: 600; }
.tag.measured { background: #d9f2e3; color: #1d6b40; }
.tag.estimate { background: #fbe8cc; color: #8a5208; }
.tag.none { background: #eee; color: #666; }
dl.machine { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 4px 0; font-size: 0.9rem; }
dl.machine dt { color: #555; }
dl.machine dd { margin: 0; }
footer { color: #777; font-size: 0.8rem; text-align: center; margin-top: 24px; }
"""


def esc(value: Any) -> str:
    """Escaped text of any value (None becomes an empty string)."""
    return "" if value is None else escape(str(value))


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: Iterable[str], footer: str) -> str:
    """The whole document: inline CSS, a header with in-page links, the sections."""
    links = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in nav)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<header class=\"top\"><h1>{esc(title)}</h1><div class=\"sub\">{subtitle}</div>"
            f"<nav>{links}</nav></header>\n<main>\n" + "\n".join(body) +
            f"\n<footer>{footer}</footer>\n</main>\n</body>\n</html>\n")


def section(sec_id: str, title: str, intro: str, parts: Iterable[str]) -> str:
    """A titled section; ``intro`` and ``parts`` are HTML already."""
    return (f'<section id="{esc(sec_id)}">\n<h2>{esc(title)}</h2>\n<p class="intro">{intro}</p>\n'
            + "\n".join(p for p in parts if p) + "\n</section>")


def figure(svg: str, caption: str = "") -> str:
    """An inline SVG chart with an optional caption (HTML)."""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (),
          row_class: Sequence[str] | None = None, raw: Sequence[int] = ()) -> str:
    """A table; cells are escaped except columns listed in ``raw`` (already HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{esc(row_class[i])}"' if row_class and row_class[i] else ""
        cells = []
        for j, cell in enumerate(row):
            text = str(cell) if j in raw else esc(cell)
            klass = ' class="num"' if j in numeric else (' class="fit"' if headers[j] == "fits" else "")
            cells.append(f"<td{klass}>{text}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            "</div>")


def missing(what: str, command: str) -> str:
    """The box a section shows when it has no data: what is missing and the command that makes it."""
    return f'<p class="missing">{esc(what)} Produce it with <code>{esc(command)}</code>.</p>'


def notes(lines: Iterable[str]) -> str:
    """A small list of caveats and skipped inputs (empty when there are none)."""
    items = [f"<li>{esc(line)}</li>" for line in lines]
    return f'<ul class="notes">{"".join(items)}</ul>' if items else ""
