"""One line every bench script prints first: the commit it measured (and whether the tree
had uncommitted changes), the date, Python and the CPUs, so a figure copied into the README
carries where it came from.

    from provenance import header   # bench/ is on sys.path when a script runs from it
    print(header())
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """``<short sha>`` or ``<short sha>+dirty``; ``unknown`` outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def header() -> str:
    return (f"# commit {commit()}, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
