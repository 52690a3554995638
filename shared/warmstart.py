"""Warm start: supervised fine-tuning of the tiny LM on a task's references, cached in `save_pretrained` form.

    path = warm_start("string_ops")          # first call trains (under 90 s on 2 cores), later calls load
    model, tokenizer = load_causal_lm(str(path))   # the same folder a script takes as --model-name PATH

The cache key is the task (with its options), the model config, the training recipe and the seed; the folder
is `$REWARDLAB_CACHE` (default `runs/cache/`) `/warmstart-<task>-<key>/`. It holds the model, the tokenizer and
`warm_start.json` with the recipe and the greedy exact match reached on held-out prompts.

The loss is the usual completion-only cross-entropy: prompt tokens (one user turn of the chat template) and
padding are masked; the target is the reference followed by the end-of-turn token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from shared.lm import build_tiny_lm, encode_prompts, position_ids_from_mask, sample
from shared.runs import Progress, fail
from shared.tasks import get_task

CACHE_DIR = Path(os.environ.get("REWARDLAB_CACHE", Path(__file__).resolve().parent.parent / "runs" / "cache"))
RECIPE_VERSION = 1  # bump when the recipe below changes, so stale caches are not reused


def sft_parts(
    tokenizer,
    prompts: list[str],
    targets: list[str],
    device="cpu",
    chat: bool = True,
    max_prompt_length: int | None = None,
    max_target_length: int | None = None,
):
    """Prompt ids and mask (left-padded) and target ids and mask (right-padded): each target is the reference's
    tokens followed by the EOS id, or its first `max_target_length` tokens (no EOS) when it is longer."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, chat, max_prompt_length, device=device)  # [B, P]
    rows = []
    for ids in tokenizer(list(targets), add_special_tokens=False)["input_ids"]:
        cut = max_target_length is not None and len(ids) >= max_target_length
        rows.append(ids[:max_target_length] if cut else ids + [tokenizer.eos_token_id])
    longest = max(len(row) for row in rows)
    target_ids = torch.tensor([row + [tokenizer.pad_token_id] * (longest - len(row)) for row in rows], device=device)
    target_mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows], device=device)
    return prompt_ids, prompt_mask, target_ids, target_mask  # [B, P], [B, P], [B, T], [B, T]


def sft_batch(tokenizer, prompts: list[str], targets: list[str], device="cpu"):
    """input ids, attention mask, position ids and labels (-100 on prompt and padding) for completion-only SFT."""
    prompt_ids, prompt_mask, target_ids, target_mask = sft_parts(tokenizer, prompts, targets, device=device)
    input_ids = torch.cat([prompt_ids, target_ids], dim=1)  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, target_mask], dim=1)  # [B, P+T]
    labels = torch.cat([torch.full_like(prompt_ids, -100), target_ids.masked_fill(target_mask == 0, -100)], dim=1)
    return input_ids, attention_mask, position_ids_from_mask(attention_mask), labels


def sft_loss(model, input_ids, attention_mask, position_ids, labels) -> torch.Tensor:
    """Mean next-token cross-entropy over the unmasked target tokens."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


@torch.no_grad()
def exact_match(model, tokenizer, task, dataset, max_new_tokens: int = 40, batch_size: int = 256) -> float:
    """Greedy exact match (the task's score) on `dataset`."""
    scores = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        out = sample(model, tokenizer, rows["prompt"], max_new_tokens=max_new_tokens, greedy=True)
        scores += [task.score(p, c) for p, c in zip(rows["prompt"], out.texts)]
    return sum(scores) / len(scores)


def warm_start(
    task_name: str,
    seed: int = 0,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 3e-3,
    task_kwargs: dict | None = None,
    config_kwargs: dict | None = None,
    cache_dir: str | Path | None = None,
    num_eval: int = 200,
    verbose: bool = True,
    sft_rows: Callable[[int], list[tuple[list[str], list[str]]]] | None = None,
    sft_rows_recipe: dict | None = None,
) -> Path:
    """The folder of the tiny LM fine-tuned on `task_name`'s references; trains it on the first call only.

    A warm start on other sequences (e.g. Self-PRM's mix of solve and judge sequences) passes `sft_rows(step)`, the
    step's sub-batches of (prompts, targets), in place of `batch_size` random references of the task (the loss is
    then the sequence-weighted mean of the sub-batches' losses), and `sft_rows_recipe`, what they are: it joins the
    recipe and the cache key. Without them the recipe, the key and the training are those of the references."""
    task = get_task(task_name, **(task_kwargs or {}))
    if "reference" not in task.dataset(1, seed).column_names:
        fail(f"task {task_name!r} has no references to warm-start on")
    if (sft_rows is None) != (sft_rows_recipe is None):
        fail("warm_start: pass sft_rows together with sft_rows_recipe (it names them in the cache key)")
    recipe = {
        "task": task_name,
        "task_options": dataclasses.asdict(task),
        "config": config_kwargs or {},
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "version": RECIPE_VERSION,
    }
    if sft_rows_recipe is not None:  # only then: the references' recipes (and cache keys) stay as they were
        recipe["sft_rows"] = sft_rows_recipe
    key = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cache_dir or CACHE_DIR) / f"warmstart-{task_name}-{key}"
    if other_process_of_a_launch():  # under `accelerate launch`: process 0 trains and saves it, the others load it
        torch.distributed.barrier()
        return folder
    if (folder / "warm_start.json").exists():
        release_other_processes()
        return folder

    start = time.time()
    caller_rng = torch.random.get_rng_state()  # restored below: a cache miss must not change the caller's samples
    torch.manual_seed(seed)
    model, tokenizer = build_tiny_lm(seed=seed, **(config_kwargs or {}))
    if sft_rows is None:
        data = task.dataset(steps * batch_size if steps * batch_size <= 20000 else 20000, seed=seed, split="train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * (1 - s / steps))
    generator = torch.Generator().manual_seed(seed)
    progress = Progress(f"warm start {task_name}", total=steps) if verbose else None
    model.train()
    for step in range(steps):
        if sft_rows is None:
            rows = data[torch.randint(len(data), (batch_size,), generator=generator).tolist()]
            loss = sft_loss(model, *sft_batch(tokenizer, rows["prompt"], rows["reference"]))
        else:
            parts = [(prompts, targets) for prompts, targets in sft_rows(step) if prompts]
            losses = [
                len(prompts) * sft_loss(model, *sft_batch(tokenizer, prompts, targets)) for prompts, targets in parts
            ]
            loss = sum(losses) / sum(len(prompts) for prompts, _ in parts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress.update(loss=loss.item())
    model.eval()
    accuracy = exact_match(model, tokenizer, task, task.dataset(num_eval, seed=seed, split="test"))
    torch.random.set_rng_state(caller_rng)
    info = {
        **recipe,
        "test_exact_match": accuracy,
        "num_eval": num_eval,
        "seconds": round(time.time() - start, 1),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")  # write aside, then rename: no half-written cache
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "warm_start.json").write_text(json.dumps(info, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(tmp)  # another process finished first
    else:
        tmp.rename(folder)
    if verbose:
        print(f"warm start {task_name}: test exact match {accuracy:.3f} in {info['seconds']} s -> {folder}", flush=True)
    release_other_processes()
    return folder


def other_process_of_a_launch() -> bool:
    """Whether this is a process other than the main one of a multi-process run (`accelerate launch`)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0


def release_other_processes() -> None:
    """On the main process of a multi-process run: the warm start is on disk, the other processes may load it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
