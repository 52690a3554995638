"""Tests for algos/cream.py: the maths against independent values, the loop's bug signals, the real path, bad inputs."""

import json
import math
import random
import time

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from scipy.stats import kendalltau, rankdata

from algos import cream
from shared.lm import build_tiny_lm, sample

LN2 = math.log(2)


def tiny_args(**overrides) -> cream.Args:
    """The tiniest toy: one seed, two iterations of a few prompts, the cached 100-step M0 warm start."""
    base = dict(
        exp_name="test",
        num_seeds=1,
        iterations=2,
        prompts_per_iter=24,
        num_samples=3,
        num_eval=20,
        sft_steps=5,
        max_new_tokens=8,
        cuda=False,
    )
    return cream.Args(**{**base, **overrides})


def params_differ(a, b) -> bool:
    return any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------- cream_loss
def test_cream_loss_matches_hand_values():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5])
    c, beta = torch.tensor([0.8, 0.3]), 0.5
    got = cream.cream_loss(pc, pr, rc, rr, c, beta)
    # pair 0: h = (0.5) - (-1.0) = 1.5; pair 1: h = (-1.0) - (0.5) = -1.5
    for i, h in enumerate([1.5, -1.5]):
        z = beta * h
        want = c[i].item() * math.log1p(math.exp(-z)) + (1 - c[i].item()) * math.log1p(math.exp(z))
        assert got[i].item() == pytest.approx(want, abs=1e-6)
    assert got.shape == (2,)


def test_cream_loss_limits_and_equivalences():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=g) * 5 for _ in range(4))
    z = 0.1 * ((pc - rc) - (pr - rr))
    dpo = -F.logsigmoid(z)
    assert torch.allclose(cream.cream_loss(pc, pr, rc, rr, 1.0), dpo, atol=1e-6)  # C = 1: plain DPO
    assert torch.allclose(cream.cream_loss(pc, pr, rc, rr, 0.0), cream.cream_loss(pr, pc, rr, rc, 1.0), atol=1e-6)
    c = torch.rand(16, generator=g)
    smoothed = (1 - (1 - c)) * -F.logsigmoid(z) + (1 - c) * -F.logsigmoid(-z)  # cDPO, label smoothing 1 - C
    assert torch.allclose(cream.cream_loss(pc, pr, rc, rr, c), smoothed, atol=1e-6)
    assert torch.allclose(cream.cream_loss(pc, pr, rc, rr, c), F.softplus(-z) + (1 - c) * z, atol=1e-5)
    # policy = reference: ln 2 for every C (the first step of every iteration)
    assert torch.allclose(cream.cream_loss(pc, pr, pc, pr, c), torch.full((16,), LN2), atol=1e-6)


def test_cream_loss_optimum_is_sigmoid_z_equals_c():
    c, beta = 0.7, 0.1
    h_star = math.log(c / (1 - c)) / beta  # sigmoid(beta h*) = C
    chosen = torch.tensor([h_star], requires_grad=True)
    loss = cream.cream_loss(chosen, torch.zeros(1), torch.zeros(1), torch.zeros(1), c, beta).sum()
    (grad,) = torch.autograd.grad(loss, chosen)
    assert abs(grad.item()) < 1e-6
    chosen = torch.tensor([0.0], requires_grad=True)  # at h = 0: dL/ds(y+) = -beta (C - 1/2)
    loss = cream.cream_loss(chosen, torch.zeros(1), torch.zeros(1), torch.zeros(1), c, beta).sum()
    (grad,) = torch.autograd.grad(loss, chosen)
    assert grad.item() == pytest.approx(-beta * (c - 0.5), abs=1e-6)


# ---------------------------------------------------------------- consistency, Kendall tau, pairs
def test_consistency_matches_scipy_on_ordinal_ranks():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 8)
        cur = [rng.choice([0.0, 1.0, 2.0, rng.random()]) for _ in range(n)]  # many ties
        prev = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(n)]
        tau, _ = kendalltau(rankdata(cur, method="ordinal"), rankdata(prev, method="ordinal"))
        assert cream.consistency(cur, prev) == pytest.approx((tau + 1) / 2, abs=1e-12)


def test_consistency_limits():
    x = [0.3, -1.0, 2.0, 0.5, 0.1]
    assert cream.consistency(x, x) == 1.0
    assert cream.consistency(x, [-v for v in x]) == 0.0
    assert cream.consistency([1.0] * 5, [1.0] * 5) == 1.0  # ties broken by index on both sides: same order
    assert cream.consistency([1.0] * 5, [5.0, 4.0, 3.0, 2.0, 1.0]) == 0.0  # tie order vs a strict reversal
    values = {round(cream.consistency(x, random.Random(s).sample(x, 5)), 10) for s in range(50)}
    assert values <= {round(k / 10, 10) for k in range(11)}  # N = 5: steps of 0.1


def test_kendall_tau_b_matches_scipy_batched():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 4, (50, 6), generator=g).double()  # ties on both sides
    y = torch.randint(0, 3, (50, 6), generator=g).double()
    got = cream.kendall_tau(x, y)
    for i in range(50):
        want = kendalltau(x[i].numpy(), y[i].numpy()).statistic
        if math.isnan(want):
            assert math.isnan(got[i].item())
        else:
            assert got[i].item() == pytest.approx(want, abs=1e-12)


def test_select_pair():
    assert cream.select_pair([0.1, 0.9, 0.9, -2.0, -2.0]) == (1, 3)  # first index on ties, both ends
    assert cream.select_pair([2.0, 1.0]) == (0, 1)
    assert cream.select_pair([0.5, 0.5, 0.5]) is None
    chosen, rejected, keep = cream.select_pairs(torch.tensor([[1.0, 3.0, 2.0], [4.0, 4.0, 4.0]]))
    assert chosen.tolist() == [1, 0] and rejected.tolist() == [0, 0] and keep.tolist() == [True, False]


# ---------------------------------------------------------------- summed response log-probs
def test_response_logps_match_unpadded_forward():
    model, tokenizer = build_tiny_lm(seed=3)
    torch.manual_seed(0)
    out = sample(model, tokenizer, ["sort 3 1", "sort 9 8 7 6 5 4 3"], num_samples=3, max_new_tokens=6)
    for i, stop in enumerate([2, 6, 4, 1, 6, 3]):  # responses of different lengths: right padding after the stop
        out.completion_mask[i, stop:] = 0
        out.completion_ids[i, stop:] = tokenizer.pad_token_id
    assert (out.prompt_mask == 0).any()  # left padding on the shorter prompt
    got = cream.response_logps(model, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
    for i in range(6):
        prompt = out.prompt_ids[i][out.prompt_mask[i].bool()]
        response = out.completion_ids[i][out.completion_mask[i].bool()]
        logits = model(input_ids=torch.cat([prompt, response])[None]).logits[0, len(prompt) - 1 : -1]
        want = logits.log_softmax(-1).gather(-1, response[:, None]).sum()
        assert got[i].item() == pytest.approx(want.item(), abs=1e-4)


# ---------------------------------------------------------------- the loop on the toy
def test_smoke_main_bug_signals(runs_in_tmp, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = cream.main(tiny_args())
    run_dir = result["run_dir"]
    assert (run_dir / "metrics.jsonl").stat().st_size > 0 and (run_dir / "summary.md").exists()
    assert "CREAM - SRLM" in (run_dir / "summary.md").read_text()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("arm") == "cream-seed1" and "losses/loss" in m for m in metrics)
    sft_steps = [m["step"] for m in metrics if "losses/sft_loss" in m]
    assert sft_steps == [1, 2, 3, 4, 5] and {m["arm"] for m in metrics if "losses/sft_loss" in m} == {"m1-seed1"}
    first_losses = [(m["arm"], m["step"]) for m in metrics if "charts/first_loss" in m]  # one row per iteration
    assert first_losses == [(f"{arm}-seed1", t) for arm in ("srlm", "cream", "oracle") for t in (1, 2)]
    # every arm (and M0, M1) is a TensorBoard run of its own, arms/<arm>-seed<seed>/, with the same tag names
    tags = {}
    for arm in ("m0", "m1", "srlm", "cream", "oracle"):
        events = EventAccumulator(str(run_dir / "arms" / f"{arm}-seed1")).Reload()
        tags[arm] = set(events.Tags()["scalars"]) - {"charts/steps_per_sec"}  # only where a progress line printed
        assert not any(arm in tag or "seed" in tag or "_s1" in tag for tag in tags[arm]), tags[arm]
    assert tags["srlm"] == tags["cream"] == tags["oracle"]
    assert {"losses/loss", "rewards/margins", "charts/consistency", "eval/quality"} <= tags["cream"]
    assert tags["m0"] == {"eval/quality", "eval/exact_match", "eval/length"} and "losses/sft_loss" in tags["m1"]
    out = capsys.readouterr().out
    assert "M1 = SFT of M0 (seed 1): done in" in out  # the M1 warm start shows a Progress bar
    iteration_lines = [line for line in out.splitlines() if line.startswith("seed 1 | ")]
    assert len(iteration_lines) == 6 and all(len(line) <= 120 for line in iteration_lines), iteration_lines
    rows = {(r["arm"], r["t"]): r for r in result["rows"]}
    for arm in ("srlm", "cream", "oracle"):
        assert params_differ(result["models"][arm], result["models"]["m1"])
        for t in (1, 2):
            assert rows[(arm, t)]["first_loss"] == pytest.approx(LN2, abs=1e-5)  # policy = reference at step 0
    assert rows[("srlm", 1)]["C"] == rows[("cream", 1)]["C"] == rows[("oracle", 1)]["C"]  # same M1, same samples
    assert 0 < rows[("cream", 1)]["C"] < 1
    assert params_differ(result["models"]["srlm"], result["models"]["cream"])  # C < 1 changes the update


def test_rank_ref_and_dyn_change_only_what_they_should(runs_in_tmp):
    base = cream.main(tiny_args(arms=("cream",)))["rows"]
    other = cream.main(tiny_args(arms=("cream",), rank_ref="prev", consistency="dyn"))["rows"]
    by_t = lambda rows: {r["t"]: r for r in rows if r["arm"] == "cream"}  # noqa: E731
    assert by_t(base)[1]["C"] == by_t(other)[1]["C"]  # t = 1: M1 vs M0 in both readings
    assert by_t(base)[1]["greedy_quality"] != by_t(other)[1]["greedy_quality"]  # dyn: per-pair C_j
    assert by_t(base)[2]["C"] != by_t(other)[2]["C"]  # t = 2: reward vs M0 or vs M1


def test_it_learns_oracle_improves_and_srlm_lengthens(runs_in_tmp):
    result = cream.main(
        tiny_args(
            iterations=2, prompts_per_iter=256, num_samples=5, num_eval=300, sft_steps=50, arms=("srlm", "oracle")
        )
    )
    rows = {(r["arm"], r["t"]): r for r in result["rows"]}
    m1, oracle, srlm = rows[("m1", 0)], rows[("oracle", 2)], rows[("srlm", 2)]
    assert oracle["greedy_quality"] > m1["greedy_quality"] + 0.005  # true-quality pairs help
    assert srlm["len_gap"] > 0 and srlm["greedy_length"] > m1["greedy_length"]  # the self-reward favours length
    metrics = [json.loads(line) for line in (result["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    accuracies = [
        m["rewards/accuracies"] for m in metrics if m.get("arm") == "oracle-seed1" and "rewards/accuracies" in m
    ]
    assert accuracies[0] == 0 and max(accuracies[-3:]) > 0.6  # margins start at 0 and grow the right way


def test_evaluation_in_chunks_is_what_sample_chunks_give_and_a_long_one_shows_a_bar(capsys):
    """Greedy evaluation in calls of --generation-batch-size prompts scores the texts that `sample` itself gives for
    that batch size; a phase of more than PROGRESS_MIN_CALLS calls shows a Progress bar, a one-call phase none."""
    from shared.precision import setup_precision

    model, tokenizer = build_tiny_lm(seed=3)
    rng = random.Random(1)
    prompts = ["sort " + " ".join(str(rng.randrange(10)) for _ in range(rng.randint(2, 6))) for _ in range(12)]
    references = [" ".join(sorted(p.split()[1:])) for p in prompts]
    precision = setup_precision("fp32", cuda=False)
    for batch_size, shows_bar in ((1, True), (12, False)):
        texts = sample(model, tokenizer, prompts, max_new_tokens=6, greedy=True, batch_size=batch_size).texts
        capsys.readouterr()
        args = cream.Args(generation_batch_size=batch_size, max_new_tokens=6)
        got = cream.evaluate(model, tokenizer, prompts, references, args, precision, "held-out")
        assert got["quality"] == pytest.approx(sum(map(cream.quality, texts, references)) / 12)
        assert got["length"] == pytest.approx(sum(len(text.split()) for text in texts) / 12)
        assert ("evaluating held-out: done in" in capsys.readouterr().out) == shows_bar, batch_size
    assert 12 > cream.PROGRESS_MIN_CALLS


# ---------------------------------------------------------------- the real path
def save_real_world(tmp_path, n_prompts=30):
    model, tokenizer = build_tiny_lm(seed=5)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rng = random.Random(0)
    prompts = ["sort " + " ".join(str(rng.randrange(10)) for _ in range(4)) for _ in range(n_prompts)]
    Dataset.from_dict({"prompt": prompts}).save_to_disk(str(tmp_path / "prompts"))
    completions = [" ".join(sorted(p.split()[1:])) for p in prompts]
    Dataset.from_dict({"prompt": prompts, "completion": completions}).save_to_disk(str(tmp_path / "sft"))
    return model


def real_args(tmp_path, **overrides):
    real = dict(
        model_name=str(tmp_path / "model"),
        dataset_name=str(tmp_path / "prompts"),
        sft_dataset_name=str(tmp_path / "sft"),
        arms=("srlm", "cream"),
        prompts_per_iter=8,
        max_new_tokens=6,
        temperature=1.5,
    )
    return tiny_args(**{**real, **overrides})


def test_real_path_through_saved_folders(tmp_path, runs_in_tmp, monkeypatch):
    from transformers.generation.utils import GenerationMixin

    sequences_per_call = []
    generate = GenerationMixin.generate

    def spy(model, *args, **kwargs):  # every generate call: prompts x samples per prompt
        sequences_per_call.append(len(kwargs["input_ids"]) * kwargs["generation_config"].num_return_sequences)
        return generate(model, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    start = save_real_world(tmp_path)
    result = cream.main(real_args(tmp_path, generation_batch_size=6))
    # 8 prompts x N = 3 per iteration in calls of 2 prompts (6 sequences): 4 calls, 2 iterations, 2 arms
    assert sequences_per_call == [6] * 16, sequences_per_call
    assert (result["run_dir"] / "summary.md").exists()
    assert params_differ(result["models"]["m1"], start)  # SFT on the prompt/completion folder ran
    assert params_differ(result["models"]["cream"], result["models"]["m1"])
    assert all(r["first_loss"] == pytest.approx(LN2, abs=1e-5) for r in result["rows"] if r["t"] > 0)


def test_real_path_lora(tmp_path, runs_in_tmp):
    pytest.importorskip("peft")
    save_real_world(tmp_path)
    result = cream.main(real_args(tmp_path, lora_r=4, arms=("cream",)))
    policy = result["models"]["cream"]
    assert type(policy).__name__ == "Qwen2ForCausalLM"  # the adapter was merged back
    assert params_differ(policy, result["models"]["m1"])
    assert all(r["first_loss"] == pytest.approx(LN2, abs=1e-5) for r in result["rows"] if r["t"] > 0)


# ---------------------------------------------------------------- bad inputs fail early
def expect_failure(args, *words):
    start = time.time()
    with pytest.raises(SystemExit) as error:
        cream.main(args)
    assert time.time() - start < 10
    message = str(error.value).lower()
    assert message.startswith("error:") and all(w in message for w in words), message


def test_bad_options_fail_early(tmp_path):
    for flag in ("learning_rate", "sft_learning_rate", "m0_learning_rate"):
        for rate in (0.0, -1e-6, float("nan")):
            expect_failure(tiny_args(**{flag: rate}), flag.replace("_", "-"), "positive finite")
    expect_failure(tiny_args(m0_corrupt_rate=1.5), "m0-corrupt-rate", "[0, 1]")
    expect_failure(tiny_args(m0_batch_size=0), "m0-batch-size")
    for rank_ref in ("m0", "prev"):  # M1 = M0: every t = 1 self-reward is 0 under both readings
        expect_failure(tiny_args(sft_dataset_name=None, rank_ref=rank_ref), "m1 = m0", "--sft-dataset-name")
    expect_failure(tiny_args(sft_steps=0, sft_epochs=0), "m1 = m0")
    expect_failure(tiny_args(micro_batch_size=0), "micro-batch-size")
    expect_failure(tiny_args(generation_batch_size=0), "generation-batch-size")
    expect_failure(tiny_args(num_samples=1), "num-samples", "at least 2")
    expect_failure(tiny_args(beta=0.0), "beta")
    expect_failure(tiny_args(fixed_c=1.5), "fixed-c", "[0, 1]")
    expect_failure(tiny_args(iterations=0), "iterations")
    expect_failure(tiny_args(arms=("cream", "cream")), "arms")
    expect_failure(tiny_args(model_name="no-such-org/no-such-model"), "no-such-org/no-such-model")


def test_bad_data_fails_early(tmp_path):
    Dataset.from_dict({"question": ["sort 1 2"] * 50}).save_to_disk(str(tmp_path / "noprompt"))
    expect_failure(tiny_args(dataset_name=str(tmp_path / "noprompt")), "prompt")
    Dataset.from_dict({"prompt": ["sort 2 1"] * 10}).save_to_disk(str(tmp_path / "few"))
    expect_failure(tiny_args(dataset_name=str(tmp_path / "few")), "fewer than", "2 x 24")
    expect_failure(tiny_args(dataset_name=str(tmp_path / "few"), prompts_per_iter=4, arms=("oracle",)), "reference")
    Dataset.from_dict({"prompt": ["sort 2 1"] * 10}).save_to_disk(str(tmp_path / "sft_no_completion"))
    expect_failure(tiny_args(sft_dataset_name=str(tmp_path / "sft_no_completion")), "completion")


def test_bad_maths_inputs_fail():
    x = torch.zeros(3)
    for bad in (1.2, -0.1, torch.tensor([0.5, 1.5, 0.2])):
        with pytest.raises(SystemExit, match="consistency must lie in"):
            cream.cream_loss(x, x, x, x, bad)
    with pytest.raises(SystemExit, match="beta must be > 0"):
        cream.cream_loss(x, x, x, x, 0.5, beta=-1.0)
    with pytest.raises(SystemExit, match="length >= 2"):
        cream.consistency([1.0], [1.0])
    with pytest.raises(SystemExit, match="equal length"):
        cream.consistency([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(SystemExit, match="finite"):
        cream.select_pair([1.0, float("nan")])


# ---------------------------------------------------------------- real models: micro-batches, precision
def dpo_pairs():
    """8 pairs (16 sampled responses of 4 prompts, of different lengths), a reference away from the policy and a
    different C per pair, so that every pair has its own weight in the gradient."""
    from shared.precision import setup_precision

    model, tokenizer = build_tiny_lm(seed=8)
    reference, _ = build_tiny_lm(seed=9)
    torch.manual_seed(0)
    samples = sample(model, tokenizer, ["sort 3 1", "sort 9 8 7 6 5 4 3", "sort 5 2", "sort 1 0 2"], 4, 6)
    for row, stop in enumerate([6, 2, 4, 1, 5, 3, 6, 2, 1, 4, 6, 5, 2, 2, 3, 6]):
        samples.completion_mask[row, stop:] = 0
        samples.completion_ids[row, stop:] = tokenizer.pad_token_id
    chosen_rows, rejected_rows = torch.arange(0, 16, 2), torch.arange(1, 16, 2)  # [8], [8]
    precision = setup_precision("fp32", cuda=False)
    ref_chosen = cream.score_all(reference, samples, chosen_rows, 5, precision).float()  # [8] no gradient
    ref_rejected = cream.score_all(reference, samples, rejected_rows, 5, precision).float()  # [8]
    assert not ref_chosen.requires_grad and all(p.grad is None for p in reference.parameters())
    c = torch.linspace(0.2, 1.0, 8)
    return model, samples, chosen_rows, rejected_rows, ref_chosen, ref_rejected, c, precision


def gradients(model):
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def test_micro_batches_give_the_full_batch_dpo_gradient():
    """1 x 8, 4 x 2 and 3 + 3 + 2 pairs per forward give the loss and gradient of one full-batch mean (1e-5)."""
    model, samples, chosen_rows, rejected_rows, ref_chosen, ref_rejected, c, precision = dpo_pairs()
    batch = cream.rows_of(samples, torch.cat([chosen_rows, rejected_rows]))
    policy_chosen, policy_rejected = cream.response_logps(model, *batch).chunk(2)  # [8], [8]
    per_pair = cream.cream_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, c, beta=1.0)  # [8]
    full = per_pair.mean()
    full.backward()
    expected = gradients(model)
    for micro_batch_size in (8, 2, 3):
        args = cream.Args(micro_batch_size=micro_batch_size, beta=1.0)  # beta 1: losses far from ln 2
        loss, margins = cream.accumulate_dpo_gradients(
            model, samples, chosen_rows, rejected_rows, ref_chosen, ref_rejected, c, args, precision
        )
        assert loss == pytest.approx(full.item(), abs=1e-6)
        want_margins = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
        assert torch.allclose(margins, want_margins.detach(), atol=1e-5)
        for ours, theirs in zip(gradients(model), expected):
            assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), micro_batch_size
    # the control: a mean within each micro-batch of 3 + 3 + 2 pairs, averaged, is another loss
    per_micro = sum(per_pair[mb].mean() for mb in torch.arange(8).split(3)) / 3
    assert abs(per_micro.item() - full.item()) > 1e-3, (per_micro.item(), full.item())


def weight_distance(folder_a, folder_b) -> float:
    from shared.lm import load_causal_lm

    a = load_causal_lm(str(folder_a))[0].state_dict()
    b = load_causal_lm(str(folder_b))[0].state_dict()
    return math.sqrt(sum((a[k].float() - b[k].float()).pow(2).sum().item() for k in a))


def test_bf16_autocast_moves_the_weights_like_fp32(tmp_path, runs_in_tmp):
    """512-wide random Qwen2 at CREAM's lr 1e-6 (1 SFT and 2 soft-label DPO steps): fp32 master weights
    under bf16 autocast move 0.7-1.4x as far as fp32 training does; bf16 weights without master copies do not
    (their distance is the rounding of the start)."""
    from safetensors.torch import load_file

    save_real_world(tmp_path)
    model, tokenizer = build_tiny_lm(seed=11, hidden_size=512)
    model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    # the fixed arm (C = 0.9): fp32 and bf16 runs sample different responses, so their consistency C differs, and
    # C = 0.5 would make the first DPO gradient 0; a fixed C trains both on the same label weight
    options = dict(model_name=str(tmp_path / "start"), arms=("fixed",), iterations=1, prompts_per_iter=4)
    options.update(num_samples=2, max_new_tokens=4, num_sft_examples=8, sft_steps=1, sft_batch_size=2)
    options.update(dpo_batch_size=2, micro_batch_size=2, learning_rate=1e-6, sft_learning_rate=1e-6, save_model=True)
    distances = {}
    for name, extra in (
        ("fp32", dict(dtype="fp32")),
        ("bf16", dict(dtype="bf16")),
        ("pure", dict(dtype="bf16", fp32_master=False)),
    ):
        result = cream.main(real_args(tmp_path, **options, **extra, exp_name=name))
        assert result["rows"][-1]["kept_pairs"] == 4
        saved = result["run_dir"] / "model_fixed_s1"
        weights = load_file(str(saved / "model.safetensors"))
        assert {w.dtype for w in weights.values()} == {torch.bfloat16 if name == "pure" else torch.float32}
        distances[name] = weight_distance(tmp_path / "start", saved)
    assert distances["fp32"] > 0
    assert 0.7 <= distances["bf16"] / distances["fp32"] <= 1.4, distances
    assert distances["pure"] / distances["fp32"] > 3, distances
