"""Compare two run directories file by file: ``python benchmarks/compare_runs.py RUN_A RUN_B``.

Arrays (``.npy``; each array of an ``.npz``, whose zip headers carry write times), tables (``.csv``), images
(``.png``, ``.jpg``), pages and data files of the gallery must be byte-identical.  What must differ between two runs
is left out: logs (``*.log``), Hydra's own ``.hydra/`` folder, W&B's ``wandb/``, in JSON files the keys that hold
a date, a duration, a disk size or a path of the run itself (``IGNORED_KEYS``), and in text files (``.html``,
``.csv``, ...) the run directory's own path and ISO dates, which are replaced by ``<run>`` and ``<date>`` on both sides
before comparing.  Prints every difference (missing
files, differing files, with the first differing array or key) and exits 1 on any, 0 when the runs agree.

Used to check that a refactoring leaves every output of the main job unchanged (issue 18): run the same command
before and after, then compare the two run folders.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

IGNORED_DIRS = {".hydra", "wandb"}
IGNORED_SUFFIXES = {".log"}
# JSON keys whose values differ from run to run by design (dates, timings, disk use, the run's own paths)
IGNORED_KEYS = {"date", "time", "seconds", "elapsed", "wall_s", "disk_mb", "run_dir", "output_dir", "out",
                "cache_dir", "cache", "mining_cache"}
#: text files in which the run's own path (as given, and absolute) is replaced by "<run>" before comparing
TEXT_SUFFIXES = {".html", ".js", ".css", ".csv", ".txt", ".md"}


def files(root: Path) -> set[str]:
    out = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not (set(rel.parts[:-1]) & IGNORED_DIRS) and p.suffix not in IGNORED_SUFFIXES:
            out.add(rel.as_posix())
    return out


def _strip(v):
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items() if k not in IGNORED_KEYS}
    if isinstance(v, list):
        return [_strip(x) for x in v]
    return v


def _first_json_difference(a, b, where: str = "") -> str:
    if type(a) is not type(b):
        return f"{where or '/'}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}/{k}: only in {'B' if k not in a else 'A'}"
            d = _first_json_difference(a[k], b[k], f"{where}/{k}")
            if d:
                return d
        return ""
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where or '/'}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_json_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return ""
    return "" if a == b else f"{where or '/'}: {a!r} vs {b!r}"


def _npz_difference(a: Path, b: Path) -> str:
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        na, nb = sorted(za.namelist()), sorted(zb.namelist())
        if na != nb:
            return f"members {na} vs {nb}"
        for n in na:
            if za.read(n) != zb.read(n):  # each member is an .npy: header (dtype, shape) and data, no time
                with np.load(a) as xa, np.load(b) as xb:
                    key = n[:-4] if n.endswith(".npy") else n
                    return f"array {key}: {_array_difference(xa[key], xb[key])}"
    return ""


def _array_difference(x: np.ndarray, y: np.ndarray) -> str:
    if x.dtype != y.dtype or x.shape != y.shape:
        return f"{x.dtype}{x.shape} vs {y.dtype}{y.shape}"
    ne = np.flatnonzero(np.ascontiguousarray(x).reshape(-1).view(np.uint8)
                       != np.ascontiguousarray(y).reshape(-1).view(np.uint8))
    n_bytes = x.dtype.itemsize
    first = int(ne[0]) // n_bytes
    return (f"{len(np.unique(ne // n_bytes))} of {x.size} elements differ in their bytes, first at flat index "
            f"{first}: {x.reshape(-1)[first]!r} vs {y.reshape(-1)[first]!r}")


_DATE = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?")


def _unrun(data: bytes, run: Path) -> bytes:
    for form in sorted({str(run), str(run.resolve())}, key=len, reverse=True):
        data = data.replace(form.encode(), b"<run>")
    return _DATE.sub(b"<date>", data)


def difference(a: Path, b: Path, run_a: Path | None = None, run_b: Path | None = None) -> str:
    """'' when the two files agree (see the module docstring), else what differs."""
    if a.suffix == ".npz":
        return _npz_difference(a, b)
    if a.suffix == ".json":
        ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
        return _first_json_difference(_strip(ja), _strip(jb))
    ba, bb = a.read_bytes(), b.read_bytes()
    if a.suffix in TEXT_SUFFIXES and run_a is not None and run_b is not None:
        ba, bb = _unrun(ba, run_a), _unrun(bb, run_b)
    if ba == bb:
        return ""
    if a.suffix == ".npy":
        return _array_difference(np.load(a), np.load(b))
    n = next((i for i, (x, y) in enumerate(zip(ba, bb)) if x != y), min(len(ba), len(bb)))
    return f"{len(ba)} vs {len(bb)} bytes, first difference at byte {n}"


def compare(run_a: Path, run_b: Path) -> tuple[int, list[str]]:
    """(number of files compared, one line per difference)."""
    fa, fb = files(run_a), files(run_b)
    problems = [f"only in A: {f}" for f in sorted(fa - fb)] + [f"only in B: {f}" for f in sorted(fb - fa)]
    both = sorted(fa & fb)
    for f in both:
        d = difference(run_a / f, run_b / f, run_a, run_b)
        if d:
            problems.append(f"differs: {f}: {d}")
    return len(both), problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    args = ap.parse_args(argv)
    for r in (args.run_a, args.run_b):
        if not r.is_dir():
            print(f"error: {r} is not a run directory", file=sys.stderr)
            return 2
    n, problems = compare(args.run_a, args.run_b)
    kinds: dict[str, int] = {}
    for f in files(args.run_a) & files(args.run_b):
        kinds[Path(f).suffix or "(none)"] = kinds.get(Path(f).suffix or "(none)", 0) + 1
    print(f"compared {n} files ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))})")
    for p in problems:
        print(p)
    print("identical" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
