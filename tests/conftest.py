"""Test setup: offline hub, runs and caches in temp folders, one thread. (pyproject's pytest `pythonpath` puts the
repo root on the path, for `import algos.<method>` and `import benchmarks.<name>`.)"""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# warm starts and pretrained toys made by the tests go to a temporary cache, not the repository's runs/cache (which
# holds a user's own runs); set REWARDLAB_CACHE to keep them between sessions (CI sets it to .ci/cache)
os.environ.setdefault("REWARDLAB_CACHE", tempfile.mkdtemp(prefix="rewardlab-test-cache-"))

torch.set_num_threads(1)  # the tiny models run fastest on one thread; the suite is sized for 2 cores


@pytest.fixture(autouse=True)
def runs_in_tmp(tmp_path, monkeypatch):
    """Every test writes its run folders under its own tmp_path, never into the repo's runs/."""
    import shared.runs

    monkeypatch.setattr(shared.runs, "RUNS_DIR", tmp_path / "runs")
    return tmp_path / "runs"
