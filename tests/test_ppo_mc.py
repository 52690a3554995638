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
from shared.precision import setup_precision
from shared.reward_models import save_openrlhf_reward_model

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
def test_smoke_run_changes_the_policy(runs_in_tmp, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    arms = ("ppo", "ppo-clean", "ppo-m", "ppo-c")
    results = ppo_mc.main(Args(**TINY, save_model=True, arms=arms))
    (run_dir,) = runs_in_tmp.iterdir()
    assert (run_dir / "summary.md").read_text().count("| ppo") == 4
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {(row.get("arm"), key) for row in lines for key in row}  # (arm, metric): the arms share the names
    for arm in arms:
        assert {(arm, "reward"), (arm, "kl"), (arm, "losses/value_loss"), (arm, "eval/ece")} <= logged, arm
    assert ("ppo-c", "rewards/reward_avg") in logged and ("ppo", "rewards/reward_avg") not in logged
    assert {("sft", "losses/sft_loss"), ("rm", "losses/rm_loss"), ("crm", "losses/rm_loss")} <= logged
    for arm in (*arms, "sft", "rm", "crm"):  # one TensorBoard run per arm (and per fitted model), no arm in a tag
        tags = EventAccumulator(str(run_dir / "arms" / arm)).Reload().Tags()["scalars"]
        assert tags and not any(name in tag for tag in tags for name in (*arms, "crm")), (arm, tags)
    assert {"reward", "kl", "losses/policy_loss", "eval/ece"} <= set(
        EventAccumulator(str(run_dir / "arms" / "ppo-m")).Reload().Tags()["scalars"]
    )
    printed = capsys.readouterr().out.splitlines()
    progress = [line for line in printed if line.startswith("step ")]
    assert progress and all(len(line) <= 120 for line in progress), progress
    assert any(line.startswith("toy SFT: done in ") for line in printed)  # the long phases show their bars
    assert any(line.startswith("toy CRM: done in ") for line in printed)
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


def crm_pairs(n: int):
    """Rows in the official CRM data set's format: six conversations per pair (user turn + assistant turn)."""
    from datasets import Dataset

    def conversation(key, answer, confidence=None):
        reply = answer + ("" if confidence is None else f" confidence : {confidence}")  # the tiny world's words
        return [{"role": "user", "content": f"Q {key} A"}, {"role": "assistant", "content": reply}]

    rows = {column: [] for column in ppo_mc.CRM_COLUMNS}
    for key in range(n):
        for column, (answer, confidence) in zip(
            ppo_mc.CRM_COLUMNS, [("a", None), ("b", None), ("a", 9), ("a", 2), ("b", 8), ("b", 1)]
        ):
            rows[column].append(conversation(key, answer, confidence))
    return Dataset.from_dict(rows)


@pytest.fixture
def real_folders(tmp_path):
    from datasets import Dataset, DatasetDict

    policy, tokenizer = build_tiny_lm(seed=0)
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    rm, _ = load_causal_lm("tiny", model_class=AutoModelForSequenceClassification, num_labels=1)
    rm.save_pretrained(tmp_path / "rm")  # transformers' format: the head is score.weight
    tokenizer.save_pretrained(tmp_path / "rm")
    save_openrlhf_reward_model(tmp_path / "openrlhf_rm", rm, tokenizer, mean=0.25, std=2.0)  # value_head.weight
    Dataset.from_dict({"prompt": ["Q 1 A", "Q 2 A", "Q 3 A"]}).save_to_disk(tmp_path / "prompts")
    DatasetDict({"train": crm_pairs(6), "eval": crm_pairs(2)}).save_to_disk(tmp_path / "crm_pairs")
    Dataset.from_dict({"text": ["Q 1 A"]}).save_to_disk(tmp_path / "no_prompt")
    Dataset.from_dict({"prompt": ["Q 1 A", "Q 2 A"], "answer": ["a", "b"]}).save_to_disk(tmp_path / "eval")
    return tmp_path


def real_args(folders, **overrides):
    fields = dict(model_name=str(folders / "policy"), reward_model_name=str(folders / "openrlhf_rm"), steps=2)
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
        (dict(actor_learning_rate=0.0), "--actor-learning-rate must be a positive, finite learning rate"),
        (dict(critic_learning_rate=-1e-6), "--critic-learning-rate must be a positive, finite learning rate"),
        (dict(crm_learning_rate=float("nan")), "--crm-learning-rate must be a positive, finite learning rate"),
        (dict(actor_learning_rate=float("nan")), "--actor-learning-rate"),
        (dict(critic_learning_rate=float("inf")), "--critic-learning-rate"),
        (dict(sft_learning_rate=0.0), "--sft-learning-rate must be a positive"),
        (dict(rm_learning_rate=float("nan")), "--rm-learning-rate must be a positive"),
        (dict(sft_batch_size=0), "--sft-batch-size must be at least 1"),
        (dict(rm_batch_size=0), "--rm-batch-size must be at least 1"),
        (dict(dtype="fp16"), "bf16"),
        (dict(crm_dataset_name="some/pairs"), "the toy trains its own"),
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
    with pytest.raises(SystemExit, match="ppo-m on the real path needs a calibrated RM"):
        ppo_mc.main(real_args(real_folders, crm_model_name=None))
    with pytest.raises(SystemExit, match=r"lacks the column\(s\) \['chosen', 'rejected', 'chosen_high'"):
        ppo_mc.main(real_args(real_folders, crm_model_name=None, crm_dataset_name=str(real_folders / "prompts")))
    with pytest.raises(SystemExit, match="not both"):
        ppo_mc.main(real_args(real_folders, crm_dataset_name=str(real_folders / "crm_pairs")))
    assert not runs_in_tmp.exists()  # nothing half-written


# real formats: OpenRLHF reward checkpoints, the CRM data set -----------------------------------------------------
def test_openrlhf_checkpoint_scores_with_its_value_head(real_folders):
    """An OpenRLHF reward checkpoint (Qwen2 body + value_head.weight, mean / std in config.json) is scored with its
    own head and statistics: reward = (h_last . w - mean) / std, computed here from the files independently."""
    from safetensors import safe_open
    from transformers import AutoModel

    folder = real_folders / "openrlhf_rm"
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        assert "value_head.weight" in weights.keys() and "score.weight" not in weights.keys()
        value_head = weights.get_tensor("value_head.weight")  # [1, H]
    _, tokenizer = build_tiny_lm(seed=0)
    rm = ppo_mc.load_rm(str(folder), tokenizer, Args(), "cpu", torch.float32)
    assert rm.config.reward_head == "value_head.weight" and rm.config.normalize_reward
    texts = ["Q 1 A a confidence : 7 <|im_end|>", "Q 2 A b <|im_end|>"]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        rewards = ppo_mc.rm_reward(rm, ids[:, :3], mask[:, :3], ids[:, 3:], mask[:, 3:])  # [2]
        hidden = AutoModel.from_pretrained(folder)(input_ids=ids, attention_mask=mask).last_hidden_state  # [2, L, H]
    last = mask.sum(1) - 1  # right padding: the EOS
    expected = (hidden[torch.arange(2), last] @ value_head[0] - 0.25) / 2.0
    assert torch.allclose(rewards, expected, atol=1e-5)
    raw = ppo_mc.load_rm(str(folder), tokenizer, Args(normalize_reward="off"), "cpu", torch.float32)
    with torch.no_grad():
        raw_rewards = ppo_mc.rm_reward(raw, ids[:, :3], mask[:, :3], ids[:, 3:], mask[:, 3:])
    assert torch.allclose(raw_rewards, expected * 2.0 + 0.25, atol=1e-5)


def test_causal_lm_as_reward_model_fails_at_start_up(real_folders, runs_in_tmp):
    for option in ("reward_model_name", "crm_model_name", "critic_model_name"):
        with pytest.raises(SystemExit, match=r"no reward head, neither score\.weight .* nor value_head\.weight"):
            ppo_mc.main(real_args(real_folders, **{option: str(real_folders / "policy")}))
    assert not runs_in_tmp.exists()  # refused before the run folder is made


def test_crm_fine_tuned_on_the_official_columns(real_folders, runs_in_tmp):
    """--crm-dataset-name: the vanilla (OpenRLHF) RM fine-tuned into the CRM on chosen/rejected x high/low
    conversations, its six-variant eval mean / std stored, then PPO-M against it."""
    _, tokenizer = build_tiny_lm(seed=0)
    rows = crm_pairs(2)[:2]
    variants = ppo_mc.encode_crm_rows(tokenizer, rows, 64, "cpu")
    cwh_ids, cwh_mask = variants[2]
    words = tokenizer.convert_ids_to_tokens(cwh_ids[0][cwh_mask[0].bool()])
    assert words[8:12] == ["a", "confidence", ":", "9"] and words[-1] == "<|im_end|>"  # chat template, EOS last
    short = ppo_mc.encode_crm_rows(tokenizer, rows, 5, "cpu")[2][0]  # truncated: EOS forced into the last token
    assert short.shape[1] == 5 and (short[:, -1] == tokenizer.eos_token_id).all()
    options = dict(crm_model_name=None, crm_dataset_name=str(real_folders / "crm_pairs"), arms=("ppo-m",))
    ppo_mc.main(
        real_args(
            real_folders, **options, crm_batch_size=4, crm_micro_batch_size=2, crm_learning_rate=1e-2, save_model=True
        )
    )
    run_dir = next(runs_in_tmp.iterdir())
    crm = AutoModelForSequenceClassification.from_pretrained(run_dir / "crm")
    vanilla = ppo_mc.load_rm(str(real_folders / "openrlhf_rm"), tokenizer, Args(), "cpu", torch.float32)
    assert not torch.equal(crm.score.weight, vanilla.score.weight)  # the head was loaded, then trained
    assert crm.config.mean != 0.25 and crm.config.std > 0  # the CRM's own six-variant statistics
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(row.get("arm") == "crm" and "losses/rm_loss" in row for row in lines) == 2  # 6 pairs / 4 a step
    assert any(row.get("arm") == "ppo-m" and "losses/policy_loss" in row for row in lines)


# truncation, sampling, micro-batches, precision ------------------------------------------------------------------
def test_truncated_responses_eos_written_last_or_fixed_penalty():
    """A response that hits max_new_tokens: `eos` writes EOS into its last position, so the RM reads its reward at
    an EOS token [OpenRLHF process_sequences]; `penalty` keeps the tokens and replaces the score by a fixed value."""
    model, tokenizer = build_tiny_lm(seed=3)
    stop_ids, eos = ppo_mc.stop_token_ids(tokenizer, model), tokenizer.eos_token_id
    prompt_ids, prompt_mask = ppo_mc.encode_prompts(tokenizer, ["Q 1 A"] * 6)
    args = Args(max_new_tokens=3, generation_batch_size=4)
    ids, mask = ppo_mc.generate(model, prompt_ids, prompt_mask, stop_ids, args)  # random weights: mostly no stop
    ids[0] = torch.tensor([7, 8, eos])  # stops exactly at the limit: not truncated
    ids[1], mask[1] = torch.tensor([eos, tokenizer.pad_token_id, tokenizer.pad_token_id]), torch.tensor([1, 0, 0])
    ids[2:], mask[2:] = torch.tensor([9, 10, 11]), 1  # rows 2-5 hit the limit without a stop token
    eos_ids, eos_mask, truncated = ppo_mc.end_truncated(ids, mask, stop_ids, eos, "eos")
    assert truncated.tolist() == [False, False, True, True, True, True]
    assert (eos_ids[2:, -1] == eos).all() and torch.equal(eos_ids[:, :2], ids[:, :2]) and torch.equal(eos_mask, mask)
    rm, _ = load_causal_lm("tiny", model_class=AutoModelForSequenceClassification, num_labels=1, seed=4)
    with torch.no_grad():
        scores = ppo_mc.token_scores(rm, torch.cat([prompt_ids, eos_ids], 1), torch.cat([prompt_mask, mask], 1))
        rewards = ppo_mc.rm_reward(rm, prompt_ids, prompt_mask, eos_ids, eos_mask)
    assert torch.allclose(rewards[2:], scores[2:, -1])  # read at the written EOS
    kept_ids, _, truncated = ppo_mc.end_truncated(ids, mask, stop_ids, eos, "penalty")
    assert torch.equal(kept_ids, ids) and truncated.sum() == 4
    penalised = ppo_mc.apply_missing_eos_penalty(torch.arange(6.0), truncated, -1.0)
    assert penalised.tolist() == [0.0, 1.0, -1.0, -1.0, -1.0, -1.0]


def test_rollouts_sample_at_plain_temperature_unless_top_k():
    """--top-k 0 (the code's top_k=None) samples from the whole softmax; top-k 50 never leaves the 50 best tokens."""
    model, tokenizer = build_tiny_lm(seed=5)
    prompt_ids, prompt_mask = ppo_mc.encode_prompts(tokenizer, ["Q 3 A"] * 128)
    with torch.no_grad():
        logits = model(input_ids=prompt_ids[:1], attention_mask=prompt_mask[:1]).logits[0, -1]  # [V]
    top50 = set(logits.topk(50).indices.tolist())
    args = Args(max_new_tokens=1, generation_batch_size=128)
    for top_k, leaves in ((0, True), (50, False)):
        ids, _ = ppo_mc.generate(model, prompt_ids, prompt_mask, [-1], args, top_k=top_k)
        assert any(token not in top50 for token in ids[:, 0].tolist()) == leaves, top_k


def ppo_batch(seed: int = 6):
    model, tokenizer = build_tiny_lm(seed=seed)
    critic, _ = load_causal_lm("tiny", model_class=AutoModelForSequenceClassification, num_labels=1, seed=seed)
    torch.manual_seed(seed)
    prompt_ids, prompt_mask = ppo_mc.encode_prompts(tokenizer, [f"Q {k} A" for k in range(8)])
    ids = torch.randint(5, 100, (8, 4))
    mask = torch.tensor([[1, 1, 1, 1]] * 4 + [[1, 1, 0, 0]] * 2 + [[1, 0, 0, 0]] * 2)
    inputs = (prompt_ids, prompt_mask, ids, mask)
    old_logp = ppo_mc.logprobs(model, *inputs)[0].detach() + 0.1 * torch.randn(8, 4)  # ratios off 1: clipping on
    advantages, returns = torch.randn(8, 4), torch.randn(8, 4)
    old_values = ppo_mc.critic_values(critic, *inputs).detach() + 0.3 * torch.randn(8, 4)
    return model, critic, inputs, old_logp, advantages, old_values, returns


def gradients(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_micro_batches_give_the_full_batch_gradient():
    """Actor and critic: the minibatch as 1 x 8, 4 x 2 and 8 x 1 gives the loss and gradients of one full-batch
    policy_loss / value_loss (1e-5); so does the CRM loss over micro-batches of pairs."""
    model, critic, inputs, old_logp, advantages, old_values, returns = ppo_batch()
    precision = setup_precision("fp32", cuda=False)
    mask = inputs[3].float()
    full = ppo_mc.policy_loss(ppo_mc.logprobs(model, *inputs)[0], old_logp, advantages, mask)
    full.backward()
    expected = gradients(model)
    full_value = ppo_mc.value_loss(ppo_mc.critic_values(critic, *inputs), old_values, returns, mask)
    full_value.backward()
    expected_value = gradients(critic)
    for size in (8, 2, 1):
        model.zero_grad()
        critic.zero_grad()
        args = Args(micro_train_batch_size=size)
        loss, _, _ = ppo_mc.accumulate_policy_gradients(model, inputs, old_logp, advantages, args, precision, None)
        v_loss = ppo_mc.accumulate_value_gradients(critic, inputs, old_values, returns, args, precision)
        assert loss == pytest.approx(full.item(), abs=1e-6) and v_loss == pytest.approx(full_value.item(), abs=1e-6)
        for ours, theirs in zip(gradients(model) + gradients(critic), expected + expected_value):
            assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), size
    variants = [(torch.cat([inputs[0], inputs[2]], 1), torch.cat([inputs[1], inputs[3]], 1))] * 6
    variants = [(ids.roll(k, 0), m.roll(k, 0)) for k, (ids, m) in enumerate(variants)]  # six different sets of rows
    crm_grads = []
    for size in (8, 2):
        critic.zero_grad()
        loss, _ = ppo_mc.accumulate_crm_gradients(critic, variants, True, size, precision)
        crm_grads.append((loss, gradients(critic)))
    assert crm_grads[0][0] == pytest.approx(crm_grads[1][0], abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(crm_grads[0][1], crm_grads[1][1]))


def test_bf16_autocast_moves_the_weights_like_fp32(tmp_path, runs_in_tmp):
    """512-wide random Qwen2 policy, an OpenRLHF-format RM, lr 1e-6, one PPO step: fp32 master weights under bf16
    autocast move the policy 0.7-1.4x as far as fp32 does; bf16 weights without masters do not (> 3x: rounding)."""
    from benchmarks.real_shape import weight_distance

    model, tokenizer = build_tiny_lm(seed=11, hidden_size=512)
    model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    rm, _ = load_causal_lm("tiny", model_class=AutoModelForSequenceClassification, num_labels=1, seed=12)
    save_openrlhf_reward_model(tmp_path / "rm", rm, tokenizer, mean=0.0, std=1.0)
    from datasets import Dataset

    Dataset.from_dict({"prompt": [f"Q {k} A" for k in range(8)]}).save_to_disk(tmp_path / "prompts")
    options = dict(model_name=str(tmp_path / "start"), reward_model_name=str(tmp_path / "rm"), arms=("ppo",))
    options.update(dataset_name=str(tmp_path / "prompts"), steps=1, rollout_batch_size=4, num_minibatches=1)
    options.update(max_new_tokens=4, actor_learning_rate=1e-6, critic_learning_rate=1e-6, num_eval=0, save_model=True)
    distances = {}
    for name, extra in (
        ("fp32", dict(dtype="fp32")),
        ("bf16", dict(dtype="bf16")),
        ("pure", dict(dtype="bf16", fp32_master=False)),
    ):
        ppo_mc.main(Args(**options, **extra, exp_name=name))
        (folder,) = [f for f in runs_in_tmp.iterdir() if f"__{name}__" in f.name]
        distances[name] = weight_distance(tmp_path / "start", folder / "ppo")
    assert distances["fp32"] > 0
    assert 0.7 <= distances["bf16"] / distances["fp32"] <= 1.4, distances
    assert distances["pure"] / distances["fp32"] > 3, distances


def test_prompt_columns_as_strings_or_conversations():
    """A prompt column of strings and one of conversations (chat-format data sets) give the same prompt tokens."""
    _, tokenizer = build_tiny_lm(seed=0)
    strings = ppo_mc.encode_rollout_prompts(tokenizer, ["Q 1 A", "Q 22 A b"], "confidence ?", "cpu")
    turns = [[{"role": "user", "content": "Q 1 A"}], [{"role": "user", "content": "Q 22 A b"}]]
    conversations = ppo_mc.encode_rollout_prompts(tokenizer, turns, "confidence ?", "cpu")
    assert torch.equal(strings[0], conversations[0]) and torch.equal(strings[1], conversations[1])
    own_system = [[{"role": "system", "content": "confidence ?"}, {"role": "user", "content": "Q 1 A"}]]
    assert torch.equal(
        ppo_mc.encode_rollout_prompts(tokenizer, own_system, "confidence ?", "cpu")[0], strings[0][:1, 1:]
    )
