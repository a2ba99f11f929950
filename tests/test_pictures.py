"""Pictures: the architecture drawing (`draw`, `check --format html`), the training curves
(`plot`), the filters and the activation maps. Every test opens what the command wrote:
the SVG as XML (one box per volume, nothing overlapping, no text off the canvas), the HTML
as a page that needs nothing else, the PNGs as images of the expected size."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cnncli.analysis.report import analyze
from cnncli.cli.app import app
from cnncli.render.pictures import curves, netdraw, tiles
from cnncli.spec import catalog
from cnncli.spec.parse import load_spec

runner = CliRunner()
SVG = "{http://www.w3.org/2000/svg}"


def invoke(*args: str) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{args}: {result.exception!r}"
    return result


def one_line_error(result: Any, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


# --------------------------------------------------------------------------- reading an SVG


def volumes(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if "volume" in g.get("class", "").split()]


def box_extents(root: ET.Element) -> list[tuple[str, float, float, float, float]]:
    """(name, x0, y0, x1, y1) of every volume's cuboid (all its faces)."""
    out = []
    for g in volumes(root):
        xs: list[float] = []
        ys: list[float] = []
        for shape in g:
            if shape.tag == f"{SVG}polygon":
                for pair in shape.get("points", "").split():
                    x, y = pair.split(",")
                    xs.append(float(x))
                    ys.append(float(y))
            elif shape.tag == f"{SVG}rect":
                x, y = float(shape.get("x", 0)), float(shape.get("y", 0))
                xs += [x, x + float(shape.get("width", 0))]
                ys += [y, y + float(shape.get("height", 0))]
        out.append((g.get("data-name", ""), min(xs), min(ys), max(xs), max(ys)))
    return out


def text_extents(root: ET.Element) -> list[tuple[str, float, float, float, float]]:
    """(text, x0, y0, x1, y1) of every text, measured as the drawing measures it: monospace,
    0.6 em per character (DejaVu Sans Mono, Menlo and Consolas all advance 0.6 em)."""
    out = []
    for t in root.iter(f"{SVG}text"):
        text = t.text or ""
        size = float(t.get("font-size", netdraw.FONT_SIZE))
        width = len(text) * 0.6 * size
        x, y = float(t.get("x", 0)), float(t.get("y", 0))
        anchor = t.get("text-anchor", "start")
        x0 = x - width / 2 if anchor == "middle" else (x - width if anchor == "end" else x)
        out.append((text, x0, y - 0.8 * size, x0 + width, y + 0.2 * size))
    return out


def overlapping(a: list[tuple[str, float, float, float, float]],
                b: list[tuple[str, float, float, float, float]] | None = None,
                ) -> list[tuple[str, str]]:
    """Pairs whose rectangles overlap by more than half a pixel."""
    found = []
    pairs = ((p, q) for i, p in enumerate(a) for q in a[i + 1:]) if b is None else \
        ((p, q) for p in a for q in b)
    for p, q in pairs:
        if min(p[3], q[3]) - max(p[1], q[1]) > 0.5 and min(p[4], q[4]) - max(p[2], q[2]) > 0.5:
            found.append((p[0], q[0]))
    return found


def assert_legible(svg_text: str) -> ET.Element:
    """Valid XML; no two boxes, no two texts, no text and box overlap; all on the canvas."""
    root = ET.fromstring(svg_text)
    boxes, texts = box_extents(root), text_extents(root)
    assert not overlapping(boxes), overlapping(boxes)[:5]
    assert not overlapping(texts), overlapping(texts)[:5]
    assert not overlapping(texts, boxes), overlapping(texts, boxes)[:5]
    width, height = float(root.get("width", 0)), float(root.get("height", 0))
    for name, x0, y0, x1, y1 in boxes + texts:
        assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height, (name, width, height)
    return root


def drawing(name: str, vertical: bool = False) -> str:
    return netdraw.svg(analyze(load_spec(catalog.resolve(name))), vertical)


# --------------------------------------------------------------------------- draw


# ResNet-18: the input, 17 convs on the main path, 3 projection shortcuts (1x1 convs), the
# max pool and the global average pool, the fc, and 8 residual sums: 1+17+3+2+1+8 = 32.
# GoogLeNet: the input; conv1, pool1, conv2, conv3, pool2; 9 Inception modules of 7
# volumes (1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | pool -> 1x1) plus their concat; the pools after
# 3b and 4e; the global average pool and the fc: 1+5+9*8+2+2 = 82.
@pytest.mark.parametrize("name, boxes", [("resnet18", 32), ("googlenet", 82),
                                         ("vgg16", 22), ("cifar_small", 8)])
def test_draw_holds_one_box_per_volume_branches_included(tmp_path: Path, name: str,
                                                         boxes: int) -> None:
    out = tmp_path / f"{name}.svg"
    result = invoke("draw", name, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"{boxes} volumes" in result.stdout
    root = ET.parse(out).getroot()
    assert len(volumes(root)) == boxes
    # every box prints the true volume
    report = analyze(load_spec(catalog.resolve(name)))
    texts = {t.text for t in root.iter(f"{SVG}text")}
    for row in report.layers:
        if row.kind in ("conv", "pool", "fc", "add", "concat"):
            assert str(row.output) in texts, row.name


@pytest.mark.parametrize("name", ["cifar_small", "resnet18", "googlenet", "alexnet", "nin"])
@pytest.mark.parametrize("vertical", [False, True])
def test_draw_nothing_overlaps_and_no_text_runs_off(name: str, vertical: bool) -> None:
    assert_legible(drawing(name, vertical))


def test_draw_resnet50_stays_legible_in_both_directions() -> None:
    for vertical in (False, True):
        root = assert_legible(drawing("resnet50", vertical))
        sizes = {float(t.get("font-size", netdraw.FONT_SIZE)) for t in root.iter(f"{SVG}text")}
        assert min(sizes) >= 11  # a 50-layer net is not shrunk to fit
    wide = ET.fromstring(drawing("resnet50"))
    tall = ET.fromstring(drawing("resnet50", vertical=True))
    assert float(tall.get("height", 0)) > float(tall.get("width", 0))
    assert float(wide.get("width", 0)) > float(wide.get("height", 0))


def test_draw_log_scale_fits_vgg16_and_a_cifar_net_in_one_size_range() -> None:
    """Box sides grow with the log of the size: VGG16's [224x224x64] is not 7x as tall as
    [32x32x32], and the largest box stays within a screen's height."""
    def heights(name: str) -> dict[str, float]:
        root = ET.fromstring(drawing(name))
        return {g.get("data-volume", ""): y1 - y0 for g, (_, _, y0, _, y1)
                in zip(volumes(root), box_extents(root), strict=True)}

    vgg, cifar = heights("vgg16"), heights("cifar_small")
    assert vgg["224x224x64"] > cifar["32x32x32"] > cifar["4x4x128"]
    assert vgg["224x224x64"] < 2 * cifar["32x32x32"]
    assert max(vgg.values()) < 200


def test_draw_marks_the_receptive_field_on_the_input() -> None:
    root = ET.fromstring(drawing("vgg16"))
    inputs = [g for g in volumes(root) if g.get("data-kind") == "input"]
    assert len(inputs) == 1
    assert len([p for p in inputs[0] if p.get("class") == "rf"]) == 2
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    # pool5: (the notes' VGG16) 212 px of the 224 px input; fc3 sees all of it
    assert "pool5 [7x7x512] sees a 212x212 px patch" in texts
    assert "fc3 [1x1x1000] sees the whole input" in texts


BROKEN_STRIDE = {"name": "broken stride", "input": "32x32x3", "layers": [
    {"conv": {"filters": 16, "size": 3, "pad": 1}}, "relu", {"pool": {"size": 2, "stride": 2}},
    {"conv": {"filters": 32, "size": 3, "stride": 2}}, "relu", {"fc": 10}]}
BROKEN_SHORTCUT = {"name": "broken shortcut", "input": "32x32x3", "layers": [
    {"conv": {"filters": 16, "size": 3, "pad": 1}},
    {"residual": {"layers": [{"conv": {"filters": 32, "size": 3, "stride": 2, "pad": 1,
                                       "rounding": "floor"}}]}}, {"fc": 10}]}
BROKEN_SETTING = {"name": "broken setting", "input": "32x32x3", "layers": [
    {"conv": {"filters": 16, "size": 3, "pad": 1}}, {"pool": {"size": 2, "stride": 2}},
    {"conv": {"filters": 32, "size": 3, "strde": 1}}, {"fc": 10}]}


@pytest.mark.parametrize("spec, drawn, failing, message", [
    (BROKEN_STRIDE, 4, "conv2", "7.5 is not a whole number"),
    (BROKEN_SHORTCUT, 4, "res1.add", "they must match to be added"),
    (BROKEN_SETTING, 4, "conv2", "unknown setting 'strde'"),
])
def test_draw_invalid_spec_up_to_its_failing_layer_and_exits_1(
        tmp_path: Path, spec: dict[str, Any], drawn: int, failing: str, message: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    out = tmp_path / "broken.svg"
    result = invoke("draw", path, "-o", out)
    assert result.exit_code == 1, result.output
    assert message in result.stderr and "is not a valid net" in result.stderr
    root = assert_legible(out.read_text(encoding="utf-8"))
    boxes = volumes(root)
    assert len(boxes) == drawn
    # the last box drawn is the failing layer, marked, with the error text beside it
    assert boxes[-1].get("class") == "volume failed"
    assert boxes[-1].get("data-name") == failing
    assert "failed" not in " ".join(g.get("class", "") for g in boxes[:-1])
    error_text = " ".join(t.text or "" for t in root.iter(f"{SVG}text")
                          if (t.text or "").strip())
    assert "error:" in error_text
    assert message.split()[-1] in error_text


def test_draw_vertical_runs_top_to_bottom(tmp_path: Path) -> None:
    out = tmp_path / "r18.svg"
    assert invoke("draw", "resnet18", "--vertical", "-o", out).exit_code == 0
    root = ET.parse(out).getroot()
    ys = [y0 for _, _, y0, _, _ in box_extents(root)]
    assert float(root.get("height", 0)) > 3 * float(root.get("width", 0))
    assert ys[0] < ys[1] < ys[-1]


def test_draw_without_out_writes_svg_to_stdout_and_bad_input_is_one_line(tmp_path: Path,
                                                                          ) -> None:
    result = invoke("draw", "cifar_tiny")
    assert result.exit_code == 0
    assert len(volumes(ET.fromstring(result.stdout))) == 4
    one_line_error(invoke("draw", "no_such_net", "-o", tmp_path / "x.svg"), 2, "no_such_net")
    one_line_error(invoke("draw", "cifar_tiny", "-o", tmp_path / "x.png"), 2, ".svg")
    assert not list(tmp_path.iterdir())


def test_pictures_are_written_whole_with_a_new_file_s_permissions(tmp_path: Path) -> None:
    """Written under a temporary name and renamed: no leftover, and the permissions any new
    file gets (not a temporary file's private 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    out = tmp_path / "deep" / "net.svg"
    assert invoke("draw", "cifar_tiny", "-o", out).exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in out.parent.iterdir()] == ["net.svg"]


def test_draw_and_html_check_import_neither_numpy_nor_numba(tmp_path: Path) -> None:
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from cnncli.cli.app import app\n"
            f"for args in (['draw', 'googlenet', '-o', {str(tmp_path / 'g.svg')!r}],\n"
            f"             ['check', 'resnet18', '-f', 'html', '-o', "
            f"{str(tmp_path / 'r.html')!r}]):\n"
            "    assert CliRunner().invoke(app, args).exit_code == 0\n"
            "print(sorted(m for m in ('numba', 'numpy', 'PIL', 'matplotlib') "
            "if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# --------------------------------------------------------------------------- check --format html


def test_check_html_is_one_page_with_the_drawing_the_table_and_the_memory(tmp_path: Path,
                                                                           ) -> None:
    out = tmp_path / "report.html"
    result = invoke("check", "resnet18", "--format", "html", "-o", out)
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    # the drawing, inline, with its 32 volumes
    svg_text = page[page.index("<svg"):page.index("</svg>") + len("</svg>")]
    assert len(volumes(ET.fromstring(svg_text))) == 32
    # the per-layer table: a row per report row, plus the header, input and total rows
    report = analyze(load_spec(catalog.resolve("resnet18")))
    table = page[page.index("<table>"):page.index("</table>")]
    assert table.count("<tr") == len(report.rows) + 3
    assert "11,689,512" in page and "1,814,073,344" in page
    assert "peak (most alive at one moment" in page
    # nothing outside itself: no scripts, links, images, fonts or imports
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "@import" not in page and "<script" not in page and "<link" not in page
    assert re.findall(r"url\(([^)]*)\)", page) == ["#arrow"] * page.count("url(#arrow)")
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}


def test_check_html_of_an_invalid_net_marks_the_failing_layer_and_exits_1(tmp_path: Path,
                                                                          ) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(BROKEN_SHORTCUT, sort_keys=False), encoding="utf-8")
    out = tmp_path / "broken.html"
    result = invoke("check", path, "-f", "html", "-o", out)
    assert result.exit_code == 1
    page = out.read_text(encoding="utf-8")
    assert 'class="volume failed"' in page and "INVALID: 1 error" in page
    assert "they must match to be added" in page and "not computed" in page


def test_check_out_needs_a_file_format(tmp_path: Path) -> None:
    one_line_error(invoke("check", "vgg16", "-o", tmp_path / "x.txt"), 2, "--format")
    result = invoke("check", "vgg16", "-f", "markdown", "-o", tmp_path / "vgg16.md")
    assert result.exit_code == 0
    assert (tmp_path / "vgg16.md").read_text(encoding="utf-8").startswith("### VGG16")


# --------------------------------------------------------------------------- a short run

TINY = {"name": "tiny pictures", "input": "16x16x3", "loss": "softmax", "layers": [
    {"conv": {"filters": 8, "size": 5, "pad": 2}}, "relu", {"pool": {"size": 2, "stride": 2}},
    {"conv": {"filters": 6, "size": 3, "pad": 1}}, "relu", {"fc": 3}]}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A spec and its run: one epoch, then resumed for a second (metrics across a resume)."""
    folder = tmp_path_factory.mktemp("run")
    spec = folder / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY, sort_keys=False), encoding="utf-8")
    common = ["--train-size", "96", "--batch", "32", "--threads", "1", "--quiet", "--out",
              str(folder / "run"), "--lr", "0.05"]
    first = runner.invoke(app, ["train", str(spec), "--epochs", "1", *common])
    assert first.exit_code == 0, first.output
    resumed = runner.invoke(app, ["train", str(spec), "--epochs", "2", "--resume", *common])
    assert resumed.exit_code == 0, resumed.output
    return spec, folder / "run"


def test_plot_draws_the_whole_history_across_a_resume(run: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    _, run_dir = run
    epochs = curves.read_metrics(run_dir)
    assert [e.epoch for e in epochs] == [1, 2]
    assert all(e.val_loss is not None for e in epochs)
    png, svg = tmp_path / "curves.png", tmp_path / "curves.svg"
    assert invoke("plot", run_dir, "-o", png).exit_code == 0
    assert invoke("plot", run_dir, "-o", svg).exit_code == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1100, 320)  # 11 x 3.2 inches at 100 dpi
    root = ET.parse(svg).getroot()
    assert root.tag == f"{SVG}svg"
    assert {p.name for p in tmp_path.iterdir()} == {"curves.png", "curves.svg"}  # no leftovers


def test_plot_in_the_terminal_shows_training_against_validation(run: tuple[Path, Path]) -> None:
    _, run_dir = run
    result = invoke("plot", run_dir, "--width", "30")
    assert result.exit_code == 0
    assert "loss: training vs validation" in result.stdout
    assert "accuracy: training vs validation" in result.stdout
    assert re.search("[\u2801-\u28ff]", result.stdout)  # braille dots: the curves
    assert "(epoch)" in result.stdout


def test_sparklines_after_training_compare_training_and_validation() -> None:
    epochs = [curves.Epoch(i, 2.0 / i, 0.2 * i, 2.2 / i, 0.18 * i, 0.1 * 0.5 ** i, i == 4)
              for i in range(1, 5)]
    lines = curves.sparklines(epochs)
    assert lines[0].strip() == "epochs 1-4"
    names = [ln.split()[0] + " " + ln.split()[1] for ln in lines[1:5]]
    assert names == ["train loss", "val loss", "train acc", "val acc"]
    # one scale for both losses: validation starts highest (2.2), training ends lowest (0.5)
    assert lines[1].split()[3] == "▇▃▂▁"
    assert lines[2].split()[3][0] == "█"
    assert lines[3].split()[3][0] == "▁" and lines[3].split()[3][-1] == "█"
    assert lines[5].startswith("lr (log)")


def test_plot_errors_are_one_line(tmp_path: Path, run: tuple[Path, Path]) -> None:
    one_line_error(invoke("plot", tmp_path / "nowhere"), 2, "no such run directory")
    one_line_error(invoke("plot", tmp_path), 2, "no metrics.csv")
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,lr\n")
    one_line_error(invoke("plot", tmp_path), 1, "has not finished an epoch")
    one_line_error(invoke("plot", run[1], "-o", tmp_path / "c.gif"), 2, ".png, .svg")


def test_plot_without_matplotlib_shows_the_terminal_chart_and_how_to_install(
        run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = invoke("plot", run[1], "-o", tmp_path / "curves.png")
    one_line_error(result, 2, "pip install 'cnncli[plot]'")
    assert "loss: training vs validation" in result.stdout
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- filters


def test_filters_first_layer_as_colour_tiles_of_visible_pixels(run: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    _, run_dir = run
    out = tmp_path / "filters.png"
    result = invoke("filters", run_dir / "best.npz", "-o", out)
    assert result.exit_code == 0, result.output
    assert "8 filters of 5x5x3" in result.stdout
    w = np.load(run_dir / "best.npz")["weights/conv1.weight"]
    grid, _ = tiles.filter_tiles(w, colour=True)
    # 8 filters in 4 columns x 2 rows; each 5x5 filter scaled x10 (50 px) with 3 px between
    assert grid.shape == (2 * 53 + 3, 4 * 53 + 3, 3)
    with Image.open(out) as im:
        pixels = np.asarray(im.convert("RGB"))
    x, y = tiles.band_origins([("caption", grid)])[0]
    assert pixels.shape[0] == y + grid.shape[0] + tiles.PAD
    assert np.array_equal(pixels[y:y + grid.shape[0], x:x + grid.shape[1]], grid)
    # each tile is normalised on its own: every filter reaches black and white
    first = grid[3:53, 3:53].astype(int)
    assert first.min() == 0 and first.max() == 255
    # a weight is a 10 x 10 square of one colour
    assert (first[:10, :10] == first[0, 0]).all()


def test_filters_deeper_layer_per_input_channel_in_grey(run: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    out = tmp_path / "conv2.png"
    result = invoke("filters", run[1] / "last.npz", "-o", out, "--layer", "conv2")
    assert result.exit_code == 0, result.output
    w = np.load(run[1] / "last.npz")["weights/conv2.weight"]  # [6, 8, 3, 3]
    grid, _ = tiles.filter_tiles(w, colour=False)
    # a row per filter, a column per input channel; 3x3 scaled x16
    assert grid.shape == (6 * 51 + 3, 8 * 51 + 3, 3)
    assert (grid[..., 0] == grid[..., 1]).all()  # grey
    with Image.open(out) as im:
        x, y = tiles.band_origins([("caption", grid)])[0]
        assert im.size[1] == y + grid.shape[0] + tiles.PAD


def test_filters_errors_are_one_line(run: tuple[Path, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    best = run[1] / "best.npz"
    one_line_error(invoke("filters", best, "-o", tmp_path / "f.png", "--layer", "fc1"), 2,
                   "not a conv layer")
    one_line_error(invoke("filters", best, "-o", tmp_path / "f.png", "--layer", "nope"), 2,
                   "no conv layer named 'nope'", "conv1, conv2")
    one_line_error(invoke("filters", tmp_path / "none.npz", "-o", tmp_path / "f.png"), 2,
                   "no such weights file")
    one_line_error(invoke("filters", best, "-o", tmp_path / "f.svg"), 2, ".png")
    monkeypatch.setitem(sys.modules, "PIL", None)
    one_line_error(invoke("filters", best, "-o", tmp_path / "f.png"), 2,
                   "needs Pillow: pip install 'cnncli[images]'")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- activations


def test_activations_one_band_per_volume_of_the_drawing(run: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    spec, run_dir = run
    from cnncli.training.data import synthetic_shapes
    image = tmp_path / "shape.png"
    Image.fromarray(synthetic_shapes(1, width=16, height=16, num_classes=3, seed=2).x[0]) \
        .save(image)
    out = tmp_path / "acts.png"
    result = invoke("activations", spec, image, "--weights", run_dir / "best.npz", "-o", out)
    assert result.exit_code == 0, result.output
    # input 16x16 shown x6 (96 px); conv1 +ReLU [16x16x8] and pool1 [8x8x8]: 8 maps each,
    # scaled to 32 and 32 px; conv2 +ReLU [8x8x6]: 6 maps; fc1 [1x1x3]: 3 cells of 12 px
    # (a row of tiles is 3 px apart and framed: +6 px); five bands of one caption line each
    heights = [96, 32 + 6, 32 + 6, 32 + 6, 12]
    expected = (tiles.PAD + tiles.TITLE_H + sum(tiles.SPACING + tiles.CAPTION_H + h
                                                for h in heights) + tiles.PAD)
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size[1] == expected
        assert im.size[0] >= 8 * 35 + 3 + 2 * tiles.PAD


def test_activations_checks_its_inputs(run: tuple[Path, Path], tmp_path: Path) -> None:
    spec, run_dir = run
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((32, 32, 3), np.uint8))
    one_line_error(invoke("activations", spec, big, "--weights", run_dir / "best.npz", "-o",
                          tmp_path / "a.png"), 2, "[32x32x3]", "takes [16x16x3]")
    one_line_error(invoke("activations", "cifar_tiny", big, "--weights", run_dir / "best.npz",
                          "-o", tmp_path / "a.png"), 2, "belongs to another spec")
    assert [p.name for p in tmp_path.iterdir()] == ["big.npy"]
