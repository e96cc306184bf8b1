"""zf.views.visualize: the Fig. 2 overview draws every pixel (native size, or antialiased when saved at another dpi) and
marks dead units; ``display`` shows projections of any scale and reports non-finite values instead of drawing them
silently."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from zf.views.visualize import DEAD_COLOUR, display, overview_figure, unit_image  # noqa: E402

PAD = 2  # unit_image's default padding around each sub-image


def checkerboards(units: int, s: int, k: int = 9):
    """Patches and projections that are 1-pixel checkerboards: black/white patches, -1/+1 projections (shown as
    black/white by the symmetric display).  Their mean grey is 127.5; any subsampling aliases them."""
    odd = np.indices((s, s)).sum(0) % 2 == 1
    patches = np.broadcast_to((odd * 255).astype(np.uint8)[None, None, :, :, None], (units, k, s, s, 3)).copy()
    proj = np.broadcast_to(np.where(odd, 1.0, -1.0).astype(np.float32)[None, None, None], (units, k, 3, s, s)).copy()
    return patches, proj


def saved(fig, dpi) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi)
    plt.close(fig)
    return np.asarray(Image.open(buf).convert("RGB")).astype(np.float64)


def first_projection_region(ax, png: np.ndarray, fig_dpi: float, save_dpi: float, s: int, zoom: int = 1):
    """The pixels of the saved PNG showing the first projection (rank 0) of the unit in ``ax``, its border cut."""
    f = save_dpi / fig_dpi
    bb = ax.get_window_extent()
    h = png.shape[0]
    x0, y0 = bb.x0 * f, h - bb.y1 * f
    a, b = PAD * zoom * f, (PAD + s) * zoom * f
    m = 2  # output pixels off each edge: the filter mixes in the white padding there
    return png[int(np.ceil(y0 + a)) + m:int(np.floor(y0 + b)) - m, int(np.ceil(x0 + a)) + m:int(np.floor(x0 + b)) - m]


@pytest.mark.parametrize("s, units", [(7, 16), (27, 4), (107, 16), (212, 2)])
def test_overview_shows_each_tile_at_native_size(s, units):
    patches, proj = checkerboards(units, s)
    fig, axes = overview_figure(patches, proj, range(units), title="t", dpi=100)
    png = saved(fig, 100)
    tile = unit_image(patches[0], proj[0])
    zoom = max(1, int(np.ceil(240 / tile.shape[1])))
    bb = axes[0, 0].get_window_extent()
    y0, x0 = png.shape[0] - int(round(bb.y1)), int(round(bb.x0))
    got = png[y0:y0 + tile.shape[0] * zoom, x0:x0 + tile.shape[1] * zoom]
    # every pixel of the tile, enlarged by a whole factor for small fields, nothing resampled
    np.testing.assert_array_equal(got, tile.repeat(zoom, 0).repeat(zoom, 1))


@pytest.mark.parametrize("save_dpi", [40, 73, 100, 160])
def test_checkerboard_shows_its_mean_grey_not_aliased_stripes(save_dpi):
    s = 107  # layer 4 of the ZF net
    patches, proj = checkerboards(4, s)
    fig, axes = overview_figure(patches, proj, range(4), title="layer 4", dpi=100)
    png = saved(fig, save_dpi)
    region = first_projection_region(axes[0, 0], png, 100, save_dpi, s)
    assert min(region.shape[:2]) > 20
    # local means over 4 x 4 output pixels: grey everywhere.  Nearest-neighbour subsampling of a checkerboard gives
    # stripes and blotches of black and white instead (local means near 0 or 255).
    n = 4
    hh, ww = (region.shape[0] // n) * n, (region.shape[1] // n) * n
    blocks = region[:hh, :ww].reshape(hh // n, n, ww // n, n, 3).mean((1, 3))
    assert np.abs(blocks - 127.5).max() < 20, (blocks.min(), blocks.max())


def test_overview_marks_dead_units():
    patches, proj = checkerboards(4, 7)
    fig, axes = overview_figure(patches, proj, [10, 11, 12, 13], dead={11, 99})
    titles = [ax.get_title() for ax in axes.flat]
    assert titles[0] == "unit 10" and "dead" not in titles[2] + titles[3]
    assert titles[1].startswith("unit 11: dead, never fires")
    assert matplotlib.colors.same_color(axes[0, 1].title.get_color(), DEAD_COLOUR)
    assert all(sp.get_visible() and matplotlib.colors.same_color(sp.get_edgecolor(), DEAD_COLOUR)
               for sp in axes[0, 1].spines.values())
    assert not any(sp.get_visible() for sp in axes[0, 0].spines.values())
    assert "1 dead unit(s)" in fig._suptitle.get_text()  # 99 is not shown
    plt.close(fig)


def test_display_any_scale_gives_the_same_picture():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(2, 3, 3, 11, 11)).astype(np.float32)
    small = display(p)
    for scale in (1e3, 1e5, 1e30):
        np.testing.assert_array_equal(display(p * scale), small)
    # float16 arrays of real-network scale (60000 is near float16's largest, 65504) display as float32 ones
    big = (p / np.abs(p).max() * 6e4).astype(np.float16)
    np.testing.assert_array_equal(display(big), display(big.astype(np.float32)))


def test_display_reports_and_draws_non_finite_values():
    p = np.zeros((3, 3, 4, 4), np.float32)
    p[:, :, 0, 0] = [[1, 2, -1]] * 3  # finite values in every projection
    p[:, :, 1, 1] = [[0.5, 0.5, 0.5]] * 3
    p[0, :, 2, 2] = np.inf
    p[0, :, 3, 3] = -np.inf
    p[1, 0, 2, 3] = np.nan
    stats = {}
    with pytest.warns(UserWarning, match=r"7 non-finite values \(1 NaN, 3 \+inf, 3 -inf\) in 2 of 3 projections"):
        v = display(p, stats=stats)
    assert stats == {"nonfinite": 7, "nan": 1, "posinf": 3, "neginf": 3, "nonfinite_projections": 2,
                     "projections": 3}
    assert (v[0, 2, 2] == 255).all() and (v[0, 3, 3] == 0).all() and v[1, 2, 3, 0] == 128
    # the finite values are stretched as without the non-finite ones (max stretch: the finite maximum sets it)
    clean = p.copy()
    clean[~np.isfinite(clean)] = 0
    with_clean = display(clean, percentile=100)
    with pytest.warns(UserWarning, match="non-finite"):
        v = display(p, percentile=100)
    assert (v[0, 0, 0] == with_clean[0, 0, 0]).all() and (v[1, 1, 1] == with_clean[1, 1, 1]).all()
    assert (v[2] == with_clean[2]).all()
    with pytest.warns(UserWarning, match="non-finite"):
        m = display(p, "minmax")
    assert (m[0, 2, 2] == 255).all() and (m[0, 3, 3] == 0).all()
    assert np.isfinite(m.astype(float)).all()
    # an all-NaN projection is grey and reported, not black
    with pytest.warns(UserWarning, match="1 of 1 projections"):
        g = display(np.full((3, 5, 5), np.nan))
    assert (g == 128).all()


def test_display_without_non_finite_values_warns_nothing(recwarn):
    stats = {}
    display(np.ones((3, 2, 2)), stats=stats)
    assert stats["nonfinite"] == 0 and not [w for w in recwarn if "non-finite" in str(w.message)]


class _BigField(__import__("torch").nn.Module):
    """Three 7x7 convolutions, strides 2, 2, 1: a 43 px receptive field, larger than the 32 px images below."""

    def __init__(self):
        import torch
        super().__init__()
        self.c1, self.c2, self.c3 = (torch.nn.Conv2d(3, 4, 7, 2, 3), torch.nn.Conv2d(4, 4, 7, 2, 3),
                                     torch.nn.Conv2d(4, 5, 7, 1, 3))

    def forward(self, x):
        import torch.nn.functional as F
        return F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))))


class _Images:
    size = 32

    def __init__(self, n):
        import torch
        self.x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0, i


def test_views_of_a_field_larger_than_the_image_are_the_image():
    """Where a receptive field exceeds the image, patches and projections are stored cut to the image (the rest is
    padding and zeros): each projection equals the whole-image projection, and each patch is the image inside the
    field and grey outside it."""
    import torch

    from zf.data import ImageSource, Normalize
    from zf.mining.mine import mine
    from zf.projection.graph import project_graph
    from zf.views.visualize import unit_views

    torch.manual_seed(0)
    model, data = _BigField().eval(), _Images(6)
    table = mine(model, data, layers=["c3"], k=3, batch_size=4, progress=False)["c3"]
    assert table.box[0, 0, 1] - table.box[0, 0, 0] == 43
    patches, proj = unit_views(model, ImageSource(data, Normalize()), table, "c3", [0, 4])
    assert patches.shape == (2, 3, 32, 32, 3) and proj.shape == (2, 3, 3, 32, 32)
    outside = 0
    for i, u in enumerate([0, 4]):
        rows = torch.tensor([[r, u, int(table.y[u, r]), int(table.x[u, r])] for r in range(3)])
        ref = project_graph(model, Normalize()(data.x[torch.from_numpy(table.image[u])]), rows, "c3")
        assert ref.abs().amax() > 0
        torch.testing.assert_close(torch.from_numpy(proj[i]), ref, rtol=0, atol=1e-6 * float(ref.abs().max()))
        for r in range(3):
            y0, y1, x0, x1 = table.box[u, r]
            inside = np.zeros((32, 32), bool)
            inside[max(y0, 0):y1, max(x0, 0):x1] = True
            img = data.x[int(table.image[u, r])].permute(1, 2, 0).numpy()
            assert (patches[i, r][inside] == img[inside]).all() and (patches[i, r][~inside] == 128).all()
            outside += int((~inside).sum())
    assert outside > 0  # some field leaves part of its image out: the grey there is checked
