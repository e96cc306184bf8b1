"""The main job: ``python scripts/run.py layer=4`` (paper Fig. 2), or an experiment:
``python scripts/run.py experiment=occlusion``.  Sweeps: ``python scripts/run.py -m layer=1,2,3,4,5``."""
import os
from pathlib import Path

import hydra
import matplotlib

matplotlib.use("Agg")  # the scripts write figures to files; the library never picks a backend

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from zf.edge.tasks import cli, dispatch, hydra_main  # noqa: E402  (also registers the structured configs the YAML files use)


@hydra.main(version_base="1.3", config_path="../configs", config_name="run")
def main(cfg):
    return cli(dispatch, cfg)


if __name__ == "__main__":
    hydra_main(main)  # Hydra's own config errors exit 2, as zf's do
