"""The report document: one builder that writes the same content as self-contained HTML and as Markdown."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from .common import FIG_DIR

__all__ = ["Doc", "write_doc"]


@dataclass
class Doc:
    """The report as a list of blocks, rendered to Markdown and to HTML from the same content."""

    title: str
    blocks: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def h2(self, text: str, anchor: str) -> None:
        self.blocks.append(("h2", text, anchor))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.figures[name] = png
        self.blocks.append(("figure", name, caption))

    def markdown(self) -> str:
        """``report.md``: figures linked from ``figures/``."""
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b[0] == "h2":
                out += [f"## {b[1]}", ""]
            elif b[0] == "h3":
                out += [f"### {b[1]}", ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "table":
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                out.append("| " + " | ".join(cell(h) for h in b[1]) + " |")
                out.append("|" + "---|" * len(b[1]))
                out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b[2]]
                out.append("")
            else:
                alt = b[2].replace("[", "\\[").replace("]", "\\]")
                out += [f"![{alt}]({FIG_DIR}/{b[1]})", "", f"*{b[2]}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        """``report.html``: self-contained (figures as data URIs, inline CSS, nothing fetched)."""
        e = html.escape
        toc = "".join(f'<li><a href="#{b[2]}">{e(b[1])}</a></li>' for b in self.blocks if b[0] == "h2")
        body = [f"<h1>{e(self.title)}</h1>", f"<nav><ul>{toc}</ul></nav>"]
        for b in self.blocks:
            if b[0] == "h2":
                body.append(f'<h2 id="{b[2]}">{e(b[1])}</h2>')
            elif b[0] == "h3":
                body.append(f"<h3>{e(b[1])}</h3>")
            elif b[0] == "p":
                body.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            else:
                data = base64.b64encode(self.figures[b[1]]).decode("ascii")
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{e(b[2])}">'
                    f"<figcaption>{e(b[2])}</figcaption></figure>"
                )
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{e(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body)
            + "\n</body>\n</html>\n"
        )


_CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1280px;margin:2em auto;"
    "padding:0 1em;color:#222;line-height:1.45}"
    "h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}h3{margin-top:1.4em}"
    "table{border-collapse:collapse;margin:.8em 0;font-size:.85em}"
    "th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}tbody tr:nth-child(even){background:#fafafa}"
    "figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}"
    "figcaption{font-size:.85em;color:#555;margin-top:.3em}nav ul{columns:2;font-size:.9em}"
)


def write_doc(doc: Doc, out: Path) -> Path:
    """``report.html`` (self-contained), ``report.md`` and ``figures/*.png`` in ``out``; returns the HTML path."""
    (out / FIG_DIR).mkdir(parents=True, exist_ok=True)
    for name, png in doc.figures.items():
        (out / FIG_DIR / name).write_bytes(png)
    (out / "report.md").write_text(doc.markdown(), encoding="utf-8")
    path = out / "report.html"
    path.write_text(doc.html(), encoding="utf-8")
    return path
