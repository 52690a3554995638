"""Launched by tests/test_distributed.py under `accelerate launch --num_processes 2`: BLEUBERI's GRPO gradients of one
step batch of 8 groups (G = 2), each process holding 4 of them; process 0 saves the summed gradients and losses."""

import sys

import torch

from algos import bleuberi
from shared.distributed import Processes
from shared.lm import build_tiny_lm, completion_logprobs, sample
from shared.precision import setup_precision

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")


def step_batch():
    """16 completions of 8 prompts (groups of 2), of different lengths, with a reference and a sampling policy
    away from the policy: the same tensors on every process (built from fixed seeds)."""
    model, tokenizer = build_tiny_lm(seed=8)
    reference, _ = build_tiny_lm(seed=9)
    torch.manual_seed(0)
    prompts = ["copy : a b", "sort : c a b", "reverse : a b c", "dedup : a a b"] * 2
    out = sample(model, tokenizer, prompts, num_samples=2, max_new_tokens=6)
    lengths = torch.tensor([6, 2, 4, 1, 5, 3, 6, 2, 1, 6, 3, 3, 2, 5, 4, 6])  # token normalisation matters
    mask = (torch.arange(6)[None, :] < lengths[:, None]).long()  # [16, 6]
    completion_ids = out.completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    inputs = (out.prompt_ids, out.prompt_mask, completion_ids, mask)
    advantages = bleuberi.group_advantages(torch.randn(16), 2)
    with torch.no_grad():
        ref_logp = completion_logprobs(reference, *inputs)[0]
        old_logp = completion_logprobs(model, *inputs)[0] + 0.3 * torch.randn(mask.shape)
    return model, inputs, old_logp, ref_logp, advantages


def main(out_file: str) -> None:
    precision = setup_precision("fp32", cuda=False)
    processes = Processes.from_precision(precision)
    model, inputs, old_logp, ref_logp, advantages = step_batch()
    rows = torch.tensor(processes.shard(range(16)))  # this process's 4 groups of 2
    results = {}
    for loss_type in LOSS_TYPES:
        args = bleuberi.Args(micro_batch_size=2, loss_type=loss_type, max_completion_length=6)
        mine = tuple(x[rows] for x in inputs)
        _, _, loss = bleuberi.accumulate_grpo_gradients(
            model, mine, old_logp[rows], ref_logp[rows], advantages[rows], args, precision, processes
        )
        processes.sum_gradients(list(model.parameters()))
        grads = [parameter.grad.clone() for parameter in model.parameters()]
        model.zero_grad(set_to_none=True)
        results[loss_type] = {"loss": float(processes.sum(loss)), "grads": grads}
    if processes.is_main:
        torch.save({"count": processes.count, **results}, out_file)


if __name__ == "__main__":
    main(sys.argv[1])
