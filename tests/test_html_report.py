"""report.html in a real browser: headless Chromium opens the page from file://, its rendered DOM has the
tables, the embedded figure, the notes and the links, and its screenshot shows them (not a blank page).
The browser comes from the test setup (tests/install_browser.sh, run by `make test`); without one the
test skips on a developer's machine and fails under CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli import kill_session

from datasets.storage import filesystem_for
from orchestrator.html_report import NA_REP, Figure, Links, Notes, Table, render, to_html, write_html_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FINISHED, FAILED = "clipseg-frozen-synth_pairs-p6-41c0a7e3", "cris-finetune-kvasir_polyp-p1-0badc0de"


def browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    message = "no chromium on PATH (make test installs Debian's chromium: tests/install_browser.sh)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI's test setup always installs it")
    pytest.skip(message)


def open_in_browser(page: Path, tmp_path: Path, *args: str) -> str:
    """Run headless Chromium on the page with ``args``; returns its stdout. The profile is a fresh
    folder, no host name resolves, and every process it started is killed after, by PID."""
    command = [browser(), "--headless", "--no-sandbox",  # no sandbox: root, and containers without namespaces
               "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri()]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        kill_session(proc)
    assert proc.returncode == 0, err[-2000:]
    return out


class Page(HTMLParser):
    """What a rendered DOM holds: its tables (caption, header cells, body cells), images and links."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[dict] = []
        self.images: list[dict] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self._cell: list[str] | None = None
        self._in = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "table":
            self.tables.append({"caption": "", "headers": [], "cells": []})
        elif tag in ("caption", "th", "td") and self.tables:
            self._in, self._cell = tag, []
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "a":
            self.links.append(attrs.get("href", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == self._in and self._cell is not None:
            text = "".join(self._cell).strip()
            table = self.tables[-1]
            if tag == "caption":
                table["caption"] = text
            else:
                table["headers" if tag == "th" else "cells"].append(text)
            self._cell, self._in = None, ""

    def table(self, header: str) -> dict:
        found = [t for t in self.tables if header in t["headers"]]
        assert len(found) == 1, f"{len(found)} tables with the header {header!r}"
        return found[0]


def red_figure(path: Path) -> Path:
    """A small PNG drawn with matplotlib's Agg canvas, mostly pure red, so the screenshot shows it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(4, 3), dpi=80, facecolor=(1, 0, 0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(facecolor=(1, 0, 0))
    axes.bar(["P0", "P1", "P6"], [51.7, 70.2, 86.7], color="navy")
    axes.set_ylabel("dice (%)")
    figure.savefig(path, facecolor=figure.get_facecolor())
    return path


def study(tmp_path: Path) -> tuple[str, str]:
    """A local study folder with one finished and one failed experiment (their markers only)."""
    storage = tmp_path / "runs"
    (storage / "demo" / "experiments" / FINISHED).mkdir(parents=True)
    (storage / "demo" / "experiments" / FINISHED / "DONE").write_text("")
    (storage / "demo" / "experiments" / FAILED).mkdir()
    (storage / "demo" / "experiments" / FAILED / "FAILED.json").write_text("{}")
    return str(storage), "demo"


def tables() -> dict[str, pd.DataFrame | str]:
    results = pd.DataFrame({"experiment_id": [FINISHED, "cris-finetune-kvasir_polyp-p6-12345678"],
                            "model": ["clipseg", "cris"], "dice_mean_%": [86.7123, None]})
    results.attrs["caption"] = "Dice (%) per image at original resolution, mean over the test set."
    published = pd.DataFrame({"CLIPSeg": [83.5, 71.25], "CRIS": [88.0, pd.NA]},
                             index=pd.Index(["kvasir_polyp", "isic"], name="dataset"))
    markdown = "| prompt | words |\n|---|---|\n| P6 | a <b>small</b> polyp |\n"
    return {"Results per experiment": results, "Published (Table 2)": published, "Prompts": markdown}


def test_report_html_in_chromium_shows_tables_figure_notes_and_links(tmp_path):
    from PIL import Image

    storage, name = study(tmp_path)
    figure = red_figure(tmp_path / "dice.png")
    uri = write_html_report(storage, name, tables(), {"Dice by prompt": figure},
                            ["# Fidelity notes\n\nTrained as run: `--as-released` gives the released code's "
                             "settings.\n\n| item | paper |\n|---|---|\n| loss | Dice + 0.2 x BCE |\n"])
    page = Path(uri)
    assert page == Path(storage) / name / "report.html" and page.is_file()

    dom = Page(open_in_browser(page, tmp_path, "--dump-dom"))
    results = dom.table("dice_mean_%")
    assert results["caption"].startswith("Dice (%) per image at original resolution")
    assert {"experiment_id", "model"} <= set(results["headers"])
    assert "86.71" in results["cells"] and NA_REP in results["cells"]  # floats at 2 decimals, a missing cell
    published = dom.table("CLIPSeg")
    assert published["headers"] == ["dataset", "CLIPSeg", "CRIS"]  # a named index: a column
    assert published["cells"] == ["kvasir_polyp", "83.50", "88.00", "isic", "71.25", NA_REP]
    assert "a small polyp" in dom.table("prompt")["cells"]  # a Markdown table, its inline HTML kept
    assert dom.table("item")["cells"] == ["loss", "Dice + 0.2 x BCE"]  # the notes' own table
    assert len(dom.images) == 1 and dom.images[0]["src"].startswith("data:image/png;base64,")
    assert dom.images[0]["alt"] == "Dice by prompt"
    # Links: the contents to each section, each experiment's folder relative to the page, and it is there.
    sections = [link for link in dom.links if link.startswith("#")]
    assert len(sections) == 6 and {s[1:] for s in sections} <= dom.ids
    folders = [link for link in dom.links if not link.startswith("#")]
    assert folders == [f"experiments/{FINISHED}/", f"experiments/{FAILED}/"]
    assert all((page.parent / link).is_dir() for link in folders)
    assert not {"script", "link", "iframe"} & set(dom.tags)  # self-contained: nothing loads from elsewhere

    shot = tmp_path / "screenshot.png"
    open_in_browser(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 50, "a screenshot of one or a few colours: a blank page"
    non_white = (pixels.min(axis=1) < 235).mean()
    assert non_white > 0.03, f"only {non_white:.1%} of the screenshot is not white"
    red = ((pixels[:, 0] > 230) & (pixels[:, 1] < 40) & (pixels[:, 2] < 40)).sum()
    assert red > 0.5 * 320 * 240, f"the figure (320 x 240 px, mostly red) is not on the screen: {red} red pixels"


def test_the_page_escapes_data_and_embeds_only_data_uris(tmp_path):
    frame = pd.DataFrame({"prompt": ["<script>alert(1)</script>"], "dice": [0.5]})
    png = red_figure(tmp_path / "f.png").read_bytes()
    text = to_html("t <&>", [Table("T", frame, caption="a <caption>"), Figure("F", png),
                            Figure("missing", tmp_path / "none.png"), Notes("N", "# Heading\n\n*it*"),
                            Links("L", [("a&b", "experiments/x y/")])])
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<title>t &lt;&amp;&gt;</title>" in text and "<caption>a &lt;caption&gt;</caption>" in text
    assert "figure missing" in text  # a missing figure is shown as such; the rest is still written
    assert '<h3 id="heading">Heading</h3>' in text and "<em>it</em>" in text  # notes' headings under the section's
    assert 'href="experiments/x y/">a&amp;b</a>' in text
    assert "http://" not in text.replace("http-equiv", "") and "https://" not in text
    assert "Content-Security-Policy" in text
    render("t", [Table("T", frame)], str(tmp_path / "deep" / "page.html"))
    assert (tmp_path / "deep" / "page.html").read_text().startswith("<!DOCTYPE html>")


def test_write_html_report_on_s3_links_to_the_storage_uris(s3_bucket, tmp_path):
    storage = f"{s3_bucket}/runs"
    fs, root = filesystem_for(f"{storage}/demo")
    fs.create_dir(f"{root}/experiments/{FINISHED}", recursive=True)
    with fs.open_output_stream(f"{root}/experiments/{FINISHED}/DONE") as out:
        out.write(b"")
    with fs.open_output_stream(f"{root}/figures/dice.png") as out:  # a figure in the bucket
        out.write(red_figure(tmp_path / "dice.png").read_bytes())
    uri = write_html_report(storage, "demo", tables(), {"Dice": f"{storage}/demo/figures/dice.png"}, notes=None)
    assert uri == f"{storage}/demo/report.html"
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as f:
        text = f.read().decode()
    dom = Page(text)
    assert f"{storage}/demo/experiments/{FINISHED}/" in dom.links
    assert dom.images[0]["src"].startswith("data:image/png;base64,")
    assert "--as-released" in text  # notes=None: the fidelity notes, docs/fidelity.md
