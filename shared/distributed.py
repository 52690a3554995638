"""Past one process: what a script needs to run unchanged under `accelerate launch --num_processes N` (DDP).

One process is the default and costs nothing here: every function below is the identity when N = 1, so a
single-process run computes exactly what it computed before. With N processes (each with a full copy of the model):

    processes = Processes.from_precision(precision)     # the process group `accelerate launch` set up
    seed_everything(processes.seed(args.seed))          # a per-process sampling seed; process 0 keeps --seed
    mine = processes.shard(step_prompts)                # whole prompts (whole GRPO groups) per process
    ... each process samples, rewards and backpropagates its share, normalised by the GLOBAL count:
    batch_tokens = processes.sum(completion_mask.sum())
    processes.sum_gradients(parameters)                 # one all-reduce per optimizer step, before clipping
    texts = processes.gather_rows(lambda shard: generate(model, shard), rows)   # evaluation, in row order

Group statistics never span processes (a shard holds whole prompts, with all G samples of each). Each process's
loss is its share of the whole step batch's loss (its sum over the global token or sequence count), so summing the
gradients over processes gives the one-process gradient of the whole batch: N processes x B/N equals 1 x B, for
every loss normalisation. Every process then takes the same optimizer step from the same gradients, so the copies
stay equal without broadcasting weights.

Gradients are all-reduced by torch.distributed (the process group accelerate launches), once per optimizer step
after the micro-batches are accumulated: DDP's arithmetic without its wrapper, so that generation, LoRA and the
frozen models work as in one process. Sharded-parameter engines (FSDP, DeepSpeed ZeRO-3) are not supported by this
path. Only the main process writes the run folder (`RunLogger(..., write=processes.is_main)`).

On a machine without GPUs, two CPU processes (gloo) are launched with
`accelerate launch --multi_gpu --num_processes 2 algos/<script>.py --no-cuda ...` (accelerate 1.x's `--cpu` flag
starts one process only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

SEED_STRIDE = 1_000_003  # process k samples with seed + k * SEED_STRIDE: streams that do not overlap in practice


@dataclass
class Processes:
    """This process's place among the N processes of a run (N = 1 without a launcher)."""

    index: int
    count: int
    device: torch.device  # where the collectives' buffers live (NCCL needs them on the GPU)

    @classmethod
    def from_precision(cls, precision) -> Processes:
        """From the run's accelerator (made by `shared.precision.setup_precision`)."""
        state = precision.accelerator.state
        return cls(index=state.process_index, count=state.num_processes, device=precision.device)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def seed(self, seed: int) -> int:
        """This process's sampling seed, derived from --seed (process 0's is --seed itself)."""
        return seed + self.index * SEED_STRIDE

    def shard(self, items: Sequence) -> list:
        """This process's contiguous share of `items`; the step's prompts must split evenly."""
        if len(items) % self.count:
            raise ValueError(f"{len(items)} items do not split evenly over {self.count} processes")
        share = len(items) // self.count
        return list(items[self.index * share : (self.index + 1) * share])

    def sum(self, value: torch.Tensor | float) -> torch.Tensor | float:
        """The sum over processes of a tensor (or a number), on every process (one process: `value` itself)."""
        if self.count == 1:
            return value
        total = torch.as_tensor(value, dtype=torch.float64, device=self.device).clone()
        torch.distributed.all_reduce(total)
        return total

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Sum each parameter's gradient over processes (each process holds its share of the step's loss)."""
        if self.count == 1:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                torch.distributed.all_reduce(parameter.grad)

    def gather_rows(self, work: Callable[[list], list], rows: Sequence) -> list:
        """`work(rows)` (one result per row) with the rows split over the processes; every process gets all the
        results in row order. Rows that do not split evenly are padded with the last row and the extra results
        dropped."""
        if self.count == 1:
            return list(work(list(rows)))
        share = -(-len(rows) // self.count)  # ceil
        padded = list(rows) + [rows[-1]] * (share * self.count - len(rows))
        mine = list(work(padded[self.index * share : (self.index + 1) * share]))
        gathered: list = [None] * self.count
        torch.distributed.all_gather_object(gathered, mine)
        return [result for part in gathered for result in part][: len(rows)]

    def gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every process's rows of each tensor, concatenated in process order (the whole step batch, for the
        metrics). [B_local, T_local] tensors are right-padded with zeros to the longest T first."""
        if self.count == 1:
            return tensors
        gathered = []
        for tensor in tensors:
            dtype = tensor.dtype
            tensor = tensor.to(torch.uint8) if dtype == torch.bool else tensor  # gathered as bytes, returned as bools
            if tensor.dim() >= 2:
                longest = int(self.max(tensor.size(1)))
                tensor = torch.nn.functional.pad(tensor, (0, longest - tensor.size(1)))  # [B_local, T_max]
            parts = [torch.empty_like(tensor) for _ in range(self.count)]
            torch.distributed.all_gather(parts, tensor.contiguous())
            gathered.append(torch.cat(parts).to(dtype))  # [B, ...]
        return tuple(gathered)

    def max(self, value: float) -> float:
        """The largest value over processes."""
        if self.count == 1:
            return float(value)
        largest = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
        return largest.item()

    def print(self, *values, **options) -> None:
        """print() on the main process only (one console line per event, whatever N is)."""
        if self.is_main:
            print(*values, flush=True, **options)


ONE_PROCESS = Processes(index=0, count=1, device=torch.device("cpu"))  # the default: a run without a launcher
