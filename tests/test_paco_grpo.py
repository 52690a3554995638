"""PaCo-GRPO: the flow SDE step, log-tame, advantages, the toy loop, the real diffusers path and bad inputs."""

import json
import math

import numpy as np
import pytest
import torch

from algos import paco_grpo as pg
from algos.paco_grpo import Args, group_advantages, log_tame, sde_step_with_logprob


def test_sde_step_worked_example():
    # by hand: x=1, v=-1, t=0.8, t'=0.6, a=0.7 -> sigma_t = 0.7 sqrt(0.8/0.2) = 1.4, mu = 1.004, std 1.4 sqrt(0.2)
    x, v = torch.ones(1, 1, 2, 2), -torch.ones(1, 1, 2, 2)
    target = torch.tensor([[[[1.2, 0.9], [1.004, 0.3]]]])
    prev, log_prob = sde_step_with_logprob(v, 0.8, 0.6, x, 0.7, prev_sample=target)
    assert torch.equal(prev, target)
    expected = torch.distributions.Normal(1.004, 1.4 * math.sqrt(0.2)).log_prob(target).mean()
    assert log_prob.shape == (1,) and torch.allclose(log_prob, expected.reshape(1), atol=1e-5)
    # sampled: the empirical mean and std of x' match mu and sigma_t sqrt(-dt)
    x, v = torch.ones(200_000, 1), -torch.ones(200_000, 1)
    prev, _ = sde_step_with_logprob(v, 0.8, 0.6, x, 0.7, generator=torch.Generator().manual_seed(0))
    assert abs(prev.mean().item() - 1.004) < 5e-3 and abs(prev.std().item() - 0.6261) < 5e-3


def test_sde_step_noise_zero_is_euler_and_t1_is_finite():
    x, v = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    prev, log_prob = sde_step_with_logprob(v, torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0.7, 0.3, 0.0]), x, 0.0)
    dt = torch.tensor([-0.2, -0.2, -0.1]).view(3, 1, 1, 1)
    assert torch.allclose(prev, x + v * dt, atol=1e-6) and torch.equal(log_prob, torch.zeros(3))
    # t = 1: sigma_next replaces t in 1 - t (Flow-GRPO's sigma_max = sigmas[1]); finite mean and log-prob
    prev, log_prob = sde_step_with_logprob(v, 1.0, 0.9, x, 0.7)
    std_dev = 0.7 * math.sqrt(1.0 / (1 - 0.9))
    mean = x + (v + std_dev**2 / 2 * x) * -0.1
    expected = torch.distributions.Normal(mean, std_dev * math.sqrt(0.1)).log_prob(prev).mean(dim=(1, 2, 3))
    assert torch.isfinite(log_prob).all() and torch.allclose(log_prob, expected, atol=1e-4)


def test_sde_step_noise_zero_matches_diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(6)
    x = torch.randn(2, 4, 8, 8)
    for i in range(6):
        v = torch.randn_like(x)
        expected = scheduler.step(v, scheduler.timesteps[i], x, return_dict=False)[0]
        ours, _ = sde_step_with_logprob(v, scheduler.sigmas[i], scheduler.sigmas[i + 1], x, 0.0)
        assert torch.allclose(ours, expected, atol=1e-5)
        x = expected


def test_log_tame_fixed_numbers():
    cons = torch.tensor([0.1, 0.9, 0.2, 0.8])  # CV = 0.35 / 0.5 = 0.7
    align = torch.tensor([0.80, 0.82, 0.79, 0.81])  # CV ~ 0.014
    cons_np, align_np = cons.numpy().astype(np.float64), align.numpy().astype(np.float64)
    assert np.std(cons_np) / np.mean(cons_np) > 0.2 > np.std(align_np) / np.mean(align_np)
    out = log_tame({"cons": cons, "align": align}, {"cons": 1.0, "align": 2.0}, 0.2)
    assert np.allclose(out.numpy(), np.log1p(cons_np) + 2.0 * align_np, atol=1e-6)
    # delta = mean: the larger-CV reward is tamed; delta above both: the plain weighted sum
    out = log_tame({"cons": cons, "align": align}, {"cons": 1.0, "align": 1.0}, "mean")
    assert np.allclose(out.numpy(), np.log1p(cons_np) + align_np, atol=1e-6)
    out = log_tame({"cons": cons, "align": align}, {"cons": 1.0, "align": 1.0}, 5.0)
    assert np.allclose(out.numpy(), cons_np + align_np, atol=1e-6)
    # equal CVs with delta = mean: neither is tamed
    out = log_tame({"a": cons, "b": cons.clone()}, {"a": 1.0, "b": 2.0}, "mean")
    assert torch.allclose(out, 3 * cons)


def test_log_tame_refuses_values_at_or_below_minus_one():
    with pytest.raises(ValueError, match="<= -1"):
        log_tame({"r": torch.tensor([-1.0, 2.0, 3.0, 0.5])}, {"r": 1.0}, 0.2)
    # a reward whose CV is below delta (here negative: negative mean) is not tamed: it passes through unchanged
    low_cv = torch.tensor([-2.0, -1.5, -1.0, -1.2])
    assert torch.equal(log_tame({"r": low_cv}, {"r": 1.0}, 0.2), low_cv)


def test_group_advantages_against_numpy():
    rewards = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.5, 3.0])
    r = rewards.numpy().astype(np.float64).reshape(2, 3)
    centred = r - r.mean(1, keepdims=True)
    assert np.allclose(group_advantages(rewards, 3, "global").numpy(), (centred / r.std()).ravel(), atol=1e-6)
    assert np.allclose(
        group_advantages(rewards, 3, "group").numpy(), (centred / r.std(1, keepdims=True)).ravel(), atol=1e-6
    )
    assert torch.equal(group_advantages(torch.ones(6), 3, "group"), torch.zeros(6))  # floor 1e-6: no NaN
    with pytest.raises(ValueError):
        group_advantages(rewards, 4)


def test_taming_happens_before_group_normalisation():
    cons = torch.tensor([0.1, 0.9, 0.2, 0.8])
    align = torch.tensor([0.80, 0.82, 0.79, 0.81])
    tamed = group_advantages(log_tame({"c": cons, "a": align}, {"c": 1.0, "a": 1.0}, 0.2), 2)
    plain = group_advantages(cons + align, 2)
    expected = torch.log1p(cons) + align
    assert torch.allclose(tamed, group_advantages(expected, 2)) and not torch.allclose(tamed, plain)


def test_ppo_clip_loss_limits():
    advantages = torch.tensor([1.0, -2.0, 9.0])
    log_prob = torch.zeros(3, requires_grad=True)
    loss, _ = pg.ppo_clip_loss(log_prob, torch.zeros(3), advantages, 1e-4, 5.0)
    assert math.isclose(loss.item(), -(1 - 2 + 5) / 3, rel_tol=1e-6)  # rho = 1, A clipped to 5
    # a ratio beyond 1 + eps with A > 0 is clipped: no gradient through it
    log_prob = torch.tensor([0.01, 0.0, 0.0], requires_grad=True)
    loss, clip = pg.ppo_clip_loss(log_prob, torch.zeros(3), torch.tensor([1.0, 1.0, 1.0]), 1e-4, 5.0)
    loss.backward()
    assert log_prob.grad[0] == 0 and log_prob.grad[1] != 0 and clip["clip_ratio/high_mean"] == pytest.approx(1 / 3)


def test_velocity_net_is_resolution_free():
    net = pg.VelocityNet()
    prompts = torch.tensor([[0, 1], [2, 3]])
    for res in (4, 8, 16):
        assert net(torch.randn(2, 1, res, 2 * res), torch.rand(2), prompts).shape == (2, 1, res, 2 * res)


TINY = dict(pretrain_steps=40, epochs=2, num_generations=4, num_prompts=2, micro_batch_size=4, eval_sets=4)


def test_smoke_main_and_parameters_change(tmp_path, monkeypatch, runs_in_tmp, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from shared.runs import PROGRESS_LINE_WIDTH, RunLogger

    monkeypatch.setenv("REWARDLAB_CACHE", str(tmp_path / "cache"))
    args = Args(arms=("paco", "sum"), num_seeds=1, **TINY)
    base, classifier, tau = pg.pretrain_toy(args)
    assert list((tmp_path / "cache" / "paco_grpo").glob("toy-*.pt"))
    pretraining = capsys.readouterr().out  # the pretraining shows a progress bar, then its time and loss
    assert "pretraining [" in pretraining and "pretraining: done in" in pretraining, pretraining

    run = RunLogger("unit", args, root=tmp_path)
    net = pg.train_toy_arm("paco", base, classifier, tau, args, run, 0.2, seed=1)[0]
    assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), base.state_dict().values()))
    capsys.readouterr()
    results = pg.main(args)
    shown = capsys.readouterr().out
    assert set(results) == {"start", "paco", "sum"}
    folder = next(runs_in_tmp.iterdir())
    assert (folder / "samples.png").stat().st_size > 1000
    summary = (folder / "summary.md").read_text()
    assert "| paco " in summary and "| sum " in summary
    assert summary.count("wall time") == 1 and "total " not in summary  # one wall time: the run logger's
    # each arm and seed is a TensorBoard run of its own, with the same tag names, none naming an arm or a seed
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    runs = ["paco-seed1", "sum-seed1"]
    assert list(dict.fromkeys(row["arm"] for row in rows)) == runs
    tags = {}
    for name in runs:
        assert list((folder / "arms" / name).glob("events.out.tfevents.*")), name
        tags[name] = set(EventAccumulator(str(folder / "arms" / name)).Reload().Tags()["scalars"])
        assert {"reward", "losses/loss", "clip_ratio/region_mean", "rewards/cons/tamed", "eval/reward"} <= tags[name]
        assert not [tag for tag in tags[name] if "paco" in tag or "sum" in tag or "seed" in tag], tags[name]
    steps_per_sec = {"charts/steps_per_sec"}  # only where a progress line was printed
    assert tags["paco-seed1"] - steps_per_sec == tags["sum-seed1"] - steps_per_sec
    # the console: a short progress line (step, arm, speed, ETA, the main metrics) and an evaluation bar per arm
    steps = [line for line in shown.splitlines() if line.startswith("step ")]
    assert all(len(line) <= PROGRESS_LINE_WIDTH for line in steps), steps
    train_row = next(row for row in rows if "losses/loss" in row)
    metrics = {k: v for k, v in train_row.items() if k not in ("step", "time", "arm")}
    console = RunLogger("console", args, root=tmp_path, show=pg.SHOWN_METRICS, total_steps=args.epochs)
    line = console.progress_line(1, pg.arm_run_name("quarter-res", 10), 123.45, metrics)
    assert len(line) <= PROGRESS_LINE_WIDTH and "ETA" in line, line
    assert " | reward=" in line and "rewards/cons/mean=" in line and "losses/" not in line, line
    assert "evaluating sum-seed1: done in" in shown and "evaluating the start: done in" in shown


def test_it_learns_consistency_at_high_resolution():
    # trained at 8 px per panel, evaluated at 16 px: the consistency reward rises (it is the high-CV reward)
    args = Args(pretrain_steps=300, epochs=6, num_generations=8, micro_batch_size=16, num_seeds=1, eval_sets=8)
    base, classifier, tau = pg.pretrain_toy(args)
    from shared.runs import RunLogger

    start = pg.evaluate_toy(base, classifier, tau, args, 8)[0]
    net = pg.train_toy_arm("paco", base, classifier, tau, args, RunLogger("learn", args), 0.2, seed=1)[0]
    after = pg.evaluate_toy(net, classifier, tau, args, 8)[0]
    assert after["r_cons"] > start["r_cons"] + 0.05, (start, after)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(noise_steps=(10,)), "noise-steps"),
        (dict(noise_steps=(-1,)), "noise-steps"),
        (dict(num_generations=1), "groups of at least 2"),
        (dict(micro_batch_size=0), "micro-batch-size"),
        (dict(sample_batch_size=0), "sample-batch-size"),
        (dict(dtype="foo"), "dtype"),
        (dict(learning_rate=float("nan")), "--learning-rate nan"),
        (dict(learning_rate=0.0), "--learning-rate 0.0"),
        (dict(learning_rate=-1e-4), "--learning-rate -0.0001"),
        (dict(pretrain_learning_rate=float("nan")), "--pretrain-learning-rate nan"),
        (dict(pretrain_learning_rate=0.0), "--pretrain-learning-rate 0.0"),
        (dict(updates_per_epoch=3), "updates-per-epoch"),
        (dict(eval_res=6), "panel side"),
        (dict(arms=("quarter-res",), eval_res=12), "panel side"),
        (dict(delta="big"), "delta"),
        (dict(rewards=("cons",), reward_weights=(1.0, 1.0)), "one weight per reward"),
        (dict(model_name="nobody/no-such-model-xyz"), "could not load"),
    ],
)
def test_bad_inputs_fail_fast(overrides, message):
    with pytest.raises(SystemExit, match=message):
        pg.main(Args(**overrides))


def build_tiny_sd3(folder):
    """A random tiny StableDiffusion3Pipeline (no T5) with a character-level CLIP tokenizer, saved to `folder`."""
    diffusers = pytest.importorskip("diffusers", reason="the real path needs diffusers")
    pytest.importorskip("peft", reason="the real path needs peft")
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    torch.manual_seed(0)
    text = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        pos_embed_max_size=16,
    )
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        shift_factor=0.06,
        scaling_factor=1.5,
    )
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(text),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


def test_real_path_tiny_sd3_pipeline(tmp_path, runs_in_tmp):
    path = build_tiny_sd3(tmp_path / "tiny_sd3")
    args = Args(
        model_name=str(path),
        load_t5=False,
        image_size=32,
        num_prompts=2,
        num_generations=4,
        micro_batch_size=4,
        epochs=2,
        num_steps=4,
        eval_steps=4,
        rewards=("consistency", "colourfulness"),
        guidance_scale=2.0,
        cuda=False,
    )
    out = pg.main(args)
    assert set(out["start"]) == {"consistency", "colourfulness"}
    assert out["lora_b_norm"] > 0  # peft starts LoRA B at 0: the update moved it
    folder = next(runs_in_tmp.iterdir())
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(math.isfinite(m["losses/loss"]) for m in metrics)
    # 12 px: not a multiple of VAE factor 2 x patch 2 = 4 at the 6 px training resolution; fails before training
    with pytest.raises(SystemExit, match="this model can take"):
        pg.main(Args(**{**args.__dict__, "image_size": 12}))


# The real path's memory: micro-batches, the CFG branch, text encoders, chunks -------------------------------------
def test_micro_batches_give_the_full_batch_update():
    """One optimizer step over 8 samples as 1 x 8, 3 + 3 + 2 (a partial last micro-batch) or 8 x 1: the same update."""
    torch.manual_seed(0)
    net = pg.VelocityNet()
    prompts = torch.tensor(pg.PROMPTS[:2]).repeat_interleave(4, 0)  # [8, 2]
    sigmas = pg.time_grid(4)
    x = torch.randn(8, 1, 4, 8)
    _, trajectory = pg.rollout(net, x, prompts, sigmas, (1,), 0.7, torch.Generator().manual_seed(1))
    advantages = torch.randn(8)
    updates = []
    for micro in (8, 3, 1):
        trained = pg.VelocityNet()
        trained.load_state_dict(net.state_dict())
        params = list(trained.parameters())
        old = pg.OldPolicy(params)
        with torch.no_grad():  # move pi_theta off pi_old, so that the ratio is not 1
            params[0].add_(0.01)
        optimizer = torch.optim.SGD(params, lr=1.0)
        args = Args(micro_batch_size=micro, updates_per_epoch=1, max_grad_norm=1e9, epsilon=1e-2)
        torch.manual_seed(2)  # the same shuffle
        pg.grpo_update(trained, params, old, optimizer, trajectory, prompts, advantages, sigmas, args)
        updates.append(torch.cat([(p - q).flatten() for p, q in zip(params, net.parameters())]))
    assert updates[0].abs().max() > 1e-3
    assert torch.allclose(updates[0], updates[1], atol=1e-6) and torch.allclose(updates[0], updates[2], atol=1e-6)


def tiny_sd3_transformer():
    diffusers = pytest.importorskip("diffusers", reason="the real path needs diffusers")
    torch.manual_seed(0)
    return diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        pos_embed_max_size=16,
    )


def test_guided_velocity_detaches_the_unconditional_branch():
    transformer = tiny_sd3_transformer()
    hidden, timestep, weights = torch.randn(2, 4, 8, 8), torch.tensor([900.0, 300.0]), torch.randn(2, 4, 8, 8)
    conditional, unconditional = (
        (torch.randn(2, 5, 16), torch.randn(2, 32)),
        (torch.zeros(2, 5, 16), torch.zeros(2, 32)),
    )
    params = list(transformer.parameters())

    def gradient(value):
        return torch.cat([g.flatten() for g in torch.autograd.grad((value * weights).sum(), params, retain_graph=True)])

    v_c = transformer(hidden, *conditional, timestep, return_dict=False)[0]
    v_u = transformer(hidden, *unconditional, timestep, return_dict=False)[0]
    w = 4.5
    detached = pg.guided_velocity(transformer, hidden, timestep, conditional, unconditional, w)
    assert torch.allclose(detached, v_u + w * (v_c - v_u), atol=1e-5)
    assert torch.allclose(gradient(detached), gradient(w * v_c), atol=1e-5)  # [flow_grpo]: grad of w v_c alone
    both = pg.guided_velocity(transformer, hidden, timestep, conditional, unconditional, w, uncond_grad=True)
    assert torch.allclose(gradient(both), gradient((1 - w) * v_u + w * v_c), atol=1e-5)
    assert not torch.allclose(gradient(detached), gradient(both), atol=1e-3)


def test_text_encoders_are_freed_after_the_prompts_are_encoded(tmp_path):
    import gc
    import weakref

    from diffusers import StableDiffusion3Pipeline

    path = build_tiny_sd3(tmp_path / "tiny_sd3")
    pipe = StableDiffusion3Pipeline.from_pretrained(str(path), text_encoder_3=None, tokenizer_3=None)
    encoders = [weakref.ref(pipe.text_encoder), weakref.ref(pipe.text_encoder_2)]
    embeds, negative, pooled, negative_pooled = pg.encode_prompts_and_free_encoders(
        pipe, ["a red fox", "a boat"], torch.device("cpu"), cfg=True, max_length=8
    )
    gc.collect()
    assert embeds.shape[0] == negative.shape[0] == pooled.shape[0] == negative_pooled.shape[0] == 2
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None and all(ref() is None for ref in encoders)
    assert pipe.transformer is not None and pipe.vae is not None


def run_paco_child(pipeline, tmp_path, generations, sample_batch, micro_batch):
    """One real-path epoch in a process of its own (benchmarks/real_shape.py's `measure`): its peak RSS in bytes."""
    from benchmarks import real_shape

    setup = (
        "--no-load-t5 --image-size=128 --train-res=half --num-steps=2 --eval-steps=1 --epochs=1 --num-prompts=2".split()
    )
    setup += "--updates-per-epoch=1 --guidance-scale=4.5 --max-sequence-length=77 --noise-steps 1".split()
    sizes = [f"--num-generations={generations}", f"--sample-batch-size={sample_batch}"]
    sizes += [f"--micro-batch-size={micro_batch}"]
    run = "--learning-rate=1e-6 --dtype=fp32 --num-threads=1 --no-cuda".split()
    argv = ["algos/paco_grpo.py", f"--model-name={pipeline}", *setup, *sizes, *run]
    name = f"g{generations}-s{sample_batch}-m{micro_batch}"
    return real_shape.measure(argv, tmp_path / name, tmp_path / f"{name}.log")["peak"]


def test_real_architecture_peak_memory_is_set_by_chunk_and_micro_batch(tmp_path):
    """SD3.5-Medium's transformer shape (MMDiT with dual-attention layers, RMS qk-norm, patch 2, 16 latent channels;
    CLIP-L and CLIP-G text encoders; 4-block VAE) at 1/12 width and 6 of 24 layers, random weights: an epoch of N = 4
    and 4N = 16 samples (2 prompts x G) with the same sampling chunk (2) and micro-batch (2) peaks within 1.25x."""
    from benchmarks import real_shape

    pipeline = real_shape.save_narrow_sd3_pipeline(tmp_path / "sd3", num_layers=6)
    peak_n = run_paco_child(pipeline, tmp_path, 2, 2, 2)
    peak_4n = run_paco_child(pipeline, tmp_path, 8, 2, 2)
    assert peak_4n <= 1.25 * peak_n, (peak_n / 2**20, peak_4n / 2**20)


def test_flags_are_named_for_what_they_set():
    import tyro

    argv = ["--no-load-t5", "--learning-rate", "1e-5", "--pretrain-learning-rate", "1e-3", "--num-threads", "2"]
    args = tyro.cli(Args, args=argv)
    assert (args.load_t5, args.learning_rate, args.pretrain_learning_rate, args.num_threads) == (False, 1e-5, 1e-3, 2)
    assert tyro.cli(Args, args=[]).load_t5  # T5 loads unless asked not to
    for old in (["--lr", "1e-5"], ["--no-t5"]):
        with pytest.raises(SystemExit):
            tyro.cli(Args, args=old)
