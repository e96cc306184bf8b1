"""The paper's analyses, one module per figure or table (and a few beyond it).

Each module computes with plain Python arguments (models, datasets, tensors) and returns tensors, arrays or
``(fig, ax)``; its ``run(...)`` does the whole figure or table: computes it, writes its arrays, CSV/JSON and figure
into a run directory and logs them to W&B.  The Hydra task that reads the config and calls ``run`` is a few lines
in ``zf.edge.tasks``; run one with ``python scripts/run.py experiment=<name>``.  A new figure is one module here and one
``configs/experiment/<name>.yaml`` whose ``task`` is the generic ``zf.edge.tasks.experiment`` naming the module's
``run`` (``docs/ARCHITECTURE.md``); one that needs more gets a task of its own in ``zf.edge.tasks``.
"""
