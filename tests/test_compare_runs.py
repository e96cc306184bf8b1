"""benchmarks/compare_runs.py: two run folders agree when only dates, logs and their own paths differ, and any
changed array element, table cell or image byte is reported."""
from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np

SPEC = importlib.util.spec_from_file_location("compare_runs", Path(__file__).resolve().parent.parent / "benchmarks"
                                              / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(compare_runs)


def _npz(path: Path, arrays: dict, when: tuple) -> None:
    """An .npz as numpy writes it, with the zip members dated ``when``."""
    with zipfile.ZipFile(path, "w") as z:
        for k, v in arrays.items():
            info = zipfile.ZipInfo(f"{k}.npy", date_time=when)
            with z.open(info, "w") as f:
                np.lib.format.write_array(f, np.asarray(v))


def _run(root: Path, date: str, when: tuple, value: float = 1.5) -> Path:
    (root / "layers" / "relu1").mkdir(parents=True)
    (root / ".hydra").mkdir()
    (root / ".hydra" / "config.yaml").write_text(f"out: {root}\n")
    (root / "run.log").write_text(f"{date} started\n")
    np.save(root / "layers" / "relu1" / "deconvnet.npy", np.array([0.5, value], dtype=np.float16))
    _npz(root / "layers" / "relu1" / "topk.npz", {"units": np.arange(3), "activation": np.ones((3, 2))}, when)
    (root / "layers" / "relu1" / "topk.csv").write_text("unit,rank\n0,0\n")
    (root / "summary.json").write_text(json.dumps({"date": date, "k": 9, "mining_cache": str(root / "c")}))
    (root / "index.html").write_text(f"<p>{root}: top-9</p><td>{date}</td>")
    return root


def test_identical_runs_agree_and_a_changed_element_is_reported(tmp_path, capsys):
    a = _run(tmp_path / "a", "2026-01-01T10:00:00", (2026, 1, 1, 10, 0, 0))
    b = _run(tmp_path / "b", "2026-01-02T11:30:00", (2026, 1, 2, 11, 30, 0))
    assert compare_runs.main([str(a), str(b)]) == 0
    assert "compared 5 files" in capsys.readouterr().out
    c = _run(tmp_path / "c", "2026-01-01T10:00:00", (2026, 1, 1, 10, 0, 0), value=1.501)
    assert compare_runs.main([str(a), str(c)]) == 1
    out = capsys.readouterr().out
    assert "differs: layers/relu1/deconvnet.npy: 1 of 2 elements differ" in out and "1 differences" in out


def test_missing_file_and_changed_array_in_npz(tmp_path, capsys):
    a = _run(tmp_path / "a", "2026-01-01T10:00:00", (2026, 1, 1, 10, 0, 0))
    b = _run(tmp_path / "b", "2026-01-01T10:00:00", (2026, 1, 1, 10, 0, 0))
    (b / "layers" / "relu1" / "topk.csv").unlink()
    _npz(b / "layers" / "relu1" / "topk.npz", {"units": np.arange(3), "activation": np.full((3, 2), 2.0)},
         (2026, 1, 1, 10, 0, 0))
    assert compare_runs.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "only in A: layers/relu1/topk.csv" in out and "topk.npz: array activation" in out
