"""Shared helpers for benchmark scripts: machine description and appending rows to RESULTS.md."""
from __future__ import annotations

import datetime
import os
import platform
import resource
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return f"{platform.machine()} {os.cpu_count()} cores {mem:.0f} GiB"


def today() -> str:
    return datetime.date.today().isoformat()


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def append_log(header: str, columns: tuple[str, ...], row: tuple) -> None:
    """Append one table row under ``header`` (created at the end of RESULTS.md if missing).

    Each script's log table is the last section it owns; rows are appended to it in place.
    """
    text = RESULTS.read_text() if RESULTS.exists() else "# ckksnet benchmark results\n"
    line = "| " + " | ".join(str(v) for v in row) + " |"
    if header not in text:
        text = text.rstrip("\n") + (f"\n\n{header}\n\n| " + " | ".join(columns) + " |\n|"
                                    + "---|" * len(columns) + "\n" + line + "\n")
    else:
        head, tail = text.split(header, 1)
        lines = tail.split("\n")
        # the table ends at the first blank line after its header row
        end = next(i for i in range(3, len(lines) + 1) if i == len(lines) or not lines[i].startswith("|"))
        lines.insert(end, line)
        text = head + header + "\n".join(lines)
    RESULTS.write_text(text)


def replace_section(header: str, section: str) -> None:
    """Put ``section`` (starting with ``header``) in RESULTS.md in place of the previous one,
    or, the first time, before the automatic benchmark logs."""
    text = RESULTS.read_text()
    section = section.rstrip("\n") + "\n\n"  # a blank line before the next header
    if header in text:
        head, rest = text.split(header, 1)
        nxt = rest.find("\n## ")
        text = head + section + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        marker = "## Benchmark log: bootstrap.py"
        text = text.replace(marker, section + marker) if marker in text else text + "\n" + section
    RESULTS.write_text(text)
