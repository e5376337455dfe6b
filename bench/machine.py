"""The machine a suite ran on, recorded with its results: platform, CPU, memory, torch and GPU where loaded, and
the load average (other work on a shared machine skews timings)."""

from __future__ import annotations

import os
import platform
import sys

try:
    import psutil
except ImportError:  # the gpu suite runs on machines with torch but not necessarily psutil
    psutil = None


def machine_info() -> dict:
    """Platform, Python, CPU (count and memory where psutil is installed), torch and GPU where a suite loaded
    torch."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    if psutil is not None:  # absent on the bare GPU machines the gpu suite runs on
        info["cpu_count"] = psutil.cpu_count()
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    torch = sys.modules.get("torch")  # report torch only where the suite loaded it
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01 (processes running or waiting for a core)."""
    return [round(x, 2) for x in os.getloadavg()]
