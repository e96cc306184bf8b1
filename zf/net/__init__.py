"""The network layer: models and their weights, module paths and reading layers (``capture``), the paper's layer
names for ``features`` stacks, receptive fields, and the layer listing.  Imports nothing from the other subpackages."""
