"""Tests for algos/b2_diffurl.py: the DDIM log-prob against diffusers, the schedule, selection, the stat tracker, the
PPO loss, branch sampling, a smoke run, an "it learns" run, the real path on a tiny saved pipeline, bad inputs."""

import json
import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from algos import b2_diffurl as b2

TINY = dict(pretrain_steps=400, num_stages=3, s_min=18, s_max=20, prefixes_per_stage=32, num_seeds=1, eval_samples=256)


def sd_scheduler():
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers)")
    sched = diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    sched.set_timesteps(20)
    return sched


def test_ddim_step_matches_diffusers_and_gaussian_logprob():
    sched, toy = sd_scheduler(), b2.ToyDDIM()
    toy.set_timesteps(20)
    assert toy.timesteps.tolist() == sched.timesteps.tolist() == list(range(951, 0, -50))
    assert torch.allclose(toy.alphas_cumprod, sched.alphas_cumprod, atol=1e-6)
    torch.manual_seed(0)
    x, eps = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    for t in (951, 501, 1):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
        ref = sched.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
        mean = sched.step(eps, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        for scheduler in (sched, toy):
            prev, lp = b2.ddim_step_with_logprob(scheduler, eps, t, x, 1.0, generator=torch.Generator().manual_seed(t))
            assert torch.allclose(prev, ref, atol=1e-5)
            # independent: sigma from the closed form, log-prob from torch.distributions, mean over 100 entries
            a_t, a_p = sched.alphas_cumprod[t], sched.alphas_cumprod[max(t - 50, 0)]
            sigma = math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
            expected = torch.distributions.Normal(mean, sigma).log_prob(ref).flatten(1).mean(1)
            assert torch.allclose(lp, expected, atol=1e-4)
            assert torch.allclose(
                lp, -(noise**2).flatten(1).mean(1) / 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
            )
    # SD's schedule by hand: sigma 0.644 at 951 -> 901 and 0.0406 at 51 -> 1 (log-prob of the mean = -log sigma
    # - log(2pi)/2)
    for t, sigma in ((951, 0.644), (51, 0.0406)):
        mean = sched.step(eps, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        _, lp = b2.ddim_step_with_logprob(toy, eps, t, x, 1.0, prev_sample=mean)
        assert torch.allclose(lp + 0.5 * math.log(2 * math.pi), torch.full((3,), -math.log(sigma)), atol=2e-3)
    # per-row timesteps give the per-row results; the next state is detached
    t = torch.tensor([951, 501, 1])
    x_req = x.clone().requires_grad_()
    prev, lp = b2.ddim_step_with_logprob(toy, eps, t, x_req, 1.0, prev_sample=ref.requires_grad_())
    assert not prev.requires_grad and lp.requires_grad
    for i, ti in enumerate(t.tolist()):
        _, lpi = b2.ddim_step_with_logprob(toy, eps[i : i + 1], ti, x[i : i + 1], 1.0, prev_sample=ref[i : i + 1])
        assert torch.allclose(lp[i], lpi[0], atol=1e-6)


def test_eta_zero_fails():
    toy = b2.ToyDDIM()
    toy.set_timesteps(20)
    with pytest.raises(SystemExit, match="eta"):
        b2.ddim_step_with_logprob(toy, torch.zeros(1, 2), 951, torch.zeros(1, 2), eta=0.0)


def test_trained_step_indices_follow_the_official_schedule():
    """[code run_process.sh]: s_min 14, s_max 20, K = 100 stages; each span level holds the stages listed."""
    spans = [len(b2.trained_step_indices(k, 100, 14, 20, 20)) for k in range(100)]
    for span, (lo, hi) in zip(range(14, 21), [(0, 14), (15, 28), (29, 42), (43, 57), (58, 71), (72, 85), (86, 99)]):
        assert all(spans[k] == span for k in range(lo, hi + 1)) and (lo == 0 or spans[lo - 1] == span - 1)
    assert b2.trained_step_indices(0, 19, 2, 20, 20) == [18, 19]
    assert b2.trained_step_indices(18, 19, 2, 20, 20) == list(range(20))
    for bad in ((0, 10, 5, 4, 20), (0, 10, 2, 21, 20), (10, 10, 2, 5, 20)):
        with pytest.raises(SystemExit):
            b2.trained_step_indices(*bad)


def test_select_from_branches_asymmetric_thresholds():
    picked = b2.select_from_branches(torch.tensor([0.6, -0.2, -0.7]), 0.5, -0.5)
    assert [i for i, _ in picked] == [0, 2] and [a for _, a in picked] == pytest.approx([0.6, -0.7])
    assert b2.select_from_branches(torch.tensor([0.5, -0.5]), 0.5, -0.5) == [(0, 0.5)]  # >= tau+, but not < tau-
    assert b2.select_from_branches(torch.tensor([1.0, 2.0, 3.0]), 0.5, -0.5) == [(2, 3.0)]  # all good: best only
    assert b2.select_from_branches(torch.zeros(4), 0.5, -0.5) == []
    assert b2.select_from_branches(torch.tensor([-2.0]), 0.5, -0.5) == [(0, -2.0)]
    assert b2.select_from_branches(torch.tensor([0.2, 0.7, -0.6]), 0.8, -0.5) == [
        (2, pytest.approx(-0.6))
    ]  # S = 1 (--no-branch)


def test_prompt_stat_tracker_history():
    tracker = b2.PromptStatTracker(history=1)
    tracker.update(["a", "a", "a", "b", "b"], torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0]))
    z = tracker.update(["a", "a", "b"], torch.tensor([4.0, 5.0, 30.0]))
    pooled_a, pooled_b = torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([10.0, 20, 30])
    assert torch.allclose(z[:2], (torch.tensor([4.0, 5.0]) - 3) / (pooled_a.std() + 1e-8))
    assert torch.allclose(z[2], (30 - pooled_b.mean()) / pooled_b.std())
    z = tracker.update(["a", "a"], torch.tensor([0.0, 2.0]))  # H = 1: only the previous stage ([4, 5]) joins
    pooled = torch.tensor([4.0, 5, 0, 2])
    assert torch.allclose(z, (torch.tensor([0.0, 2.0]) - pooled.mean()) / pooled.std())
    fresh = b2.PromptStatTracker(history=0).update(["a", "a"], torch.tensor([0.0, 2.0]))
    assert torch.allclose(fresh, torch.tensor([-1.0, 1.0]) / math.sqrt(2))


def test_ppo_clip_loss_limits():
    adv = torch.tensor([1.0, -2.0, 9.0])
    loss, _ = b2.ppo_clip_loss(torch.zeros(3), torch.zeros(3), adv, 0.1, 5.0)
    assert loss.item() == pytest.approx(-(1 - 2 + 5) / 3)  # rho = 1, A clipped at 5
    loss, _ = b2.ppo_clip_loss(torch.zeros(3), torch.zeros(3), adv, 0.1, 5.0, beta_pos=0.5, beta_neg=2.0)
    assert loss.item() == pytest.approx(-(0.5 - 4 + 2.5) / 3)
    lp = torch.tensor([0.5], requires_grad=True)  # rho = e^0.5 > 1.1 with A > 0: clipped, no gradient
    loss, stats = b2.ppo_clip_loss(lp, torch.zeros(1), torch.ones(1), 0.1, 5.0)
    loss.backward()
    assert lp.grad.item() == 0 and loss.item() == pytest.approx(-1.1) and stats["clip_frac"] == 1.0


def test_guidance_and_branch_sampling():
    torch.manual_seed(0)
    model, toy = b2.ToyEps(), b2.ToyDDIM()
    toy.set_timesteps(6)
    x, t, c = torch.randn(5, 2), torch.full((5,), 501), torch.randint(0, 4, (5,))
    null = torch.tensor([4])
    assert torch.allclose(b2.guided_eps(model, x, t, c, null, 1.0), model(x, t, c))
    assert torch.allclose(b2.guided_eps(model, x, t, c, null, 0.0), model(x, t, null.expand(5)), atol=1e-6)
    eps2 = b2.guided_eps(model, x, t, c, null, 3.0)
    assert torch.allclose(eps2, model(x, t, null.expand(5)) + 3 * (model(x, t, c) - model(x, t, null.expand(5))))
    x0, lat, nxt, lp = b2.sample_with_branches(model, toy, torch.randn(3, 2), c[:3], null, 2.0, 1.0, 4, 5)
    assert x0.shape == (15, 2) and lat.shape == nxt.shape == (15, 2, 2) and lp.shape == (15, 2)
    groups = lat[:, 0].reshape(3, 5, 2)  # the state at the branch index: one per prefix, shared by its S copies
    assert torch.equal(groups, groups[:, :1].expand(3, 5, 2)) and not torch.equal(groups[0, 0], groups[1, 0])
    assert (nxt[:, 0].reshape(3, 5, 2).std(1) > 0).all()  # independent noise after the branch
    assert torch.equal(lat[:, 1], nxt[:, 0])


def metrics_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_smoke_all_arms_equal_calls(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = replace(b2.Args(), **TINY, arms=b2.ARMS)
    out = b2.main(args)
    assert out["params_changed"]
    assert (out["dir"] / "summary.md").exists() and (out["dir"] / "b2_toy.png").stat().st_size > 1000
    assert "fixed-split 20" in (out["dir"] / "summary.md").read_text()
    rows = metrics_of(out["dir"])
    runs = [f"{arm}-seed1" for arm in b2.ARMS]  # one TensorBoard run per (arm, seed)
    assert [row["arm"] for row in rows] == [run for run in runs for _ in range(4)]  # stage 0's eval + 3 stages

    def logged(run, key):
        return [row[key] for row in rows if row["arm"] == run and key in row]

    assert {max(logged(run, "step")) for run in runs} == {3 * 32 * 5}  # equal reward calls for every arm
    assert logged("main-seed1", "charts/span") == [18, 19, 20]
    assert set(logged("ddpo-seed1", "charts/selected")) == set(logged("select-all-seed1", "charts/selected")) == {160}
    assert all(0 < n <= 64 for n in logged("main-seed1", "charts/selected"))
    assert all(n < 160 for n in logged("no-branch-seed1", "charts/selected"))
    tags = {}
    for run in runs:
        assert list((out["dir"] / "arms" / run).glob("events.out.tfevents.*")), run
        tags[run] = set(EventAccumulator(str(out["dir"] / "arms" / run)).Reload().Tags()["scalars"])
    expected = {"reward", "reward_std", "kl", "losses/policy_loss", "clip_ratio/region_mean", "eval/reward"}
    assert expected <= tags["main-seed1"]
    assert all(tags[run] - {"charts/steps_per_sec"} == tags["main-seed1"] - {"charts/steps_per_sec"} for run in runs)
    assert not any(arm in tag or "seed" in tag for tag in set().union(*tags.values()) for arm in b2.ARMS)


def test_it_learns_precision_reward():
    args = replace(b2.Args(), **dict(TINY, pretrain_steps=3000, num_stages=8, s_min=2), arms=("main",))
    out = b2.main(args)
    curve = out["curves"]["main"][0]
    assert curve[-1]["reward"] > curve[0]["reward"] + 0.05, [c["reward"] for c in curve]


# ----------------------------------------------------------------------------------------------- the real path
def save_tiny_pipeline(folder):
    pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers)")
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        attention_head_dim=4,
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    sizes = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPTextConfig(
        vocab_size=520, bos_token_id=512, eos_token_id=513, pad_token_id=513, **sizes, max_position_embeddings=32
    )
    byte_chars = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))  # GPT-2's byte alphabet
    chars = [chr(b) for b in byte_chars] + [chr(256 + n) for n in range(256 - len(byte_chars))]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(config),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "pipe")
    return str(folder / "pipe")


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    pytest.importorskip("peft", reason="peft is not installed")
    return save_tiny_pipeline(tmp_path_factory.mktemp("sd"))


REAL = dict(
    reward_fn="jpeg",
    num_steps=4,
    num_stages=2,
    s_min=2,
    s_max=4,
    prefixes_per_stage=2,
    num_branches=3,
    tau_pos=0.0,
    tau_neg=0.0,
    train_batch_size=4,
    train_micro_batch=4,
    guidance_scale=2.0,
    learning_rate=1e-2,
)


def test_real_path_tiny_pipeline(tiny_pipeline, tmp_path, runs_in_tmp):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat washing dishes\n\na dog riding a bike\n")
    curve = b2.main(replace(b2.Args(), model_name=tiny_pipeline, prompt_file=str(prompts), **REAL))
    assert [c["calls"] for c in curve] == [0, 6, 12]
    run_dir = next(runs_in_tmp.glob("sd__*"))
    lora = torch.load(run_dir / "lora.pt")
    assert lora and any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())  # B starts at 0
    assert (run_dir / "summary.md").exists() and metrics_of(run_dir)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(s_min=12, s_max=10), "s_min"),
        (dict(s_max=25), "s_max"),
        (dict(num_branches=1), "S >= 2"),
        (dict(eta=0.0), "eta"),
        (dict(fixed_split=0), "fixed-split"),
        (dict(reward_fn="clip"), "toy"),
        (dict(num_branches=0, branch=False, arms=("main",)), "S must be >= 1"),
        (dict(prompt_file="/nonexistent"), "does not exist"),
        (dict(prompt_file=__file__), "real path"),
        (dict(learning_rate=0.0), "--learning-rate 0.0"),
        (dict(learning_rate=-1e-4), "--learning-rate -0.0001"),
        (dict(learning_rate=float("nan")), "--learning-rate nan"),
        (dict(ddpo_learning_rate=0.0), "--ddpo-learning-rate 0.0"),
        (dict(ddpo_learning_rate=float("inf")), "--ddpo-learning-rate inf"),
        (dict(pretrain_learning_rate=-1.0), "--pretrain-learning-rate -1.0"),
        (dict(pretrain_learning_rate=float("nan")), "--pretrain-learning-rate nan"),
        (dict(dtype="foo"), "dtype"),
        (dict(sample_batch_size=0), "sample-batch-size"),
        (dict(train_micro_batch=0), "train-micro-batch"),
        (dict(model_name="no-such-org/no-such-model", reward_fn="jpeg"), "could not load"),
    ],
)
def test_bad_inputs_fail_fast(change, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "model_name" in change:
        pytest.importorskip("diffusers", reason="diffusers is not installed")
    with pytest.raises(SystemExit, match=message):
        b2.main(replace(b2.Args(), **change))


def test_real_path_bad_inputs(tiny_pipeline, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(SystemExit, match="no prompts"):
        b2.main(replace(b2.Args(), model_name=tiny_pipeline, prompt_file=str(empty), **REAL))
    with pytest.raises(SystemExit, match="resolution"):
        b2.main(replace(b2.Args(), model_name=tiny_pipeline, resolution=18, **REAL))
    with pytest.raises(SystemExit, match="toy reward"):
        b2.main(replace(b2.Args(), model_name=tiny_pipeline, **dict(REAL, reward_fn="precision")))
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


# ------------------------------------------------------------------------------ memory: chunks, micro-batches
def test_chunked_sampling_equals_one_pass_and_bounds_the_rows():
    torch.manual_seed(0)
    model, toy = b2.ToyEps(), b2.ToyDDIM()
    toy.set_timesteps(4)
    rows_seen = []

    def eps_fn(x, t, c):
        rows_seen.append(len(x))
        return model(x, t, c)

    x_T, classes, null = torch.randn(3, 2), torch.tensor([0, 2, 3]), torch.tensor([4])
    one_pass = b2.sample_with_branches(model, toy, x_T, classes, null, 2.0, 1.0, 2, 2, torch.Generator().manual_seed(1))
    table = torch.arange(4)  # prompt ids looked up per chunk, as the real path looks up its text embeddings
    chunked = b2.sample_with_branches(
        eps_fn, toy, x_T, classes, null, 2.0, 1.0, 2, 2, torch.Generator().manual_seed(1), 2, None, table
    )
    assert max(rows_seen) == 4  # 2 rows x 2 (CFG) per call, never the 6 rows of a step
    for a, b in zip(one_pass, chunked):  # the same noise in the same order (draws below 16 entries are sequential)
        assert torch.allclose(a, b, atol=1e-6)


def test_real_path_defaults_are_small_and_rewards_come_in_chunks(tiny_pipeline):
    args = replace(b2.Args(), model_name=tiny_pipeline, **dict(REAL, train_micro_batch=None))
    world = b2.SDWorld(args, torch.device("cpu"))
    assert world.sample_batch_size == 8 and world.train_micro_batch == 2  # [code]: 8 per batch, train batch 2
    sizes = []
    world.reward_fn = lambda images, prompts: sizes.append(len(images)) or torch.zeros(len(images))
    rewards = world.reward(torch.randn(19, *world.latent_shape), torch.zeros(19, dtype=torch.long))
    assert sizes == [8, 8, 3] and rewards.shape == (19,)


def test_clip_inputs_are_the_8bit_images_through_the_clip_preprocess():
    """The code saves (x * 255) cast to uint8 (truncated) and runs open_clip's preprocess on the PNGs: resize the
    short side to 224 (PIL bicubic), centre crop, normalise. transformers' PIL CLIP processor stands in for it here
    (open_clip is not installed offline), and a hand-made PIL + numpy version of those steps checks it."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    images = torch.rand(2, 3, 64, 96)
    images[0, 0, 0, :3] = torch.tensor([0.9999, 0.5, 1.0])
    pil = b2.to_8bit_images(images)
    assert [pil[0].getpixel((column, 0))[0] for column in range(3)] == [254, 127, 255]  # truncated, not rounded
    processor = CLIPImageProcessorPil()
    pixels = b2.clip_pixels(images, lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0])
    mean, std = np.array(processor.image_mean), np.array(processor.image_std)
    for image, got in zip(pil, pixels):
        resized = np.asarray(image.resize((336, 224), Image.BICUBIC), dtype=np.float64) / 255  # short side -> 224
        expected = (resized[:, 56:280] - mean) / std  # centre crop 224 x 224
        assert got.shape == (3, 224, 224) and np.allclose(got.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def run_b2_child(pipeline, prompts, tmp_path, prefixes, sample_batch, micro_batch):
    """One real-path stage in a process of its own (benchmarks/real_shape.py's `measure`): its peak RSS in bytes."""
    from benchmarks import real_shape

    stage = "--select=all --num-steps=2 --s-min=1 --s-max=2 --num-stages=1 --num-branches=4 --epochs=1".split()
    sizes = [f"--prefixes-per-stage={prefixes}", f"--train-batch-size={4 * prefixes}"]
    sizes += [f"--sample-batch-size={sample_batch}", f"--train-micro-batch={micro_batch}"]
    run = "--reward-fn=jpeg --learning-rate=1e-6 --dtype=fp32 --num-threads=1 --no-cuda".split()
    argv = ["algos/b2_diffurl.py", f"--model-name={pipeline}", f"--prompt-file={prompts}", *stage, *sizes, *run]
    name = f"p{prefixes}-s{sample_batch}-m{micro_batch}"
    return real_shape.measure(argv, tmp_path / name, tmp_path / f"{name}.log")["peak"]


def test_real_architecture_peak_memory_is_set_by_chunk_and_micro_batch(tmp_path):
    """SD-1.x's architecture (UNet blocks, CLIP-L text encoder depth, 4-block VAE) at 1/10 width, 16 x 16 latents,
    random weights: a stage of N = 4 and 4N = 16 samples with the same sampling chunk (4) and micro-batch (2) peaks
    within 1.25x. (Measured with these sizes: 16 samples in one pass with a 4096-transition micro-batch, the old
    defaults, peak at 2.5x.)"""
    from benchmarks import real_shape

    pipeline = real_shape.save_narrow_sd1_pipeline(tmp_path / "sd1")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat washing dishes\na dog riding a bike\n")
    peak_n = run_b2_child(pipeline, prompts, tmp_path, 1, 4, 2)
    peak_4n = run_b2_child(pipeline, prompts, tmp_path, 4, 4, 2)
    assert peak_4n <= 1.25 * peak_n, (peak_n / 2**20, peak_4n / 2**20)


def test_a_cold_cache_trains_like_a_warm_one(tmp_path, monkeypatch, capsys):
    """Pretraining in-process leaves gradients on the weights; they must not join the first RL step. Pretraining and
    the pretrained evaluation show progress bars; the progress lines fit one line."""
    monkeypatch.setattr(b2, "CACHE_DIR", tmp_path / "cache")
    args = replace(b2.Args(), **dict(TINY, num_stages=1, prefixes_per_stage=16, eval_samples=64), arms=("main",))
    cold = b2.main(args)["curves"]
    cold_out = capsys.readouterr().out
    warm = b2.main(args)["curves"]
    warm_out = capsys.readouterr().out
    assert cold == warm
    assert "pretraining [####################] 400/400 100%" in cold_out and "pretraining: done in" in cold_out
    assert "pretraining: cached" in warm_out and "pretraining [" not in warm_out
    assert "evaluation (pretrained): done in" in warm_out
    lines = [line for line in (cold_out + warm_out).splitlines() if line.startswith(("step ", "pretraining ["))]
    assert lines and all(len(line) <= 120 for line in lines)


def test_flags_have_one_name_for_one_thing(capsys):
    """--num-threads, --learning-rate, --<phase>-learning-rate; --no-branch is tyro's negation of --branch."""
    import tyro

    args = tyro.cli(b2.Args, args=["--no-branch", "--learning-rate", "1e-4", "--num-threads", "2"])
    assert not args.branch and args.learning_rate == 1e-4 and args.num_threads == 2
    args = tyro.cli(b2.Args, args=["--ddpo-learning-rate", "1e-3", "--pretrain-learning-rate", "1e-2"])
    assert args.branch and args.ddpo_learning_rate == 1e-3 and args.pretrain_learning_rate == 1e-2
    for old in (["--lr", "1e-4"], ["--torch-threads", "2"], ["--ddpo-lr", "1e-3"], ["--pretrain-lr", "1e-3"]):
        with pytest.raises(SystemExit):
            tyro.cli(b2.Args, args=old)
