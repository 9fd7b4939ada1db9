"""The documentation site is checked like code: it builds in strict mode, its reference lists every
config key, its tutorials' commands run, and its pages render in a browser.

Tutorial commands are run from the Markdown: a fenced block preceded by ``<!-- test: run OVERRIDES -->``
is run line by line (each line that starts with a stagetune command), with ``OVERRIDES`` appended to
shrink the run and the run directory moved into the test's own folder. Mark a block only when its
commands are cheap with those overrides.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from scripts import site_reference
from tests.helpers.cli import ROOT

DOCS = ROOT / "docs"
SCREENSHOTS = ROOT / "outputs" / "docs-site"
MARK = re.compile(r"<!-- test: run(?P<overrides>[^>]*?)-->\n```(?:bash|sh|console)?\n(?P<block>.*?)```", re.S)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as ``make site`` builds it (strict: any warning fails), into a folder of the test's own."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "WARNING" not in done.stderr, done.stderr[-4000:]
    return out


def page_text(site: Path, page: str) -> str:
    """A built page's text, tags dropped (what a reader sees)."""
    return html.unescape(re.sub(r"<[^>]+>", "", (site / page).read_text()))


def test_the_site_builds_in_strict_mode_with_every_page_in_the_nav(site):
    built = {p.relative_to(site).with_suffix(".md").as_posix() for p in site.rglob("*.html") if p.name != "404.html"}
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert written | set(site_reference.PAGES) == built


def test_the_sites_strict_mode_refuses_a_missing_page_and_a_missing_anchor(tmp_path):
    """The site's own validation settings, on two pages: a link to no page and one to no heading fail the build."""
    settings = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[a page](other.md#nowhere), [no page](missing.md)\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n")
    mini = {"site_name": "check", "strict": True, **{k: settings[k] for k in ("validation", "markdown_extensions", "theme")}}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(mini))
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--site-dir", str(tmp_path / "site")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "missing.md" in done.stderr and "'#nowhere'" in done.stderr, done.stderr[-2000:]


def test_every_schema_key_is_in_the_config_reference(site):
    text = page_text(site, "reference/config.html")
    keys = site_reference.all_schema_keys()
    from stagetune.engine.plan import Stage

    assert {f"plan.stages.NAME.{f.name}" for f in dataclasses.fields(Stage)} <= set(keys)  # the walk reaches nested dataclasses
    missing = [k for k in keys if k not in text]
    assert not missing, f"schema keys missing from the configuration reference: {missing}"


def test_every_trainer_argument_and_every_conf_key_is_in_the_config_reference(site):
    from stagetune.engine.trainer import trainer_defaults

    text = page_text(site, "reference/config.html")
    missing = [f"trainer.{k}" for k in trainer_defaults() if f"trainer.{k}" not in text]
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        source = path.read_text()
        values = yaml.safe_load(source) or {}
        group = path.parent.relative_to(ROOT / "conf").as_posix()
        grouped = group != "." and "# @package _global_" not in source  # its keys live under the group's name
        if group != ".":
            assert f"{group}={path.stem}" in text, f"{path}: no section in the reference"
        for key in site_reference.flatten({k: v for k, v in values.items() if k != "defaults"}):
            shown = f"{group.rsplit('/', 1)[-1]}.{key}" if grouped else key
            if key and key != "_target_" and shown not in text:
                missing.append(f"{path.relative_to(ROOT)}: {shown}")
    assert not missing, f"keys missing from the configuration reference: {missing}"


def test_the_reference_has_every_commands_help_and_every_catalogue_case(site):
    commands = page_text(site, "reference/commands.html")
    for name in site_reference.console_scripts():
        help_text = commands.split(f"$ {name} --help", 1)[1].split("$ stagetune", 1)[0]
        assert name in help_text and len(help_text.strip().splitlines()) >= 3, f"{name} --help is missing from the reference"
    errors = page_text(site, "reference/errors.html")
    cases = site_reference.catalogue_cases()
    assert {name for name, *_ in cases} >= {"CONFIG", "STARTUP", "COMMANDS"}
    for _, _, _, rows in cases:
        assert " ".join(rows[0][0].split()) in " ".join(errors.split())


def tutorial_commands() -> list[tuple[str, str, list[str]]]:
    """Each marked block's commands: (tutorial, command line, the overrides that shrink it)."""
    found = []
    for page in sorted((DOCS / "tutorials").glob("*.md")):
        for match in MARK.finditer(page.read_text()):
            overrides = shlex.split(match["overrides"])
            for line in match["block"].splitlines():
                words = shlex.split(line, comments=True)
                if words and words[0].startswith("stagetune"):
                    found.append((page.stem, line.strip(), overrides))
    return found


def test_the_tutorials_mark_commands_to_run():
    assert {page for page, *_ in tutorial_commands()} >= {"default-demo", "movielens", "sweep-tensorboard"}


@pytest.mark.parametrize("page,line,overrides", tutorial_commands(), ids=[f"{c[0]}: {c[1]}" for c in tutorial_commands()])
def test_a_tutorials_command_runs(tmp_path, page, line, overrides):
    command, *args = shlex.split(line, comments=True)
    module = "stagetune" if command == "stagetune" else f"stagetune.commands.{command.removeprefix('stagetune-').replace('-', '_')}"
    where = [f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", "trainer.enable_progress_bar=false"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", module, *args, *overrides, *where], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    if "-m" in args:
        jobs = list(csv.DictReader((tmp_path / "sweep" / "summary.csv").open()))
        assert jobs and all(job["status"] == "completed" for job in jobs)
    else:
        assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed for this check: apt-get install -y chromium (.ci/run installs it)"
    return found


def browse(page: Path, *flags: str) -> subprocess.CompletedProcess:
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files", *flags, page.as_uri()]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "page,needs",
    [
        ("index.html", ["stagetune", "layer group"]),
        ("tutorials/sweep-tensorboard.html", ["stagetune -m experiment=ratings_synthetic"]),
        ("reference/config.html", ["plan.stages.NAME.pct_start"]),
    ],
    ids=["home", "tutorial", "config-reference"],
)
def test_a_page_renders_in_chromium_with_its_images_and_code(site, page, needs):
    dom = browse(site / page, "--dump-dom", "--virtual-time-budget=5000").stdout
    assert "md-content" in dom and "<code" in dom, f"{page}: no rendered content or code in the DOM"
    text = html.unescape(re.sub(r"<[^>]+>", "", dom))
    assert all(n in text for n in needs), page
    images = re.findall(r'<img[^>]+src="([^"]+)"', dom)
    for src in images:
        target = (site / page).parent / src
        assert target.is_file() and Image.open(target).size[0] > 100, f"{page}: image {src} does not load"
    if page != "reference/config.html":
        assert images, f"{page}: no images"
    else:
        assert "<table" in dom
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"{page.replace('/', '-').removesuffix('.html')}.png"
    shot.unlink(missing_ok=True)
    done = browse(site / page, f"--screenshot={shot}", "--window-size=1280,1600", "--virtual-time-budget=5000")
    assert shot.is_file(), done.stderr[-2000:]
    pixels = Image.open(shot).convert("L").resize((128, 160))
    dark = sum(pixels.histogram()[:200]) / (128 * 160)
    assert 0.02 < dark < 0.9, f"{shot}: looks blank ({dark:.1%} of the page is not background)"


def test_the_readme_is_short_and_its_links_lead_to_files_of_the_repository():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert links and not [link for link in links if "://" not in link and not (ROOT / link).exists()]
