"""One self-contained HTML page of a study's results: ``<storage>/<study>/report.html``.

The page holds the report's tables, its figures (embedded as ``data:`` URIs), the fidelity notes
(``docs/fidelity.md``) and a link to each experiment's and evaluation's folder, with a table of contents,
inline CSS and nothing else: no script, no font, style sheet or image from anywhere else (its
Content-Security-Policy forbids any), so the one file can be mailed, archived or opened from a bucket.

``render(title, sections, path)`` writes a page of ``Table``, ``Figure``, ``Notes`` and ``Links``
sections; ``write_html_report(storage, study, tables, figures, notes)`` writes the study's page from
the same data as ``report.md`` (a local folder or ``s3://``). tests/test_html_report.py opens it in
headless Chromium.
"""

from __future__ import annotations

import base64
import html
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from datasets.storage import filesystem_for, is_remote, write_atomically
from trainables.results import ResultStore, finished_in

NA_REP = "no run yet"  # a table's missing cell: an experiment (or a published number) without a result
FIDELITY = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
        ".gif": "image/gif", ".webp": "image/webp"}


@dataclass(frozen=True)
class Table:
    """A table: a pandas DataFrame (escaped; a missing value reads ``no run yet``; its ``attrs["caption"]``
    is the caption unless ``caption`` is given) or pre-rendered Markdown or HTML text (trusted: the
    project's own output, e.g. ``report.md``'s tables)."""

    title: str
    data: Any
    caption: str = ""
    float_format: str | None = "{:.2f}"  # a DataFrame's floats; None: pandas' own


@dataclass(frozen=True)
class Figure:
    """An image (a path: local or ``s3://``, or the file's bytes), embedded in the page."""

    title: str
    image: str | os.PathLike | bytes
    caption: str = ""


@dataclass(frozen=True)
class Notes:
    """Markdown text (trusted: the project's docs), rendered to HTML."""

    title: str
    markdown: str


@dataclass(frozen=True)
class Links:
    """A list of (label, href) links, e.g. to each experiment's folder."""

    title: str
    links: Sequence[tuple[str, str]]
    caption: str = ""


Section = Table | Figure | Notes | Links

CSS = """
:root { --line: #d0d7de; --zebra: #f3f6f9; --head: #e6ecf2; --ink: #1f2328; --muted: #59636e; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--ink);
       background: #fff; }
header, nav, main, footer { padding: 0 2rem; }
header { border-bottom: 3px solid var(--accent); padding-top: 1rem; padding-bottom: 0.5rem; }
h1 { margin: 0 0 0.25rem; font-size: 1.7rem; }
h2 { margin-top: 2.2rem; padding-bottom: 0.2rem; border-bottom: 1px solid var(--line); font-size: 1.35rem; }
.meta, .caption, figcaption, caption { color: var(--muted); }
caption { caption-side: top; text-align: left; padding: 0.3rem 0; }
nav { margin-top: 1rem; }
nav h2 { margin-top: 0.5rem; }
nav ol { columns: 2; column-gap: 3rem; }
a { color: var(--accent); }
.table-wrap { display: inline-block; max-width: 100%; max-height: 80vh; overflow: auto; border: 1px solid var(--line);
              margin: 0.5rem 0 1rem; }
table { border-collapse: collapse; font-size: 0.88rem; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3rem 0.6rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead { position: sticky; top: 0; z-index: 1; }
thead th { background: var(--head); white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--zebra); }
tbody tr:hover { background: #fff4c2; }
tbody th { background: inherit; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
code, pre { font-family: "DejaVu Sans Mono", ui-monospace, monospace; font-size: 0.88em; }
pre { background: var(--zebra); padding: 0.8rem; overflow: auto; }
ul.links { columns: 2; column-gap: 3rem; }
.missing { color: #a40e26; font-weight: bold; }
footer { margin: 3rem 0 1rem; color: var(--muted); font-size: 0.85rem; }
"""

# The page loads nothing: images are data: URIs, the style is inline; links still open when followed.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _markdown(text: str, baselevel: int = 3) -> str:
    """Markdown to HTML (tables, fenced code), headings moved down to ``baselevel``, tables scrollable."""
    import markdown  # the project's dependency; loaded only where a report is written

    out = markdown.markdown(text, extensions=["tables", "fenced_code", "toc"],
                            extension_configs={"toc": {"baselevel": baselevel}}, output_format="html")
    return _wrap_tables(out)


def _wrap_tables(text: str) -> str:
    return re.sub(r"<table\b", '<div class="table-wrap"><table', text).replace("</table>", "</table></div>")


def _frame_html(frame, caption: str, float_format: str | None) -> str:
    import pandas as pd

    if frame.index.nlevels == 1 and frame.index.name is not None:  # a named index: a column of its own
        frame = frame.reset_index()
    keep_index = not (isinstance(frame.index, pd.RangeIndex) and frame.index.name is None)
    # pandas writes pd.NA (nullable Int64, Float64, boolean columns: the tidy results') as "<NA>" whatever
    # na_rep says; as NaN in object columns every missing value reads na_rep, and floats keep float_format.
    frame = frame.astype(object).where(frame.notna(), float("nan"))
    out = frame.to_html(classes="data", na_rep=NA_REP, escape=True, index=keep_index, border=0,
                        float_format=float_format.format if float_format else None)
    if caption:
        out = re.sub(r"(<table\b[^>]*>)", lambda m: f"{m.group(1)}\n  <caption>{html.escape(caption)}</caption>",
                     out, count=1)
    return _wrap_tables(out)


def _image_uri(image: str | os.PathLike | bytes) -> str:
    """The image as a data: URI; its type from the file's name, or a PNG's signature for bytes."""
    if isinstance(image, bytes):
        data, mime = image, "image/png" if image.startswith(b"\x89PNG") else None
    else:
        name = os.fspath(image)
        mime = MIME.get(posixpath.splitext(name)[1].lower())
        fs, path = filesystem_for(name)
        with fs.open_input_stream(path) as f:
            data = f.read()
    if mime is None:
        raise ValueError(f"figure {image if not isinstance(image, bytes) else 'bytes'}: not an image type "
                         f"this page embeds ({', '.join(MIME)})")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _section_body(section: Section) -> str:
    if isinstance(section, Table):
        if isinstance(section.data, str):
            caption = f'<p class="caption">{html.escape(section.caption)}</p>\n' if section.caption else ""
            return caption + _markdown(section.data)  # Markdown; HTML passes through unchanged
        caption = section.caption or section.data.attrs.get("caption", "")
        return _frame_html(section.data, caption, section.float_format)
    if isinstance(section, Figure):
        caption = f"<figcaption>{html.escape(section.caption)}</figcaption>" if section.caption else ""
        try:
            uri = _image_uri(section.image)
        except (OSError, ValueError) as e:  # the rest of the report is still worth having
            print(f"note: figure {section.title!r} left out of report.html ({e})")
            return f'<p class="missing">figure missing: {html.escape(str(e))}</p>'
        return f'<figure><img src="{uri}" alt="{html.escape(section.title)}">{caption}</figure>'
    if isinstance(section, Notes):
        return _markdown(section.markdown)
    if isinstance(section, Links):
        caption = f'<p class="caption">{html.escape(section.caption)}</p>\n' if section.caption else ""
        if not section.links:
            return caption + "<p>none yet</p>"
        items = "\n".join(f'  <li><a href="{html.escape(href)}">{html.escape(label)}</a></li>'
                          for label, href in section.links)
        return f'{caption}<ul class="links">\n{items}\n</ul>'
    raise TypeError(f"not a report section: {section!r}")


def to_html(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The page: a header, a table of contents, then each section under its own heading."""
    parts, contents = [], []
    for number, section in enumerate(sections, 1):
        anchor = f"section-{number}"
        kind = type(section).__name__.lower()
        contents.append(f'  <li><a href="#{anchor}">{html.escape(section.title)}</a></li>')
        parts.append(f'<section id="{anchor}" class="{kind}">\n<h2>{html.escape(section.title)}</h2>\n'
                     f"{_section_body(section)}\n</section>")
    meta = f'<p class="meta">{html.escape(subtitle)}</p>' if subtitle else ""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<header><h1>{html.escape(title)}</h1>{meta}</header>",
        '<nav id="contents"><h2>Contents</h2><ol>', *contents, "</ol></nav>",
        "<main>", *parts, "</main>",
        f"<footer>Written by vlsm-tune on {generated}.</footer>",
        "</body>",
        "</html>",
        "",
    ])


def render(title: str, sections: Sequence[Section], path: str, subtitle: str = "") -> str:
    """Write the page to ``path`` (a local file or ``s3://``), whole or not at all; returns ``path``."""
    fs, target = filesystem_for(path)
    fs.create_dir(posixpath.dirname(target), recursive=True)
    write_atomically(fs, target, to_html(title, sections, subtitle).encode("utf-8"))
    return path


def fidelity_notes() -> list[str]:
    """docs/fidelity.md's text, where the repository's docs are at hand (an editable install)."""
    try:
        return [FIDELITY.read_text()]
    except OSError as e:
        print(f"note: the fidelity notes are not in report.html ({e})")
        return []


def _split_heading(text: str) -> tuple[str, str]:
    """A note's title (its first line's ``# heading``, else "Notes") and the rest of its text."""
    first, _, rest = text.lstrip().partition("\n")
    if first.startswith("# "):
        return first[2:].strip(), rest
    return "Notes", text


def record_links(storage: str, study: str, folder: str = "experiments") -> list[tuple[str, str]]:
    """(label, href) for each record folder of the study: relative (``experiments/<id>/``, beside
    report.html) for a local study, the storage URI for ``s3://``; unfinished ones say so."""
    store = ResultStore(storage, study, folder)
    links = []
    for record_id, files in sorted(store.listing().items()):
        state = "" if finished_in(files) else " (failed)" if "FAILED.json" in files else " (not finished)"
        relative = f"{folder}/{quote(record_id)}/"
        links.append((record_id + state, f"{store.uri}/{relative}" if is_remote(store.uri) else relative))
    return links


def write_html_report(storage: str, study: str, tables: Mapping[str, Any], figures: Mapping[str, Any],
                      notes: Sequence[str] | None = None, *, title: str | None = None) -> str:
    """Write ``<storage>/<study>/report.html``: ``tables`` (title -> DataFrame or Markdown text, in order),
    ``figures`` (title -> image path or bytes), ``notes`` (Markdown texts, each titled by its first
    ``# heading``; None: the fidelity notes, docs/fidelity.md) and links to every experiment's and
    evaluation's folder. Returns the page's URI."""
    uri = f"{storage.rstrip('/')}/{study}"
    sections: list[Section] = [Table(name, data) for name, data in tables.items()]
    sections += [Figure(name, image) for name, image in figures.items()]
    for text in fidelity_notes() if notes is None else notes:
        heading, body = _split_heading(text)
        sections.append(Notes(heading, body))
    sections.append(Links("Experiments", record_links(storage, study, "experiments"),
                          "Each experiment's folder: spec.json, result.json, per_image.parquet, DONE."))
    if evaluations := record_links(storage, study, "evaluations"):
        sections.append(Links("Evaluations", evaluations, "Each ablate and ood run's folder."))
    return render(title or f"vlsm-tune study {study}: results", sections, f"{uri}/report.html",
                  subtitle=f"Study {study} in {uri}. Dice in % where a column ends in _%.")
