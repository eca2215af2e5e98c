"""A single self-contained HTML report: headings, text, tables and pictures embedded as data URIs, so the file
can be mailed, archived or opened from anywhere without the folder it was written in."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { border-bottom: 2px solid #444; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1rem 0; } figcaption { color: #555; font-size: .9rem; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.note { color: #555; font-size: .92rem; }
"""


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig: plt.Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def array_png(array: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 or [0, 1] float array as PNG bytes."""
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _cell(value: object, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "–" if value is None else str(value)


def _td(value: object, digits: int) -> str:
    css = ' style="text-align:left"' if isinstance(value, str) else ""  # numbers right, text left
    return f"<td{css}>{html.escape(_cell(value, digits))}</td>"


class HTMLReport:
    """Build a report piece by piece and :meth:`save` it as one HTML file.

    Example:
        >>> import tempfile, os
        >>> report = HTMLReport("Demo")
        >>> _ = report.heading("Results").table([{"method": "Grad-CAM", "deletion": 0.21}])
        >>> path = report.save(os.path.join(tempfile.mkdtemp(), "report.html"))
        >>> "<table>" in path.read_text()
        True
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> HTMLReport:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str, note: bool = False) -> HTMLReport:
        """A paragraph of plain text (escaped); ``note`` renders it smaller and grey."""
        css = ' class="note"' if note else ""
        self.parts.append(f"<p{css}>{html.escape(text)}</p>")
        return self

    def table(
        self, rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None, digits: int = 3
    ) -> HTMLReport:
        """A table with one row per mapping; floats are shown with ``digits`` decimals."""
        if not rows:
            return self
        columns = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(_td(row.get(c), digits) for c in columns) + "</tr>" for row in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def image(self, png: bytes, caption: str = "", alt: str = "") -> HTMLReport:
        """Embed PNG bytes (see :func:`figure_png`, :func:`array_png`)."""
        if not png.startswith(b"\x89PNG"):
            raise ValueError("`png` must be the bytes of a PNG file")
        alt_text = html.escape(alt or caption or "figure")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img src="{png_data_uri(png)}" alt="{alt_text}">{cap}</figure>')
        return self

    def figure(self, fig: plt.Figure, caption: str = "") -> HTMLReport:
        """Embed a matplotlib figure (closed afterwards)."""
        return self.image(figure_png(fig), caption)

    def render(self) -> str:
        body = "\n".join(self.parts)
        title = html.escape(self.title)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_STYLE}</style></head>\n<body><h1>{title}</h1>\n{body}\n</body></html>\n"
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path
