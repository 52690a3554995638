"""Test setup: the repo root on sys.path (`import algos.<method>`), offline hub, runs and caches in temp folders."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# warm starts and pretrained toys made by the tests go to a temporary cache, not the repository's runs/cache (which
# holds a user's own runs); set REWARDLAB_CACHE to keep them between sessions (CI sets it to .ci/cache)
os.environ.setdefault("REWARDLAB_CACHE", tempfile.mkdtemp(prefix="rewardlab-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # the tiny models run fastest on one thread; the suite is sized for 2 cores


@pytest.fixture(autouse=True)
def runs_in_tmp(tmp_path, monkeypatch):
    """Every test writes its run folders under its own tmp_path, never into the repo's runs/."""
    import shared.runs

    monkeypatch.setattr(shared.runs, "RUNS_DIR", tmp_path / "runs")
    return tmp_path / "runs"
