# benchmark of the DPO step against TRL | README: #performance
"""DPO step throughput: `algos/cream.py`'s DPO step (C = 1, precomputed reference) against TRL's `DPOTrainer`.

Both sides train the same start model (the tiny world's warm-started Qwen2 by default, any --model-name) on the same
pairs (prompt / chosen / rejected columns; tiny:preferences by default) with the same batch, beta, learning rate
(constant), weight decay, grad-norm clip and the reference log-probs computed once before training. TRL tokenizes
the pairs (chat template); ours trains on exactly those token ids (left-padded prompts, right-padded responses,
positions from the mask). Ours is `cream.dpo_iteration` itself with C = 1 (its `cream_loss`, no second copy of the
maths); steps are timed from its per-step log callback, the reference pass separately. TRL's steps are timed with a
callback; its reference pass (`precompute_ref_log_probs`) runs in the trainer's constructor.

Before timing, both sides score the same batch: the first-step loss (policy = reference, so ln 2) and the loss and
gradients of a randomly perturbed policy must agree (asserted). Both sides train in micro-batches of
--micro-batch-size pairs with gradient accumulation over the step batch. Repeats alternate ours / TRL back to back,
each side's repeat in a process of its own (fresh copies of the start model): pairs/s over the timed steps, each
side's peak memory (peak RSS on the CPU, `max_memory_allocated` on CUDA), the achieved FLOP/s of the update against
the matmul rate measured at start-up, and the ratios ours/TRL, min/median/max over the repeats. `--shape vocab` and
`--shape qwen2.5-0.5b` use real-architecture Qwen2 models with random weights (see benchmarks/grpo_vs_trl.py).

Commands:
    taskset -c 0,1 python benchmarks/dpo_vs_trl.py                       # tiny warm-started Qwen2, CPU, 1 thread
    taskset -c 0,1 python benchmarks/dpo_vs_trl.py --shape vocab --num-threads 2 --batch-size 16 \
        --micro-batch-size 8 --steps 2 --warmup-steps 1 --repeats 1
    python benchmarks/dpo_vs_trl.py --shape qwen2.5-0.5b --dataset-name pairs_folder  # one GPU
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import algos.cream as cream  # noqa: E402
from benchmarks.grpo_vs_trl import (  # noqa: E402
    PhaseTimer,
    body_and_head_weights,
    build_model,
    matmul_rate,
    patched,
    peak_memory,
    run_side,
)
from shared.data import load_data  # noqa: E402
from shared.lm import load_causal_lm  # noqa: E402
from shared.runs import fail, pick_device, pick_dtype, seed_everything  # noqa: E402


@dataclass
class Args:
    shape: Literal["tiny", "vocab", "qwen2.5-0.5b"] = "tiny"
    """the model: `tiny` (--model-name, by default the tiny world's warm-started Qwen2), or a real-architecture
    Qwen2 with random weights and the real 151,936-token vocabulary: `vocab` (hidden 256, 4 layers) or
    `qwen2.5-0.5b`"""
    model_name: str = "tiny:string_ops"
    """policy start: tiny:<task> (warm-started tiny Qwen2), a save_pretrained folder or a hub id"""
    warm_start_steps: int = 450
    """SFT steps of the tiny:<task> warm start"""
    dataset_name: str = "tiny:preferences"
    """pairs with prompt / chosen / rejected columns: tiny:<task>, a folder, a file or a hub id"""
    batch_size: int = 64
    """pairs per optimiser step"""
    micro_batch_size: int = 16
    """pairs per forward/backward on both sides (TRL: per-device batch; the rest is gradient accumulation)"""
    beta: float = 0.1
    """DPO beta [cream default]"""
    learning_rate: float = 3e-5
    """constant AdamW learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay (0: TRL's Trainer exempts biases and norms from decay, cream does not)"""
    max_grad_norm: float = 1.0
    """gradient-norm clip"""
    warmup_steps: int = 2
    """untimed steps before the timed ones"""
    steps: int = 10
    """timed optimiser steps per repeat"""
    repeats: int = 3
    """back-to-back repeats of ours then TRL"""
    seed: int = 1
    """seed of data order and perturbation"""
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
    samples_file: Optional[str] = None
    """internal: the token ids both sides train on (TRL's tokenization), saved by the comparing process"""


def cream_args(args: Args) -> cream.Args:
    return cream.Args(
        seed=args.seed,
        beta=args.beta,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        dpo_batch_size=args.batch_size,
        dpo_epochs=1,
        lora_r=0,
        micro_batch_size=args.micro_batch_size,
        score_batch_size=max(args.batch_size, 256),
    )


def make_trl_trainer(start_model, tokenizer, dataset, args: Args, device, steps: int, output_dir: str):
    from trl import DPOConfig, DPOTrainer

    seed_everything(args.seed)
    config = DPOConfig(
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
        beta=args.beta,
        loss_type=["sigmoid"],
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        max_steps=steps,
        max_length=None,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=max(args.batch_size, 256),
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    model = copy.deepcopy(start_model).train().requires_grad_(True)
    return DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)


class Samples:
    """cream's `samples`: rows 0..n-1 the chosen responses, n..2n-1 the rejected ones, of TRL's token ids."""

    def __init__(self, tokenized, pad_id: int, device):
        prompts = [list(p) for p in tokenized["prompt_ids"]] * 2
        responses = [list(c) for c in tokenized["chosen_ids"]] + [list(r) for r in tokenized["rejected_ids"]]
        p_len, r_len = max(map(len, prompts)), max(map(len, responses))
        self.prompt_ids = torch.tensor([[pad_id] * (p_len - len(p)) + p for p in prompts], device=device)
        self.prompt_mask = torch.tensor([[0] * (p_len - len(p)) + [1] * len(p) for p in prompts], device=device)
        self.completion_ids = torch.tensor([r + [pad_id] * (r_len - len(r)) for r in responses], device=device)
        self.completion_mask = torch.tensor([[1] * len(r) + [0] * (r_len - len(r)) for r in responses], device=device)
        self.num_pairs = len(responses) // 2

    def save(self, path: str) -> None:
        torch.save({k: v.cpu() if torch.is_tensor(v) else v for k, v in vars(self).items()}, path)

    @classmethod
    def load(cls, path: str, device) -> "Samples":
        samples = cls.__new__(cls)
        for key, value in torch.load(path).items():
            setattr(samples, key, value.to(device) if torch.is_tensor(value) else value)
        return samples


def run_ours(start_model, samples: Samples, args: Args, device) -> dict:
    """cream.dpo_iteration (C = 1) over (warmup + steps) batches; the reference pass is timed on its own."""
    num_pairs = (args.warmup_steps + args.steps) * args.batch_size
    rows = torch.arange(num_pairs) % samples.num_pairs
    timer = PhaseTimer(device)
    make_optimizer = cream.make_optimizer

    def mark_then_make_optimizer(*a, **k):  # called once, after the reference pass: the start of step 0
        timer.mark()
        return make_optimizer(*a, **k)

    seed_everything(args.seed)
    policy = copy.deepcopy(start_model).train().requires_grad_(True)
    with patched(cream, make_optimizer=mark_then_make_optimizer, score_all=timer.wrap(cream.score_all, "reference")):
        log = lambda **metrics: timer.mark()  # noqa: E731  cream logs once per optimiser step
        cream.dpo_iteration(
            policy, samples, rows, rows + samples.num_pairs, torch.ones(num_pairs), cream_args(args), args.seed, log
        )
    reference = timer.totals["reference"]
    timer.totals.clear()
    for _, totals in timer.marks:
        totals.clear()
    out = timer.summary(args.warmup_steps, args.batch_size)
    return {"pairs/s": out["completions/s"], "s/step": out["s/step"], "reference s": reference}


def run_trl(start_model, tokenizer, dataset, args: Args, device) -> dict:
    from transformers import TrainerCallback

    timer = PhaseTimer(device)

    class Marks(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timer.mark()

        def on_step_end(self, *a, **k):
            timer.mark()

    with tempfile.TemporaryDirectory() as tmp:
        start = timer.now()
        trainer = make_trl_trainer(start_model, tokenizer, dataset, args, device, args.warmup_steps + args.steps, tmp)
        reference = timer.now() - start  # tokenization + precompute_ref_log_probs
        trainer.add_callback(Marks())
        trainer.train()
    out = timer.summary(args.warmup_steps, args.batch_size)
    return {"pairs/s": out["completions/s"], "s/step": out["s/step"], "reference s": reference}


def both_losses(model, trainer, samples: Samples, ref, args: Args) -> tuple[float, float, float]:
    """(ours, TRL's, max relative gradient difference) of the DPO loss of `model` on the first batch of pairs."""
    idx = torch.arange(args.batch_size)
    model.zero_grad(set_to_none=True)
    batch = cream.rows_of(samples, torch.cat([idx, idx + samples.num_pairs]))
    chosen, rejected = cream.response_logps(model, *batch).chunk(2)  # [b], [b]
    ours = cream.cream_loss(chosen, rejected, ref[0][idx], ref[1][idx], 1.0, args.beta).mean()
    ours.backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(args.batch_size)])
    inputs = {k: v.to(next(model.parameters()).device) for k, v in inputs.items()}
    trl = trainer._compute_loss(model, inputs, return_outputs=False)
    trl.backward()
    scale = max(max(g.abs().max().item() for g in ours_grads), 1e-12)
    grad_diff = max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), ours_grads)) / scale
    model.zero_grad(set_to_none=True)
    return ours.item(), trl.item(), grad_diff


def check_same_first_loss(trainer, samples: Samples, start_model, args: Args) -> float:
    """The same pairs through both losses, at the first step and with a perturbed policy; returns the first loss."""
    rows = torch.arange(samples.num_pairs)
    ref = [cream.score_all(start_model, samples, r, 256).float() for r in (rows, rows + samples.num_pairs)]
    trl_ref = (
        torch.tensor(trainer.train_dataset["ref_chosen_logps"]),
        torch.tensor(trainer.train_dataset["ref_rejected_logps"]),
    )
    ref_diff = max((a.cpu() - b).abs().max().item() for a, b in zip(ref, trl_ref))
    model = trainer.model
    first = both_losses(model, trainer, samples, ref, args)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(args.seed)
        for p in model.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=generator).to(p))
    moved = both_losses(model, trainer, samples, ref, args)
    print(
        f"same batch, first step: loss ours {first[0]:.8f} TRL {first[1]:.8f} (grad max rel diff {first[2]:.1e}); "
        f"perturbed policy: ours {moved[0]:.8f} TRL {moved[1]:.8f} (grad {moved[2]:.1e}); reference log-probs "
        f"max |diff| {ref_diff:.1e}",
        flush=True,
    )
    for name, (ours, trl, grad) in (("first-step", first), ("perturbed-policy", moved)):
        if not (abs(ours - trl) <= 1e-6 + 1e-5 * abs(ours) and grad <= 1e-3):
            fail(f"{name} DPO losses differ: ours {ours} vs TRL {trl} (grad diff {grad}): not the same computation")
    return first[0]


def check_args(args: Args) -> None:
    for name in ("batch_size", "steps", "repeats", "num_threads", "warm_start_steps"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup_steps < 0 or not args.beta > 0 or not args.learning_rate > 0:
        fail("--warmup-steps must be >= 0, --beta and --learning-rate > 0")
    if args.micro_batch_size < 1 or args.batch_size % args.micro_batch_size:
        fail(f"--micro-batch-size {args.micro_batch_size} must divide --batch-size {args.batch_size}")


def load_everything(args: Args, model_name: str):
    torch.set_num_threads(args.num_threads)
    device = pick_device(args.cuda)
    dtype = pick_dtype(args.dtype, device)
    start_model, tokenizer = load_causal_lm(model_name, device=device, dtype=dtype, seed=args.seed)
    start_model.eval().requires_grad_(False)
    num_pairs = (args.warmup_steps + args.steps) * args.batch_size
    data = load_data(args.dataset_name, "train", ["prompt", "chosen", "rejected"], num_pairs, seed=args.seed)
    dataset = data.select_columns(["prompt", "chosen", "rejected"]).map(
        lambda x: {
            "prompt": [{"role": "user", "content": x["prompt"]}],
            "chosen": [{"role": "assistant", "content": x["chosen"]}],
            "rejected": [{"role": "assistant", "content": x["rejected"]}],
        }
    )  # TRL: conversational pairs through the tokenizer's chat template
    if len(dataset) < args.batch_size:
        fail(f"{args.dataset_name!r} has {len(dataset)} pairs: fewer than one batch of {args.batch_size}")
    return device, dtype, start_model, tokenizer, dataset


def flops_per_step(model, samples: Samples, args: Args) -> float:
    """Matmul FLOPs of one DPO step: forward + backward (6 per weight per token) of the chosen and the rejected
    sequence of every pair, the LM head on response positions only (attention scores left out)."""
    body, head = body_and_head_weights(model)
    prompt_tokens = samples.prompt_mask.sum(1).float().mean().item()
    response_tokens = samples.completion_mask.sum(1).float().mean().item()
    sequences = 2 * args.batch_size
    return 6 * body * sequences * (prompt_tokens + response_tokens) + 6 * head * sequences * response_tokens


def one_side(args: Args) -> None:
    """One repeat of one side in this process; its timings and peak memory go to --report."""
    device, _, start_model, tokenizer, dataset = load_everything(args, args.model_name)
    if args.side == "ours":
        result = run_ours(start_model, Samples.load(args.samples_file, device), args, device)
    else:
        result = run_trl(start_model, tokenizer, dataset, args, device)
    result["peak"] = peak_memory(device)
    Path(args.report).write_text(json.dumps(result))


def main(args: Args) -> dict:
    check_args(args)
    try:
        import trl
    except ImportError:
        fail("TRL is not installed: pip install trl (or the project's `bench` extra)")
    if args.side != "both":
        one_side(args)
        return {}
    with tempfile.TemporaryDirectory(prefix="dpo-vs-trl-") as tmp:
        work = Path(tmp)
        model_name = build_model(args, work / "model")
        device, dtype, start_model, tokenizer, dataset = load_everything(args, model_name)
        print(
            f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, trl "
            f"{trl.__version__}; {device} {dtype}, {torch.get_num_threads()} thread(s); model {args.shape} "
            f"{model_name} ({sum(p.numel() for p in start_model.parameters()) / 1e6:.3f}M params); "
            f"{args.batch_size} pairs per step in micro-batches of {args.micro_batch_size} on both sides, "
            f"{args.warmup_steps} warm-up + {args.steps} timed steps; each side's repeat in a process of its own",
            flush=True,
        )
        trainer = make_trl_trainer(start_model, tokenizer, dataset, args, device, 1, tmp)
        samples = Samples(trainer.train_dataset, tokenizer.pad_token_id, device)  # TRL's token ids, for both sides
        print(
            f"sequence lengths: prompt <= {samples.prompt_ids.shape[1]}, response <= "
            f"{samples.completion_ids.shape[1]} tokens ({len(dataset)} pairs)",
            flush=True,
        )
        first_loss = check_same_first_loss(trainer, samples, start_model, args)
        del trainer
        samples_file = work / "samples.pt"
        samples.save(str(samples_file))
        rate = matmul_rate(device, dtype)
        flops = flops_per_step(start_model, samples, args)
        print(f"matmul rate: {rate / 1e9:.1f} GFLOP/s ({dtype}, {torch.get_num_threads()} thread(s))", flush=True)
        del start_model
        child_args = dataclasses.replace(args, samples_file=str(samples_file))

        results = {"ours": [], "trl": []}
        for repeat in range(args.repeats):
            for side in ("ours", "trl"):
                r = run_side(child_args, side, model_name, work, repeat, script=Path(__file__))
                r["update_fraction"] = flops / max(r["s/step"], 1e-12) / rate
                results[side].append(r)
                print(
                    f"repeat {repeat + 1} {side:>4}: {r['pairs/s']:8.1f} pairs/s  {r['s/step']:.4f} s/step  "
                    f"(reference pass, untimed: {r['reference s']:.2f} s); peak memory {r['peak'] / 2**30:.2f} GB; "
                    f"update at {100 * r['update_fraction']:.0f}% of the matmul rate",
                    flush=True,
                )
    ratios = [o["pairs/s"] / t["pairs/s"] for o, t in zip(results["ours"], results["trl"])]
    memory_ratios = [o["peak"] / t["peak"] for o, t in zip(results["ours"], results["trl"])]
    for side in ("ours", "trl"):
        print(
            f"median {side:>4}: {statistics.median(r['pairs/s'] for r in results[side]):8.1f} pairs/s  "
            f"{statistics.median(r['s/step'] for r in results[side]):.4f} s/step; peak memory "
            f"{statistics.median(r['peak'] for r in results[side]) / 2**30:.2f} GB; update at "
            f"{100 * statistics.median(r['update_fraction'] for r in results[side]):.0f}% of the matmul rate"
        )
    print(f"peak memory ours/TRL: {statistics.median(memory_ratios):.3f}")
    print(
        f"ratio ours/TRL per repeat: {' '.join(f'{r:.3f}' for r in ratios)} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    print(f"ratio ours/TRL: {statistics.median(ratios):.3f}", flush=True)
    return {"results": results, "ratios": ratios, "memory_ratios": memory_ratios, "first_loss": first_loss}


if __name__ == "__main__":
    main(tyro.cli(Args))
