"""Smoke tests of benchmarks/grpo_vs_trl.py and benchmarks/dpo_vs_trl.py on the tiniest config.

They keep the benchmarks from rotting: each runs for a couple of steps, the last printed line has the agreed format,
and the equal-first-loss check both passes on the real code and fails when our loss is changed."""

import re

import pytest

pytest.importorskip(
    "trl", reason="TRL is not installed (the `bench` / `test` extra): the benchmarks compare against it"
)
from benchmarks import dpo_vs_trl, grpo_vs_trl

LAST_LINE = re.compile(r"^ratio ours/TRL: \d+\.\d{3}$")
SAME_BATCH = re.compile(r"first step: loss ours (\S+) TRL (\S+) .*perturbed policy: ours (\S+) TRL (\S+) ")
TINY = dict(warm_start_steps=200, warmup_steps=1, steps=2, repeats=1, cuda=False)


def check_output(out: str, result: dict) -> None:
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert LAST_LINE.match(lines[-1]), lines[-1]
    match = SAME_BATCH.search(out)
    assert match, out
    first_ours, first_trl, moved_ours, moved_trl = map(float, match.groups())
    assert first_ours == pytest.approx(first_trl, abs=1e-7)
    assert moved_ours == pytest.approx(moved_trl, rel=1e-4, abs=1e-7)
    assert moved_ours != pytest.approx(first_ours, abs=1e-9)  # the perturbed check really moved the policy
    assert float(lines[-1].split()[-1]) == pytest.approx(sorted(result["ratios"])[len(result["ratios"]) // 2], abs=1e-3)
    assert all(r > 0 for r in result["ratios"])


def test_grpo_benchmark_runs_and_checks_the_first_loss(capsys):
    args = grpo_vs_trl.Args(num_prompts=16, batch_size=16, num_generations=4, micro_batch_size=8, **TINY)
    result = grpo_vs_trl.main(args)
    out = capsys.readouterr().out
    check_output(out, result)
    for side in ("ours", "trl"):
        r = result["results"][side][0]
        assert r["steps"] == 2 and r["completions/s"] > 0
        assert r["generation"] > 0 and r["scoring"] > 0 and r["update"] > 0
    # first-step loss = -sum(A mask) / sum(mask) of the batch: the same number on both sides
    assert result["first_loss"] == pytest.approx(float(SAME_BATCH.search(out).group(2)), abs=1e-7)
    # the gradients agree too, on the perturbed policy (asserted inside; printed here)
    moved_grad = float(re.search(r"perturbed policy: .*\(grad (\S+)\)", out).group(1))
    assert moved_grad <= grpo_vs_trl.GRADIENT_TOLERANCE
    # each side's peak memory, measured in a process of its own, and the FLOP/s fractions of the matmul rate
    memory = re.search(r"^peak memory ours/TRL: (\d+\.\d{3})$", out, re.MULTILINE)
    assert memory and float(memory.group(1)) == pytest.approx(result["memory_ratios"][0], abs=1e-3)
    for side in ("ours", "trl"):
        r = result["results"][side][0]
        assert r["peak"] > 2**20 and 0 < r["update_fraction"] and 0 < r["generation_fraction"]


def test_dpo_benchmark_runs_and_checks_the_first_loss(capsys):
    result = dpo_vs_trl.main(dpo_vs_trl.Args(batch_size=8, micro_batch_size=4, **TINY))
    out = capsys.readouterr().out
    check_output(out, result)
    assert result["first_loss"] == pytest.approx(0.6931472, abs=1e-6)  # policy = reference: ln 2
    for side in ("ours", "trl"):
        assert result["results"][side][0]["pairs/s"] > 0


def test_grpo_check_fails_when_the_losses_differ(monkeypatch):
    import algos.bleuberi as bleuberi

    grpo_loss = bleuberi.grpo_loss
    monkeypatch.setattr(bleuberi, "grpo_loss", lambda *a, **k: grpo_loss(*a, **k) * 1.01 + 1e-3)
    args = grpo_vs_trl.Args(num_prompts=8, batch_size=8, num_generations=4, micro_batch_size=8, **TINY)
    with pytest.raises(SystemExit, match="losses differ"):
        grpo_vs_trl.main(args)


def test_dpo_check_fails_when_the_losses_differ(monkeypatch):
    import algos.cream as cream

    cream_loss = cream.cream_loss
    monkeypatch.setattr(cream, "cream_loss", lambda *a, **k: cream_loss(*a, **k) * 1.01)
    with pytest.raises(SystemExit, match="losses differ"):
        dpo_vs_trl.main(dpo_vs_trl.Args(batch_size=8, micro_batch_size=4, **TINY))


@pytest.mark.parametrize(
    "module, options, message",
    [
        (grpo_vs_trl, dict(batch_size=10, num_generations=4), "multiple of --num-generations"),
        (grpo_vs_trl, dict(micro_batch_size=48), "must divide --batch-size"),
        (grpo_vs_trl, dict(steps=0), "--steps must be at least 1"),
        (dpo_vs_trl, dict(repeats=0), "--repeats must be at least 1"),
        (dpo_vs_trl, dict(beta=0.0), "--beta and --learning-rate > 0"),
    ],
)
def test_bad_options_fail_fast(module, options, message):
    with pytest.raises(SystemExit, match=message):
        module.main(module.Args(**options))
