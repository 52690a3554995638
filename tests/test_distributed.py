"""Past one process: `accelerate launch --num_processes 2` on the CPU (gloo), as the README's "Past one GPU" runs it.

Each test launches two processes (about 20-40 s on 2 cores); `pytest -m "not multiprocess"` skips them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from algos import bleuberi
from shared.distributed import ONE_PROCESS, Processes
from shared.precision import setup_precision

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
LAUNCH += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch(script_and_flags: list[str], env_runs: Path | None = None, timeout: int = 600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # `import algos.<method>` in the probe
    if env_runs is not None:
        env["REWARDLAB_RUNS"] = str(env_runs)
    return subprocess.run(
        [*LAUNCH, *script_and_flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_one_process_is_the_identity():
    assert ONE_PROCESS.shard([1, 2, 3]) == [1, 2, 3]
    assert ONE_PROCESS.seed(7) == 7  # a one-process run samples exactly what it sampled before
    assert ONE_PROCESS.sum(2.5) == 2.5
    assert ONE_PROCESS.gather_rows(lambda rows: [r * 2 for r in rows], [1, 2, 3]) == [2, 4, 6]
    second = Processes(index=1, count=2, device=torch.device("cpu"))
    assert second.shard(list(range(8))) == [4, 5, 6, 7]  # contiguous: whole groups stay together
    assert second.seed(7) != 7
    with pytest.raises(ValueError, match="split evenly"):
        second.shard([1, 2, 3])


@pytest.mark.multiprocess
def test_two_processes_of_four_groups_give_the_gradient_of_one_process_of_eight(tmp_path):
    """BLEUBERI's GRPO step: 2 processes x 4 groups give 1 process x 8 groups' loss and gradients (relative 1e-5),
    for the grpo, bnpo and dr_grpo normalisations."""
    from tests.multiprocess_grpo_gradients import LOSS_TYPES, step_batch

    out_file = tmp_path / "gradients.pt"
    launched = launch([str(ROOT / "tests" / "multiprocess_grpo_gradients.py"), str(out_file)])
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = torch.load(out_file)
    assert two["count"] == 2
    precision = setup_precision("fp32", cuda=False)
    model, inputs, old_logp, ref_logp, advantages = step_batch()
    for loss_type in LOSS_TYPES:
        args = bleuberi.Args(micro_batch_size=16, loss_type=loss_type, max_completion_length=6)
        _, _, loss = bleuberi.accumulate_grpo_gradients(model, inputs, old_logp, ref_logp, advantages, args, precision)
        assert two[loss_type]["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7), loss_type
        for ours, theirs in zip(two[loss_type]["grads"], [p.grad for p in model.parameters()]):
            scale = theirs.abs().max().clamp(min=1e-12)
            assert (ours - theirs).abs().max() / scale <= 1e-5, loss_type
        model.zero_grad(set_to_none=True)


@pytest.mark.multiprocess
def test_a_two_process_bleuberi_run_leaves_one_run_folder_with_its_summary(tmp_path):
    flags = ["--no-cuda", "--pool-size", "32", "--num-examples", "8", "--num-eval", "8", "--steps", "2"]
    flags += ["--batch-size", "16", "--micro-batch-size", "4", "--warm-start-steps", "20", "--arms", "bleuberi"]
    flags += ["sft-hard", "--save-model"]
    launched = launch([str(ROOT / "algos" / "bleuberi.py"), *flags], env_runs=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1, folders  # one folder, whatever the number of processes
    run = folders[0]
    assert (run / "summary.md").exists() and not (run / "INCOMPLETE").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {row["arm"] for row in rows} == {"bleuberi", "sft-hard"}
    assert len([row for row in rows if row["arm"] == "bleuberi" and "losses/loss" in row]) == 2  # one row a step
    assert (run / "bleuberi" / "config.json").exists()  # the main process saved the policy
    assert launched.stdout.count("## BLEUBERI on") == 1  # one summary printed, by the main process


@pytest.mark.multiprocess
def test_a_two_process_dr_irl_run_leaves_one_run_folder_with_its_summary(tmp_path):
    """DR-IRL: the reward models are fitted alike on every process, GRPO-S's alpha statistics span the whole step
    batch (gathered), and only the main process writes."""
    flags = ["--no-cuda", "--steps", "2", "--batch-size", "16", "--num-eval", "8", "--num-demos-per-category", "4"]
    flags += ["--irl-samples", "1", "--rm-epochs", "1", "--warm-start-steps", "20", "--arms", "grpo", "grpo-s"]
    launched = launch([str(ROOT / "algos" / "dr_irl.py"), *flags], env_runs=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1, folders
    run = folders[0]
    assert (run / "summary.md").exists() and not (run / "INCOMPLETE").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for arm in ("grpo", "grpo-s"):
        steps = [row for row in rows if row.get("arm") == arm and "losses/loss" in row]
        assert len(steps) == 2
        assert all(row["completions/mean_length"] > 0 for row in steps)
    assert launched.stdout.count("## DR-IRL on") == 1
