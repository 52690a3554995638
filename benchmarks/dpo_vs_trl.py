# benchmark for issue 12 | README: #performance
"""DPO step throughput: `algos/cream.py`'s DPO step (C = 1, precomputed reference) against TRL's `DPOTrainer`.

Both sides train the same start model (the tiny world's warm-started Qwen2 by default, any --model-name) on the same
pairs (prompt / chosen / rejected columns; tiny:preferences by default) with the same batch, beta, learning rate
(constant), weight decay, grad-norm clip and the reference log-probs computed once before training. TRL tokenizes
the pairs (chat template); ours trains on exactly those token ids (left-padded prompts, right-padded responses,
positions from the mask). Ours is `cream.dpo_iteration` itself with C = 1 (its `cream_loss`, no second copy of the
maths); steps are timed from its per-step log callback, the reference pass separately. TRL's steps are timed with a
callback; its reference pass (`precompute_ref_log_probs`) runs in the trainer's constructor.

Before timing, both sides score the same batch: the first-step loss (policy = reference, so ln 2) and the loss and
gradients of a randomly perturbed policy must agree (asserted). Repeats alternate ours / TRL back to back from fresh
copies of the start model; pairs/s over the timed steps, ratio ours/TRL, min/median/max over the repeats.

Commands:
    taskset -c 0,1 python benchmarks/dpo_vs_trl.py                       # tiny warm-started Qwen2, CPU, 1 thread
    python benchmarks/dpo_vs_trl.py --model-name Qwen/Qwen2.5-0.5B-Instruct --dataset-name pairs_folder  # one GPU
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import algos.cream as cream  # noqa: E402
from benchmarks.grpo_vs_trl import PhaseTimer, patched  # noqa: E402
from shared.data import load_data  # noqa: E402
from shared.lm import load_causal_lm  # noqa: E402
from shared.runs import fail, pick_device, pick_dtype, seed_everything  # noqa: E402
from shared.warmstart import warm_start  # noqa: E402


@dataclass
class Args:
    model_name: str = "tiny:string_ops"
    """policy start: tiny:<task> (warm-started tiny Qwen2), a save_pretrained folder or a hub id"""
    warm_start_steps: int = 450
    """SFT steps of the tiny:<task> warm start"""
    dataset_name: str = "tiny:preferences"
    """pairs with prompt / chosen / rejected columns: tiny:<task>, a folder, a file or a hub id"""
    batch_size: int = 64
    """pairs per optimiser step"""
    beta: float = 0.1
    """DPO beta [cream default]"""
    lr: float = 3e-5
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


def cream_args(args: Args) -> cream.Args:
    return cream.Args(
        seed=args.seed, beta=args.beta, learning_rate=args.lr, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, dpo_batch_size=args.batch_size, dpo_epochs=1, lora_r=0,
        score_batch_size=max(args.batch_size, 256),
    )  # fmt: skip


def make_trl_trainer(start_model, tokenizer, dataset, args: Args, device, steps: int, output_dir: str):
    from trl import DPOConfig, DPOTrainer

    seed_everything(args.seed)
    config = DPOConfig(
        output_dir=output_dir, report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True,
        use_cpu=device.type != "cuda", bf16=start_model.dtype == torch.bfloat16, fp16=False, seed=args.seed,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, beta=args.beta,
        loss_type=["sigmoid"], learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, max_steps=steps, max_length=None,
        precompute_ref_log_probs=True, precompute_ref_batch_size=max(args.batch_size, 256),
        dataloader_num_workers=0, dataset_num_proc=None,
    )  # fmt: skip
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
    if args.warmup_steps < 0 or not args.beta > 0 or not args.lr > 0:
        fail("--warmup-steps must be >= 0, --beta and --lr > 0")


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
    print(
        f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, trl {trl.__version__}; "
        f"{device} {dtype}, {torch.get_num_threads()} thread(s); model {args.model_name} "
        f"({sum(p.numel() for p in start_model.parameters()) / 1e6:.3f}M params); {args.batch_size} pairs per step, "
        f"{args.warmup_steps} warm-up + {args.steps} timed steps",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trl_trainer(start_model, tokenizer, dataset, args, device, 1, tmp)
        samples = Samples(trainer.train_dataset, tokenizer.pad_token_id, device)  # TRL's token ids, for both sides
        print(
            f"sequence lengths: prompt <= {samples.prompt_ids.shape[1]}, response <= "
            f"{samples.completion_ids.shape[1]} tokens ({len(dataset)} pairs)",
            flush=True,
        )
        first_loss = check_same_first_loss(trainer, samples, start_model, args)
        del trainer

    results = {"ours": [], "trl": []}
    for repeat in range(args.repeats):
        for side in ("ours", "trl"):
            if side == "ours":
                r = run_ours(start_model, samples, args, device)
            else:
                r = run_trl(start_model, tokenizer, dataset, args, device)
            results[side].append(r)
            print(
                f"repeat {repeat + 1} {side:>4}: {r['pairs/s']:8.1f} pairs/s  {r['s/step']:.4f} s/step  "
                f"(reference pass, untimed: {r['reference s']:.2f} s)",
                flush=True,
            )
    ratios = [o["pairs/s"] / t["pairs/s"] for o, t in zip(results["ours"], results["trl"])]
    for side in ("ours", "trl"):
        print(
            f"median {side:>4}: {statistics.median(r['pairs/s'] for r in results[side]):8.1f} pairs/s  "
            f"{statistics.median(r['s/step'] for r in results[side]):.4f} s/step"
        )
    print(
        f"ratio ours/TRL per repeat: {' '.join(f'{r:.3f}' for r in ratios)} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    print(f"ratio ours/TRL: {statistics.median(ratios):.3f}", flush=True)
    return {"results": results, "ratios": ratios, "first_loss": first_loss}


if __name__ == "__main__":
    main(tyro.cli(Args))
