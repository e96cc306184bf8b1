"""Run storage and rendering helpers: projections at real-network scale survive storage, the CSV writer, dead units
and the unit choice of ``zf.mining.table.TopK``."""
import csv

import numpy as np
import pytest

from zf.mining.table import TopK
from zf.views.render import load_projections, save_projections
from zf.views.results import write_csv


def test_projections_at_real_network_scale_are_stored_finite_and_exact_to_float16(tmp_path):
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(4, 3, 3, 8, 8)).astype(np.float32)
    proj[0] *= 3e5          # VGG-16 conv5_3 deconvnet outputs reach this range: beyond float16's 65504
    proj[1] *= 1e-6         # and tiny ones must not flush to zero
    proj[2, 1] = 0.0        # an all-zero projection
    with np.errstate(over="ignore"):
        assert not np.isfinite(proj.astype(np.float16)).all()   # what plain float16 storage did
    back = save_projections(tmp_path, "deconvnet", proj)
    assert np.isfinite(back).all() and np.array_equal(back, load_projections(tmp_path, "deconvnet"))
    peak = np.abs(proj).reshape(4, 3, -1).max(-1)[..., None, None, None]
    assert (np.abs(back - proj) <= peak * 2.0 ** -11 + 1e-30).all()   # float16 rounding of values in [-1, 1]
    assert np.abs(np.load(tmp_path / "deconvnet.npy").astype(np.float32)).max() <= 1.0
    assert (back[2, 1] == 0).all()


def test_non_finite_projections_are_an_error_naming_the_layer(tmp_path):
    proj = np.zeros((1, 1, 3, 2, 2), np.float32)
    proj[0, 0, 0, 0, 0] = np.inf
    with pytest.raises(FloatingPointError, match="1 projection values are not finite"):
        save_projections(tmp_path / "relu4", "guided", proj)


def test_write_csv_takes_dict_rows_and_list_rows(tmp_path):
    write_csv(tmp_path / "a.csv", [{"x": 1, "y": 2, "z": 9}, {"x": 3, "y": 4}], ["x", "y"])
    assert list(csv.reader(open(tmp_path / "a.csv"))) == [["x", "y"], ["1", "2"], ["3", "4"]]
    write_csv(tmp_path / "b.csv", [[1, "a"], [2, "b"]], ["n", "s"])
    assert list(csv.reader(open(tmp_path / "b.csv"))) == [["n", "s"], ["1", "a"], ["2", "b"]]
    write_csv(tmp_path / "c.csv", [], ["n"])
    assert (tmp_path / "c.csv").read_text().strip() == "n"


def _table(top1):
    u = len(top1)
    act = np.stack([np.asarray(top1, np.float32), np.zeros(u, np.float32)], 1)
    zeros = np.zeros((u, 2), np.int64)
    return TopK(units=np.arange(u) * 10, activation=act, image=zeros, y=zeros, x=zeros,
                box=np.zeros((u, 2, 4), np.int64))


def test_dead_units_are_listed_and_never_chosen_while_enough_fire():
    t = _table([0.0, 2.0, 0.0, 1.0, 3.0, np.nan])
    assert t.dead == [0, 20, 50]
    for seed in range(20):
        assert set(t.choose_units(3, seed)) == {10, 30, 40}
    assert len(t.choose_units(5, 0)) == 5              # fewer than asked fire: any unit
    sub = t.select([40, 10], ranks=1)
    assert sub.units.tolist() == [40, 10] and sub.activation.tolist() == [[3.0], [2.0]]
