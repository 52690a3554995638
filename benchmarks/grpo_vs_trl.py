# benchmark for issue 12 | README: #performance
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

Repeats alternate ours / TRL back to back (fresh copies of the start model each time) and report completions/s over
the timed steps, seconds per step by phase and the ratio ours/TRL, min/median/max over the repeats.

Commands:
    taskset -c 0,1 python benchmarks/grpo_vs_trl.py                      # tiny warm-started Qwen2, CPU, 1 thread
    python benchmarks/grpo_vs_trl.py --model-name Qwen/Qwen2.5-0.5B-Instruct --batch-size 128 \
        --max-completion-length 256 --micro-batch-size 16                  # one GPU, bf16
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import algos.bleuberi as bleuberi  # noqa: E402
from shared.data import load_data  # noqa: E402
from shared.lm import completion_logprobs, load_causal_lm, stop_token_ids  # noqa: E402
from shared.precision import setup_precision  # noqa: E402
from shared.runs import fail, pick_device, pick_dtype, seed_everything  # noqa: E402
from shared.warmstart import warm_start  # noqa: E402


@dataclass
class Args:
    model_name: str = "tiny:string_ops"
    """policy start: tiny:<task> (warm-started tiny Qwen2), a save_pretrained folder or a hub id"""
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
    lr: float = 3e-5
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
        seed=args.seed, steps=steps, batch_size=args.batch_size, num_generations=args.num_generations,
        micro_batch_size=args.micro_batch_size, lr=args.lr, warmup_ratio=0.0, max_grad_norm=args.max_grad_norm,
        beta=args.beta, epsilon=args.epsilon, loss_type=args.loss_type, temperature=args.temperature,
        top_k=args.top_k, max_completion_length=args.max_completion_length,
    )  # fmt: skip


def run_ours(start_model, tokenizer, rows, args: Args, device) -> dict:
    """bleuberi.train_grpo for warmup + steps optimiser steps, phases timed by wrapping its module functions."""
    seed_everything(args.seed)
    precision = setup_precision(args.dtype, args.cuda)
    model = copy.deepcopy(start_model).to(precision.trained_dtype).train().requires_grad_(True)
    timer = PhaseTimer(device)
    logger = type("StepMarks", (), {"log": lambda self, step, metrics: timer.mark()})()
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
        output_dir=output_dir, report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True,
        use_cpu=device.type != "cuda", bf16=start_model.dtype == torch.bfloat16, fp16=False, seed=args.seed,
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.batch_size // args.micro_batch_size,
        num_generations=args.num_generations, max_completion_length=args.max_completion_length,
        beta=args.beta, epsilon=args.epsilon, loss_type=args.loss_type, scale_rewards="group",
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=args.max_grad_norm, temperature=args.temperature, top_k=args.top_k, top_p=1.0,
        max_steps=steps, dataloader_num_workers=0, log_completions=False,
    )  # fmt: skip
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
        logp, logp.detach(), ref_logp, advantages, out.completion_mask, args.beta, args.epsilon, args.loss_type,
        args.max_completion_length,
    )  # fmt: skip
    ours.backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    batch = dict(
        prompt_ids=out.prompt_ids, prompt_mask=out.prompt_mask, completion_ids=out.completion_ids,
        completion_mask=out.completion_mask, advantages=advantages, ref_per_token_logps=trl_ref,
        num_items_in_batch=out.completion_mask.sum(),
    )  # fmt: skip
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; one micro-batch = the batch
    trl = trainer._compute_loss(model, batch)
    trl.backward()
    scale = max(max(g.abs().max().item() for g in ours_grads), 1e-12)
    grad_diff = max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), ours_grads)) / scale
    model.zero_grad(set_to_none=True)
    return ours.item(), trl.item(), grad_diff


def check_same_first_loss(start_model, tokenizer, rows, dataset, args: Args, device) -> float:
    """Our loss and TRL's on one batch of our completions must agree: at the first step (policy = reference) and
    with a perturbed policy (non-zero KL term); returns the first-step loss."""
    seed_everything(args.seed)
    prompts = [r["prompt"] for r in rows[: args.batch_size // args.num_generations]]
    out = bleuberi.sample(
        start_model, tokenizer, prompts, num_samples=args.num_generations, temperature=args.temperature,
        top_k=args.top_k, max_new_tokens=args.max_completion_length,
    )  # fmt: skip
    references = [r["references"] for r in rows[: len(prompts)] for _ in range(args.num_generations)]
    rewards = bleuberi.compute_rewards("bleu", out.texts, references).to(device)  # [B]
    advantages = bleuberi.group_advantages(rewards, args.num_generations)  # [B]
    inputs = (out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
    with torch.no_grad():
        ref_logp = completion_logprobs(start_model, *inputs, args.temperature)[0]  # [B, T]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trl_trainer(start_model, tokenizer, dataset, args, device, 1, tmp)
        ids = torch.cat([out.prompt_ids, out.completion_ids], 1)  # [B, P+T]
        mask = torch.cat([out.prompt_mask, out.completion_mask], 1)  # [B, P+T]
        logits_to_keep = out.completion_ids.size(1)  # TRL scores the last T positions
        with torch.no_grad():
            trl_ref = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask, logits_to_keep)[0]
        model = trainer.model  # TRL's copy of the start model (its forward is patched for the fused log-probs)
        first = both_losses(model, trainer, out, advantages, ref_logp, trl_ref, args)
        with torch.no_grad():  # a policy away from the reference: the KL term and its gradient are no longer 0
            generator = torch.Generator().manual_seed(args.seed)
            for p in model.parameters():
                p.add_(0.02 * p.abs().mean() * torch.randn(p.shape, generator=generator).to(p))
        moved = both_losses(model, trainer, out, advantages, ref_logp, trl_ref, args)
    # per-token log-probs: equal where the prompt has no left padding; TRL passes no position ids (see docstring)
    m = out.completion_mask.bool()
    unpadded = out.prompt_mask.all(dim=1)  # [B]
    diff = (ref_logp - trl_ref).abs().masked_fill(~m, 0)  # [B, T]
    max_unpadded = diff[unpadded].max().item() if unpadded.any() else float("nan")
    max_padded = diff[~unpadded].max().item() if (~unpadded).any() else 0.0
    print(
        f"same batch, first step: loss ours {first[0]:.8f} TRL {first[1]:.8f} (grad max rel diff {first[2]:.1e}); "
        f"perturbed policy: ours {moved[0]:.8f} TRL {moved[1]:.8f} (grad {moved[2]:.1e}); per-token log-prob "
        f"max |diff| unpadded prompts {max_unpadded:.1e} ({int(unpadded.sum())} rows), left-padded {max_padded:.1e}",
        flush=True,
    )
    for name, (ours, trl, _) in (("first-step", first), ("perturbed-policy", moved)):
        if not abs(ours - trl) <= 1e-6 + 1e-4 * abs(ours):
            fail(f"{name} losses differ: ours {ours} vs TRL {trl}: the two sides do not compute the same thing")
    if unpadded.any() and not max_unpadded <= 1e-4:
        fail(f"per-token log-probs differ on unpadded rows by {max_unpadded}: the two sides score differently")
    return first[0]


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


def main(args: Args) -> dict:
    check_args(args)
    try:
        import trl
    except ImportError:
        fail("TRL is not installed: pip install trl (or the project's `bench` extra)")
    torch.set_num_threads(args.num_threads)
    device = pick_device(args.cuda)
    dtype = pick_dtype(args.dtype, device)
    if args.model_name.startswith("tiny:"):
        path = warm_start(args.model_name.split(":", 1)[1], seed=0, steps=args.warm_start_steps)
        start_model, tokenizer = load_causal_lm(str(path), device=device, dtype=dtype)
    else:
        start_model, tokenizer = load_causal_lm(args.model_name, device=device, dtype=dtype, seed=args.seed)
    start_model.eval().requires_grad_(False)
    data = load_data(args.dataset_name, "train", ["prompt", "reference"], args.num_prompts, seed=args.seed)
    rows = [{"prompt": p, "references": [r]} for p, r in zip(data["prompt"], data["reference"])]
    dataset = data.map(lambda x: {"prompt": [{"role": "user", "content": x["prompt"]}]})  # TRL: conversational

    print(
        f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, trl {trl.__version__}; "
        f"{device} {dtype}, {torch.get_num_threads()} thread(s); model {args.model_name} "
        f"({sum(p.numel() for p in start_model.parameters()) / 1e6:.3f}M params); {args.batch_size} completions "
        f"(G={args.num_generations}) x {args.max_completion_length} tokens per step, micro-batch "
        f"{args.micro_batch_size}, {args.warmup_steps} warm-up + {args.steps} timed steps",
        flush=True,
    )
    first_loss = check_same_first_loss(start_model, tokenizer, rows, dataset, args, device)

    results = {"ours": [], "trl": []}
    for repeat in range(args.repeats):
        for side, run in (("ours", run_ours), ("trl", run_trl)):
            r = run(start_model, tokenizer, rows if side == "ours" else dataset, args, device)
            results[side].append(r)
            print(
                f"repeat {repeat + 1} {side:>4}: {r['completions/s']:8.1f} completions/s  {r['s/step']:.4f} s/step "
                f"(generation {r['generation']:.4f}, scoring {r['scoring']:.4f}, update {r['update']:.4f})",
                flush=True,
            )
    ratios = [o["completions/s"] / t["completions/s"] for o, t in zip(results["ours"], results["trl"])]
    for side in ("ours", "trl"):
        med = {k: statistics.median(r[k] for r in results[side]) for k in results[side][0]}
        print(
            f"median {side:>4}: {med['completions/s']:8.1f} completions/s  {med['s/step']:.4f} s/step "
            f"(generation {med['generation']:.4f}, scoring {med['scoring']:.4f}, update {med['update']:.4f})"
        )
    print(
        f"ratio ours/TRL per repeat: {' '.join(f'{r:.3f}' for r in ratios)} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    print(f"ratio ours/TRL: {statistics.median(ratios):.3f}", flush=True)
    return {"results": results, "ratios": ratios, "first_loss": first_loss}


if __name__ == "__main__":
    main(tyro.cli(Args))
