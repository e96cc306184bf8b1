"""The paper's analyses, one module per figure or table (and a few beyond it).

Each module takes plain Python arguments (models, datasets, tensors) and returns tensors, arrays or ``(fig, ax)``; it
never saves.  The Hydra adapters (``<name>_task(cfg)``) live in ``zf.tasks``; run one with
``python scripts/run.py experiment=<name>``.
"""
