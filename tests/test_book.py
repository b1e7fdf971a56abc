"""The book builds with zero warnings, and every page in _toc.yml renders offline in headless Chromium.

Select with `pytest -m book`, leave out with `-m "not book"`. The browser test needs Debian's chromium
(`apt-get install -y chromium`) and the `playwright` package; without them it is skipped, unless
REQUIRE_BROWSER=1. Full-page screenshots go to artifacts/screenshots/, the build log to artifacts/.
The book is built from scratch in a temporary folder; BOOK_OUTPUT=DIR builds into DIR instead, and a
second run there is incremental (only changed pages are read and executed again): quick to check CSS.
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

import nbformat

from tools import notebooks
from tools.notebooks import SETUP_TAG
from utils.plotting import WIDGET_CLASS, book_assets

pytestmark = pytest.mark.book

BOOK_ROOT = Path(__file__).resolve().parents[1]
BUILD_ARGS = ["build", ".", "-W", "-n", "--keep-going"]  # as `make book`, plus --path-output below
ARTIFACTS = BOOK_ROOT / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
SOURCE_SUFFIXES = (".md", ".ipynb")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Build:
    html: Path
    returncode: int
    log: str
    seconds: float


def toc_docnames() -> list[str]:
    """Every page _toc.yml asks for (globs expanded as Sphinx does: sorted, without suffix)."""
    toc = yaml.safe_load((BOOK_ROOT / "_toc.yml").read_text(encoding="utf-8"))
    names = [toc["root"]]

    def walk(entries: list | None) -> None:
        for entry in entries or []:
            if "file" in entry:
                names.append(str(Path(entry["file"]).with_suffix("")) if entry["file"].endswith(SOURCE_SUFFIXES)
                             else entry["file"])
            if "glob" in entry:
                matches = (p for p in BOOK_ROOT.glob(entry["glob"]) if p.suffix in SOURCE_SUFFIXES)
                names.extend(sorted(p.relative_to(BOOK_ROOT).with_suffix("").as_posix() for p in matches))
            walk(entry.get("sections"))
            for part in entry.get("parts", []):
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return names


def colab_url(notebook: str) -> str:
    """Where the badge of chapter `notebook` must point: its exercise twin, at the configured branch."""
    repository = yaml.safe_load((BOOK_ROOT / "_config.yml").read_text(encoding="utf-8"))["repository"]
    url = urlsplit(repository["url"])
    assert url.netloc == "github.com", f"_config.yml repository.url must be on github.com, got {url.geturl()}"
    return (f"https://colab.research.google.com/github/{url.path.strip('/').removesuffix('.git')}"
            f"/blob/{repository['branch']}/chapters/{notebook}.ipynb")


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Build:
    """The book, built from scratch (every notebook executed) the way `make book` builds it."""
    out = Path(os.environ["BOOK_OUTPUT"]).resolve() if os.environ.get("BOOK_OUTPUT") else tmp_path_factory.mktemp("book")
    command = [str(Path(sys.executable).with_name("jupyter-book")), *BUILD_ARGS, "--path-output", str(out)]
    start = time.monotonic()
    done = subprocess.run(command, cwd=BOOK_ROOT, capture_output=True, text=True, timeout=7200)
    build = Build(out / "_build" / "html", done.returncode, ANSI.sub("", done.stdout + done.stderr),
                  time.monotonic() - start)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "book-build.log").write_text(f"$ {' '.join(command)}\n{build.log}", encoding="utf-8")
    print(f"\nbook built in {build.seconds:.0f} s (log: artifacts/book-build.log)")
    return build


def built_html(book: Build) -> Path:
    """The HTML folder, or a failure that points at the build's own test when the build wrote none."""
    if not (book.html / "index.html").is_file():
        pytest.fail("the build wrote no HTML (did a notebook fail?): see test_book_builds_without_warnings")
    return book.html


def test_book_builds_without_warnings(book):
    warnings = re.findall(r"^.*\b(?:WARNING|ERROR|CRITICAL): .*$", book.log, flags=re.MULTILINE)
    failed_cell = book.log.find("An error occurred while executing the following cell")
    excerpt = book.log[failed_cell:failed_cell + 3000] if failed_cell >= 0 else book.log[-3000:]
    assert book.returncode == 0 and not warnings, (
        f"`jupyter-book {' '.join(BUILD_ARGS)}` exited {book.returncode} with {len(warnings)} warning(s):\n"
        + "\n".join(warnings[:20]) + f"\n--- from the log (artifacts/book-build.log) ---\n{excerpt}")


def test_every_page_in_the_toc_is_built(book):
    html = built_html(book)
    missing = [name for name in toc_docnames() if not (html / f"{name}.html").is_file()]
    assert not missing, f"pages in _toc.yml that the build did not write: {missing}"


def test_bundles_ship_once_and_no_page_inlines_them(book):
    """plotly.js (4.8 MB) and circuitsvis (1.3 MB) are files in _static; pages carry only figure data."""
    html = built_html(book)
    for name, (source, _) in book_assets().items():
        shipped = html / "_static" / "course" / name
        assert shipped.is_file() and shipped.stat().st_size == source.stat().st_size, f"{shipped} missing"
    heads = {asset: source.read_text(encoding="utf-8")[:300] for asset, (source, _) in book_assets().items()}
    sizes = {}
    for name in toc_docnames():
        page = (html / f"{name}.html").read_text(encoding="utf-8")
        sizes[name] = len(page.encode())
        inlined = [asset for asset, head in heads.items() if head in page]
        assert not inlined, f"{name}.html inlines {inlined}"
    print("\npage sizes (KB): " + ", ".join(f"{name} {size / 1024:.0f}" for name, size in sizes.items()))
    heavy = {name: size for name, size in sizes.items() if size > 2_000_000}
    assert not heavy, f"pages over 2 MB (bytes): {heavy}; plot less data (fewer points, float32)"


# ------------------------------------------------------------------------------------ the browser
@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by playwright; skipped (or failed, with REQUIRE_BROWSER=1) if absent."""
    problem = None if CHROMIUM.is_file() else f"{CHROMIUM} not found: install it with `apt-get install -y chromium`"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = problem or "the python package playwright is not installed (pip install -r requirements.txt)"
    if problem:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site(book):
    """The built HTML served on 127.0.0.1 (a random free port), as a reader's browser would fetch it."""
    html = built_html(book)

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietHandler, directory=html))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


WAIT_FOR_DRAWING = f"""() => {{
  const plots = [...document.querySelectorAll('.plotly-graph-div')].every(gd => gd._fullLayout);
  const widgets = [...document.querySelectorAll('.{WIDGET_CLASS}')].every(w => w.querySelector('canvas'));
  return plots && widgets;
}}"""

# Where a `$` or a backslash command is expected rather than a rendering failure.
RAW_MARKUP_ALLOWED = ("pre, code, kbd, samp, script, style, textarea, svg, .math, mjx-container, .MathJax, "
                      ".highlight, .cell_output, .output, .plotly-graph-div")

PAGE_FACTS = f"""async () => {{
  if (window.MathJax && MathJax.startup) await MathJax.startup.promise;
  const all = (selector) => [...document.querySelectorAll(selector)];
  const longestLine = (text) => text.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), '').slice(0, 100);
  // MyST or LaTeX left as text in the prose: a `$` or a `\\command` outside code, outputs, maths and figures.
  const rawMarkup = () => {{
    const found = [];
    const walker = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {{
      const node = walker.currentNode;
      if (node.parentElement.closest('{RAW_MARKUP_ALLOWED}')) continue;
      const match = node.textContent.match(/\\$|\\\\[A-Za-z]+/);
      if (match) found.push(node.textContent.trim().slice(0, 120));
    }}
    return found;
  }};
  return {{
    plots: all('.plotly-graph-div').map(gd => ({{
      traces: (gd.data || []).length,
      svg: !!gd.querySelector('svg.main-svg'),
      drawn: gd.querySelectorAll('g.trace, g.hm, g.contour, g.imagelayer image').length }})),
    widgets: all('.{WIDGET_CLASS}').map(w => [...w.querySelectorAll('canvas')].map(c => [c.clientWidth, c.clientHeight])),
    mathUnrendered: all('.math').filter(m => !m.querySelector('mjx-container')).length,
    stderr: all('.output.stderr').length,
    setupCells: all('.tag_{SETUP_TAG}').length,
    foldLabels: all('details.above-input summary .collapsed').map(s => s.textContent.trim()),
    colab: all('a[href^="https://colab.research.google.com/"]').map(a => a.href),
    colabBadges: all('a[href^="https://colab.research.google.com/"]').filter(a => a.querySelector('img')).map(a => a.href),
    links: all('a[href]').map(a => a.href),
    rawMarkup: rawMarkup(),
    sideways: all('div.cell pre, div.cell div.highlight, div.cell_output > .output')
      .filter(el => el.scrollWidth > el.clientWidth + 1)
      .map(el => `${{el.scrollWidth}} px wide in ${{el.clientWidth}} px: ${{longestLine(el.innerText.trim())}}`),
    // Display maths wider than its column after course.js has fitted it: cut off, or behind a scroll bar.
    wideMaths: all('mjx-container[display="true"]')
      .filter(m => m.scrollWidth > m.clientWidth + 1)
      .map(m => (m.querySelector('mjx-assistive-mml')?.textContent || '').slice(0, 80)),
    hints: all('details.course-hint').map(d => ({{open: d.open, summary: d.querySelector('summary')?.textContent.trim()}})),
    markers: all('div.cell_input').filter(c => /^\\s*# (END )?(EXERCISE|SOLUTION)\\s*$/m.test(c.textContent)).length,
  }};
}}"""


def broken_local_link(href: str, html_root: Path) -> str | None:
    """Why a same-site link does not resolve to a built file (and anchor), or None if it does."""
    parts = urlsplit(href)
    target = html_root / unquote(parts.path.lstrip("/"))
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return f"{href}: no file {target.relative_to(html_root)}"
    anchor = unquote(parts.fragment)
    if anchor and target.suffix == ".html":
        text = target.read_text(encoding="utf-8")
        if not re.search(rf'\b(?:id|name)="{re.escape(anchor)}"', text):
            return f"{href}: {target.relative_to(html_root)} has no anchor #{anchor}"
    return None


@pytest.mark.parametrize("docname", toc_docnames())
def test_page_renders_offline_in_chromium(docname, book, site, browser):
    context = browser.new_context(viewport=VIEWPORT)
    blocked, failed, errors = [], [], []

    def only_this_site(route):
        if route.request.url.startswith(site):
            route.continue_()
        else:
            blocked.append(f"{route.request.resource_type} {route.request.url}")
            route.abort()

    context.route("**/*", only_this_site)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: request.url.startswith(site) and failed.append(request.url))
    page.on("response", lambda response: response.status >= 400 and failed.append(f"{response.status} {response.url}"))
    try:
        page.goto(f"{site}{docname}.html", wait_until="load")
        page.wait_for_load_state("networkidle")
        try:
            page.wait_for_function(WAIT_FOR_DRAWING, timeout=20_000)
        except Exception:  # the checks below say what was not drawn
            pass
        facts = page.evaluate(PAGE_FACTS)
        # Screenshot at the page's full height, so that no chart is resized while it is captured.
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": VIEWPORT["width"], "height": min(height, 30_000)})
        page.wait_for_timeout(300)
        shots = ARTIFACTS / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=shots / f"{docname.replace('/', '__')}.png", full_page=True)
    finally:
        context.close()

    problems = [f"JavaScript error: {error}" for error in errors]
    problems += [f"failed request: {url}" for url in failed]
    problems += [f"needs the network: {request}" for request in blocked]  # the Colab badge is local too
    for i, plot in enumerate(facts["plots"]):
        if not (plot["svg"] and plot["traces"] and plot["drawn"]):
            problems.append(f"plotly figure {i} not drawn: {plot}")
    for i, canvases in enumerate(facts["widgets"]):
        if not canvases or min(min(size) for size in canvases) < 50:
            problems.append(f"circuitsvis widget {i} not drawn (canvas sizes {canvases})")
    if facts["mathUnrendered"]:
        problems.append(f"{facts['mathUnrendered']} formula(s) not typeset by MathJax")
    problems += [f"MyST/LaTeX left as text: {text!r}" for text in facts["rawMarkup"]]
    problems += [f"code or output scrolls sideways at {VIEWPORT['width']} px: {line!r}" for line in facts["sideways"]]
    problems += [f"display equation wider than the text column (split it over lines): {text!r}"
                 for text in facts["wideMaths"]]
    if facts["markers"]:
        problems.append(f"{facts['markers']} solution cell(s) show the authoring markers or the learner's stub")
    problems += [f"hint {hint['summary']!r} is unfolded when the page opens" for hint in facts["hints"] if hint["open"]]
    if facts["stderr"]:
        problems.append(f"{facts['stderr']} stderr output(s) on the page")
    if facts["setupCells"]:
        problems.append("the Colab setup cell (tag remove-cell) is shown")
    problems += [f"fold label {label!r}, expected 'Show solution'" for label in facts["foldLabels"]
                 if label != "Show solution"]
    if docname.startswith("solutions/"):
        exercises = colab_url(Path(docname).name)
        if not facts["colabBadges"] or set(facts["colabBadges"]) != {exercises}:
            problems.append(f"Colab badge links to {facts['colabBadges']}, expected {exercises}")
        solved = exercises.replace("/chapters/", "/solutions/")
        source = nbformat.read(BOOK_ROOT / f"{docname}.ipynb", as_version=4)
        hinted = sum(len(exercise.hints) for exercise in notebooks.exercises(source.cells, docname))
        if len(facts["hints"]) != hinted:
            problems.append(f"{len(facts['hints'])} folded hint(s) on the page, the notebook has {hinted}")
        problems += [f"Colab link to another notebook: {href}" for href in facts["colab"]
                     if href not in (exercises, solved)]
    problems += filter(None, (broken_local_link(href, book.html)
                              for href in set(facts["links"]) if href.startswith(site)))
    assert not problems, f"{docname}.html:\n  " + "\n  ".join(problems)
