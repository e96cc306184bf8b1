"""The Hydra edge: config to library objects and the task wrapper (``runtime``), one short function per task
(``tasks``).  The only package that reads a config."""
