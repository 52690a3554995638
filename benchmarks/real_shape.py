# benchmark of the real path | README: #real-models
"""Each script's real path on a real-architecture model with random weights: seconds per step, peak memory at step
batch B and 4B with the same micro-batch, and how far bf16 autocast moves the weights against fp32.

Nothing is downloaded: the model is `shared.real_shapes` at the chosen shape (random weights, the real vocabulary),
with a byte-level BPE tokenizer filled to the real vocabulary size (every sampled id decodes to text) and Qwen2.5's
chat template, saved to a temporary folder; the data is the tiny world's task rows saved with `save_to_disk`. The
script then runs as a user runs it, `python algos/<script>.py --model-name FOLDER --dataset-name FOLDER ...`, for a
few steps, each measurement in a process of its own:

    1. fp32 at step batch B: seconds per step (from metrics.jsonl) and peak RSS; the saved weights
    2. fp32 at step batch 4B, the same micro-batch and generation chunk: peak RSS
    3. bf16 autocast at step batch B: the saved (fp32 master) weights

and prints one line per script:

    <script>: <s>/step, peak RSS B <x> GB, 4B <y> GB (ratio <r>), bf16/fp32 update ratio <u>: bounded

where bounded = the 4B peak within 1.25x of the B peak and the update ratio ||W_bf16 - W_0|| / ||W_fp32 - W_0||
(lr 1e-6, the papers' scale) within 0.7-1.4; otherwise `NOT bounded (<why>)`. The last line is
`real shape: K/N scripts bounded`.

Commands:
    taskset -c 0,1 python benchmarks/real_shape.py                       # Qwen2.5-0.5B shape, CPU (~30 min)
    taskset -c 0,1 python benchmarks/real_shape.py --shape vocab         # Qwen2 vocabulary, small body (minutes)
    python benchmarks/real_shape.py --shape qwen2.5-0.5b --cuda          # on a GPU: peak = max_memory_allocated
"""

from __future__ import annotations

import json
import math
import os
import resource
import runpy
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from shared.real_shapes import REAL_SHAPES, build_bpe_tokenizer, save_real_shape_model  # noqa: E402
from shared.runs import fail  # noqa: E402

UNUSED_VOCABULARY_ROWS = 293  # Qwen2.5: 151,936 embedding rows, 151,643 ordinary tokens


@dataclass
class Args:
    shape: Literal["qwen2.5-0.5b", "llama-3.2-1b", "vocab", "test"] = "qwen2.5-0.5b"
    """model shape (shared/real_shapes.py): full hub shapes, `vocab` (real vocabulary, small body), `test`"""
    scripts: tuple[str, ...] = ("bleuberi",)
    """scripts to measure"""
    batch_size: int = 16
    """step batch B (completions); the memory check also runs 4B"""
    micro_batch_size: int = 8
    """micro-batch of every forward and backward, the same at B and 4B"""
    generation_batch_size: int = 16
    """sequences per generate call, the same at B and 4B"""
    completion_length: int = 32
    """new tokens per completion (a random model rarely stops early)"""
    steps: int = 2
    """optimizer steps per measurement (seconds per step = the time between the first and the last step / (steps-1))"""
    lr: float = 1e-6
    """learning rate of the update-ratio runs (the papers' scale, where bf16 weights without masters stall)"""
    num_threads: int = 2
    """torch CPU threads of each measured process"""
    cuda: bool = False
    """run the measured processes on the GPU (peak memory = torch.cuda.max_memory_allocated)"""
    seed: int = 1
    """seed of every measured run"""


# Each script's line: the data it reads and the command that runs its real path ------------------------------------
def common_flags(batch_size: int, dtype: str, args: Args) -> list[str]:
    """The flags every GRPO-style script's measurement shares: steps, batch, micro-batch, generation chunk, lr,
    dtype, seed, threads, and saving the trained policy."""
    return [
        f"--steps={args.steps}",
        f"--batch-size={batch_size}",
        "--num-generations=8",
        f"--micro-batch-size={args.micro_batch_size}",
        f"--generation-batch-size={args.generation_batch_size}",
        f"--max-completion-length={args.completion_length}",
        f"--lr={args.lr}",
        f"--dtype={dtype}",
        f"--seed={args.seed}",
        f"--num-threads={args.num_threads}",
        "--save-model",
        "--cuda" if args.cuda else "--no-cuda",
    ]


def bleuberi_data(folder: Path) -> Path:
    """Prompts and references (the string_ops task's rows), saved as a dataset folder."""
    from shared.tasks import get_task

    data = get_task("string_ops").dataset(512, seed=0).select_columns(["prompt", "reference"])
    data.save_to_disk(str(folder))
    return folder


def bleuberi_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    num_prompts = batch_size // 8
    return [
        "algos/bleuberi.py",
        f"--model-name={model}",
        f"--dataset-name={data}",
        "--group-column=None",
        "--arms=bleuberi",
        f"--pool-size={num_prompts}",
        f"--num-examples={num_prompts}",
        "--num-eval=2",
        *common_flags(batch_size, dtype, args),
    ]


def dr_irl_data(folder: Path) -> Path:
    """Prompts, categories and demonstrations of two categories (the rule_categories task's copy and reverse rows)."""
    from datasets import Dataset

    from shared.tasks import get_task

    data = get_task("rule_categories").dataset(1000, seed=0).filter(lambda row: row["op"] in ("copy", "reverse"))
    columns = {"prompt": data["prompt"], "category": data["op"], "demonstration": data["reference"]}
    Dataset.from_dict(columns).save_to_disk(str(folder))
    return folder


def dr_irl_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    """DR-IRL's real path: two transformer RMs fitted one at a time (the same pairs at B and 4B), then GRPO-S."""
    return [
        "algos/dr_irl.py",
        f"--model-name={model}",
        f"--dataset-name={data}",
        "--categories",
        "copy",
        "reverse",
        "--rm-arch=transformer",
        "--true-reward=exact_match",
        "--arms=grpo-s",
        "--num-eval=1",
        "--num-demos-per-category=4",
        "--irl-samples=1",
        "--rm-epochs=1",
        "--rm-lr=1e-5",
        f"--rm-batch-size={args.micro_batch_size}",
        f"--rm-micro-batch-size={args.micro_batch_size}",
        *common_flags(batch_size, dtype, args),
    ]


@dataclass(frozen=True)
class Line:
    """One script's real-shape line: the data it reads, the command that runs its real path, and what to compare."""

    data: Callable[[Path], Path]
    """folder -> the dataset (or prompt file) the command reads, written into that folder"""
    command: Callable[[Path, Path, int, str, Args], list[str]]
    """(model, data, step batch, dtype, args) -> `algos/<script>.py` and its flags"""
    saved: str | None
    """folder of the trained model inside the run folder (--save-model); None: the script trains no weights, and the
    line reports seconds per step and memory only"""
    model: Callable[[Path, Args], Path] | None = None
    """(work folder, args) -> a model folder of the script's own (e.g. a diffusion pipeline); None: the shared
    real-shape causal LM at --shape"""


SCRIPTS: dict[str, Line] = {
    "bleuberi": Line(bleuberi_data, bleuberi_command, saved="bleuberi"),
    "dr_irl": Line(dr_irl_data, dr_irl_command, saved="grpo-s"),
}


# Measurement ------------------------------------------------------------------------------------------------------
def child(argv: list[str], report: str) -> None:
    """Run a script as `python <script> <flags>` in this process and write its peak memory to `report`."""
    script = str(ROOT / argv[0])
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, str(ROOT))
    use_cuda = "--cuda" in argv and torch.cuda.is_available()
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        peak_cuda = torch.cuda.max_memory_allocated() if use_cuda else 0
        Path(report).write_text(json.dumps({"peak_rss": peak_rss, "peak_cuda": peak_cuda}))


def measure(argv: list[str], runs_dir: Path, log: Path) -> dict:
    """Run one measurement in a fresh process; its peak memory, run folder and seconds per step."""
    runs_dir.mkdir(parents=True)
    report = runs_dir / "peak.json"
    env = {**os.environ, "REWARDLAB_RUNS": str(runs_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child-report", str(report), "--", *argv]
    started = time.time()
    with open(log, "w") as output:
        finished = subprocess.run(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    if finished.returncode != 0 or not report.exists():
        tail = "".join(open(log).readlines()[-15:])
        fail(f"{' '.join(argv)} failed (exit {finished.returncode}); the end of its output ({log}):\n{tail}")
    (run_folder,) = [path for path in runs_dir.iterdir() if path.is_dir()]
    step_times = {}
    for line in (run_folder / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if any(key.startswith("losses/") for key in row):
            step_times[row["step"]] = row["time"]
    steps = sorted(step_times)
    per_step = (step_times[steps[-1]] - step_times[steps[0]]) / max(len(steps) - 1, 1)
    peaks = json.loads(report.read_text())
    peak = peaks["peak_cuda"] or peaks["peak_rss"]
    return {"folder": run_folder, "seconds_per_step": per_step, "peak": peak, "wall": time.time() - started}


def weight_distance(folder_a: Path, folder_b: Path) -> float:
    """||W_a - W_b|| over every weight of two saved models (in fp64)."""
    from safetensors.torch import load_file

    def weights(folder):
        tensors = {}
        for file in sorted(folder.glob("*.safetensors")):
            tensors.update(load_file(str(file)))
        return tensors

    a, b = weights(folder_a), weights(folder_b)
    return math.sqrt(sum((a[k].double() - b[k].double()).pow(2).sum().item() for k in a))


def run_script(name: str, language_model: Callable[[], Path], work: Path, args: Args) -> tuple[str, bool]:
    line = SCRIPTS[name]
    model = line.model(work, args) if line.model is not None else language_model()
    data = line.data(work / f"{name}-data")
    measurements = [("B", args.batch_size, "fp32"), ("4B", 4 * args.batch_size, "fp32")]
    if line.saved is not None:
        measurements.append(("bf16", args.batch_size, "bf16"))
    runs = {}
    for label, batch_size, dtype in measurements:
        print(f"{name}: running {label} (step batch {batch_size}, {dtype}) ...", flush=True)
        runs[label] = measure(
            line.command(model, data, batch_size, dtype, args), work / f"{name}-{label}", work / f"{name}-{label}.log"
        )
        print(
            f"{name}: {label} done in {runs[label]['wall']:.0f} s, peak {runs[label]['peak'] / 2**30:.2f} GB",
            flush=True,
        )
    memory_ratio = runs["4B"]["peak"] / runs["B"]["peak"]
    problems = []
    if not memory_ratio <= 1.25:
        problems.append(f"peak at 4B is {memory_ratio:.2f}x the peak at B")
    update = ""
    if line.saved is not None:
        fp32_distance = weight_distance(model, runs["B"]["folder"] / line.saved)
        bf16_distance = weight_distance(model, runs["bf16"]["folder"] / line.saved)
        update_ratio = bf16_distance / fp32_distance if fp32_distance > 0 else float("nan")
        update = f", bf16/fp32 update ratio {update_ratio:.2f}"
        if not 0.7 <= update_ratio <= 1.4:
            problems.append(f"bf16 moved the weights {update_ratio:.2f}x as far as fp32")
    memory = "peak memory" if args.cuda else "peak RSS"
    verdict = "bounded" if not problems else f"NOT bounded ({'; '.join(problems)})"
    text = (
        f"{name}: {runs['B']['seconds_per_step']:.2f} s/step, {memory} B {runs['B']['peak'] / 2**30:.2f} GB, "
        f"4B {runs['4B']['peak'] / 2**30:.2f} GB (ratio {memory_ratio:.2f}){update}: {verdict}"
    )
    return text, not problems


def main(args: Args) -> list[str]:
    unknown = [name for name in args.scripts if name not in SCRIPTS]
    if unknown:
        fail(f"--scripts {' '.join(unknown)}: no real-shape line yet; known: {', '.join(SCRIPTS)}")
    if args.batch_size % 8 or args.batch_size % args.micro_batch_size or args.steps < 2:
        fail("--batch-size must be a multiple of 8 (groups of 8) and of --micro-batch-size, and --steps at least 2")
    lines = []
    with tempfile.TemporaryDirectory(prefix="real-shape-") as tmp:
        work = Path(tmp)
        built = []

        def language_model() -> Path:
            """The shared real-shape causal LM, built once on first use."""
            if not built:
                vocab_size = REAL_SHAPES[args.shape]["vocab_size"]
                print(f"building the {args.shape} model (random weights, vocabulary {vocab_size}) ...", flush=True)
                tokenizer = build_bpe_tokenizer(vocab_size=vocab_size - UNUSED_VOCABULARY_ROWS)
                built.append(save_real_shape_model(work / "model", args.shape, tokenizer, seed=0))
            return built[0]

        for name in args.scripts:
            line, _ = run_script(name, language_model, work, args)
            print(line, flush=True)
            lines.append(line)
    bounded = sum(line.endswith(": bounded") for line in lines)
    lines.append(f"real shape: {bounded}/{len(args.scripts)} scripts bounded")
    print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child-report":
        child(sys.argv[sys.argv.index("--") + 1 :], sys.argv[2])
    else:
        main(tyro.cli(Args))
