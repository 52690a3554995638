"""AMA: the ratio maths against hand values, the merge against its limits, the pipeline end to end, bad inputs."""

import copy
import json
import math
import time

import pytest
import torch

from algos import ama
from shared.lm import build_tiny_lm
from shared.warmstart import sft_batch, sft_loss

TINY = dict(
    num_layers=3,
    hidden_size=32,
    sft_steps=200,
    sft_batch_size=32,
    rsf_iterations=5,
    rsf_learning_rate=5e-3,
    rsf_prompts=64,
    rsf_samples=4,
    num_d_samples=96,
    num_d_keep=48,
    pre_weights=(0.0, 0.5, 1.0),
    partwise_pre_weights=(1.0,),
    mean_pre_weights=(0.4,),
    num_eval=64,
    batch_size=8,
    epochs=3,
    learning_rate=0.1,
    reg_coef=0.0,  # the L1 term has a dead zone: on this barely trained model it would pin gamma at gbar
)


def tiny_args(tmp_path, **overrides):
    return ama.Args(**{**TINY, "cache_dir": str(tmp_path / "cache"), **overrides})


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """One tiny end-to-end run shared by the smoke, learning and real-path tests."""
    import shared.runs

    root = tmp_path_factory.mktemp("toy")
    saved, shared.runs.RUNS_DIR = shared.runs.RUNS_DIR, root / "runs"
    try:
        out = ama.main(tiny_args(root))
    finally:
        shared.runs.RUNS_DIR = saved
    return root, out


# ---------------------------------------------------------------- maths


def test_group_ratios_hand_values_and_mean():
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    logits = torch.tensor([2.0, -1.0])
    lifted = [sig(2.0) + 0.2, sig(-1.0) + 0.2]
    expected = [0.3 * 2 * v / sum(lifted) for v in lifted]
    assert torch.allclose(ama.group_ratios(logits, 0.3, 0.2), torch.tensor(expected), atol=1e-6)
    for _ in range(5):  # the mean constraint holds exactly for any logits
        ratios = ama.group_ratios(torch.randn(7) * 5, 0.25, 0.2)
        assert ratios.mean().item() == pytest.approx(0.25, abs=1e-6)
    # init s = logit(gbar): every group at gbar (plain averaging)
    init = ama.group_ratios(torch.full((3,), math.log(0.2 / 0.8)), 0.2, 0.2)
    assert torch.allclose(init, torch.full((3,), 0.2))
    # the range for K = 3, eps = 0.2 (paper Eq. 11 with the factor K): [0.23, 2.25] x gbar at saturated logits
    hi = ama.group_ratios(torch.tensor([40.0, -40.0, -40.0]), 1.0, 0.2)
    assert hi[0].item() == pytest.approx(3 * 1.2 / 1.6, abs=1e-5) and hi[1].item() == pytest.approx(3 * 0.2 / 1.6)


def test_layer_groups_official_splits_and_blocks():
    assert ama.layer_groups(26, "block3") == [0] * 8 + [1] * 8 + [2] * 10  # OpenLLaMA-3B
    assert ama.layer_groups(32, "block3") == [0] * 11 + [1] * 10 + [2] * 11  # Mistral-7B
    assert ama.layer_groups(6, "block3") == [0, 0, 1, 1, 2, 2]  # the toy: equal thirds
    assert ama.layer_groups(16, "block3") == [0] * 5 + [1] * 5 + [2] * 6  # 8/16 would leave group 2 empty
    assert ama.layer_groups(10, "block4") == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]  # remainder to the last block
    assert ama.layer_groups(5, "layerwise") == [0, 1, 2, 3, 4]
    with pytest.raises(SystemExit, match="exceed"):
        ama.layer_groups(6, "block9")
    with pytest.raises(SystemExit, match="block3, block<N>"):
        ama.layer_groups(6, "thirds")


def test_regulariser_weights_and_l1():
    w = ama.regulariser_weights(26, centre=13)
    assert w[13].item() == 25.0 and w[0].item() == pytest.approx(25 / 14) and w[25].item() == pytest.approx(25 / 13)
    assert torch.equal(ama.regulariser_weights(6), 25 / (torch.tensor([3, 2, 1, 0, 1, 2.0]) + 1))
    reg = ama.l1_regulariser(torch.tensor([0.1, 0.3]), 0.2, [0, 0, 1], torch.tensor([1.0, 2.0, 4.0]))
    assert reg.item() == pytest.approx(1 * 0.1 + 2 * 0.1 + 4 * 0.1)
    assert ama.l1_regulariser(torch.full((2,), 0.2), 0.2, [0, 1], torch.ones(2)).item() == 0.0


def test_merge_linear_limits_and_value():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.equal(ama.merge_linear(a, b, torch.tensor(1.0)), a)
    assert torch.equal(ama.merge_linear(a, b, torch.tensor(0.0)), b)
    assert torch.allclose(ama.merge_linear(a, b, torch.tensor(0.25)), 0.25 * a + 0.75 * b)
    a16, b16 = a.bfloat16(), (a + 0.01 * torch.randn(5, 4)).bfloat16()  # bf16 weights: merged in fp32, ends exact
    for gamma, end in ((1.0, a16), (0.0, b16)):
        merged = ama.merge_linear(a16, b16, torch.tensor(gamma))
        assert merged.dtype == torch.float32 and torch.equal(merged, end.float())
    half = ama.merge_linear(a16, b16, torch.tensor(0.5))
    assert torch.allclose(half.double(), 0.5 * a16.double() + 0.5 * b16.double(), rtol=1e-6, atol=1e-7)
    double = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    ratio = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda r, x, y: ama.merge_linear(x, y, r), (ratio, *[t.requires_grad_() for t in double])
    )


@pytest.mark.parametrize("relative_delta", [1e-2, 1e-3])
def test_ratio_gradient_for_bf16_weights_matches_fp64(relative_delta):
    """d/d(gamma) of a loss through a 512 x 512 bf16 merge against the same bf16 values merged in fp64. The weights'
    own dtype would give mostly rounding (checked below: the old bf16 formula is far off or exactly 0)."""
    generator = torch.Generator().manual_seed(0)
    w_post = (torch.randn(512, 512, generator=generator) * 0.02).bfloat16()
    delta = torch.randn(512, 512, generator=generator) * 0.02 * relative_delta
    w_pre = (w_post.float() + delta).bfloat16()  # an RLHF delta ~1 % (0.1 %) of the weights
    upstream = torch.randn(512, 512, generator=generator)  # dL/dW from the layers above

    def ratio_gradient(merge, w0, w1, dtype):
        ratio = torch.tensor(0.2, dtype=dtype, requires_grad=True)
        (merge(w0, w1, ratio).to(upstream.dtype) * upstream).sum().backward()
        return ratio.grad.double().item()

    reference = (upstream.double() * (w_pre.double() - w_post.double())).sum().item()  # fp64, exact W values
    assert ratio_gradient(lambda x, y, r: x * r + y * (1 - r), w_pre.double(), w_post.double(), torch.float64) == (
        pytest.approx(reference, rel=1e-9)
    )
    ours = ratio_gradient(ama.merge_linear, w_pre, w_post, torch.float32)
    assert ours == pytest.approx(reference, rel=1e-4)
    old = ratio_gradient(lambda x, y, r: r * x + (1 - r) * y, w_pre, w_post, torch.float32)  # merged in bf16
    assert abs(old - reference) > 0.02 * abs(reference)  # measured: 3.5 % off at a 1 % delta, exactly 0 at 0.1 %


def test_hypervolume_by_hand():
    assert ama.hypervolume([(1, 3), (2, 2), (3, 1)], (0, 0)) == pytest.approx(3 + 2 + 1)
    assert ama.hypervolume([(2, 2), (1, 1)], (0, 0)) == pytest.approx(4)  # a dominated point adds nothing
    assert ama.hypervolume([(2, 2), (-1, 5)], (0, 0)) == pytest.approx(4)  # below the reference: ignored
    assert ama.hypervolume([], (0, 0)) == 0.0


def tiny_pair(**config):
    pre, tok = build_tiny_lm(seed=0, num_layers=3, hidden_size=32, **config)
    post, _ = build_tiny_lm(seed=1, num_layers=3, hidden_size=32, **config)
    return pre.requires_grad_(False), post.requires_grad_(False), tok


def test_merger_slots_and_gradients_reach_only_the_logits():
    pre, post, tok = tiny_pair()
    theta0 = {n: p.clone() for n, p in pre.named_parameters()}
    theta = {n: p.clone() for n, p in post.named_parameters()}
    merger = ama.Merger(pre, post)
    assert merger.linears_per_layer == [7, 7, 7]
    groups = ama.layer_groups(3, "block3")
    init = ama.group_ratios(torch.full((3,), math.log(0.3 / 0.7)), 0.3, 0.2)
    ma = merger.merged(merger.ma_slots(0.3))
    interp = merger.merged(merger.ama_slots(init, groups, 0.3, "interp"))
    assert all(torch.allclose(ma[n], interp[n], atol=1e-6) for n in ma)  # AMA at init + interp = MA(gbar)
    code = merger.merged(merger.ama_slots(init, groups, 0.3, "pre"))
    name = "model.embed_tokens.weight"  # tied in this model: the head rule (gbar) wins
    assert torch.allclose(code[name], 0.3 * theta0[name] + 0.7 * theta[name])
    assert code["lm_head.weight"] is code[name]  # the tied head stays one tensor
    assert torch.equal(code["model.norm.weight"], theta0["model.norm.weight"])  # non-Linear from theta0
    name = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(merger.merged(merger.ma_slots(0.0))[name], theta[name])
    assert torch.equal(merger.merged(merger.ma_slots(1.0))[name], theta0[name])
    logits = torch.zeros(3, requires_grad=True)
    slots = merger.ama_slots(ama.group_ratios(logits, 0.3, 0.2), groups, 0.3, "pre")
    merger.set_ratios(slots)
    # only the decoder's Linear tensors are merged in the graph: embeddings, norms and the head are constants
    assert post.model.layers[0].self_attn.q_proj.weight.requires_grad
    assert not post.model.embed_tokens.weight.requires_grad and not post.lm_head.weight.requires_grad
    assert not post.model.norm.weight.requires_grad and not post.model.layers[0].input_layernorm.weight.requires_grad
    ids = torch.randint(5, 30, (2, 6))
    batch = (ids, torch.ones_like(ids), torch.arange(6).expand(2, 6), ids)
    ama.proxy_nll_sum(post, batch).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in list(pre.parameters()) + list(post.parameters()))
    merger.close()  # theta is back, untouched
    assert all(torch.equal(p, theta[n]) for n, p in post.named_parameters())
    assert type(post.lm_head) is torch.nn.Linear and post.lm_head.weight is post.model.embed_tokens.weight


def test_micro_batches_and_checkpointing_give_the_full_batch_gradient():
    """1 x 8 = 4 x 2 for the slot-ratio gradient; gradient checkpointing (the merge recomputed) gives it too."""
    pre, post, tok = tiny_pair()
    merger = ama.Merger(pre, post)
    prompts, texts = [f"topic t{i % 4}" for i in range(8)], ["a b c d", "e f", "g h i", "j"] * 2
    batch = next(ama.proxy_batches(tok, prompts, texts, ama.Args(batch_size=8), "cpu", torch.Generator()))
    slots = merger.ama_slots(torch.tensor([0.1, 0.3, 0.5]), [0, 1, 2], 0.3, "pre")
    nll, full = ama.accumulate_proxy_gradient(merger, slots, batch, micro_batch_size=8)
    nll_micro, micro = ama.accumulate_proxy_gradient(merger, slots, batch, micro_batch_size=2)
    assert full[:3].abs().min() > 0 and torch.equal(full[3:], torch.zeros(len(full) - 3))
    assert nll_micro == pytest.approx(nll, rel=1e-5) and torch.allclose(micro, full, rtol=1e-4, atol=1e-7)
    post.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    post.train()
    _, checkpointed = ama.accumulate_proxy_gradient(merger, slots, batch, micro_batch_size=4)
    assert torch.allclose(checkpointed, full, rtol=1e-4, atol=1e-7)


def test_evaluation_merges_once_and_save_writes_the_merge(tmp_path, monkeypatch):
    pre, post, tok = tiny_pair()
    merger = ama.Merger(pre, post)
    slots = merger.ama_slots(torch.tensor([0.1, 0.3, 0.5]), [0, 1, 2], 0.3, "interp")
    calls = []
    forward = ama.Interpolation.forward
    monkeypatch.setattr(ama.Interpolation, "forward", lambda self, w: calls.append(self.slot) or forward(self, w))
    ids = torch.randint(5, 30, (2, 6))
    with merger.evaluation(slots) as model:
        first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert len(calls) == len(merger.slot) and torch.equal(first, second)  # every tensor merged once, not per call
    monkeypatch.undo()
    merger.save(tmp_path / "merged", slots, tok)
    saved = ama.load_causal_lm(str(tmp_path / "merged"))[0]
    assert torch.allclose(saved(input_ids=ids).logits, first, atol=1e-6)


class StepLog:
    """Stands in for the RunLogger: keeps the (arm, step) of every logged row."""

    def __init__(self):
        self.rows = []

    def log(self, step, metrics, echo=None, arm=None):
        self.rows.append((arm, step))


AMA_TEST_SEED = 0  # the test's draw of theta0's layer 0 (at some draws, e.g. seed 5, layer 0 moves by less than 0.05)


def test_train_ama_lowers_the_proxy_nll_and_the_l1_pins_the_ratios():
    """lambda = 0: the proxy NLL of D falls and the ratios spread; a large lambda: the L1 dead zone holds them."""
    torch.manual_seed(AMA_TEST_SEED)  # theta0's random layer 0 below: the same draw whatever ran before this test
    post, tok = build_tiny_lm(seed=1, num_layers=3, hidden_size=32)
    d_prompts, d_texts = ["topic t0"] * 32, ["a b c d"] * 32
    optimizer = torch.optim.Adam(post.parameters(), lr=1e-2)
    for _ in range(15):  # theta fits D, theta0 does not: the ratios matter
        loss = sft_loss(post, *sft_batch(tok, d_prompts[:8], d_texts[:8]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pre = copy.deepcopy(post)  # theta0 = theta except for layer 0's Linear weights: only group 0 should give way
    with torch.no_grad():
        for name, param in pre.named_parameters():
            if name.startswith("model.layers.0.") and "proj" in name:
                param.copy_(torch.randn_like(param) * 0.3)
    merger = ama.Merger(pre.requires_grad_(False), post.requires_grad_(False))
    groups, weights = [0, 1, 2], ama.regulariser_weights(3) * 7
    init = merger.ama_slots(ama.group_ratios(torch.full((3,), math.log(0.4 / 0.6)), 0.4, 0.2), groups, 0.4, "pre")
    spread = {}
    for reg_coef in (0.0, 10.0):
        args = ama.Args(batch_size=8, micro_batch_size=4, epochs=4, learning_rate=0.3, reg_coef=reg_coef)
        before = ama.full_nll(merger, init, tok, d_prompts, d_texts, args, "cpu")
        log = StepLog()
        ratios = ama.train_ama(merger, tok, d_prompts, d_texts, 0.4, groups, weights, args, log)
        slots = merger.ama_slots(ratios, groups, 0.4, "pre")
        after = ama.full_nll(merger, slots, tok, d_prompts, d_texts, args, "cpu")
        assert log.rows == [("ama_g0.4", step) for step in range(1, 17)]  # one arm per mean pre weight, steps 1..16
        assert ama.ama_steps(len(d_prompts), args) == 16 and ratios.mean().item() == pytest.approx(0.4, abs=1e-6)
        spread[reg_coef] = (ratios - 0.4).abs().max().item()
        if reg_coef == 0:
            assert after < before - 1e-3 and ratios[0] < ratios[1:].min() - 0.05  # layer 0 moves towards theta
    assert spread[0.0] > 0.03 and spread[10.0] < spread[0.0] / 3, spread


# ---------------------------------------------------------------- the pipeline


def test_smoke_run_writes_results_and_changes_weights(toy_run):
    _, out = toy_run
    run_dir = out["run_dir"]
    for name in ("metrics.jsonl", "summary.md", "fronts.png", "results.json", "samples.txt", "args.json"):
        assert (run_dir / name).exists(), name
    assert any(not torch.equal(a, b) for a, b in zip(out["pre"].parameters(), out["post"].parameters()))
    rows = {(r["arm"], r["pre_weight"]): r for r in out["rows"]}
    gammas = rows[("ama", 0.4)]["gammas"]
    assert sum(gammas) / len(gammas) == pytest.approx(0.4, abs=1e-3) and max(gammas) - min(gammas) > 1e-3
    assert {"ma", "ama", "ama_init", "partwise_input", "partwise_middle", "partwise_output"} <= {
        r["arm"] for r in out["rows"]
    }
    assert "hv_ama" in out and "MA reward" in (run_dir / "summary.md").read_text()
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("losses/proxy_nll" in row and row["arm"] == "ama_g0.4" for row in logged)
    # AMA never sees the ability: D holds only RLHF prompts
    assert all(line.startswith("topic t") for line in (run_dir / "samples.txt").read_text().splitlines())


def test_every_arm_is_a_tensorboard_run_of_its_own_with_the_same_tags(toy_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = toy_run
    run_dir = out["run_dir"]
    evaluated = ("ma", "partwise_input", "partwise_middle", "partwise_output", "ama_init", "ama")
    tags = {}
    for arm in ("rsf", "ama_g0.4", *evaluated):
        assert list((run_dir / "arms" / arm).glob("events.out.tfevents.*")), arm
        tags[arm] = set(EventAccumulator(str(run_dir / "arms" / arm)).Reload().Tags()["scalars"])
        assert not any(arm in tag for tag in tags[arm]), (arm, tags[arm])  # no arm baked into a tag name
    assert {"reward", "rewards/best_of_n", "losses/sft_loss", "eval/reward", "eval/tax_accuracy"} <= tags["rsf"]
    assert {"losses/proxy_nll", "losses/reg", "charts/gamma_0", "charts/gamma_1", "charts/gamma_2"} <= tags["ama_g0.4"]
    assert all({"eval/reward", "eval/tax_accuracy"} <= tags[arm] for arm in evaluated)  # one tag name for every arm
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ma_steps = [row["step"] for row in logged if row.get("arm") == "ma"]
    assert ma_steps == [0, 50, 100]  # evaluations sit at step = 100 x pre weight, shared by MA and AMA


def test_it_learns_rsf_raises_reward_and_ama_lowers_the_proxy_nll(toy_run):
    _, out = toy_run
    rows = {(r["arm"], r["pre_weight"]): r for r in out["rows"]}
    assert rows[("ma", 0.0)]["reward"] > rows[("ma", 1.0)]["reward"] + 0.3  # theta (RSF) beats theta0
    assert rows[("ama", 0.4)]["d_nll"] < rows[("ama_init", 0.4)]["d_nll"]  # AMA lowers its objective (a little here)


def test_real_path_through_saved_folders(toy_run, tmp_path):
    root, out = toy_run
    out["pre"].save_pretrained(tmp_path / "pre")
    out["post"].save_pretrained(tmp_path / "post")
    from shared.lm import build_tokenizer

    for name in ("pre", "post"):
        build_tokenizer().save_pretrained(tmp_path / name)
    args = tiny_args(
        root, pre_model=str(tmp_path / "pre"), post_model=str(tmp_path / "post"), arms=("ama",), groups="layerwise"
    )
    real = ama.main(args)
    gammas = next(r for r in real["rows"] if r["arm"] == "ama")["gammas"]
    assert len(gammas) == 3 and sum(gammas) / 3 == pytest.approx(0.4, abs=1e-3)


# ---------------------------------------------------------------- bad inputs


def test_mismatched_architectures_fail(tmp_path):
    for name, layers in (("a", 3), ("b", 2)):
        model, tok = build_tiny_lm(num_layers=layers, hidden_size=32)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    start = time.time()
    with pytest.raises(SystemExit, match="differ in architecture"):
        ama.main(tiny_args(tmp_path, pre_model=str(tmp_path / "a"), post_model=str(tmp_path / "b"), groups="block2"))
    assert time.time() - start < 20


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(mean_pre_weights=(0.0,)), r"\(0, 1\)"),
        (dict(mean_pre_weights=(1.2,)), r"\(0, 1\)"),
        (dict(groups="block9"), "exceed"),
        (dict(num_d_keep=0), "D would be empty"),
        (dict(pre_model="no-such-org/no-such-model-xyz", post_model="no-such-org/no-such-model-xyz"), "cannot load"),
        (dict(pre_model="only-one"), "both --pre-model and --post-model"),
        (dict(arms=("ma", "dpo")), "choose from"),
        (dict(ability_share=1.5), "--ability-share 1.5"),
        (dict(rsf_learning_rate=0.0), "--rsf-learning-rate 0.0: a learning rate"),
        (dict(rsf_learning_rate=-1.0), "--rsf-learning-rate -1.0"),
        (dict(rsf_learning_rate=float("nan")), "--rsf-learning-rate nan"),
        (dict(sft_learning_rate=0.0), "--sft-learning-rate 0.0"),
        (dict(sft_learning_rate=-1e-3), "--sft-learning-rate -0.001"),
        (dict(sft_learning_rate=float("nan")), "--sft-learning-rate nan"),
        (dict(learning_rate=float("nan")), "--learning-rate nan"),
        (dict(learning_rate=0.0), "--learning-rate 0.0"),
        (dict(learning_rate=-0.1), "--learning-rate -0.1"),
        (dict(micro_batch_size=0), "--micro-batch-size"),
    ],
)
def test_bad_inputs_fail_fast(tmp_path, overrides, message):
    start = time.time()
    with pytest.raises(SystemExit, match=message):
        ama.main(tiny_args(tmp_path, **overrides))
    assert time.time() - start < 20
    assert not (tmp_path / "cache").exists()  # nothing trained or cached before the failure


def test_real_path_with_dataset_folder_and_reward_model(toy_run, tmp_path):
    """A prompt folder (save_to_disk), a reward-model folder and a tax folder: the user's real-data path."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from shared.lm import build_tokenizer, load_causal_lm

    root, out = toy_run
    for name, model in (("pre", out["pre"]), ("post", out["post"])):
        model.save_pretrained(tmp_path / name)
        build_tokenizer().save_pretrained(tmp_path / name)
    rm, rm_tok = load_causal_lm("tiny", model_class=AutoModelForSequenceClassification, num_labels=1)
    rm.save_pretrained(tmp_path / "rm")
    rm_tok.save_pretrained(tmp_path / "rm")
    Dataset.from_dict({"prompt": [f"topic t{i % 4}" for i in range(40)]}).save_to_disk(str(tmp_path / "prompts"))
    Dataset.from_dict({"prompt": ["copy : a b c"] * 8, "reference": ["a b c"] * 8}).save_to_disk(str(tmp_path / "tax"))
    args = tiny_args(
        root,
        pre_model=str(tmp_path / "pre"),
        post_model=str(tmp_path / "post"),
        dataset_name=str(tmp_path / "prompts"),
        reward_model=str(tmp_path / "rm"),
        tax_dataset_name=str(tmp_path / "tax"),
        arms=("ma", "ama"),
        num_d_samples=32,
        num_d_keep=16,
    )
    real = ama.main(args)
    rows = [r for r in real["rows"] if r["arm"] == "ama"]
    assert rows and "reward" in rows[0] and "tax_accuracy" in rows[0] and "hv_ama" in real
