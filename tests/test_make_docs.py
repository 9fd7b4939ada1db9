"""make docs rewrites the README's generated blocks from real runs, names the machine, and fails loudly."""

import json
from pathlib import Path

import pytest

from scripts import make_docs
from scripts.make_docs import DocsError, rewrite

README = """# x
intro
<!-- make docs: universal_approx -->
old numbers typed by hand
<!-- /make docs: universal_approx -->
tail
"""


def test_a_block_is_replaced_with_its_body_and_stamp_and_the_rest_kept():
    out = rewrite(README, "universal_approx", "| a | b |", "Generated on a 2-core CPU")
    assert out == README.replace("old numbers typed by hand\n", "| a | b |\n\n_Generated on a 2-core CPU_\n")
    assert rewrite(out, "universal_approx", "new", "stamp").count("<!-- make docs: universal_approx -->") == 1


def test_a_readme_without_the_block_is_an_error_naming_it():
    with pytest.raises(DocsError, match="no block <!-- make docs: tensorboard -->"):
        rewrite(README, "tensorboard", "x", "y")


def test_every_block_the_readme_has_is_a_section_and_every_section_is_in_the_readme():
    text = (Path(make_docs.ROOT) / "README.md").read_text()
    blocks = set(make_docs.re.findall(r"<!-- make docs: (\w+) -->", text))
    assert blocks == set(make_docs.SECTIONS)


def test_quick_universal_approx_writes_the_runs_numbers_into_a_copy(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    code = make_docs.main(["--only", "universal_approx", "--quick", "--readme", str(readme), "--images", str(tmp_path / "img"), "--out", str(tmp_path / "out")])
    assert code == 0
    (metrics,) = (tmp_path / "out").glob("*/universal_approx/metrics.json")
    valid = json.loads(metrics.read_text())["valid"]
    text = readme.read_text()
    for width in (2, 8, 32, 128):
        assert f"| {width} | {valid[f'val/mse/w{width}']:.1e} |" in text
    assert "old numbers typed by hand" not in text and f"on a {make_docs.machine()}" in text and "quick check" in text
    assert (tmp_path / "img" / "universal_approx.png").read_bytes()[:4] == b"\x89PNG"
