"""Shared helpers of the benchmarks: machine facts, percentiles, results files.

Benchmarks run as scripts (``python bench/NAME.py``), so this module is imported
as ``_common`` from the script's own directory. It puts the repository root on
``sys.path`` so that the test helpers (``tests/support``: the sandbox process,
the Celery fleet) can be imported by the benchmarks too.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile by linear interpolation (NaN for no values)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def redis_version() -> str:
    """The version of the Redis server binary the benchmarks start."""
    # After the sys.path insert above: bench scripts run from bench/, not the root.
    from etbridge.redisserver import find_server_binary  # noqa: PLC0415

    try:
        out = subprocess.run(
            [find_server_binary(), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip() or "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, Any]:
    """What a reader needs to compare figures across machines."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": redis_version(),
        # Other work on the machine skews timings; this says how much there was.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, document: dict[str, Any], output: Path | None = None) -> Path:
    """Write ``bench/results/<name>.json`` (or ``output``); return the path."""
    path = output or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


def cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) a process and its waited-for children used (Linux)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    # utime, stime, cutime, cstime are fields 14-17 of the full line.
    return sum(int(v) for v in fields[11:15]) / hz


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux, from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(raw.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and every live descendant."""
    return sum(process_cpu_seconds(p) or 0.0 for p in process_tree(pid))


def hash_encodings(memory: dict[str, Any]) -> str:
    """The ``snap`` hash's encoding (and ``fp``'s, while state from before format 3 keeps one)."""
    enc = memory["encoding"]
    return enc["snap"] if enc["fp"] in ("None", "absent") else f"{enc['snap']}/{enc['fp']}"


def finish(
    document: dict[str, Any],
    started: float,
    report: Callable[[dict[str, Any]], None],
    output: Path | None = None,
) -> int:
    """Stamp ``document`` (wall clock since ``started``, the machine), print it with
    ``report`` and write it as ``bench/results/<benchmark>.json``; the exit status."""
    document["wall_clock_s"] = round(time.monotonic() - started, 1)
    document["machine"] = machine_facts()
    report(document)
    path = write_results(document["benchmark"], document, output)
    print(f"wrote {path} ({document['wall_clock_s']:.0f}s)")
    return 0
