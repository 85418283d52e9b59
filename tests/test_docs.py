"""The README and docs/*.md stay usable: every documented ``rlvr-linear`` command parses, the README stays short,
and its links lead somewhere.

Commands are only parsed by the real command-line parser (``rlvr_linear.cli.build_parser``), never run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from rlvr_linear.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 380
MAX_LINE = 120

_FENCE = re.compile(r"^```(\S*)\s*$")
_ENV = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)+")  # OMP_NUM_THREADS=1 rlvr-linear ...


def bash_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of every ```bash block, lines ending in a backslash joined with the next."""
    out: list[tuple[int, str]] = []
    in_bash, pending, start = False, "", 0
    for i, line in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(line.strip())
        if fence:
            in_bash = not in_bash and fence[1] == "bash" if not in_bash else False
            pending = ""
            continue
        if not in_bash:
            continue
        if not pending:
            start = i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page:line, argv after ``rlvr-linear``) of every documented command line; placeholders are skipped."""
    found = []
    for page in PAGES:
        for lineno, line in bash_lines(page.read_text()):
            line = _ENV.sub("", line.strip())
            if not line.startswith("rlvr-linear ") or "..." in line:
                continue
            try:
                argv = shlex.split(line, comments=True)
            except ValueError:
                if "<" in line or ">" in line:  # a <PLACEHOLDER> that is no shell syntax
                    continue
                raise
            found.append((f"{page.relative_to(ROOT)}:{lineno}", argv[1:]))
    return found


COMMANDS = documented_commands()


def test_docs_hold_commands():
    pages = {where.split(":")[0] for where, _ in COMMANDS}
    assert len(COMMANDS) >= 40 and {"README.md", "docs/guide.md"} <= pages


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(parser, where, argv, capsys):
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `rlvr-linear {shlex.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")
    assert getattr(args, "func", None), f"{where}: `rlvr-linear {shlex.join(argv)}` names no command"


def test_bash_lines_join_continuations_and_skip_other_blocks():
    text = "```bash\nrlvr-linear a \\\n  --b c   # note\n```\n```python\nrlvr-linear x\n```\n```\nrlvr-linear y\n```\n"
    assert bash_lines(text) == [(2, "rlvr-linear a    --b c   # note")]
    assert shlex.split(bash_lines(text)[0][1], comments=True) == ["rlvr-linear", "a", "--b", "c"]


def test_readme_is_short_and_narrow():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    wide = [f"{i}: {len(line)}" for i, line in enumerate(lines, 1) if len(line) > MAX_LINE]
    assert not wide, f"README.md lines over {MAX_LINE} characters: {wide}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # no headings inside code blocks
    return {_slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


_LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_lead_to_files_and_headings(page):
    """Every relative link (README.md to docs/ included) points to an existing file, and to an existing heading."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    bad = []
    for m in _LINK.finditer(text):
        target = m[1] or m[2]
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no such heading")
    assert not bad, f"{page.relative_to(ROOT)}: {bad}"


def test_readme_links_to_the_docs_pages():
    text = (ROOT / "README.md").read_text()
    linked = {m[1].split("#")[0] for m in re.finditer(r"\]\((docs/[^)\s]+)\)", text)}
    pages = {"guide", "results", "smollm2", "benchmarks", "reliability"}
    assert {f"docs/{name}.md" for name in pages} <= linked


def _block(text: str, name: str) -> str:
    return text.split(f"<!-- BEGIN {name} -->", 1)[1].split(f"<!-- END {name} -->", 1)[0]


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"[-+]?\d+\.\d+", text.replace("−", "-")))


def test_headline_real_model_cells_quote_the_rendered_results():
    """Every number in the headline table's real-model column is one of the real-model results table's (which
    render_readme.py renders from experiments/results/smollm2/summary.json), so the front door quotes only measured
    numbers."""
    rows = [r for r in _block((ROOT / "README.md").read_text(), "headline").strip().splitlines()[2:]]
    cells = [r.strip().strip("|").split("|")[-1] for r in rows]
    assert len(cells) >= 5
    rendered = _numbers(_block((ROOT / "docs" / "smollm2.md").read_text(), "smollm2"))
    quoted = set().union(*(_numbers(c) for c in cells))
    assert quoted <= rendered, sorted(quoted - rendered)
