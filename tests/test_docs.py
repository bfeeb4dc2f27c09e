"""The documentation: README.md is a short front page, the rest is the MkDocs site of docs/ (mkdocs.yml).

The site builds with ``mkdocs build --strict`` and without a warning (mkdocs.yml's ``validation`` block makes a page
missing from nav, a broken link and a broken anchor warnings); every page of docs/ is in nav; README.md stays within
its line budget and every relative link in it reaches an existing file (and, for a docs page, an existing heading).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: README.md's budget (issue #26 item 2: a front page; the rest lives in docs/)
README_MAX_LINES = 250
#: a markdown link or image target: ](path) or ](path#anchor), optionally followed by a "title"
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_mkdocs_build_is_strict_and_clean(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert not warnings, "\n".join(warnings)
    assert (tmp_path / "site" / "index.html").is_file()


def _headings(path: Path) -> set[str]:
    """The anchors of ``path``'s headings as MkDocs makes them (fenced code blocks skipped)."""
    anchors, fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} +(.+?) *#*$", line)):
            anchors.add(slugify(m.group(1).replace("`", ""), "-"))
    return anchors


def test_readme_is_short_and_its_links_resolve() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move text to docs/"
    text = "\n".join(lines)
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    assert any(t.startswith("docs/") for t in targets), "README.md links no docs page"
    broken = []
    for target in targets:
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in _headings(README):
                broken.append(target)
            continue
        file = (ROOT / path).resolve()
        if not file.is_file():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _headings(file):
            broken.append(target)
    assert not broken, f"README.md links to missing files or headings: {broken}"


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _nav_pages(v)]
    if isinstance(node, list):
        return [p for v in node for p in _nav_pages(v)]
    return []


def test_every_docs_page_is_in_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"
    nav = _nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(nav)) == pages, f"pages not in mkdocs.yml's nav: {sorted(set(pages) - set(nav))}; " \
                                      f"nav entries without a page: {sorted(set(nav) - set(pages))}"
    assert len(nav) == len(set(nav)), "a page is in nav twice"


def test_generated_column_lists_are_current() -> None:
    """The score CSV's columns in docs/scoring.md are generated (scripts/doc_columns.py), and the metrics.json
    contract in docs/protocol.md names every score id of a default V2 run, so neither list goes stale silently."""
    out = subprocess.run([sys.executable, "scripts/doc_columns.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    from fevae.api import compose_config
    from fevae.evaluation.settings import score_names
    from fevae.metrics.ood import parse_score_name

    contract = (DOCS / "protocol.md").read_text(encoding="utf-8").split("```json", 1)[1].split("```", 1)[0]
    ids = {parse_score_name(n)[1] for n in score_names(compose_config("train", ["+experiment=v2_gaussian"]))}
    missing = sorted(i for i in ids if f'"{i}"' not in contract)
    assert not missing, f"docs/protocol.md's metrics.json contract does not name {missing}"
