"""One self-contained HTML page from a report ``Document``: inline CSS, PNG figures embedded as
base64 data URIs, no script and no external asset, so the file can be mailed or archived alone."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from oodcache.evaluate.document import (
    Bullets,
    Document,
    Figures,
    Heading,
    Para,
    Table,
    Tables,
    cell,
)

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color: #1b1f23; background: #fff; margin: 0 auto; padding: 24px 32px; max-width: 1280px; }
h1 { font-size: 24px; border-bottom: 2px solid #1f77b4; padding-bottom: 6px; }
h2 { font-size: 19px; margin-top: 34px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 16px; margin-top: 22px; }
p, li { max-width: 1100px; }
code { font: 12px/1.3 "DejaVu Sans Mono", Menlo, Consolas, monospace; background: #f3f4f6;
       padding: 1px 4px; border-radius: 3px; word-break: break-all; }
.table-wrap { overflow-x: auto; margin: 10px 0 18px; }
.tables { display: flex; flex-wrap: wrap; gap: 0 28px; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; vertical-align: top; }
th { background: #eef3f8; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #f8fafc; }
.figs { display: grid; gap: 14px; margin: 10px 0 20px; }
figure { margin: 0; border: 1px solid #e1e4e8; padding: 6px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #57606a; margin-top: 4px; }
"""

_NUM = re.compile(r"^[-+−]?(\d+(\.\d*)?|\.\d+)( ± [\d.]+)?( \[[-\d., ]+\])?$|^–$")


def inline(text: str) -> str:
    """Escape ``text`` for HTML, then render its ``code`` and **bold** marks."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _table(t: Table) -> str:
    df: pd.DataFrame = t.df.reset_index() if t.index else t.df
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        tds = []
        for v in row:
            text = cell(v)
            cls = ' class="num"' if _NUM.match(text) else ""
            tds.append(f"<td{cls}>{inline(text)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    caption = f"<caption>{inline(t.caption)}</caption>" if t.caption else ""
    return (
        f'<div class="table-wrap"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figures(f: Figures) -> str:
    items = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="{_png(path)}">'
        f"<figcaption>{inline(caption)}</figcaption></figure>"
        for caption, path in f.items
    )
    note = f"<p>{inline(f.note)}</p>" if f.note else ""
    style = f"grid-template-columns: repeat({f.columns}, minmax(0, 1fr));"
    return f'{note}<div class="figs" style="{style}">{items}</div>'


def to_html(doc: Document) -> str:
    """The whole page as one string."""
    parts = [f"<h1>{inline(doc.title)}</h1>"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            level = min(max(b.level, 2), 6)
            anchor = re.sub(r"[^a-z0-9]+", "-", b.text.lower()).strip("-")
            parts.append(f'<h{level} id="{anchor}">{inline(b.text)}</h{level}>')
        elif isinstance(b, Para):
            parts.append(f"<p>{inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            parts.append(_table(b))
        elif isinstance(b, Tables):
            parts.append('<div class="tables">' + "".join(_table(t) for t in b.tables) + "</div>")
        elif isinstance(b, Figures):
            parts.append(_figures(b))
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
