"""zf: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" (ECCV 2014), in PyTorch.

The library takes plain Python arguments and returns tensors, arrays or figures; Hydra lives in ``zf.tasks``,
``zf.edge`` and ``scripts/``.  ``docs/ARCHITECTURE.md`` maps the modules.
"""
__version__ = "0.1.0"
