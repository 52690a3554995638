"""Tests of algos/ppo_mc.py: the parser, PPO-C, the CRM loss, GAE and the PPO losses, netcal ECE, AUC, runs."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from algos import ppo_mc
from algos.ppo_mc import (
    Args,
    calibrated_rm_loss,
    expected_calibration_error,
    gae,
    parse_confidence,
    ppo_c_adjust,
    strip_confidence,
)
from shared.lm import build_tiny_lm, build_tokenizer, load_causal_lm

TINY = dict(steps=3, rollout_batch_size=8, num_minibatches=2, sft_steps=5, rm_steps=5, crm_steps=3)
TINY.update(eval_samples_per_key=1, eval_retries=1, num_threads=1)


# the confidence parser and stripper -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is B.\nConfidence: 7", 0.7),
        ("answer\nconfidence:8/10", 0.8),  # case ignored, `/10` not read
        ("Confidence: 85", 1.0),  # clamped to 10
        ("Confidence: 0.9", 0.09),  # decimals are on the 0-10 scale
        ("Confidence: 3. Later Confidence: 9", 0.3),  # the first match
        ("Confidence: **9**", 0.5),
        ("Confidence: ten", 0.5),
        ("Confidence: -2", 0.5),
        ("no confidence here", 0.5),
    ],
)
def test_parse_confidence(text, expected):
    assert parse_confidence(text) == pytest.approx(expected)


def test_strip_confidence():
    assert strip_confidence("The answer is B.\nConfidence: 7/10.") == "The answer is B."
    assert strip_confidence("x Confidence: 8, more confidence:2!! end") == "x more end"
    assert strip_confidence("nothing to strip  ") == "nothing to strip"
    tokenizer = build_tokenizer()  # the toy's view: `confidence :` tokens, EOS kept, re-tokenised without them
    ids, mask = ppo_mc.strip_and_retokenise(tokenizer, ["a Confidence: 7 <|im_end|>", "b"], True, "cpu")
    assert tokenizer.convert_ids_to_tokens(ids[0][mask[0].bool()]) == ["a", "<|im_end|>"]
    assert tokenizer.convert_ids_to_tokens(ids[1][mask[1].bool()]) == ["b", "<|im_end|>"]  # " " + EOS added


# PPO-C -------------------------------------------------------------------------------------------------------------
def test_ppo_c_adjust_by_hand():
    rewards, conf = torch.tensor([1.0, -1.0, 3.0, 50.0]), torch.tensor([1.0, 0.0, 0.5, 1.0])
    adjusted, avg = ppo_c_adjust(rewards, conf, reward_avg=0.0, alpha=0.1, weight=2.0)
    assert avg == pytest.approx(0.1 * (1 - 1 + 3 + 10) / 4)  # 50 is clamped to 10 before the average
    expected = [1 + 2 * (1 - avg) * 0.5, -1 + 2 * (-1 - avg) * -0.5, 3.0, 10.0]  # last: 10 + ... clamped to 10
    assert adjusted.tolist() == pytest.approx(expected)


def test_ppo_c_limits_and_threshold():
    rewards = torch.tensor([2.0, -3.0, 0.5])
    adjusted, avg = ppo_c_adjust(rewards, torch.zeros(3), reward_avg=1.0, alpha=0.5, weight=2.0)
    assert adjusted.tolist() == pytest.approx([avg] * 3)  # c = 0 and w = 2: rhat = rbar for any answer
    assert ppo_c_adjust(rewards, torch.full((3,), 0.5), 1.0)[0].tolist() == pytest.approx(rewards.tolist())
    assert ppo_c_adjust(rewards, torch.ones(3), 1.0, weight=0.0)[0].tolist() == pytest.approx(rewards.tolist())
    threshold, avg = ppo_c_adjust(rewards, torch.tensor([1.0, 1.0, 0.0]), 0.0, 1.0, 1.0, "threshold")
    assert avg == pytest.approx(-0.5 / 3)  # alpha 1: the batch mean
    assert threshold.tolist() == pytest.approx([2 + 2 * 0.5, -3 - 3 * 0.5, 0.5 - 0.5 * 0.5])
    with pytest.raises(ValueError):
        ppo_c_adjust(rewards, torch.ones(3), 0.0, weight=-1.0)


# the calibrated RM loss --------------------------------------------------------------------------------------------
def test_calibrated_rm_loss_by_hand():
    cwh, cwl, rwh, rwl = (torch.tensor(v) for v in ([1.0, 2.0], [0.0, 3.0], [0.5, 0.0], [0.0, 1.0]))
    log_sig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    expected = -(log_sig(1) + log_sig(-1)) / 2 - (log_sig(-0.5) + log_sig(1)) / 2
    assert calibrated_rm_loss(cwh, cwl, rwh, rwl).item() == pytest.approx(expected)
    c, r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    combined = calibrated_rm_loss(cwh, cwl, rwh, rwl, c, r).item()
    assert combined == pytest.approx(expected - (log_sig(1) + log_sig(0)) / 2)


# PPO maths ---------------------------------------------------------------------------------------------------------
def test_gae_against_explicit_sum():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).float()
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b in range(3):  # A_t = sum_l (gamma lam)^l delta_{t+l} with V = r = 0 after EOS
        n = int(mask[b].sum())
        v = values[b, :n].tolist() + [0.0]
        deltas = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            expected = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
            assert advantages[b, t].item() == pytest.approx(expected, abs=1e-5)
            assert returns[b, t].item() == pytest.approx(expected + v[t], abs=1e-5)
    garbage = values + 100 * (1 - mask)  # values after EOS count as 0
    assert torch.allclose(gae(rewards, garbage, mask, gamma, lam)[0] * mask, advantages * mask)
    _, mc_returns = gae(rewards, values, mask, 1.0, 1.0)  # lambda = 1: returns = reward-to-go
    reward_to_go = (rewards * mask).flip(1).cumsum(1).flip(1)
    assert torch.allclose(mc_returns * mask, reward_to_go * mask, atol=1e-5)


def test_token_rewards_whiten_and_losses():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).float()
    logp, ref = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, 0, 0]]), torch.tensor([[-1.5, -2.0, -1.0], [-0.5, 0, 0]])
    per_token, kl = ppo_mc.token_rewards(torch.tensor([3.0, -20.0]), logp, ref, mask, beta=0.1)
    expected = torch.tensor([[-0.05, 0.0, 3 - 0.05], [-10 + 0.05, 0.0, 0.0]])  # KL 0.5, 0, 0.5 / -0.5; 3 and -10 at EOS
    assert torch.allclose(per_token, expected) and torch.allclose(kl, (logp - ref) * mask)
    white = ppo_mc.whiten(torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]]), mask)
    assert white[mask.bool()].mean().item() == pytest.approx(0, abs=1e-6)
    assert white[mask.bool()].pow(2).mean().item() == pytest.approx(1, abs=1e-5)  # population variance
    adv = torch.tensor([[1.0, -1.0, 2.0], [0.5, 7.0, 7.0]])
    assert ppo_mc.policy_loss(logp, logp, adv, mask).item() == pytest.approx(-(2 / 3 + 0.5) / 2)
    big = logp + torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # ratio e > 1.2: clipped where A > 0
    expected_row0 = -(1.2 * 1 + math.e * -1 + 1.2 * 2) / 3
    assert ppo_mc.policy_loss(big, logp, adv, mask).item() == pytest.approx((expected_row0 - 0.5) / 2, rel=1e-5)
    values, old, returns = torch.tensor([[1.0, 0, 0]]), torch.tensor([[0.0, 0, 0]]), torch.tensor([[2.0, 0, 0]])
    one = torch.tensor([[1.0, 0, 0]])  # clipped value 0.2: max((1-2)^2, (0.2-2)^2) = 3.24
    assert ppo_mc.value_loss(values, old, returns, one).item() == pytest.approx(0.5 * 3.24)


# evaluation --------------------------------------------------------------------------------------------------------
def test_ece_by_hand_with_netcal_float_edges():
    # 0.2 and 0.3 share the bin [0.2, 0.30000000000000004); separate bins would give 0.5 * 0.8 + 0.5 * 0.3 = 0.55
    assert expected_calibration_error([0.2, 0.3], [1, 0]) == pytest.approx(0.25)
    # {0.5, 0.6} share a bin, 1.0 joins 0.9 in the last (closed) bin, 0.0 is clipped to eps in the first
    conf, correct = [0.0, 0.5, 0.6, 0.9, 1.0, 0.7], [0, 1, 1, 0, 1, 1]
    expected = (1 / 6) * 0 + (2 / 6) * abs(1 - 0.55) + (2 / 6) * abs(0.5 - 0.95) + (1 / 6) * abs(1 - 0.7)
    assert expected_calibration_error(conf, correct) == pytest.approx(expected)
    assert expected_calibration_error([0.7] * 10, [1] * 7 + [0] * 3) == pytest.approx(0.0, abs=1e-12)


def test_auc_against_library():
    rng = np.random.default_rng(0)
    conf, correct = rng.integers(0, 11, 200) / 10, rng.integers(0, 2, 200)  # many ties
    try:
        from sklearn.metrics import roc_auc_score

        expected = roc_auc_score(correct, conf)
    except ImportError:
        from scipy.stats import mannwhitneyu

        expected = mannwhitneyu(conf[correct == 1], conf[correct == 0]).statistic / (
            correct.sum() * (1 - correct).sum()
        )
    assert ppo_mc.roc_auc(conf, correct) == pytest.approx(expected)
    assert math.isnan(ppo_mc.roc_auc([0.5, 0.6], [1, 1]))


def test_eval_parsing_and_imputation():
    assert ppo_mc.parse_eval_confidence("Answer: b\nConfidence: 8") == 8.0
    assert ppo_mc.parse_eval_confidence("Answer: b\nconfidence: 7.5") == 7.5  # case-sensitive: last-number rule
    assert ppo_mc.parse_eval_confidence("Answer: b\nI am 85") == 8.5  # > 10 divided by 10
    assert ppo_mc.parse_eval_confidence("Answer: b\nscore 7.3") is None  # decimal not .0 / .5
    assert ppo_mc.scale_confidences([8.0, 80.0, 200.0, None, 8.0]) == pytest.approx([0.8, 0.8, 1.0, 0.8, 0.8])
    with pytest.raises(SystemExit, match="no evaluation sample states a confidence"):
        ppo_mc.scale_confidences([None, None])


# runs --------------------------------------------------------------------------------------------------------------
def test_smoke_run_changes_the_policy(runs_in_tmp):
    results = ppo_mc.main(Args(**TINY, save_model=True, arms=("ppo", "ppo-clean", "ppo-m", "ppo-c")))
    (run_dir,) = runs_in_tmp.iterdir()
    assert (run_dir / "summary.md").read_text().count("| ppo") == 4
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/ppo-c" in row for row in lines) and any("losses/value_loss/ppo-m" in row for row in lines)
    start = AutoModelForCausalLM.from_pretrained(run_dir / "sft").state_dict()
    for arm in ("ppo", "ppo-m", "ppo-c"):
        trained = AutoModelForCausalLM.from_pretrained(run_dir / arm).state_dict()
        assert any(not torch.equal(start[k], trained[k]) for k in start), arm
    assert set(results) == {"sft", "ppo", "ppo-clean", "ppo-m", "ppo-c"}


def test_it_learns_ppo_m_lowers_confidence():
    args = Args(steps=25, sft_steps=60, rm_steps=80, crm_steps=30, arms=("ppo", "ppo-m"), eval_samples_per_key=4)
    results = ppo_mc.main(args)
    assert results["ppo"]["conf"] > results["sft"]["conf"]  # the biased RM pushes confidence up
    assert results["ppo-m"]["conf"] < results["ppo"]["conf"] - 0.1  # the CRM does not
    assert results["ppo-m"]["ece"] < results["ppo"]["ece"]


@pytest.fixture
def real_folders(tmp_path):
    from datasets import Dataset

    policy, tokenizer = build_tiny_lm(seed=0)
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    rm, _ = load_causal_lm("tiny", model_class=AutoModelForSequenceClassification, num_labels=1)
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    Dataset.from_dict({"prompt": ["Q 1 A", "Q 2 A", "Q 3 A"]}).save_to_disk(tmp_path / "prompts")
    Dataset.from_dict({"text": ["Q 1 A"]}).save_to_disk(tmp_path / "no_prompt")
    Dataset.from_dict({"prompt": ["Q 1 A", "Q 2 A"], "answer": ["a", "b"]}).save_to_disk(tmp_path / "eval")
    return tmp_path


def real_args(folders, **overrides):
    fields = dict(model_name=str(folders / "policy"), reward_model_name=str(folders / "rm"), steps=2)
    fields.update(dataset_name=str(folders / "prompts"), crm_model_name=str(folders / "rm"))
    fields.update(eval_dataset_name=str(folders / "eval"), rollout_batch_size=4, num_minibatches=2)
    fields.update(max_new_tokens=6, eval_retries=1, arms=("ppo-m", "ppo-c"))
    return Args(**{**fields, **overrides})


def test_real_path_through_folders(real_folders, runs_in_tmp):
    results = ppo_mc.main(real_args(real_folders))
    assert set(results) == {"sft", "ppo-m", "ppo-c"} and 0 <= results["ppo-c"]["conf"] <= 1
    assert results["ppo-m"]["correct"].shape == (2,)
    assert (next(runs_in_tmp.iterdir()) / "summary.md").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(weight=-1.0), "--weight"),
        (dict(alpha=1.5), "--alpha"),
        (dict(alpha=-0.1), "--alpha"),
        (dict(rollout_batch_size=10, num_minibatches=4), "must divide"),
        (dict(reward_model_name="some/rm"), "all or none"),
        (dict(max_new_tokens=6), "--max-new-tokens 5"),
        (dict(lam=1.5), "--lam"),
    ],
)
def test_bad_options_fail_fast(overrides, message):
    with pytest.raises(SystemExit, match=message):
        ppo_mc.main(Args(**overrides))


def test_bad_real_inputs_fail_fast(real_folders, runs_in_tmp):
    other, _ = load_causal_lm("tiny", model_class=AutoModelForSequenceClassification, num_labels=1)
    other.save_pretrained(real_folders / "other_rm")
    build_tokenizer(extra_words=("zzz",)).save_pretrained(real_folders / "other_rm")
    with pytest.raises(SystemExit, match="tokenizer of .* differs"):
        ppo_mc.main(real_args(real_folders, reward_model_name=str(real_folders / "other_rm")))
    with pytest.raises(SystemExit, match="lacks the column"):
        ppo_mc.main(real_args(real_folders, dataset_name=str(real_folders / "no_prompt")))
    with pytest.raises(SystemExit, match="cannot load"):
        ppo_mc.main(real_args(real_folders, model_name="no-such-org/no-such-model-ppo-mc"))
    with pytest.raises(SystemExit, match="ppo-m on the real path needs --crm-model-name"):
        ppo_mc.main(real_args(real_folders, crm_model_name=None))
    assert not runs_in_tmp.exists()  # nothing half-written
