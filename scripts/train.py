"""Train a model: ``python scripts/train.py [experiment=default_model] [train.epochs=N] [-m ...]``.

Multi-GPU / multi-node: ``torchrun --nproc_per_node=N scripts/train.py ...``.  See configs/train.yaml.
"""
import os
from pathlib import Path

import hydra
import matplotlib

matplotlib.use("Agg")  # the scripts write figures to files; the library never picks a backend

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from zf.edge.tasks import cli, dispatch, hydra_main  # noqa: E402  (also registers the structured configs the YAML files use)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg):
    return cli(dispatch, cfg)


if __name__ == "__main__":
    hydra_main(main)  # Hydra's own config errors exit 2, as zf's do
