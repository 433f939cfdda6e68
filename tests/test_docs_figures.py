"""The secure preset's resource figures (issue #30): README, the example and the notebook state the
same measured figures, and each of them is one benchmarks/RESULTS.md records."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the one statement of the secure demo's cost, as README, example and notebook print it
FIGURES = ("13-15 minutes of inference per image on 2 cores (806 s on 2026-12-04, 863 s on 2026-11-30), "
           "54 bootstraps, 37-45 s of key generation, 13.15 GiB of peak memory")


def _words(path: Path) -> str:
    """The file's text with every run of whitespace one space (README wraps its lines)."""
    return " ".join(path.read_text().replace("\\n", " ").split())


@pytest.mark.parametrize("doc", ["README.md", "examples/encrypted_cifar.py", "examples/encrypted_cifar.ipynb"])
def test_each_document_states_the_same_secure_figures(doc):
    assert FIGURES in _words(ROOT / doc)


def test_the_figures_are_the_measured_ones():
    results = _words(ROOT / "benchmarks" / "RESULTS.md")
    assert "64.7 x (806 s / 12.46 s)" in results          # 2026-12-04, after the floor plan
    assert "| total time, one image | 863 s (14.4 min) |" in results  # 2026-11-30
    assert "| peak memory | 13.15 GiB | 13.15 GiB |" in results
    assert "| key generation | 40-45 s | 44.6 s |" in results and "| key generation | 37 s |" in results
    assert "| bootstraps | 54 | 54 |" in results
    assert 806 / 60 >= 13 and 863 / 60 <= 15  # the minutes range covers both runs


def test_no_other_secure_duration_is_quoted():
    """A range of minutes in the user-facing texts is the measured one (stale 14-16 and 15-25 were)."""
    for doc in ["README.md", "examples/encrypted_cifar.py", "examples/encrypted_cifar.ipynb",
                "examples/client_server.sh", "src/ckksnet/deploy/cli.py"]:
        ranges = {r for r in re.findall(r"\b(\d+-\d+) min", _words(ROOT / doc)) if int(r.split("-")[0]) >= 5}
        assert ranges <= {"13-15"}, f"{doc} quotes {ranges - {'13-15'}} minutes"  # test-preset minutes are short
