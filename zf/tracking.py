"""Weights & Biases, made safe for long runs: offline by default, and a W&B failure never stops the work.

    tracker = Tracker(project="zf", dir=run_dir, config=cfg_dict)
    tracker.log({"loss": 0.1}, step=3)
    tracker.image("filters", array_hwc_uint8)
    tracker.finish()          # in a ``finally``: sweep jobs each get their own W&B run

Any exception inside wandb is reported once as a warning, after which the tracker does nothing.
"""
from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np


def wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"


def reachable(timeout: float = 3.0) -> bool:
    """Whether W&B's server answers a TCP connection within ``timeout`` seconds (online W&B without a network
    otherwise retries for about 90 s before it fails)."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        socket.create_connection((url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


class Tracker:
    """A W&B run, or nothing (``enabled=False``, on non-zero distributed ranks, or after a W&B failure).

    Args:
        project, group, name, tags, config: as for ``wandb.init``.
        dir: the run directory; W&B writes its ``wandb/`` folder there.
        mode: ``"offline"`` (default: ``wandb sync`` later), ``"online"`` or ``"disabled"``.
    """

    def __init__(self, project: str = "zf", dir: str | os.PathLike = ".", config: dict | None = None,
                 mode: str = "offline", group: str | None = None, name: str | None = None,
                 tags: list[str] | None = None, enabled: bool = True, job_type: str | None = None):
        self.run = None
        self._failed = False
        if not enabled or mode == "disabled":
            return
        try:
            import wandb

            Path(dir).mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("WANDB_SILENT", "true")
            if mode == "online" and not reachable():
                print(f"W&B: {wandb_host()} cannot be reached; logging offline instead (wandb sync "
                      f"{Path(dir) / 'wandb'} later)")
                mode = "offline"
            self.run = wandb.init(project=project, dir=str(dir), config=config, mode=mode, group=group, name=name,
                                  tags=tags, job_type=job_type, reinit="create_new")
        except Exception as e:  # noqa: BLE001 - any W&B problem must not stop the run
            self._fail(e)

    def _fail(self, e: Exception) -> None:
        if not self._failed:
            warnings.warn(f"W&B failed ({type(e).__name__}: {e}); the run goes on without it.", stacklevel=3)
        self._failed = True
        self.run = None

    @property
    def active(self) -> bool:
        return self.run is not None

    def _call(self, fn, *args, **kwargs) -> Any:
        if self.run is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return None

    def log(self, metrics: dict, step: int | None = None) -> None:
        self._call(lambda: self.run.log(metrics, step=step))

    def image(self, key: str, image, caption: str | None = None, step: int | None = None) -> None:
        """``image``: an (H, W, 3) uint8 array, a PIL image, a matplotlib figure or a path."""
        def go():
            import wandb

            self.run.log({key: wandb.Image(image, caption=caption)}, step=step)

        self._call(go)

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        """A W&B Table; cells that are (H, W, 3) arrays or paths to images become images."""
        def go():
            import wandb

            def cell(v):
                if isinstance(v, np.ndarray) and v.ndim == 3:
                    return wandb.Image(v)
                if isinstance(v, Path) and v.suffix.lower() in (".png", ".jpg", ".jpeg"):
                    return wandb.Image(str(v))
                return v

            self.run.log({key: wandb.Table(columns=columns, data=[[cell(v) for v in r] for r in rows])})

        self._call(go)

    def artifact(self, name: str, kind: str, paths: list[str | os.PathLike]) -> None:
        def go():
            import wandb

            art = wandb.Artifact(name, type=kind)
            for p in paths:
                p = Path(p)
                (art.add_dir if p.is_dir() else art.add_file)(str(p))
            self.run.log_artifact(art)

        self._call(go)

    def summary(self, values: dict) -> None:
        self._call(lambda: self.run.summary.update(values))

    def finish(self) -> None:
        self._call(lambda: self.run.finish())
        self.run = None
