# benchmark of the GRPO step against TRL | README: #performance
"""GRPO step throughput: `algos/bleuberi.py`'s GRPO loop against TRL's `GRPOTrainer`, side by side.

Both sides get the same start model (the tiny world's warm-started Qwen2 by default, any --model-name), the same
prompt pool, the same reward function (`bleuberi.compute_rewards("bleu", ...)`: BLEU against the references), group
size G, completions per step, completion length, beta, epsilon, loss aggregation (bnpo), learning rate (constant),
grad-norm clip, sampling (temperature, top-k 50) and micro-batch size, and run the same number of optimiser steps after
the same number of warm-up steps. Ours is `bleuberi.train_grpo` itself (no second copy of the maths); its phases
are timed by wrapping the module's `sample` (generation), `compute_rewards` + no-grad `completion_logprobs` (scoring)
and the rest of the step (update). TRL's phases: `_generate` (generation), the rest of
`_generate_and_score_completions` (rewards, reference log-probs, advantages: scoring), the rest of the step (update).

Before timing, both sides score one batch of our completions: the first-step loss of `bleuberi.grpo_loss` and of
`GRPOTrainer._compute_loss` must agree (asserted), and so must the per-token log-probs of rows whose prompt has no
left padding. DIFFERENCE (bleuberi detail 5): TRL's training forward passes get no position ids, so on left-padded
rows its log-probs differ from the ones `generate` sampled with; ours pass positions from the mask. The maximum
difference on padded rows is printed, not asserted. At the first step rho = 1 and pi = pi_ref, so the loss itself
does not depend on the log-probs.

The gradients of both losses are compared too, at the first step and on a perturbed policy: the largest
difference must stay within 1e-4 of the largest gradient (asserted). Both sides do the same work per step: G samples
per prompt, micro-batches of --micro-batch-size with gradient accumulation over the step batch.

Repeats alternate ours / TRL back to back, each side's repeat in a process of its own (fresh copies of the start
model), and report completions/s over the timed steps, seconds per step by phase, each side's peak memory (peak RSS
on the CPU, `max_memory_allocated` on CUDA), the achieved FLOP/s of the update and of generation as a fraction of this
machine's matmul rate (measured at start-up; FLOPs from the parameter counts, see `flops_per_step`), and the ratios
ours/TRL, min/median/max over the repeats.

Shapes: `--shape tiny` is the tiny world (171-token vocabulary): there the ratio mostly measures TRL's fixed
per-call overheads. `--shape vocab` (Qwen2, vocabulary 151,936, hidden 256, 4 layers) and `--shape qwen2.5-0.5b`
are real architectures with random weights and a byte-level BPE tokenizer built in-process (no download).

Commands:
    taskset -c 0,1 python benchmarks/grpo_vs_trl.py                      # tiny warm-started Qwen2, CPU, 1 thread
    taskset -c 0,1 python benchmarks/grpo_vs_trl.py --shape vocab --num-threads 2 --batch-size 16 \
        --micro-batch-size 8 --steps 2 --warmup-steps 1 --repeats 1
    taskset -c 0,1 python benchmarks/grpo_vs_trl.py --shape qwen2.5-0.5b --num-threads 2 --batch-size 16 \
        --micro-batch-size 8 --steps 1 --warmup-steps 1 --repeats 1
    python benchmarks/grpo_vs_trl.py --shape qwen2.5-0.5b --batch-size 128 --max-completion-length 256 \
        --micro-batch-size 16                                              # one GPU, bf16
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import algos.bleuberi as bleuberi  # noqa: E402
from shared.data import load_data  # noqa: E402
from shared.lm import completion_logprobs, encode_prompts, load_causal_lm, stop_token_ids  # noqa: E402
from shared.precision import setup_precision  # noqa: E402
from shared.real_shapes import REAL_SHAPES, build_bpe_tokenizer, save_real_shape_model  # noqa: E402
from shared.runs import fail, pick_device, pick_dtype, seed_everything  # noqa: E402
from shared.warmstart import warm_start  # noqa: E402


@dataclass
class Args:
    shape: Literal["tiny", "vocab", "qwen2.5-0.5b"] = "tiny"
    """the model: `tiny` (--model-name, by default the tiny world's warm-started Qwen2), or a real-architecture
    Qwen2 with random weights and the real 151,936-token vocabulary (shared/real_shapes.py): `vocab` (hidden 256,
    4 layers) or `qwen2.5-0.5b` (the full 0.5B shape)"""
    model_name: str = "tiny:string_ops"
    """policy start with --shape tiny: tiny:<task> (warm-started tiny Qwen2), a save_pretrained folder or a hub id"""
    warm_start_steps: int = 450
    """SFT steps of the tiny:<task> warm start (bleuberi's default)"""
    dataset_name: str = "tiny:string_ops"
    """prompts + `reference` column: tiny:<task>, a folder, a file or a hub id"""
    num_prompts: int = 512
    """prompt pool size"""
    batch_size: int = 64
    """completions per optimiser step"""
    num_generations: int = 8
    """G, completions per prompt"""
    micro_batch_size: int = 64
    """completions per forward/backward (TRL: per-device batch; the rest is gradient accumulation)"""
    max_completion_length: int = 16
    """new tokens per completion"""
    beta: float = 0.04
    """k3 KL coefficient (both sides keep a frozen reference model)"""
    epsilon: float = 0.2
    """ratio clip"""
    loss_type: Literal["grpo", "bnpo", "dr_grpo"] = "bnpo"
    """token-loss aggregation (the same definition on both sides)"""
    learning_rate: float = 3e-5
    """constant AdamW learning rate"""
    max_grad_norm: float = 0.2
    """gradient-norm clip"""
    temperature: float = 1.0
    """sampling temperature"""
    top_k: int = 50
    """top-k of sampling"""
    warmup_steps: int = 2
    """untimed steps before the timed ones"""
    steps: int = 8
    """timed optimiser steps per repeat"""
    repeats: int = 3
    """back-to-back repeats of ours then TRL"""
    seed: int = 1
    """seed of sampling and data"""
    num_threads: int = 1
    """torch CPU threads (both sides)"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16"""
    side: Literal["both", "ours", "trl"] = "both"
    """internal: `both` runs the comparison; `ours` / `trl` is one side's repeat in a process of its own"""
    report: Optional[str] = None
    """internal: where a one-side process writes its timings and peak memory (JSON)"""


GRADIENT_TOLERANCE = 1e-4  # max |g_ours - g_TRL| / max |g_ours| over every weight, asserted on a perturbed policy
UNUSED_VOCABULARY_ROWS = 293  # Qwen2.5: 151,936 embedding rows, 151,643 ordinary tokens


class PhaseTimer:
    """Wall time per named phase, plus step boundaries (sync'd on CUDA)."""

    def __init__(self, device):
        self.device, self.totals, self.marks = device, defaultdict(float), []

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, fn, phase, when=lambda: True):
        def timed(*a, **k):
            if not when():
                return fn(*a, **k)
            start = self.now()
            try:
                return fn(*a, **k)
            finally:
                self.totals[phase] += self.now() - start

        return timed

    def mark(self):
        self.marks.append((self.now(), dict(self.totals)))

    def summary(self, warmup: int, completions_per_step: int) -> dict:
        (t0, p0), (t1, p1) = self.marks[warmup], self.marks[-1]
        steps = len(self.marks) - 1 - warmup
        out = {"steps": steps, "s/step": (t1 - t0) / steps, "completions/s": completions_per_step * steps / (t1 - t0)}
        for phase in ("generation", "scoring"):
            out[phase] = (p1.get(phase, 0.0) - p0.get(phase, 0.0)) / steps
        out["update"] = out["s/step"] - out["generation"] - out["scoring"]
        return out


@contextlib.contextmanager
def patched(obj, **attrs):
    old = {k: getattr(obj, k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


def bleuberi_args(args: Args, steps: int) -> bleuberi.Args:
    return bleuberi.Args(
        seed=args.seed,
        steps=steps,
        batch_size=args.batch_size,
        num_generations=args.num_generations,
        micro_batch_size=args.micro_batch_size,
        learning_rate=args.learning_rate,
        warmup_ratio=0.0,
        max_grad_norm=args.max_grad_norm,
        beta=args.beta,
        epsilon=args.epsilon,
        loss_type=args.loss_type,
        temperature=args.temperature,
        top_k=args.top_k,
        max_completion_length=args.max_completion_length,
    )


def run_ours(start_model, tokenizer, rows, args: Args, device) -> dict:
    """bleuberi.train_grpo for warmup + steps optimiser steps, phases timed by wrapping its module functions."""
    seed_everything(args.seed)
    precision = setup_precision(args.dtype, args.cuda)
    model = copy.deepcopy(start_model).to(precision.trained_dtype).train().requires_grad_(True)
    timer = PhaseTimer(device)
    logger = type("StepMarks", (), {"log": lambda self, step, metrics, **options: timer.mark()})()
    no_grad = lambda: not torch.is_grad_enabled()  # noqa: E731  the reference / old-policy passes
    wrappers = dict(
        sample=timer.wrap(bleuberi.sample, "generation"),
        compute_rewards=timer.wrap(bleuberi.compute_rewards, "scoring"),
        completion_logprobs=timer.wrap(bleuberi.completion_logprobs, "scoring", when=no_grad),
    )
    with patched(bleuberi, **wrappers):
        timer.mark()  # start of step 0 (optimiser creation is inside train_grpo's first step)
        steps = args.warmup_steps + args.steps
        train_args = bleuberi_args(args, steps)
        bleuberi.train_grpo("bench", model, start_model, tokenizer, rows, "bleu", train_args, logger, precision)
    return timer.summary(args.warmup_steps, args.batch_size)


def bleu_for_trl(completions, reference, **kwargs) -> list[float]:
    """TRL reward function: the same bleuberi.compute_rewards on the assistant texts."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return bleuberi.compute_rewards("bleu", [t.strip() for t in texts], [[r] for r in reference]).tolist()


def make_trl_trainer(start_model, tokenizer, dataset, args: Args, device, steps: int, output_dir: str):
    from trl import GRPOConfig, GRPOTrainer

    seed_everything(args.seed)
    model = copy.deepcopy(start_model).train().requires_grad_(True)
    config = GRPOConfig(
        output_dir=output_dir,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        use_cpu=device.type != "cuda",
        bf16=start_model.dtype == torch.bfloat16,
        fp16=False,
        seed=args.seed,
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.batch_size // args.micro_batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        beta=args.beta,
        epsilon=args.epsilon,
        loss_type=args.loss_type,
        scale_rewards="group",
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=args.max_grad_norm,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=1.0,
        max_steps=steps,
        # TRL 1.16 multiplies the KL by the ratio rho by default (value 1, but its gradient adds beta * k3 per
        # token); bleuberi's loss is the k3 KL of DeepSeekMath / TRL 0.17: the same maths on both sides
        use_bias_correction_kl=False,
        dataloader_num_workers=0,
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=bleu_for_trl, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    # the same stop tokens as ours (EOS and end-of-turn)
    trainer.eos_token_ids = stop_token_ids(tokenizer, start_model)
    trainer.generation_config.eos_token_id = trainer.eos_token_ids
    return trainer


def run_trl(start_model, tokenizer, dataset, args: Args, device) -> dict:
    from transformers import TrainerCallback

    timer = PhaseTimer(device)

    class Marks(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timer.mark()

        def on_step_end(self, *a, **k):
            timer.mark()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trl_trainer(start_model, tokenizer, dataset, args, device, args.warmup_steps + args.steps, tmp)
        trainer._generate = timer.wrap(trainer._generate, "generation")
        gen_and_score = trainer._generate_and_score_completions
        trainer._generate_and_score_completions = timer.wrap(gen_and_score, "gen+score")
        trainer.add_callback(Marks())
        trainer.train()
    for _, totals in timer.marks:  # scoring = everything in _generate_and_score_completions except _generate
        totals["scoring"] = totals.get("gen+score", 0.0) - totals.get("generation", 0.0)
    return timer.summary(args.warmup_steps, args.batch_size)


def both_losses(model, trainer, out, advantages, ref_logp, trl_ref, args: Args) -> tuple[float, float, float]:
    """(ours, TRL's, max relative gradient difference) of the GRPO loss of `model` on one batch."""
    inputs = (out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
    model.zero_grad(set_to_none=True)
    logp = completion_logprobs(model, *inputs, args.temperature)[0]  # [B, T]
    ours = bleuberi.grpo_loss(
        logp,
        logp.detach(),
        ref_logp,
        advantages,
        out.completion_mask,
        args.beta,
        args.epsilon,
        args.loss_type,
        args.max_completion_length,
    )
    ours.backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    batch = dict(
        prompt_ids=out.prompt_ids,
        prompt_mask=out.prompt_mask,
        completion_ids=out.completion_ids,
        completion_mask=out.completion_mask,
        advantages=advantages,
        ref_per_token_logps=trl_ref,
        num_items_in_batch=out.completion_mask.sum(),
    )
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; one micro-batch = the batch
    trl = trainer._compute_loss(model, batch)
    trl.backward()
    scale = max(max(g.abs().max().item() for g in ours_grads), 1e-12)
    grad_diff = max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), ours_grads)) / scale
    model.zero_grad(set_to_none=True)
    return ours.item(), trl.item(), grad_diff


def rows_of_one_prompt_length(rows, tokenizer, count: int) -> list[dict]:
    """`count` rows whose chat-formatted prompts all have the most common token length: a batch without left
    padding, where TRL's forward (no position ids) and ours see the same positions. The first rows if too few."""
    _, mask = encode_prompts(tokenizer, [r["prompt"] for r in rows])
    lengths = mask.sum(1).tolist()
    common = max(set(lengths), key=lengths.count)
    same = [row for row, length in zip(rows, lengths) if length == common]
    return same[:count] if len(same) >= count else rows[:count]


def sample_and_score(start_model, trainer, tokenizer, rows, args: Args, device):
    """Our completions for `rows` (G each), their advantages, and the reference log-probs by both sides."""
    out = bleuberi.sample(
        start_model,
        tokenizer,
        [r["prompt"] for r in rows],
        num_samples=args.num_generations,
        temperature=args.temperature,
        top_k=args.top_k,
        max_new_tokens=args.max_completion_length,
    )
    references = [r["references"] for r in rows for _ in range(args.num_generations)]
    rewards = bleuberi.compute_rewards("bleu", out.texts, references).to(device)  # [B]
    advantages = bleuberi.group_advantages(rewards, args.num_generations)  # [B]
    inputs = (out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
    ids = torch.cat([out.prompt_ids, out.completion_ids], 1)  # [B, P+T]
    mask = torch.cat([out.prompt_mask, out.completion_mask], 1)  # [B, P+T]
    logits_to_keep = out.completion_ids.size(1)  # TRL scores the last T positions
    with torch.no_grad():
        ref_logp = completion_logprobs(start_model, *inputs, args.temperature)[0]  # [B, T]
        trl_ref = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask, logits_to_keep)[0]
    return out, advantages, ref_logp, trl_ref


def check_same_first_loss(start_model, tokenizer, rows, dataset, args: Args, device) -> dict:
    """Our loss and TRL's on one batch of our completions must agree, and so must their gradients: at the first step
    (policy = reference) and with a perturbed policy (non-zero KL term). The batch's prompts share one token length
    (no left padding, see the docstring); a second batch of the first rows shows the left-padding difference.
    Returns the first-step loss and the mean prompt and completion lengths (for the FLOP counts)."""
    seed_everything(args.seed)
    num_prompts = args.batch_size // args.num_generations
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trl_trainer(start_model, tokenizer, dataset, args, device, 1, tmp)
        check_rows = rows_of_one_prompt_length(rows, tokenizer, num_prompts)
        out, advantages, ref_logp, trl_ref = sample_and_score(start_model, trainer, tokenizer, check_rows, args, device)
        padded_out, _, padded_ref, padded_trl = sample_and_score(
            start_model, trainer, tokenizer, rows[:num_prompts], args, device
        )
        model = trainer.model  # TRL's copy of the start model (its forward is patched for the fused log-probs)
        first = both_losses(model, trainer, out, advantages, ref_logp, trl_ref, args)
        with torch.no_grad():  # a policy away from the reference: the KL term and its gradient are no longer 0
            generator = torch.Generator().manual_seed(args.seed)
            for p in model.parameters():
                p.add_(0.02 * p.abs().mean() * torch.randn(p.shape, generator=generator).to(p))
        moved = both_losses(model, trainer, out, advantages, ref_logp, trl_ref, args)
    # per-token log-probs: equal where the prompt has no left padding; TRL passes no position ids (see docstring)
    unpadded = out.prompt_mask.all(dim=1)  # [B]
    diff = (ref_logp - trl_ref).abs().masked_fill(~out.completion_mask.bool(), 0)  # [B, T]
    max_unpadded = diff[unpadded].max().item() if unpadded.any() else float("nan")
    padded = ~padded_out.prompt_mask.all(dim=1)  # [B]
    padded_diff = (padded_ref - padded_trl).abs().masked_fill(~padded_out.completion_mask.bool(), 0)  # [B, T]
    max_padded = padded_diff[padded].max().item() if padded.any() else 0.0
    print(
        f"same batch, first step: loss ours {first[0]:.8f} TRL {first[1]:.8f} (grad max rel diff {first[2]:.1e}); "
        f"perturbed policy: ours {moved[0]:.8f} TRL {moved[1]:.8f} (grad {moved[2]:.1e}); per-token log-prob "
        f"max |diff| unpadded prompts {max_unpadded:.1e} ({int(unpadded.sum())} rows), left-padded {max_padded:.1e}",
        flush=True,
    )
    for name, (ours, trl, grad_diff) in (("first-step", first), ("perturbed-policy", moved)):
        if not abs(ours - trl) <= 1e-6 + 1e-4 * abs(ours):
            fail(f"{name} losses differ: ours {ours} vs TRL {trl}: the two sides do not compute the same thing")
        if unpadded.all() and not grad_diff <= GRADIENT_TOLERANCE:
            fail(
                f"{name} gradients differ: max |ours - TRL| is {grad_diff:.1e} of the largest gradient (tolerance "
                f"{GRADIENT_TOLERANCE:.0e}): the two sides do not train the same thing"
            )
    if not unpadded.all():
        print("too few prompts of one length for a batch without left padding: gradients compared, not asserted")
    if unpadded.any() and not max_unpadded <= 1e-4:
        fail(f"per-token log-probs differ on unpadded rows by {max_unpadded}: the two sides score differently")
    return {
        "first_loss": first[0],
        "prompt_tokens": out.prompt_mask.sum(1).float().mean().item(),
        "completion_tokens": out.completion_mask.sum(1).float().mean().item(),
    }


def check_args(args: Args) -> None:
    if args.num_generations < 2 or args.batch_size % args.num_generations:
        fail(f"--batch-size {args.batch_size} must be a multiple of --num-generations {args.num_generations} >= 2")
    if args.micro_batch_size < 1 or args.batch_size % args.micro_batch_size:
        fail(f"--micro-batch-size {args.micro_batch_size} must divide --batch-size {args.batch_size}")
    for name in ("steps", "repeats", "num_threads", "max_completion_length", "warm_start_steps"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup_steps < 0 or args.num_prompts < args.batch_size // args.num_generations:
        fail("--warmup-steps must be >= 0 and --num-prompts at least the prompts of one step")


def matmul_rate(device, dtype, seconds: float = 1.0) -> float:
    """This machine's dense matmul rate (FLOP/s) in `dtype` at the current thread count: 1024 x 1024 products."""
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    b = torch.randn(1024, 1024, device=device, dtype=dtype)
    a @ b  # warm-up
    timer = PhaseTimer(device)
    count, start = 0, timer.now()
    while timer.now() - start < seconds:
        a @ b
        count += 1
    return 2 * 1024**3 * count / (timer.now() - start)


def body_and_head_weights(model) -> tuple[int, int]:
    """(weights of the transformer body, weights of the LM head V x d): the embedding lookup costs no matmul."""
    head = model.get_output_embeddings().weight.numel()  # V x d
    embedding = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    body = sum(p.numel() for p in model.parameters()) - embedding - (0 if tied else head)
    return body, head


def peak_memory(device) -> int:
    """This process's peak memory in bytes: max_memory_allocated on CUDA, peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def flops_per_step(model, args: Args, prompt_tokens: float, completion_tokens: float) -> dict:
    """Matmul FLOPs of one step's update and generation, from the parameter counts (attention scores left out):
    2 per weight per token forward, 6 forward + backward; the LM head only on completion positions (both sides keep
    only those logits); generation prefills each prompt once (ours; TRL prefills G copies) and decodes T tokens."""
    body, head = body_and_head_weights(model)
    completions = args.batch_size
    prompts = completions // args.num_generations
    update = 6 * body * completions * (prompt_tokens + completion_tokens) + 6 * head * completions * completion_tokens
    generation = 2 * body * (prompts * prompt_tokens + completions * completion_tokens)
    generation += 2 * head * completions * completion_tokens
    return {"update": update, "generation": generation}


def build_model(args: Args, folder: Path) -> str:
    """The policy start every process loads: the tiny warm start (cached on disk) or a real-shape folder."""
    if args.shape == "tiny":
        if args.model_name.startswith("tiny:"):
            return str(warm_start(args.model_name.split(":", 1)[1], seed=0, steps=args.warm_start_steps))
        return args.model_name
    vocab_size = REAL_SHAPES[args.shape]["vocab_size"]
    print(f"building the {args.shape} model (random weights, vocabulary {vocab_size}) ...", flush=True)
    tokenizer = build_bpe_tokenizer(vocab_size=vocab_size - UNUSED_VOCABULARY_ROWS)
    return str(save_real_shape_model(folder, args.shape, tokenizer, seed=0))


def load_everything(args: Args, model_name: str):
    torch.set_num_threads(args.num_threads)
    device = pick_device(args.cuda)
    dtype = pick_dtype(args.dtype, device)
    start_model, tokenizer = load_causal_lm(model_name, device=device, dtype=dtype, seed=args.seed)
    start_model.eval().requires_grad_(False)
    data = load_data(args.dataset_name, "train", ["prompt", "reference"], args.num_prompts, seed=args.seed)
    rows = [{"prompt": p, "references": [r]} for p, r in zip(data["prompt"], data["reference"])]
    dataset = data.map(lambda x: {"prompt": [{"role": "user", "content": x["prompt"]}]})  # TRL: conversational
    return device, dtype, start_model, tokenizer, rows, dataset


def one_side(args: Args) -> None:
    """One repeat of one side in this process; its timings and peak memory go to --report."""
    device, _, start_model, tokenizer, rows, dataset = load_everything(args, args.model_name)
    if args.side == "ours":
        result = run_ours(start_model, tokenizer, rows, args, device)
    else:
        result = run_trl(start_model, tokenizer, dataset, args, device)
    result["peak"] = peak_memory(device)
    Path(args.report).write_text(json.dumps(result))


def run_side(args, side: str, model_name: str, work: Path, repeat: int, script: Path = Path(__file__)) -> dict:
    """One repeat of one side (`script --side ours|trl`) in a fresh process, so that its peak memory is its own."""
    report = work / f"{side}-{repeat}.json"
    flags = []
    for field in dataclasses.fields(args):
        value = {"side": side, "report": str(report), "model_name": model_name, "shape": "tiny"}.get(
            field.name, getattr(args, field.name)
        )
        name = field.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        elif value is not None:
            flags.append(f"--{name}={value}")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    finished = subprocess.run([sys.executable, str(script.resolve()), *flags], env=env, capture_output=True)
    if finished.returncode != 0 or not report.exists():
        tail = finished.stdout.decode()[-2000:] + finished.stderr.decode()[-2000:]
        fail(f"the {side} side failed (exit {finished.returncode}):\n{tail}")
    return json.loads(report.read_text())


def main(args: Args) -> dict:
    check_args(args)
    try:
        import trl
    except ImportError:
        fail("TRL is not installed: pip install trl (or the project's `bench` extra)")
    if args.side != "both":
        one_side(args)
        return {}
    with tempfile.TemporaryDirectory(prefix="grpo-vs-trl-") as tmp:
        work = Path(tmp)
        model_name = build_model(args, work / "model")
        device, dtype, start_model, tokenizer, rows, dataset = load_everything(args, model_name)
        print(
            f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, trl "
            f"{trl.__version__}; {device} {dtype}, {torch.get_num_threads()} thread(s); model {args.shape} "
            f"{model_name} ({sum(p.numel() for p in start_model.parameters()) / 1e6:.3f}M params); "
            f"{args.batch_size} completions (G={args.num_generations}) x {args.max_completion_length} tokens per "
            f"step, micro-batch {args.micro_batch_size} on both sides, {args.warmup_steps} warm-up + {args.steps} "
            "timed steps; each side's repeat in a process of its own",
            flush=True,
        )
        checked = check_same_first_loss(start_model, tokenizer, rows, dataset, args, device)
        rate = matmul_rate(device, dtype)
        flops = flops_per_step(start_model, args, checked["prompt_tokens"], checked["completion_tokens"])
        print(f"matmul rate: {rate / 1e9:.1f} GFLOP/s ({dtype}, {torch.get_num_threads()} thread(s))", flush=True)
        del start_model

        results = {"ours": [], "trl": []}
        for repeat in range(args.repeats):
            for side in ("ours", "trl"):
                r = run_side(args, side, model_name, work, repeat)
                r["update_fraction"] = flops["update"] / max(r["update"], 1e-12) / rate
                r["generation_fraction"] = flops["generation"] / max(r["generation"], 1e-12) / rate
                results[side].append(r)
                print(
                    f"repeat {repeat + 1} {side:>4}: {r['completions/s']:8.1f} completions/s  {r['s/step']:.4f} "
                    f"s/step (generation {r['generation']:.4f}, scoring {r['scoring']:.4f}, update "
                    f"{r['update']:.4f}); peak memory {r['peak'] / 2**30:.2f} GB; update at "
                    f"{100 * r['update_fraction']:.0f}%, generation at {100 * r['generation_fraction']:.0f}% of "
                    "the matmul rate",
                    flush=True,
                )
    ratios = [o["completions/s"] / t["completions/s"] for o, t in zip(results["ours"], results["trl"])]
    memory_ratios = [o["peak"] / t["peak"] for o, t in zip(results["ours"], results["trl"])]
    for side in ("ours", "trl"):
        med = {k: statistics.median(r[k] for r in results[side]) for k in results[side][0]}
        print(
            f"median {side:>4}: {med['completions/s']:8.1f} completions/s  {med['s/step']:.4f} s/step "
            f"(generation {med['generation']:.4f}, scoring {med['scoring']:.4f}, update {med['update']:.4f}); "
            f"peak memory {med['peak'] / 2**30:.2f} GB; update {100 * med['update_fraction']:.0f}%, generation "
            f"{100 * med['generation_fraction']:.0f}% of the matmul rate"
        )
    print(f"peak memory ours/TRL: {statistics.median(memory_ratios):.3f}")
    print(
        f"ratio ours/TRL per repeat: {' '.join(f'{r:.3f}' for r in ratios)} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    print(f"ratio ours/TRL: {statistics.median(ratios):.3f}", flush=True)
    return {"results": results, "ratios": ratios, "memory_ratios": memory_ratios, **checked}


if __name__ == "__main__":
    main(tyro.cli(Args))
