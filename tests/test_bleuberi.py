"""Tests of algos/bleuberi.py: the smoothed NMT-BLEU against hand values and sacrebleu, selection, GRPO maths
(advantages, log-probs, the three loss aggregations, clipping, k3 KL), a smoke run, learning, the real path and
the bad inputs."""

import json
import math
import random
import re

import numpy as np
import pytest
import torch
from datasets import Dataset
from sacrebleu.metrics import BLEU

from algos import bleuberi
from algos.bleuberi import Args, bleu_reward, group_advantages, grpo_loss, main, select_prompts

TINY = dict(
    pool_size=48,
    num_examples=16,
    num_eval=16,
    steps=2,
    batch_size=16,
    num_generations=4,
    micro_batch_size=4,
    max_completion_length=12,
)


# the reward ------------------------------------------------------------------------------------------------------
def test_bleu_hand_values():
    # fully wrong 6-token answer, 6-token reference: p = 1/7, 1/6, 1/5, 1/4 and BP = 1 -> (1/840)^(1/4) = 0.186
    assert bleu_reward("a b c d e f", ["g h i j k l"]) == pytest.approx((1 / 840) ** 0.25)
    assert bleu_reward("a b c d e f", ["g h i j k l"]) == pytest.approx(0.1858, abs=1e-4)
    # `c b a` vs `a b c`: p = 4/4, 1/3, 1/2, 1/1 (no 4-gram: +1/+1) -> (1/6)^(1/4) = 0.639
    assert bleu_reward("c b a", ["a b c"]) == pytest.approx((1 / 6) ** 0.25)
    # one-token output: every order has p = 1, BP = exp(1 - 4/1)
    assert bleu_reward("a", ["a b c d"]) == pytest.approx(math.exp(-3))
    # multi-reference clipping with the max count over references: p = 3/5, 2/4, 1/3, 2/2... see below
    # hyp a a a a; refs `a b`, `a a c`: m1 = min(4, 2) = 2 -> 3/5; `a a` x3 vs max 1 -> 2/4; `a a a` -> 1/3;
    # `a a a a` -> 1/2; shortest ref 2 < 4 -> BP 1
    assert bleu_reward("a a a a", ["a b", "a a c"]) == pytest.approx((3 / 5 * 2 / 4 * 1 / 3 * 1 / 2) ** 0.25)
    # brevity penalty from the SHORTEST reference: 3 tokens vs refs of 3 and 8 tokens -> BP = 1
    assert bleu_reward("a b c", ["a b c", "a b c d e f g h"]) == pytest.approx(1.0)
    assert bleu_reward("x y z w", ["x y z w"]) == 1.0
    assert bleu_reward("X y z w", ["x y z w"]) < 1.0  # case-sensitive
    assert bleu_reward("Hello, world.", ["Hello , world ."]) == 1.0  # 13a splits punctuation
    assert bleu_reward("", ["a b"]) == 0.0 and bleu_reward("  \n ", ["a b"]) == 0.0
    with pytest.raises(ValueError):
        bleu_reward("a b", [])
    with pytest.raises(ValueError):
        bleu_reward("a b", ["a b", "  "])


def test_bleu_agrees_with_sacrebleu_add_k_where_it_should():
    """sacrebleu add-k (k = 1) skips unigrams and uses the closest reference length: equal when every output
    unigram is matched and the brevity penalties coincide (one reference, or output >= every reference)."""
    add_k = BLEU(smooth_method="add-k", smooth_value=1, effective_order=True)
    agree = [
        ("c b a", ["a b c"]),
        ("a b c d e", ["e d c b a"]),
        ("a b", ["a b c d e f"]),
        ("b a c a", ["a b c a", "a b"]),
        ("the cat sat on the mat .", ["on the mat the cat sat .", "a cat sat"]),
    ]
    for hypothesis, references in agree:
        assert bleu_reward(hypothesis, references) == pytest.approx(
            add_k.sentence_score(hypothesis, references).score / 100, abs=1e-9
        )
    # they differ: an unmatched unigram (add-k leaves unigrams unsmoothed) ...
    assert bleu_reward("a b x y", ["a b c d"]) != pytest.approx(
        add_k.sentence_score("a b x y", ["a b c d"]).score / 100
    )
    # ... and a reference set whose closest length (8) is not the shortest (3): BP 1 here, < 1 in sacrebleu
    ours, theirs = (
        bleu_reward("a b c d e f g", ["a b c", "a b c d e f g h"]),
        add_k.sentence_score("a b c d e f g", ["a b c", "a b c d e f g h"]).score / 100,
    )
    assert theirs < ours - 0.05


def test_bleu_equals_sacrebleu_counts_plus_one_with_shortest_reference():
    """In general: ours = sacrebleu's BLEU formula on the clipped counts + 1 at every order, ref_len = shortest."""
    raw = BLEU(smooth_method="none", effective_order=False)
    rng = random.Random(0)
    words = list("abcde") + [",", ".", "A", "3.5"]
    for _ in range(200):
        hypothesis = " ".join(rng.choices(words, k=rng.randint(1, 9)))
        references = [" ".join(rng.choices(words, k=rng.randint(1, 9))) for _ in range(rng.randint(1, 3))]
        stats = raw.sentence_score(hypothesis, references)
        shortest = min(len(bleuberi.tokenize_13a(r)) for r in references)
        expected = (
            BLEU.compute_bleu(
                [c + 1 for c in stats.counts], [t + 1 for t in stats.totals], stats.sys_len, shortest
            ).score
            / 100
        )
        assert bleu_reward(hypothesis, references) == pytest.approx(expected, abs=1e-9), (hypothesis, references)


def test_answer_tags_and_rewards():
    """The official extract_answer: text after the first <answer>, cut at </answer> when there is one."""
    assert bleuberi.answer_text("<think>x y</think><answer> a b c </answer>") == "a b c"
    assert bleuberi.answer_text("<think>x</think><answer> a b c") == "a b c"  # a lone tag scores what follows
    assert bleuberi.answer_text("  a b <answer>") == ""  # ... which can be nothing: reward 0
    assert bleuberi.answer_text("<answer>a<answer>b</answer>") == "a"  # up to the second <answer>
    assert bleuberi.answer_text("x </answer> y <answer> z") == "z"  # a closing tag before the opening one
    assert bleuberi.answer_text("  no tags here \n") == "no tags here"
    assert bleuberi.compute_rewards("bleu", ["a b <answer>"], [["a b"]]).tolist() == [0.0]
    assert bleuberi.compute_rewards("bleu", ["<think>q</think><answer> a b c d"], [["a b c d"]]).tolist() == [1.0]
    texts, refs = ["<think>q</think><answer>a b c d</answer>", "a b c d"], [["a b c d"], ["a b c d"]]
    assert bleuberi.compute_rewards("bleu", texts, refs).tolist() == [1.0, 1.0]
    assert bleuberi.compute_rewards("bleu", texts, refs, extract=False)[0] < 1.0  # selection scores the raw text
    assert bleuberi.compute_rewards("exact_match", ["a  b", "a b c"], [["a b"], ["a b"]]).tolist() == [1.0, 0.0]


# selection and GRPO maths ----------------------------------------------------------------------------------------
def test_select_prompts():
    scores = [0.5, 0.1, 0.9, 0.1, 0.3, 0.7]
    assert select_prompts(scores, 3, "hard") == [1, 3, 4]  # tie 0.1: pool order kept
    assert select_prompts(scores, 2, "easy") == [2, 5]
    assert select_prompts(scores, 2, "medium") == [4, 0]  # ascending [1, 3, 4, 0, 5, 2], start (6 - 2) // 2 = 2
    np.random.seed(7)
    assert select_prompts(scores, 4, "random", seed=7) == np.random.choice(6, 4, replace=False).tolist()
    assert select_prompts(scores, 6, "hard") == list(range(6)) == select_prompts(scores, 9, "random")
    with pytest.raises(ValueError):
        select_prompts(scores, 2, "hardest")


def test_group_advantages():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.5, 0.5, 0.5, 0.5])
    expected = []
    for group in rewards.view(2, 4).numpy():
        expected += list((group - group.mean()) / (group.std(ddof=1) + 1e-4))
    assert torch.allclose(group_advantages(rewards, 4), torch.tensor(expected), atol=1e-6)
    assert torch.equal(group_advantages(rewards, 4)[4:], torch.zeros(4))  # a constant group carries no signal
    centred = group_advantages(rewards, 4, scale_rewards=False)
    assert torch.allclose(centred[:4], torch.tensor([-2.0, -1.0, 0.0, 3.0]))
    assert not torch.allclose(group_advantages(rewards, 2), group_advantages(rewards, 4))  # groups are contiguous
    with pytest.raises(ValueError):
        group_advantages(rewards, 3)
    with pytest.raises(ValueError):
        group_advantages(rewards, 1)


def test_grpo_loss_aggregations_and_reinforce_gradient():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, -0.1]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([1.0, -2.0])
    loss = {
        t: grpo_loss(logp, logp.detach(), None, advantages, mask, 0.0, 0.2, t, 4) for t in ("grpo", "bnpo", "dr_grpo")
    }
    # on-policy, beta 0: every token's loss is -A; grpo = mean(-1, 2), bnpo = (-1*2 + 2*3)/5, dr_grpo = 4 / (2*4)
    assert loss["grpo"].item() == pytest.approx(0.5)
    assert loss["bnpo"].item() == pytest.approx(0.8)
    assert loss["dr_grpo"].item() == pytest.approx(0.5)
    (grad,) = torch.autograd.grad(loss["bnpo"], logp)  # REINFORCE: d loss / d logp = -A mask / sum(mask)
    assert torch.allclose(grad, -advantages[:, None] * mask / 5)
    with pytest.raises(ValueError):
        grpo_loss(logp, logp.detach(), None, advantages, mask, 0.0, 0.2, "dapo", 4)


def test_grpo_loss_k3_kl_and_clip():
    logp = torch.full((1, 2), -1.0, requires_grad=True)
    mask, zero = torch.ones(1, 2), torch.zeros(1)
    # k3 with pi_ref / pi = 2: e^x - x - 1 = 1 - log 2; A = 0 leaves only beta * KL
    kl_loss = grpo_loss(logp, logp.detach(), logp.detach() + math.log(2), zero, mask, 0.5, 0.2, "bnpo", 2)
    assert kl_loss.item() == pytest.approx(0.5 * (1 - math.log(2)))
    same = grpo_loss(logp, logp.detach(), logp.detach(), torch.ones(1), mask, 0.04, 0.2, "bnpo", 2)
    assert same.item() == pytest.approx(
        grpo_loss(logp, logp.detach(), None, torch.ones(1), mask, 0.0, 0.2, "bnpo", 2).item()
    )
    # ratio 1.5 or 0.5 against the sampling policy; the clip binds (value 1 +- eps, no gradient) only where it
    # would otherwise let the update go further: rho > 1.2 with A > 0, rho < 0.8 with A < 0
    cases = [(1.5, 1.0, -1.2, True), (0.5, 1.0, -0.5, False), (0.5, -1.0, 0.8, True), (1.5, -1.0, 1.5, False)]
    for ratio, advantage, value, clipped in cases:
        old = logp.detach() - math.log(ratio)
        out = grpo_loss(logp, old, None, torch.tensor([advantage]), mask, 0.0, 0.2, "bnpo", 2)
        (grad,) = torch.autograd.grad(out, logp)
        assert out.item() == pytest.approx(value)
        assert (grad.abs().sum().item() == 0) == clipped
        metrics = bleuberi.ratio_and_kl_metrics(logp, old, None, torch.tensor([advantage]), mask, 0.2)
        assert metrics["clip_ratio/region_mean"] == float(clipped)


# runs ------------------------------------------------------------------------------------------------------------
def run_folder(runs_in_tmp):
    (folder,) = list(runs_in_tmp.iterdir())
    return folder


def test_smoke_every_arm_changes_parameters(runs_in_tmp):
    from shared.lm import load_causal_lm

    results = main(Args(model_name="tiny", save_model=True, **TINY))
    assert set(results) == {"start", "bleuberi", "grpo-bleu-random", "sft-hard", "grpo-em"}
    folder = run_folder(runs_in_tmp)
    start, _ = load_causal_lm("tiny", seed=1)
    for arm in ("bleuberi", "grpo-bleu-random", "sft-hard", "grpo-em"):
        trained, _ = load_causal_lm(str(folder / arm))
        changed = any(not torch.equal(a, b) for a, b in zip(start.state_dict().values(), trained.state_dict().values()))
        # a random model never matches exactly: every EM reward is 0, every advantage 0, and at the start the KL
        # gradient is 0 too, so the exact-match arm must stay put while the others move
        assert changed == (arm != "grpo-em"), arm
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    keys = {(line.get("arm"), key) for line in lines for key in line}  # (arm, metric): arms share the tag names
    for arm, key in (
        ("bleuberi", "reward"),
        ("bleuberi", "reward_std"),
        ("grpo-em", "kl"),
        ("bleuberi", "clip_ratio/region_mean"),
        ("bleuberi", "completions/mean_length"),
        ("sft-hard", "losses/sft_loss"),
        ("bleuberi", "eval/exact_match"),
    ):
        assert (arm, key) in keys, (arm, key)
    assert all((folder / "arms" / arm).is_dir() for arm in ("bleuberi", "grpo-bleu-random", "sft-hard", "grpo-em"))
    summary = (folder / "summary.md").read_text()
    assert "| bleuberi" in summary
    assert re.search(r"pass@1 \d\.\d{3}, pass@4 \d\.\d{3}", summary)  # the start's headroom


def test_bleuberi_learns(tmp_path, runs_in_tmp):
    """GRPO-BLEU through main() on a weak warm start: 25 steps towards a fixed reference raise held-out BLEU."""
    from shared.tasks import get_task

    prompts = get_task("string_ops").dataset(300, seed=0)["prompt"]
    Dataset.from_dict({"prompt": prompts, "reference": ["a b c d e"] * 300}).save_to_disk(str(tmp_path / "data"))
    args = Args(
        arms=("bleuberi",),
        warm_start_steps=200,
        dataset_name=str(tmp_path / "data"),
        group_column=None,
        pool_size=200,
        num_examples=100,
        num_eval=50,
        steps=25,
        learning_rate=3e-4,
        max_completion_length=10,
    )
    results = main(args)
    assert results["bleuberi"]["bleu"] > results["start"]["bleu"] + 0.05
    lines = [json.loads(line) for line in (run_folder(runs_in_tmp) / "metrics.jsonl").open()]
    rewards = [line["reward"] for line in lines if line.get("arm") == "bleuberi" and "reward" in line]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5])


def test_real_path_local_model_and_dataset(tmp_path, runs_in_tmp):
    from shared.lm import build_tiny_lm

    model, tokenizer = build_tiny_lm(seed=5)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = [
        {"prompt": f"copy : {x} {y}", "reference": f"{x} {y}", "reference2": f"{x} , {y}", "source": s}
        for x, y, s in zip("abcdefghijkl" * 3, "bcdefghijkla" * 3, ["s1", "s2"] * 18)
    ]
    rows[0]["reference2"] = ""  # excluded: a row needs all of its references
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "data"))
    args = Args(
        model_name=str(tmp_path / "model"),
        dataset_name=str(tmp_path / "data"),
        group_column="source",
        reference_columns=("reference", "reference2"),
        arms=("bleuberi", "sft-hard"),
        num_iterations=2,
        **{**TINY, "num_eval": 8},
    )
    results = main(args)
    assert set(results["bleuberi"]["groups"]) == {"s1", "s2"}
    assert (run_folder(runs_in_tmp) / "summary.md").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(batch_size=18, num_generations=4), "multiple of --num-generations"),
        (dict(num_generations=1, batch_size=16), "groups of at least 2"),
        (dict(learning_rate=0.0), "--learning-rate"),
        (dict(learning_rate=-1e-4), "--learning-rate"),
        (dict(micro_batch_size=5), "--micro-batch-size"),
        (dict(model_name="nobody/no-such-model-xyz"), "cannot load"),
        (dict(lora_r=-1), "--lora-r"),
        (dict(lora_alpha=0.0), "--lora-alpha"),
        (dict(generation_batch_size=0), "--generation-batch-size"),
        (dict(dtype="fp16", cuda=False), "fp16 needs a GPU"),
        (dict(dtype="float8"), "--dtype"),
    ],
)
def test_bad_options_fail_fast(change, message, runs_in_tmp):
    with pytest.raises(SystemExit, match=message):
        main(Args(**{**TINY, **change}))
    assert not runs_in_tmp.exists() or not any(runs_in_tmp.iterdir())  # nothing left as if it were a result


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"prompt": ["copy : a b"] * 40, "answer": ["a b"] * 40}, "lacks the column"),
        ({"prompt": ["copy : a b"] * 40, "reference": [""] * 20 + ["  "] * 20}, "non-empty references"),
    ],
)
def test_bad_datasets_fail_fast(columns, message, tmp_path, runs_in_tmp):
    Dataset.from_dict(columns).save_to_disk(str(tmp_path / "data"))
    with pytest.raises(SystemExit, match=message):
        main(Args(dataset_name=str(tmp_path / "data"), model_name="tiny", **TINY))
    assert not runs_in_tmp.exists() or not any(runs_in_tmp.iterdir())


# real models: micro-batches, precision, memory -------------------------------------------------------------------
def grpo_batch():
    """8 sampled completions of 4 prompts (groups of 2) with random rewards, a reference and a sampling policy
    away from the policy (so the KL term, the ratio and its clip all act)."""
    from shared.lm import build_tiny_lm, completion_logprobs, sample

    model, tokenizer = build_tiny_lm(seed=8)
    reference, _ = build_tiny_lm(seed=9)
    torch.manual_seed(0)
    prompts = ["copy : a b", "sort : c a b d e f g", "reverse : a b c", "dedup : a a b"]
    out = sample(model, tokenizer, prompts, num_samples=2, max_new_tokens=6)
    lengths = torch.tensor([6, 2, 4, 1, 5, 3, 6, 2])  # completions of different lengths: token normalisation matters
    mask = (torch.arange(6)[None, :] < lengths[:, None]).long()  # [8, 6]
    completion_ids = out.completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    inputs = (out.prompt_ids, out.prompt_mask, completion_ids, mask)
    advantages = group_advantages(torch.randn(8), 2)
    with torch.no_grad():
        ref_logp = completion_logprobs(reference, *inputs)[0]
        old_logp = completion_logprobs(model, *inputs)[0] + 0.3 * torch.randn(mask.shape)
    return model, inputs, old_logp, ref_logp, advantages


def gradients(model):
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_micro_batches_give_the_full_batch_gradient(loss_type):
    """The same batch as 1 x 8, 4 x 2 and 8 x 1 gives the gradient of one full-batch grpo_loss (1e-5)."""
    from shared.lm import completion_logprobs
    from shared.precision import setup_precision

    model, inputs, old_logp, ref_logp, advantages = grpo_batch()
    precision = setup_precision("fp32", cuda=False)
    logp = completion_logprobs(model, *inputs)[0]
    full = grpo_loss(logp, old_logp, ref_logp, advantages, inputs[3], 0.04, 0.2, loss_type, 6)
    full.backward()
    expected = gradients(model)
    for micro_batch_size in (8, 2, 1):
        args = Args(micro_batch_size=micro_batch_size, loss_type=loss_type, max_completion_length=6)
        _, _, loss = bleuberi.accumulate_grpo_gradients(model, inputs, old_logp, ref_logp, advantages, args, precision)
        assert loss == pytest.approx(full.item(), abs=1e-6)
        for ours, theirs in zip(gradients(model), expected):
            assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), micro_batch_size
    # the control: normalising bnpo within each micro-batch (TRL's bnpo) gives another gradient at 4 x 2
    if loss_type == "bnpo":
        per_micro = sum(
            grpo_loss(logp[mb], old_logp[mb], ref_logp[mb], advantages[mb], inputs[3][mb], 0.04, 0.2, "bnpo", 6) / 4
            for mb in torch.arange(8).split(2)
        )
        assert per_micro.item() != pytest.approx(full.item(), abs=1e-4)


def test_sft_micro_batches_give_the_mean_cross_entropy_and_its_gradient():
    from shared.lm import build_tiny_lm
    from shared.precision import setup_precision
    from shared.warmstart import sft_batch, sft_loss, sft_parts

    model, tokenizer = build_tiny_lm(seed=10)
    prompts = ["copy : a b", "sort : c a b d e f g", "reverse : a b c", "dedup : a a b"] * 2
    references = ["a b", "a b c d e f g", "c b a", "a b", "a", "b c", "c", "a b c d"]
    sft_loss(model, *sft_batch(tokenizer, prompts, references)).backward()  # the warm start's own loss, one batch
    expected = gradients(model)
    expected_loss = sft_loss(model, *sft_batch(tokenizer, prompts, references)).item()
    precision = setup_precision("fp32", cuda=False)
    inputs = sft_parts(tokenizer, prompts, references)
    for micro_batch_size in (8, 2):
        loss = bleuberi.accumulate_sft_gradients(model, inputs, Args(micro_batch_size=micro_batch_size), precision)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        for ours, theirs in zip(gradients(model), expected):
            assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)
    cut = sft_parts(tokenizer, ["sort : c a b d e f g"], ["a b c d e f g"], max_target_length=3)
    assert cut[2].tolist() == [tokenizer.convert_tokens_to_ids(["a", "b", "c"])]  # cut: no EOS


def weight_distance(folder_a, folder_b) -> float:
    from shared.lm import load_causal_lm

    a = load_causal_lm(str(folder_a))[0].state_dict()
    b = load_causal_lm(str(folder_b))[0].state_dict()
    return math.sqrt(sum((a[k].float() - b[k].float()).pow(2).sum().item() for k in a))


def test_bf16_autocast_moves_the_weights_like_fp32(tmp_path, runs_in_tmp):
    """512-wide random Qwen2, lr 1e-6, 3 steps: fp32 master weights under bf16 autocast move 0.7-1.4x as far as
    fp32 training does; bf16 weights without master copies do not (their distance is the rounding of the start)."""
    from shared.lm import build_tiny_lm

    model, tokenizer = build_tiny_lm(seed=11, hidden_size=512)
    model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    options = dict(
        TINY, model_name=str(tmp_path / "start"), arms=("bleuberi",), learning_rate=1e-6, steps=3, save_model=True
    )
    # CPU bf16 matmuls are ~10x slower than fp32 here: only what three steps need
    options.update(pool_size=8, num_examples=8, num_eval=4, batch_size=8, max_completion_length=8)
    distances = {}
    for name, extra in (
        ("fp32", dict(dtype="fp32")),
        ("bf16", dict(dtype="bf16")),
        ("pure", dict(dtype="bf16", fp32_master=False)),
    ):
        main(Args(**options, **extra, exp_name=name))
        (folder,) = [f for f in runs_in_tmp.iterdir() if f"__{name}__" in f.name]
        distances[name] = weight_distance(tmp_path / "start", folder / "bleuberi")
    assert distances["fp32"] > 0
    assert 0.7 <= distances["bf16"] / distances["fp32"] <= 1.4, distances
    assert distances["pure"] / distances["fp32"] > 3, distances


def test_lora_and_gradient_checkpointing_train_adapters_only(tmp_path, runs_in_tmp):
    from peft import PeftModel

    from shared.lm import build_tiny_lm, load_causal_lm

    model, tokenizer = build_tiny_lm(seed=12)
    model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    args = Args(
        **{**TINY, "steps": 3},
        model_name=str(tmp_path / "start"),
        arms=("bleuberi", "sft-hard"),
        lora_r=4,
        lora_alpha=8,
        learning_rate=1e-2,
        gradient_checkpointing=True,
        save_model=True,
    )
    main(args)
    folder = run_folder(runs_in_tmp)
    for arm in ("bleuberi", "sft-hard"):
        assert (folder / arm / "adapter_config.json").exists()
        base = load_causal_lm(str(tmp_path / "start"))[0]
        merged = PeftModel.from_pretrained(base, str(folder / arm)).merge_and_unload()
        start = load_causal_lm(str(tmp_path / "start"))[0].state_dict()
        assert any(not torch.equal(start[k], v) for k, v in merged.state_dict().items()), arm
