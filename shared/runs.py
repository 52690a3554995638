"""Runs: seeding, device choice, the run folder and its logger, and the end-of-run table.

Every script in `algos/` does the same few things around its method:

    seed_everything(args.seed, args.torch_deterministic)
    device = pick_device(args.cuda)
    run = RunLogger(make_run_name(task, args.exp_name, args.seed), args, track=args.track)
    run.log(step, {"losses/loss": ..., "reward": ...}, arm="grpo")   # TensorBoard + metrics.jsonl (+ wandb)
    run.finish(format_table(rows))                          # prints the table, writes summary.md

`runs/<run_name>/` then holds `args.json`, the TensorBoard events (each arm's in a TensorBoard run of its own,
`arms/<arm>/`, with the same tag names, so arms overlay), `metrics.jsonl` (one JSON object per `log` call: `step`,
`time` in seconds since the start, `arm` when given, then the metrics) and `summary.md`. The console gets a short
progress line (step, arm, steps/s, ETA, the main metrics) that fits one terminal line.

Every run gets a folder of its own: two runs with one name (a sweep started in one second) get `<run_name>` and
`<run_name>-2`. Until `finish` writes `summary.md` the folder holds an `INCOMPLETE` marker, so a run stopped
part-way (Ctrl-C, a crash, `fail` after some steps) never looks like a result; a run that `fail`s before logging
anything (a bad input found after the folder was made) leaves no folder. Ctrl-C prints one line that says where
the partial run is, not a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

import numpy as np
import torch

PROGRESS_LINE_WIDTH = 120  # characters of a progress line: one terminal line
INCOMPLETE_MARKER = "INCOMPLETE"  # in a run folder until summary.md is written
PRINT_AT_LEAST_EVERY_SECONDS = 30.0  # `log` prints a progress line after this long even between `print_every` calls
PROGRESS_REDRAW_SECONDS = 0.5  # a phase's progress bar on a terminal is redrawn at most this often
PROGRESS_BAR_WIDTH = 20  # characters of the bar itself
RUNS_DIR = Path(os.environ.get("REWARDLAB_RUNS", Path(__file__).resolve().parent.parent / "runs"))


_OPEN_RUNS: list[RunLogger] = []  # runs started in this process and not yet finished or closed


def fail(message: str) -> NoReturn:
    """Stop with a message for the user (no traceback, exit status 1). For bad options and inputs.

    A run folder opened before the failure is removed when nothing was logged to it yet (it holds no result);
    one with logged steps stays, marked INCOMPLETE, and the message says where it is."""
    for run in list(_OPEN_RUNS):
        if run.logged_rows == 0:
            run.discard()
        else:
            run.close()
            message = f"{message} (the partial run, marked {INCOMPLETE_MARKER}, is in {run.dir})"
    raise SystemExit(f"error: {message}")


def _report_interrupt(exc_type, exc_value, exc_traceback) -> None:
    """sys.excepthook: Ctrl-C prints one line saying where the partial run is, instead of a traceback."""
    if not issubclass(exc_type, KeyboardInterrupt):
        _previous_excepthook(exc_type, exc_value, exc_traceback)
        return
    where = "; ".join(f"the partial run, marked {INCOMPLETE_MARKER}, is in {run.dir}" for run in _OPEN_RUNS)
    for run in list(_OPEN_RUNS):
        run.close()
    print(f"interrupted{': ' + where if where else ''}", file=sys.stderr, flush=True)
    sys.exit(130)  # the shell's status for a SIGINT


_previous_excepthook = sys.excepthook
sys.excepthook = _report_interrupt  # only uncaught exceptions at the top of a script reach it


def help_description(module_doc: str) -> str:
    """What `--help` opens with: the script docstring's first paragraph (the method in two sentences and the
    offline command)."""
    paragraph = module_doc.strip().split("\n\n")[0]
    return " ".join(paragraph.split())  # one line: tyro re-flows it, where it would break before a "(" or a digit


def parse_args(args_class: type, module_doc: str):
    """The script's options from the command line (tyro), `--help` opening with `help_description(module_doc)`."""
    import tyro

    return tyro.cli(args_class, description=help_description(module_doc))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with `deterministic`, ask torch for deterministic kernels too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pick_device(cuda: bool = True) -> torch.device:
    """CUDA when it is asked for and present, else the CPU."""
    return torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on a GPU and fp32 on the CPU; otherwise one of fp32, bf16, fp16."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if name not in dtypes:
        fail(f"--dtype {name!r} is not one of auto, fp32, bf16, fp16")
    return dtypes[name]


def format_seconds(seconds: float) -> str:
    """2h05m, 3m07s or 42s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """A one-line progress bar for a long phase that is not a training step (pretraining, a warm start, selection,
    evaluation):

        progress = Progress("pretraining", total=args.pretrain_steps)
        for step in range(args.pretrain_steps):
            ...
            progress.update(loss=loss.item())   # one unit done; the shown values are optional
        progress.done()

    `pretraining [#######.............]  140/400  35% | 3.1 it/s | ETA 1m24s | loss=0.124`. On a terminal the line
    is redrawn in place at most every `PROGRESS_REDRAW_SECONDS`; in a log (not a terminal) it is printed at every
    tenth of the phase and at least every `PRINT_AT_LEAST_EVERY_SECONDS`, so a CI log stays short."""

    def __init__(self, name: str, total: int, stream=None):
        self.name = name
        self.total = max(int(total), 1)
        self.stream = stream or sys.stdout
        self.in_place = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.count = 0
        self.start = self._last_print = time.time()
        self._last_tenth = 0

    def update(self, n: int = 1, **shown: float) -> None:
        """`n` more units done; `shown` values go on the line."""
        self.count = min(self.count + n, self.total)
        now = time.time()
        tenth = self.count * 10 // self.total
        if self.in_place:
            due = now - self._last_print >= PROGRESS_REDRAW_SECONDS or self.count == self.total
        else:
            due = tenth > self._last_tenth or now - self._last_print >= PRINT_AT_LEAST_EVERY_SECONDS
        if due:
            self._last_print = now
            self._last_tenth = tenth
            self.stream.write(("\r" if self.in_place else "") + self.line(now, shown) + ("" if self.in_place else "\n"))
            self.stream.flush()

    def line(self, now: float, shown: dict[str, float]) -> str:
        filled = self.count * PROGRESS_BAR_WIDTH // self.total
        bar = "#" * filled + "." * (PROGRESS_BAR_WIDTH - filled)
        width = len(str(self.total))
        parts = [f"{self.name} [{bar}] {self.count:>{width}}/{self.total} {100 * self.count // self.total:3d}%"]
        rate = self.count / max(now - self.start, 1e-9)
        parts.append(f"{rate:.3g} it/s")
        if self.count < self.total and rate > 0:
            parts.append(f"ETA {format_seconds((self.total - self.count) / rate)}")
        if shown:
            parts.append(" ".join(f"{key}={value:.4g}" for key, value in shown.items()))
        return " | ".join(parts)[:PROGRESS_LINE_WIDTH].ljust(PROGRESS_LINE_WIDTH if self.in_place else 0)

    def done(self, message: str = "") -> None:
        """End the phase: one last line with the wall time (and `message`)."""
        if self.in_place:
            self.stream.write("\n")
        seconds = time.time() - self.start
        self.stream.write(f"{self.name}: done in {format_seconds(seconds)}{f' ({message})' if message else ''}\n")
        self.stream.flush()


def make_run_name(task: str, exp_name: str, seed: int) -> str:
    return f"{task}__{exp_name}__{seed}__{int(time.time())}"


def make_run_folder(root: Path, run_name: str) -> Path:
    """Create `root/run_name` for this run alone: `mkdir` without exist_ok is atomic, so of two runs with one name
    (started in the same second) the second gets `run_name-2` (then -3, ...), never the first one's folder."""
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        folder = root / (run_name if attempt == 1 else f"{run_name}-{attempt}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    fail(f"{root} already holds 10,000 runs named {run_name}: choose another --exp-name")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


class RunLogger:
    """Writes `runs/<run_name>/`: args.json, TensorBoard events, metrics.jsonl, summary.md (and wandb with track).

    `log(step, metrics)` also prints a line every `print_every` calls (and whenever 30 s have passed since the last
    line) with the steps/s since the last print;
    the steps/s goes to TensorBoard as `charts/steps_per_sec` (not to metrics.jsonl, so that two seeded runs
    write identical metrics apart from the `time` field).
    """

    def __init__(
        self,
        run_name: str,
        args: Any = None,
        root: str | Path | None = None,
        track: bool = False,
        wandb_project: str = "rewardlab",
        print_every: int = 10,
        show: Sequence[str] = (),
        total_steps: int | None = None,
        write: bool = True,
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.write = write  # False on every process but the main one of a multi-process run: nothing written
        if not write:
            self.dir = None
            self.logged_rows = 0
            return
        self.dir = make_run_folder(Path(root or RUNS_DIR), run_name)
        self.run_name = self.dir.name
        (self.dir / INCOMPLETE_MARKER).write_text("this run has not finished: no summary.md yet\n")
        print(f"run folder: {self.dir}", flush=True)
        if dataclasses.is_dataclass(args):
            config = dataclasses.asdict(args)
        else:
            config = dict(args) if isinstance(args, dict) else dict(vars(args)) if args is not None else {}
        config = {k: _jsonable(v) for k, v in config.items()}
        (self.dir / "args.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        self.wandb = None
        if track:
            import wandb  # lazy: only behind --track

            self.wandb = wandb.init(project=wandb_project, name=run_name, config=config, dir=str(self.dir))
        self.writer = SummaryWriter(str(self.dir))
        self.writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in config.items())
        )
        self.metrics_file = open(self.dir / "metrics.jsonl", "w")
        self.print_every = print_every
        self.show = tuple(show)  # the metrics the progress line prints (the method's main ones); the rest: TensorBoard
        self.total_steps = total_steps  # steps of an arm, for the ETA on the progress line
        self.arm_writers: dict[str, Any] = {}
        self.start = self._last_time = time.time()
        self._last_step = None  # the step of the last print (or of the arm's first row)
        self._last_arm = None  # the arm of the rows being logged
        self._previous_step = None  # the step of the last row
        self._calls = 0
        self.logged_rows = 0
        _OPEN_RUNS.append(self)

    def log(self, step: int, metrics: dict[str, Any], echo: bool | None = None, arm: str | None = None) -> None:
        """Record `metrics` at `step`. NaN or infinite losses stop the run with a clear message.

        With `arm`, the row is one arm's (metrics.jsonl gets `"arm": arm`) and goes to that arm's own TensorBoard
        run, `arms/<arm>/`, under the same tag names as every other arm's, so TensorBoard overlays the arms."""
        if not self.write:
            return
        row = {k: _jsonable(v) for k, v in metrics.items()}
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value) and key.startswith("losses/"):
                self.close()
                fail(
                    f"{key} is {value} at step {step}{f' of arm {arm}' if arm else ''}: lower the learning rate, "
                    f"check the inputs or use --dtype fp32; the run so far is in {self.dir}"
                )
        now = time.time()
        head = {"step": step, "time": round(now - self.start, 3)} | ({"arm": arm} if arm is not None else {})
        self.metrics_file.write(json.dumps(head | row) + "\n")
        self.metrics_file.flush()
        self.logged_rows += 1
        writer = self.writer if arm is None else self.arm_writer(arm)
        for key, value in row.items():
            if isinstance(value, (int, float)):
                writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log({f"{arm}/{k}" if arm else k: v for k, v in row.items()}, step=step)
        self._calls += 1
        new_segment = self._last_step is None or arm != self._last_arm or step < self._previous_step
        if new_segment:  # a new arm, or a restarted step count: the speed counts from this row
            self._last_time, self._last_step, self._last_arm = now, step, arm
        self._previous_step = step
        slow = now - self._last_time >= PRINT_AT_LEAST_EVERY_SECONDS  # real models: a step can take minutes
        if echo or (echo is None and (self._calls % self.print_every == 0 or slow)):
            # steps per second since the last print in this arm (none yet on an arm's first row)
            steps = step - self._last_step
            elapsed = now - self._last_time
            sps = steps / elapsed if steps > 0 and elapsed > 0 else None
            if sps is not None:
                writer.add_scalar("charts/steps_per_sec", sps, step)
            print(self.progress_line(step, arm, sps, row), flush=True)
            self._last_time, self._last_step = now, step

    def progress_line(self, step: int, arm: str | None, sps: float | None, row: dict[str, Any]) -> str:
        """`step 40 | bleuberi | 1.23 steps/s | ETA 2m10s | reward=0.41 kl=0.002`: the step, the arm, the speed,
        the time to the end of the arm (with `total_steps`) and the `show` metrics (else the first few), at most
        ~120 characters; every metric is in TensorBoard and metrics.jsonl."""
        parts = [f"step {step}"] + ([arm] if arm else []) + ([f"{sps:.2f} steps/s"] if sps is not None else [])
        if self.total_steps is not None and step < self.total_steps and sps is not None:
            parts.append(f"ETA {format_seconds((self.total_steps - step) / sps)}")
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        keys = [k for k in self.show if k in numbers] or list(numbers)
        line = " | ".join(parts)
        shown = []
        for key in keys:
            candidate = " ".join([*shown, f"{key}={numbers[key]:.4g}"])
            if len(line) + 3 + len(candidate) > PROGRESS_LINE_WIDTH and shown:
                break
            shown.append(f"{key}={numbers[key]:.4g}")
        return line + (" | " + " ".join(shown) if shown else "")

    def arm_writer(self, arm: str):
        """The TensorBoard writer of one arm: a run of its own in `arms/<arm>/`."""
        from torch.utils.tensorboard import SummaryWriter

        if arm not in self.arm_writers:
            self.arm_writers[arm] = SummaryWriter(str(self.dir / "arms" / arm))
        return self.arm_writers[arm]

    def save_text(self, name: str, text: str) -> Path | None:
        """Write a text file (samples, notes) into the run folder (nothing on a process that does not write)."""
        if not self.write:
            return None
        path = self.dir / name
        path.write_text(text)
        return path

    def finish(self, summary: str) -> None:
        """Print the end-of-run summary, write it to summary.md, and close the writers."""
        if not self.write:
            return
        wall = time.time() - self.start
        text = f"{summary.rstrip()}\n\nwall time: {wall:.1f} s; run folder: {self.dir}\n"
        (self.dir / "summary.md").write_text(text)
        (self.dir / INCOMPLETE_MARKER).unlink(missing_ok=True)
        print("\n" + text, flush=True)
        self.close()

    def close(self) -> None:
        """Close the writers (the folder keeps its INCOMPLETE marker unless `finish` ran)."""
        if not self.write:
            return
        if self in _OPEN_RUNS:
            _OPEN_RUNS.remove(self)
        if not self.metrics_file.closed:
            self.metrics_file.close()
            self.writer.close()
            for writer in self.arm_writers.values():
                writer.close()
            if self.wandb is not None:
                self.wandb.finish()

    def discard(self) -> None:
        """Close and delete the run folder: for a run that stopped before it logged anything."""
        if not self.write:
            return
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = ".3f") -> str:
    """Rows of dicts as a plain-text (markdown) table; floats with `floatfmt`, missing cells as '-'."""
    if not rows:
        return "(no rows)"
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return "nan" if math.isnan(value) else format(value, floatfmt)
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
