"""Edge alignment (``zf.projection.dependence.edge_alignment``) and the run reader (``zf.views.stats``): a
projection that is its patch's edge map scores 1, one drawn elsewhere scores low, the pixels outside the image do not
count, and ``scripts/projection_stats.py`` pairs each stored projection with its own patch."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from zf.projection.dependence import edge_alignment
from zf.views.stats import inside_image, projection_stats

REPO = Path(__file__).resolve().parents[1]


def _step_patch(h: int = 32, w: int = 32, col: int = 16) -> np.ndarray:
    """A patch dark left of ``col``, bright from it on: one vertical edge."""
    p = np.zeros((h, w, 3), np.uint8)
    p[:, col:] = 200
    return p


def test_a_stroke_on_the_patch_edge_aligns_and_one_elsewhere_does_not():
    patch = _step_patch()
    on = np.zeros((3, 32, 32), np.float32)
    on[1, :, 15:17] = 1.0  # a vertical stroke where the edge is
    off = np.zeros((3, 32, 32), np.float32)
    off[1, 4:6, :] = 1.0  # a horizontal stroke across the top
    a_on = edge_alignment(on[None, None], patch[None, None])
    a_off = edge_alignment(off[None, None], patch[None, None])
    assert a_on["own"] > 0.9 and a_on["rows"] == 1
    assert a_off["own"] < 0.1
    # the sign of a projection does not matter: its magnitude is compared
    assert edge_alignment(-on[None, None], patch[None, None])["own"] == pytest.approx(a_on["own"], abs=1e-12)


def test_a_projection_equal_to_its_edge_map_scores_one_and_chance_is_low():
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (4, 3, 24, 24, 3)).astype(np.uint8)
    patches = ndimage.gaussian_filter(patches.astype(float), (0, 0, 2, 2, 0)).astype(np.uint8)  # blobs, not noise
    proj = np.zeros((4, 3, 3, 24, 24), np.float32)
    for i in range(4):
        for r in range(3):  # Sobel of each patch alone (ndimage.sobel on a stack would smooth across patches)
            grey = patches[i, r].astype(np.float64).mean(-1)
            proj[i, r, 2] = np.hypot(ndimage.sobel(grey, 0, mode="nearest"), ndimage.sobel(grey, 1, mode="nearest"))
    a = edge_alignment(proj, patches)
    assert a["own"] == pytest.approx(1.0, abs=1e-6) and a["rows"] == 12
    assert a["shuffled"] < 0.6


def test_pixels_outside_the_image_are_left_out():
    patch = _step_patch()
    proj = np.zeros((3, 32, 32), np.float32)
    grey = patch.astype(np.float64).mean(-1)
    proj[0] = np.hypot(ndimage.sobel(grey, 0, mode="nearest"), ndimage.sobel(grey, 1, mode="nearest"))
    proj[0, :, :8] = 5000.0  # strong values where the window runs past the image (the left 8 columns)
    inside = np.ones((1, 1, 32, 32), bool)
    inside[..., :8] = False
    with_mask = edge_alignment(proj[None, None], patch[None, None], inside)["own"]
    without = edge_alignment(proj[None, None], patch[None, None])["own"]
    assert without < 0.5 and with_mask == pytest.approx(1.0, abs=1e-9)
    # the grey fill beyond the image is not an edge: a patch whose image part is flat has no edges to align with
    flat = np.full((32, 32, 3), 90, np.uint8)
    flat[:, :8] = 128  # the fill
    stroke = np.zeros((3, 32, 32), np.float32)
    stroke[0, :, 7:9] = 1.0  # a stroke on the fill's border
    assert np.isnan(edge_alignment(stroke[None, None], flat[None, None], inside)["own"])
    # empty ranks and zero projections are not rows
    empty = edge_alignment(np.zeros((1, 2, 3, 32, 32), np.float32), np.stack([patch, patch])[None],
                           valid=np.array([[True, False]]))
    assert empty["rows"] == 0 and np.isnan(empty["own"])


def test_inside_image_marks_the_window_pixels_in_the_image():
    boxes = np.array([[-2, 3, 220, 225]])  # y0, y1, x0, x1 of a 5x5 window at the top-right corner, partly outside
    m = inside_image(boxes, (5, 5), (224, 224))
    expected = np.zeros((5, 5), bool)
    expected[2:, :4] = True
    np.testing.assert_array_equal(m[0], expected)


def test_stats_of_a_run_pair_each_projection_with_its_own_patch(tmp_path, imagenette):
    """A real main-job run whose relu3 projections are replaced by their own patches' edge maps: the reader must
    give what ``edge_alignment`` gives on the arrays and image mask assembled here from the PNGs and boxes (high;
    a mix-up of rows, units or windows gives the chance level), and its chance column stays low."""
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), "layer=3", "data.limit=12", "k=3",
                        "units=[0,1,2,3,4,5]", f"hydra.run.dir={out}", f"paths.cache_dir={tmp_path / 'cache'}",
                        "logger=none", "progress=false", "num_workers=0", "batch_size=6"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    d = out / "layers" / "relu3"
    z = np.load(d / "topk.npz")
    n = len(z["units"])
    proj = np.zeros((n, 3, 3, 75, 75), np.float32)
    patches = np.zeros((n, 3, 75, 75, 3), np.uint8)
    inside = np.zeros((n, 3, 75, 75), bool)
    for i, u in enumerate(z["units"]):
        for r in range(3):
            patches[i, r] = np.asarray(Image.open(d / "patches" / f"u{u:04d}_r{r}.png").convert("RGB"))
            grey = patches[i, r].astype(np.float64).mean(-1)
            proj[i, r, 0] = np.hypot(ndimage.sobel(grey, 0, mode="nearest"), ndimage.sobel(grey, 1, mode="nearest"))
            y0, _, x0, _ = z["box"][i, r]
            for yy in range(75):
                for xx in range(75):
                    inside[i, r, yy, xx] = 0 <= y0 + yy < 224 and 0 <= x0 + xx < 224
    scale = np.abs(proj).reshape(*proj.shape[:2], -1).max(-1)
    np.save(d / "deconvnet.npy", (proj / np.maximum(scale, 1e-12)[..., None, None, None]).astype(np.float16))
    np.save(d / "deconvnet_scale.npy", scale.astype(np.float32))
    expected = edge_alignment(proj, patches, inside)
    s = projection_stats(out)["relu3"]["deconvnet"]
    assert s["rows"] == 18 and expected["own"] > 0.9
    assert s["edge_own"] == pytest.approx(expected["own"], abs=1e-3)
    assert s["edge_shuffled"] == pytest.approx(expected["shuffled"], abs=1e-3) and s["edge_shuffled"] < 0.8
    printed = subprocess.run([sys.executable, str(REPO / "scripts" / "projection_stats.py"), str(out)],
                             capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    assert f"| relu3 | deconvnet | {s['image_dependence']:.2f} | {s['edge_own']:.2f} |" in printed.stdout
    # a method the run did not store, a negative blur: one line each, status 2, naming the option
    for args, said in ((["--methods", "guided"], "--methods guided: run"), (["--sigma", "-1"], "sigma=-1.0")):
        wrong = subprocess.run([sys.executable, str(REPO / "scripts" / "projection_stats.py"), str(out), *args],
                               capture_output=True, text=True, timeout=300)
        assert wrong.returncode == 2 and wrong.stderr.startswith(f"error: {said}"), wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) == 1
    # a folder that is not a run: one line, status 2
    shutil.rmtree(out / "layers")
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "projection_stats.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
