"""zf: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" (ECCV 2014), in PyTorch.

The library takes plain Python arguments and returns tensors, arrays or figures; Hydra lives in ``zf.edge`` and
``scripts/``.  Subpackages, bottom to top (each imports only from those before it): the base modules (``errors``,
``faults``, ``data``, ``tracking``), ``net``, ``projection``, ``mining``, ``views``, ``training``, ``experiments``,
``jobs``, ``edge``.  ``docs/ARCHITECTURE.md`` maps the modules.
"""
__version__ = "0.1.0"
