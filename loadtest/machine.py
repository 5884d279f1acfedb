"""This machine in one line and its load average, printed beside every figure a load test gives."""

from __future__ import annotations

import os
import platform

from service.contract.machine import cpu_model_name


def machine_description() -> str:
    """CPU model, core count and OS of this machine, for every figure printed."""
    return f"{cpu_model_name()}, {os.cpu_count()} CPU(s), {platform.system()} {platform.machine()}"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other processes share the cores."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
