"""Every picture goes through stagetune.figures: no pyplot (global figure registry) anywhere in src."""

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg

from stagetune.figures import colormap, new_figure

SRC = Path(__file__).resolve().parents[1] / "src" / "stagetune"


def test_no_module_in_src_imports_pyplot():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "matplotlib.pyplot" in p.read_text() or "import pyplot" in p.read_text()]
    assert offenders == []


def test_new_figure_has_its_own_agg_canvas_and_size(tmp_path):
    fig = new_figure(3, 2)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    assert tuple(fig.get_size_inches()) == (3, 2)
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_colormap_copy_does_not_change_the_registered_one():
    cmap = colormap("viridis")
    cmap.set_bad("red")
    assert colormap("viridis").get_bad().tolist() != cmap.get_bad().tolist()
