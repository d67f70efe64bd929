"""A self-contained HTML model report: one file, images inlined, no scripts or CDNs.

It is logged with every run (open it from the MLflow UI's artifacts tab, mail it, archive
it) and must read well offline, so styles are inline and figures are base64 PNGs.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

import pandas as pd

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { color: #666; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { color: #666; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
"""


@dataclass
class Report:
    """What a run shows: facts, tables (metrics, comparisons), figures and notes."""

    title: str
    facts: dict[str, str] = field(default_factory=dict)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_html(self) -> str:
        esc = html.escape
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{esc(self.title)}</h1><dl>",
            *(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in self.facts.items()),
            "</dl>",
        ]
        for heading, table in self.tables:
            parts.append(f"<h2>{esc(heading)}</h2>")
            parts.append(_table_html(table))
        if self.notes:
            parts.append("<h2>Notes</h2>")
            parts += [f"<p class='note'>{esc(note)}</p>" for note in self.notes]
        if self.figures:
            parts.append("<h2>Figures</h2>")
            for caption, image in self.figures:
                data = base64.b64encode(image).decode("ascii")
                parts.append(
                    f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{esc(caption)}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)


def _table_html(table: pd.DataFrame) -> str:
    """Numbers to 4 significant digits, gaps as a dash; the index (row names) kept."""

    def cell(value: object) -> object:
        if isinstance(value, float):
            return "–" if value != value else f"{value:.4g}"
        return value

    return table.map(cell).to_html(border=0, escape=True)
