"""Sphinx extension for the course book: one offline copy of plotly.js and circuitsvis, and a kernel set-up.

- Notebook kernels started by the build inherit this process's environment: it puts the repository on
  PYTHONPATH (so `import utils` works from solutions/), tells utils.plotting that the book is being
  built (widgets then leave their JavaScript to the page), and points IPYTHONDIR at a profile whose
  startup file makes `tqdm.auto` the console bar: it writes to stderr, which the book removes, where
  an ipywidgets bar would leave an empty box and widget state on a page that cannot draw it.
- The JavaScript bundles named by `utils.plotting.book_assets()` are copied from the installed packages
  into `_static/course/` once per build and loaded only by pages whose HTML uses them.
- book/_static/ (the course's CSS and script, the Colab badge, the course diagram) is a static folder of
  every page; course.css wraps code and printed output and styles the folded exercise hints, course.js
  sets a display equation wider than the text column just small enough to fit.
- Each chapter notebook is rewritten as Sphinx reads it (the files on disk stay as they are): a solution cell
  shows the solution only, without the learner's commented stub and the `# EXERCISE`/`# SOLUTION` markers
  (`tools.notebooks.solution_source`); the Colab badge's image, an external URL that Colab and GitHub show,
  becomes the local copy in book/_static/, so the page works offline; and a link to a glossary entry,
  `[text](../book/glossary.md#term-NAME)` (a plain link in Jupyter, Colab and on GitHub), becomes the
  `{term}` role that Sphinx checks and links.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import shutil
import sys
from pathlib import Path

from sphinx.application import Sphinx

REPO_ROOT = Path(__file__).resolve().parents[2]  # book/_ext/course_book.py -> the repository
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from tools.notebooks import COLAB_BADGE, has_solution, solution_source  # noqa: E402
from utils.plotting import BOOK_BUILD_ENV, book_assets  # noqa: E402  (needs the path above)

STATIC_DIR = "course"
BOOK_STATIC = REPO_ROOT / "book" / "_static"  # the course's own static files
LOCAL_BADGE = "book/_static/colab-badge.svg"  # relative to the repository root
GLOSSARY = REPO_ROOT / "book" / "glossary.md"
GLOSSARY_LINK = re.compile(r"\[(?P<text>[^\]]+)\]\((?:\.\./)*book/glossary\.md#term-(?P<slug>[a-z0-9-]+)\)")
KERNEL_STARTUP = """\
# Written by book/_ext/course_book.py for the kernels of a book build: console progress bars.
import tqdm.auto, tqdm.autonotebook, tqdm.std
tqdm.auto.tqdm = tqdm.autonotebook.tqdm = tqdm.std.tqdm
tqdm.auto.trange = tqdm.autonotebook.trange = tqdm.std.trange
"""


def _kernel_environment(app: Sphinx) -> None:
    """Environment variables (and an IPython profile) every notebook kernel of this build inherits."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ[BOOK_BUILD_ENV] = "1"
    ipython_dir = Path(app.doctreedir).parent / ".ipython"
    startup = ipython_dir / "profile_default" / "startup" / "00-course-book.py"
    startup.parent.mkdir(parents=True, exist_ok=True)
    startup.write_text(KERNEL_STARTUP, encoding="utf-8")
    os.environ["IPYTHONDIR"] = str(ipython_dir)


def _add_static_path(app: Sphinx, config) -> None:
    """Serve book/_static/ from every page's _static/."""
    if str(BOOK_STATIC) not in config.html_static_path:
        config.html_static_path.append(str(BOOK_STATIC))


@functools.cache
def glossary_terms() -> dict[str, str]:
    """Every term of book/glossary.md, by the anchor Sphinx gives it (`term-` + this key)."""
    from docutils.nodes import make_id

    text = GLOSSARY.read_text(encoding="utf-8")
    block = re.search(r"```\{glossary\}\n(.*?)\n```", text, re.S)
    terms = [line.strip() for line in block.group(1).split("\n") if line.strip() and not line[0].isspace()]
    return {make_id(term): term for term in terms}


def _term_roles(markdown: str, where: str) -> str:
    """Glossary links as `{term}` roles; a link to a term the glossary lacks is an error."""
    def role(match: re.Match) -> str:
        term = glossary_terms().get(match["slug"])
        if term is None:
            raise ValueError(f"{where}: the link {match[0]!r} names no term of book/glossary.md; "
                             f"terms: {sorted(glossary_terms())}")
        return f"{{term}}`{match['text']} <{term}>`"
    return GLOSSARY_LINK.sub(role, markdown)


def _rewrite_notebook(app: Sphinx, docname: str, source: list[str]) -> None:
    """As Sphinx reads a chapter notebook: solutions without stub or markers, and the local Colab badge."""
    if not docname.startswith("solutions/") or not app.env.doc2path(docname).endswith(".ipynb"):
        return
    notebook = json.loads(source[0])
    badge = posixpath.relpath(LOCAL_BADGE, posixpath.dirname(docname))
    for index, cell in enumerate(notebook["cells"]):
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code" and has_solution(text):
            text = solution_source(text, f"{docname}: cell {index}").strip("\n")
        elif cell["cell_type"] == "markdown":
            text = _term_roles(text.replace(f"]({COLAB_BADGE})", f"]({badge})"), f"{docname}: cell {index}")
        cell["source"] = text
    source[0] = json.dumps(notebook, ensure_ascii=False)


def _keep_math_with_punctuation(app: Sphinx, doctree, docname: str) -> None:
    """Inline maths and the characters right after it (`$x$:`, `$p$-row`) in one unbreakable span, so a
    line never starts with the punctuation that closes a formula."""
    from docutils import nodes

    for math in list(doctree.findall(nodes.math)):
        parent = math.parent
        if parent is None:
            continue
        # by identity: Text nodes are strings, so list.index and remove would match an equal earlier one
        i = next(j for j, child in enumerate(parent.children) if child is math)
        after = parent.children[i + 1] if i + 1 < len(parent.children) else None
        glued = re.match(r"\S+", after.astext()) if isinstance(after, nodes.Text) else None
        if glued is None:
            continue
        rest = after.astext()[glued.end():]
        span = nodes.inline(classes=["course-nowrap"])
        parent[i] = span
        span += [math, nodes.Text(glued[0])]
        if rest:
            parent[i + 1] = nodes.Text(rest)
        else:
            del parent[i + 1]


def _add_page_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Load each bundle in the <head> of the pages whose body uses it (before the figures' own scripts)."""
    body = context.get("body", "")
    for name, (_, marker) in book_assets().items():
        if marker in body:
            app.add_js_file(f"{STATIC_DIR}/{name}", priority=400)
    _drop_duplicate_scripts(context["script_files"])


def _drop_duplicate_scripts(scripts: list) -> None:
    """Keep the first of equal <script>s: Sphinx 7.4 lists inline ones added by extensions twice (filename
    None, then ''), and sphinx-thebe's `const THEBE_JS_URL` declared twice is a JavaScript error."""
    seen = set()
    unique = []
    for script in scripts:
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def _copy_assets(app: Sphinx, exception: Exception | None) -> None:
    """Copy the bundles from the installed packages into the HTML build's _static/course/."""
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / STATIC_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name, (source, _) in book_assets().items():
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: reinstall the package that ships it "
                                    f"(pip install -r requirements.txt).")
        shutil.copyfile(source, target / name)


def setup(app: Sphinx) -> dict:
    """Prepare the kernels' environment and hook the bundles into the HTML build."""
    _kernel_environment(app)
    app.connect("config-inited", _add_static_path)
    app.connect("source-read", _rewrite_notebook)
    app.add_css_file("course.css")
    app.add_js_file("course.js")
    app.connect("doctree-resolved", _keep_math_with_punctuation)
    app.connect("html-page-context", _add_page_scripts)
    app.connect("build-finished", _copy_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
