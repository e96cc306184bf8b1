"""Errors that are the user's to fix.

Every exception here is a mistake in what was asked (a config value, a path, a checkpoint, a layer name), not a bug
in zf.  Its message is one line that names the thing that is wrong and what is allowed or what to do.  The scripts
print such an error as that one line and exit with status 2, without a traceback (set ``HYDRA_FULL_ERROR=1`` or
``debug=true`` to see one); any other exception is a bug and keeps its traceback.

Each class also derives from the built-in exception a caller would expect (``ValueError``, ``KeyError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""
from __future__ import annotations

import os
import sys


class ZFError(Exception):
    """A user error: the message is one line saying what is wrong and what to do."""

    def __str__(self) -> str:  # KeyError would otherwise quote its message
        return str(self.args[0]) if self.args else ""


class ConfigError(ZFError, ValueError):
    """A config value or argument that is not allowed (``k=0``, ``method=foo``, ``units=[9999]``)."""


class LayerError(ZFError, KeyError):
    """A layer name or module path that the model does not have."""


class DataError(ZFError, FileNotFoundError):
    """A data folder or file that is missing, empty or unreadable."""


class CheckpointError(ZFError, ValueError):
    """A checkpoint or weights file that is missing, is not a checkpoint, or does not fit the model."""


class OutputError(ZFError, OSError):
    """An output folder that cannot be created or written."""


def script_main(main) -> None:
    """Run a plain (argparse) script's ``main()``: a user error prints ``error: <one line>`` and exits with status
    2, as the Hydra scripts do (``ZF_DEBUG=1`` shows the traceback)."""
    try:
        main()
    except ZFError as e:
        if os.environ.get("ZF_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
