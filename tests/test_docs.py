"""The documentation: a short README, and a site that ``mkdocs build --strict`` builds (a broken
link, a missing page or a page left out of the navigation fails)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_its_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "./scripts/demo" in text and "./scripts/test" in text and "edge-asd enroll" in text
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"


def test_every_page_is_in_the_navigation():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    in_nav = {page for entry in config["nav"] for page in entry.values()}
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages <= in_nav, sorted(pages - in_nav)


def test_the_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs is not None, "mkdocs is part of the dev extra: scripts/setup device train dev"
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "alarms" / "index.html").is_file()
    assert (tmp_path / "site" / "results" / "persistent" / "index.html").is_file()  # the benchmarks' own pages
