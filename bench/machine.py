"""The machine a benchmark ran on, named the same way by every script in bench/."""
from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(*extra: str) -> str:
    """``"<cpu>, <n> logical CPUs, <OS>"`` followed by ``extra`` (library versions...)."""
    return ", ".join([cpu_model(), f"{os.cpu_count()} logical CPUs", platform.system(), *extra])
