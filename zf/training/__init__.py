"""Training: the loop (``train.fit``), its checkpoints, and a whole training run (``train.fit_task``)."""
