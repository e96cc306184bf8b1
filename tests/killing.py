"""Killing a test's subprocess at its pause point (``zf.faults.pause_point``), shared by the fault tests."""
import os
import signal
import time
from pathlib import Path


def wait_then_kill(proc, marker: Path, what: str, timeout: float = 300) -> None:
    """Wait until ``proc`` writes ``marker`` (it then blocks), kill -9 it; fail if it ended or never got there."""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not marker.is_file():
            time.sleep(0.05)
        reached = marker.is_file() and proc.poll() is None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert reached, f"{what} never reached its pause point (exit {proc.returncode}): {proc.stderr.read()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
