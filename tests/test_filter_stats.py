"""``high_frequency_share`` and ``similarity_to_init`` (zf.experiments.filters) on hand-made filters whose answer is
known without running the code: DFT bins chosen so that each sinusoid lands on one exact frequency."""
from __future__ import annotations

import math

import pytest
import torch

from zf.experiments.filters import high_frequency_share, similarity_to_init


def _cos2d(n: int, ky: int, kx: int) -> torch.Tensor:
    """cos(2 pi (ky y + kx x) / n) on an n x n grid: all its energy at the frequency (ky/n, kx/n) and its mirror."""
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    return torch.cos(2 * math.pi * (ky * y + kx * x) / n)


def test_constant_filter_has_no_high_frequency_energy():
    w = torch.full((2, 3, 7, 7), 0.3)
    w[1] = -2.0
    assert high_frequency_share(w) == 0.0


def test_checkerboard_is_all_high_frequency():
    # unpadded (size = the kernel): the 2x2 checkerboard is exactly the (1/2, 1/2) bin
    assert high_frequency_share(torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]]), size=2) == pytest.approx(1.0, abs=1e-12)
    # 7x7, zero-padded to 14: the main lobe at (1/2, 1/2) holds nearly all of it (leakage below 1/4 is small)
    board = (-1.0) ** (torch.arange(7)[:, None] + torch.arange(7)[None, :]).double()
    assert high_frequency_share(board.expand(1, 3, 7, 7)) > 0.9


def test_sinusoids_land_on_their_side_of_the_cut():
    n = 16  # bins of 1/16 cycle per pixel; the cut 1/4 lies at bin 4
    low = _cos2d(n, 0, 3)   # 3/16 < 1/4
    high = _cos2d(n, 0, 5)  # 5/16 > 1/4
    assert high_frequency_share(low[None, None], size=n) == pytest.approx(0.0, abs=1e-12)
    assert high_frequency_share(high[None, None], size=n) == pytest.approx(1.0, abs=1e-12)
    # orthogonal bins add their energies: a low of amplitude 2 and a high of amplitude 1 -> 1 / (4 + 1)
    assert high_frequency_share((2 * low + high)[None, None], size=n) == pytest.approx(0.2, abs=1e-12)
    # the band is square: (3/16, 3/16) is low along both axes though its radius, 0.265, is above 1/4
    assert high_frequency_share(_cos2d(n, 3, 3)[None, None], size=n) == pytest.approx(0.0, abs=1e-12)
    # the result is the mean over filters: one all-low, one all-high filter -> 1/2
    assert high_frequency_share(torch.stack([low, high])[:, None], size=n) == pytest.approx(0.5, abs=1e-12)


def test_reference_values_of_the_model_card():
    # PyTorch's default init of the ZF net's conv1 (96 filters 3x7x7: white noise) and smooth 7x7 Gabor filters
    from zf.net.models import zfnet

    torch.manual_seed(0)
    assert high_frequency_share(zfnet(num_classes=10).features.conv1.weight) == pytest.approx(0.76, abs=0.02)
    yy, xx = torch.meshgrid(torch.arange(7.0) - 3, torch.arange(7.0) - 3, indexing="ij")
    gabors = []
    for i in range(48):  # wavelength 5 px, sigma 1.5 px, 48 orientations
        th = math.pi * i / 48
        g = torch.exp(-(xx ** 2 + yy ** 2) / (2 * 1.5 ** 2)) * torch.cos(2 * math.pi * (xx * math.cos(th)
                                                                                        + yy * math.sin(th)) / 5)
        gabors.append(g.expand(3, 7, 7))
    assert high_frequency_share(torch.stack(gabors)) == pytest.approx(0.19, abs=0.02)


def test_similarity_to_init_per_conv_layer():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)   # two filters
    b = torch.tensor([[1.0, 1.0], [0.0, -3.0]]).view(2, 1, 1, 2)  # cos 1/sqrt(2) and -1
    init = {"features.conv1.weight": a, "features.conv1.bias": torch.zeros(2), "features.conv2.weight": a,
            "classifier.fc8.weight": torch.ones(3, 2)}
    state = {"features.conv1.weight": b, "features.conv1.bias": torch.ones(2), "features.conv2.weight": 5 * a,
             "classifier.fc8.weight": -torch.ones(3, 2)}
    got = similarity_to_init(state, init)
    assert set(got) == {"features.conv1", "features.conv2"}  # 4-D weights only: no biases, no Linear
    assert got["features.conv1"] == pytest.approx((1 / math.sqrt(2) - 1) / 2, abs=1e-12)
    assert got["features.conv2"] == pytest.approx(1.0, abs=1e-12)  # a rescaled filter is unchanged in direction
    with pytest.raises(ValueError, match="features.conv2"):
        similarity_to_init({"features.conv2.weight": torch.ones(3, 1, 1, 2)}, init)


def test_model_card_stats_script_prints_the_run_table(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("mcs", Path(__file__).parents[1] / "scripts" / "model_card_stats.py")
    mcs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mcs)
    n = 16
    low, high = _cos2d(n, 0, 3).float(), _cos2d(n, 0, 5).float()
    init = {"features.conv1.weight": torch.stack([low, high])[:, None], "features.conv2.weight": torch.ones(2, 2, 1, 1)}
    final = {"features.conv1.weight": torch.stack([high, high])[:, None],       # share 1 at 16 bins; cos 0 and 1
             "features.conv2.weight": -torch.ones(2, 2, 1, 1)}                   # cos -1
    ck = tmp_path / "run" / "checkpoints"
    ck.mkdir(parents=True)
    torch.save({"features": init, "epoch": 0}, ck / "features_epoch000.pt")
    torch.save({"model": final, "epoch": 7, "history": [{"val_top1": 0.5}, {"val_top1": 0.625}]}, ck / "last.pt")
    assert mcs.main([str(tmp_path / "run")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    share = high_frequency_share(final["features.conv1.weight"])  # 14x14 DFT of 16x16 filters: 16 bins used
    assert [c.strip() for c in last.strip("|").split("|")][1:] == ["7", "62.5%", f"{share:.3f}", "0.500", "-1.000"]
    assert mcs.main([str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
