"""Tests for algos/l2calib.py: the maths against independent values, the simulator-filter consistency, the arms,
the real-file path and the early failures."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import algos.l2calib as L
import shared.runs

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread (main() sets it too); restored for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_quats(n, seed=0):
    return torch.nn.functional.normalize(
        torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=F64), dim=-1
    )


def random_orthonormal(seed=0):
    return torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(seed), dtype=F64))[0]


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(shared.runs, "RUNS_DIR", tmp_path / "runs")
    return tmp_path / "runs"


def tiny(**kw):
    base = dict(
        segments=2,
        segment_seconds=3.0,
        updates=4,
        warmup_updates=2,
        init_candidates=2,
        num_envs=4,
        num_collects=8,
        ppo_epochs=2,
        motions=("full",),
    )
    return L.Args(**{**base, **kw})


# ---------------------------------------------------------------- rotations against scipy (scalar-last)
def test_rotations_match_scipy():
    q = random_quats(50, 1)
    p = random_quats(50, 2)
    assert torch.allclose(L.quat_to_rotmat(q), torch.tensor(Rotation.from_quat(q.numpy()).as_matrix()), atol=1e-12)
    assert torch.allclose(L.quat_to_rotmat(3 * q), L.quat_to_rotmat(q), atol=1e-12)  # a non-unit q is one rotation
    product = (Rotation.from_quat(p.numpy()) * Rotation.from_quat(q.numpy())).as_matrix()
    assert torch.allclose(L.quat_to_rotmat(L.quat_mul(p, q)), torch.tensor(product), atol=1e-12)
    rotvec = torch.randn(50, 3, dtype=F64)
    assert torch.allclose(L.so3_exp(rotvec), torch.tensor(Rotation.from_rotvec(rotvec.numpy()).as_matrix()), atol=1e-12)
    small = rotvec / rotvec.norm(dim=-1, keepdim=True) * torch.rand(50, 1, dtype=F64) * 3.0  # angles below pi
    assert torch.allclose(L.so3_log(L.so3_exp(small)), small, atol=1e-9)
    expected = Rotation.from_euler("xyz", L.TRUE_RPY_DEG, degrees=True).as_matrix()  # extrinsic xyz = Rz Ry Rx
    assert torch.allclose(L.quat_to_rotmat(L.rpy_to_quat(L.TRUE_RPY_DEG)), torch.tensor(expected), atol=1e-12)
    angle = np.degrees(
        np.linalg.norm((Rotation.from_quat(p.numpy()).inv() * Rotation.from_quat(q.numpy())).as_rotvec(), axis=-1)
    )
    assert torch.allclose(L.quat_angle_deg(p, -q), torch.tensor(angle), atol=1e-8)


# ---------------------------------------------------------------- Bingham
def surface_log_normalizer(z, n=120):
    """log of the integral of exp(sum_i z_i x_i^2) over S^3 on a hyperspherical Gauss-Legendre grid (no 1-D formula)."""
    x, w = np.polynomial.legendre.leggauss(n)
    th = (x + 1) * np.pi / 2
    w_th = w * np.pi / 2
    ph = (x + 1) * np.pi
    w_ph = w * np.pi
    t1, t2, p = np.meshgrid(th, th, ph, indexing="ij")
    pts = [
        np.cos(t1),
        np.sin(t1) * np.cos(t2),
        np.sin(t1) * np.sin(t2) * np.cos(p),
        np.sin(t1) * np.sin(t2) * np.sin(p),
    ]
    weight = np.einsum("i,j,k->ijk", w_th * np.sin(th) ** 2, w_th * np.sin(th), w_ph)
    return np.log((weight * np.exp(sum(zi * pts[i] ** 2 for i, zi in enumerate(z)))).sum())


@pytest.mark.parametrize(
    "z", [(0.0, 0.0, 0.0), (-1.0, -2.0, -3.0), (-10.0, -0.5, -30.0), (-20.0, -20.0, -20.0), (-60.0, -40.0, -80.0)]
)
def test_log_normalizer_against_surface_integral(z):
    assert L.bingham_log_normalizer(torch.tensor(z, dtype=F64)).item() == pytest.approx(
        surface_log_normalizer(z), abs=1e-6
    )


@pytest.mark.parametrize("scale,tol", [(1000.0, 2e-3), (5000.0, 4e-4)])
def test_log_normalizer_large_concentrations_match_laplace(scale, tol):
    z = torch.tensor([-scale, -1.3 * scale, -0.7 * scale], dtype=F64)
    laplace = math.log(2 * math.pi**1.5 / math.sqrt(-z.prod().item()))  # two antipodal Gaussian caps
    assert L.bingham_log_normalizer(z).item() == pytest.approx(laplace, abs=tol)


def test_density_is_sign_invariant_and_normalised():
    m = random_orthonormal(3)
    z = torch.tensor([-2.0, -7.0, -15.0], dtype=F64)
    q = random_quats(100, 4)
    assert torch.allclose(L.bingham_log_prob(q, m, z), L.bingham_log_prob(-q, m, z), atol=1e-12)
    uniform = random_quats(400_000, 5)  # E_uniform[p] * |S^3| = 1
    assert (L.bingham_log_prob(uniform, m, z).exp().mean() * 2 * math.pi**2).item() == pytest.approx(1.0, abs=0.02)


def test_sampler_moments_match_the_density():
    m = random_orthonormal(6)
    z = torch.tensor([-3.0, -12.0, -40.0], dtype=F64, requires_grad=True)
    (expected,) = torch.autograd.grad(L.bingham_log_normalizer(z), z)  # dlogF/dz_i = E[(m_i^T q)^2]
    x = L.sample_bingham(m, z.detach(), 100_000, torch.Generator().manual_seed(0))
    assert x.shape == (100_000, 4) and torch.allclose(x.norm(dim=-1), torch.ones(100_000, dtype=F64))
    second = ((x @ m) ** 2).mean(0)
    assert torch.allclose(second[:3], expected, rtol=0.03, atol=2e-3)
    assert abs(second.sum().item() - 1) < 1e-9 and x.mean(0).abs().max() < 0.02  # q and -q equally likely
    # the entropy is -E[log p]
    entropy = L.bingham_entropy(z.detach()).item()
    assert entropy == pytest.approx(-L.bingham_log_prob(x, m, z.detach()).mean().item(), abs=0.02)


def test_entropy_gradient_true_vs_as_written():
    z = torch.tensor([-30.0, -50.0, -80.0], dtype=F64, requires_grad=True)
    (true_grad,) = torch.autograd.grad(L.bingham_entropy(z), z)
    (written_grad,) = torch.autograd.grad(L.bingham_entropy(z, as_written=True), z)
    eps = 1e-4
    basis = torch.eye(3, dtype=F64)
    numeric = torch.stack(
        [(L.bingham_entropy(z.detach() + eps * e) - L.bingham_entropy(z.detach() - eps * e)) / (2 * eps) for e in basis]
    )
    assert torch.allclose(true_grad, numeric, rtol=1e-4)
    assert (true_grad > 0).all() and (written_grad < 0).all()  # the code's gradient points the other way


def test_gram_schmidt_keeps_the_last_column_direction_of_an_orthonormal_completion():
    q0 = random_quats(1, 7)[0]
    pol = L.init_policy("bingham", torch.zeros(3, dtype=F64), q0, L.Args(), torch.Generator().manual_seed(0))
    m = L.gram_schmidt(pol["a"].detach())
    assert torch.allclose(m.T @ m, torch.eye(4, dtype=F64), atol=1e-12) and torch.allclose(m[:, 3], q0, atol=1e-12)


# ---------------------------------------------------------------- reward pipeline
def test_umeyama_recovers_a_known_transform():
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(3, 40, 3, generator=gen, dtype=F64)
    rot = L.quat_to_rotmat(random_quats(3, 8))
    shift = torch.randn(3, 1, 3, generator=gen, dtype=F64)
    moved = pts @ rot.transpose(-1, -2) + shift
    assert L.umeyama_rmse(pts, moved).max() < 1e-10
    noisy = moved + 0.05 * torch.randn(moved.shape, generator=gen, dtype=F64)
    for b in range(3):  # scipy's Kabsch on the centred points gives the same residual
        est = pts[b] - pts[b].mean(0)
        ref = noisy[b] - noisy[b].mean(0)
        r, _ = Rotation.align_vectors(ref.numpy(), est.numpy())
        expected = np.sqrt(((ref.numpy() - r.apply(est.numpy())) ** 2).sum(-1).mean())
        assert L.umeyama_rmse(pts[b], noisy[b]).item() == pytest.approx(expected, rel=1e-9)


def simulated_chunks(motion, noise=False, segments=3, seconds=6.0, seed=0):
    sim = L.simulate(motion, segments, seconds, noise, torch.Generator().manual_seed(seed))
    recs = [{k: v if k.endswith("_t") else v[s] for k, v in sim.items()} for s in range(segments)]
    return sim, L.make_chunks(recs, None, False)


@pytest.mark.parametrize("motion", ["full", "weak", "planar"])
def test_filter_is_consistent_with_the_simulator(motion):
    _, data = simulated_chunks(motion)
    n = len(data["p"])
    g = torch.tensor([0.0, 0, -9.81], dtype=F64)
    q_true = L.rpy_to_quat(L.TRUE_RPY_DEG)
    t_true = torch.tensor(L.TRUE_T, dtype=F64)
    ids = torch.arange(n)

    def error(q, t):  # e of one extrinsic on every chunk
        return L.lio_rmse(data, ids, q.expand(n, 4), t.expand(n, 3), gravity=g)

    assert error(q_true, t_true).max() < 1e-6  # noise-free: zero at the true extrinsic
    assert (
        error(L.quat_mul(L.quat_exp(torch.tensor([0.0, 0.02, 0.0], dtype=F64)), q_true), t_true).min() > 1e-4
    )  # 1.1 deg
    up = error(q_true, t_true + torch.tensor([0.0, 0.0, 0.05], dtype=F64))
    if motion == "planar":  # level rotation about the vertical only: t_z cannot be seen
        assert up.max() < 1e-6
    else:
        assert up.min() > 1e-5


def test_preintegration_with_irregular_stamps_matches_a_plain_loop():
    gen = torch.Generator().manual_seed(1)
    imu_t = torch.cumsum(0.01 + 0.02 * torch.rand(300, generator=gen, dtype=F64), 0)
    gyro = torch.randn(300, 3, generator=gen, dtype=F64)
    acc = torch.randn(300, 3, generator=gen, dtype=F64)
    pose_t = torch.linspace(imu_t[3].item() + 0.003, imu_t[-5].item() - 0.004, 23, dtype=F64)
    pre = L.preintegrate(imu_t, gyro, acc, pose_t)
    for j in (0, 7, 21):
        q = torch.tensor([0.0, 0, 0, 1], dtype=F64)
        v = torch.zeros(3, dtype=F64)
        p = torch.zeros(3, dtype=F64)
        cuts = [pose_t[j].item(), *[t for t in imu_t.tolist() if pose_t[j] < t < pose_t[j + 1]], pose_t[j + 1].item()]
        for a, b in zip(cuts[:-1], cuts[1:]):
            k = int((imu_t <= a + 1e-12).sum()) - 1
            h = b - a
            acc_w = L.quat_to_rotmat(q) @ acc[k]
            p = p + v * h + 0.5 * acc_w * h**2
            v = v + acc_w * h
            q = L.quat_mul(q, L.quat_exp(gyro[k] * h))
        assert torch.allclose(pre["dp"][j], p, atol=1e-12) and torch.allclose(pre["dv"][j], v, atol=1e-12)
        assert L.quat_angle_deg(pre["dq"][j], q) < 1e-9


def test_excitation_score_intended_and_as_written():
    rates = torch.tensor([0.0, 0.0, 0.3], dtype=F64)  # yaw only, 0.3 rad/s, 150 rates at 10 Hz
    rot = L.so3_exp(torch.arange(151, dtype=F64)[:, None] * 0.1 * rates)
    dt = torch.full((150,), 0.1, dtype=F64)
    assert L.excitation_score(rot, dt).item() == pytest.approx((150 * 0.09 / 100) ** 2, rel=1e-6)  # 0.018
    assert L.excitation_score(rot, dt, as_written=True).item() == pytest.approx(0.0009 * 0.135, rel=1e-6)  # 1.2e-4


# ---------------------------------------------------------------- hand-eye
def test_hand_eye_recovers_a_known_x_and_flags_planar_motion():
    q_x = L.rpy_to_quat((10.0, -5.0, 30.0))
    t_x = torch.tensor([0.15, -0.1, 0.05], dtype=F64)
    r_x = L.quat_to_rotmat(q_x)
    q_a = random_quats(30, 9)
    t_a = torch.randn(30, 3, dtype=F64)
    q_b = L.quat_mul(L.quat_mul(L.quat_conj(q_x).expand(30, 4), q_a), q_x.expand(30, 4))  # B = X^-1 A X
    t_b = (r_x.T @ (L.quat_to_rotmat(q_a) @ t_x + t_a - t_x)[..., None])[..., 0]
    q_est, t_est, sing = L.hand_eye((q_a, t_a), (-q_b, t_b))  # the sign of q_B does not matter
    assert L.quat_angle_deg(q_est, q_x) < 1e-8 and torch.allclose(t_est, t_x, atol=1e-9)
    assert sing[-1] < 1e-10 < sing[-2]
    yaw = L.quat_exp(torch.tensor([0.0, 0.0, 1.0], dtype=F64) * torch.linspace(0.2, 1.5, 30, dtype=F64)[:, None])
    q_b = L.quat_mul(L.quat_mul(L.quat_conj(q_x).expand(30, 4), yaw), q_x.expand(30, 4))
    _, _, sing = L.hand_eye((yaw, None), (q_b, None))
    assert sing[-1] < 1e-10 and sing[-2] < 1e-10 < sing[-3]  # a 2-D null space: rotation unobservable


# ---------------------------------------------------------------- main: smoke, learning, real files, bad inputs
def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_smoke_every_arm(runs_dir, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    L.main(tiny(arms=("l2calib", "hand-eye", "gaussian", "no-select")))
    (run,) = runs_dir.iterdir()
    rows = metrics(run)
    mine = [r for r in rows if r["arm"] == "full/l2calib"]  # one row per update and arm
    assert [r["step"] for r in mine] == [1, 2, 3, 4]
    first = mine[0]
    last = mine[-1]
    assert first["charts/sigma_t_cm"] == pytest.approx(15.0)  # rho / 2
    assert last["charts/sigma_t_cm"] != pytest.approx(15.0, abs=1e-6)  # parameters moved
    assert last["charts/bingham_min_abs_z"] != pytest.approx(20.0, abs=1e-6)
    assert {r["arm"] for r in rows} == {"full/l2calib", "full/gaussian", "full/no-select"}  # hand-eye trains nothing
    assert all(set(L.PROGRESS_METRICS) <= set(r) for r in rows)  # what the progress line shows
    gaussian = [r for r in rows if r["arm"] == "full/gaussian"]
    assert "losses/policy_loss" in gaussian[-1] and "charts/bingham_min_abs_z" not in gaussian[-1]
    for arm in ("l2calib", "gaussian", "no-select"):  # each arm a TensorBoard run of its own, under the same tags
        folder = run / "arms" / "full" / arm
        assert any(p.name.startswith("events.out.tfevents") for p in folder.iterdir())
        tags = set(EventAccumulator(str(folder)).Reload().Tags()["scalars"])
        assert {"reward", "reward_std", "losses/value_loss", "charts/ape_cm", "charts/rot_err_deg"} <= tags
        assert not any(arm in tag or "full" in tag for tag in tags), tags
    shown = capsys.readouterr().out
    assert "init search: done in" in shown and "(48 odometry runs)" in shown  # 3 RL arms x 2 candidates x 8 collects
    summary = (run / "summary.md").read_text()
    for arm in ("l2calib", "hand-eye", "gaussian", "no-select"):
        assert f"| full | {arm} " in summary
    assert set(json.loads((run / "result.json").read_text())) == {
        f"full_{a}" for a in ("l2calib", "hand-eye", "gaussian", "no-select")
    }
    assert (run / "error_curves.png").exists() or importlib.util.find_spec("matplotlib") is None


def test_it_learns(runs_dir):
    L.main(
        L.Args(motions=("full",), segments=4, segment_seconds=6.0, updates=130, warmup_updates=10, arms=("l2calib",))
    )
    (run,) = runs_dir.iterdir()
    rot = [r["charts/rot_err_deg"] for r in metrics(run)]
    ape = [r["charts/ape_cm"] for r in metrics(run)]
    assert np.mean(rot[-10:]) < 0.4 * rot[0] and np.mean(ape[-20:]) < 0.6 * np.mean(ape[:10])


def write_files(tmp_path, seconds=24.0, noise=True, bias_scale=1.0, seed=3):
    sim = L.simulate("full", 1, seconds, noise, torch.Generator().manual_seed(seed), bias_scale=bias_scale)
    tmp_path.mkdir(parents=True, exist_ok=True)
    imu_path = tmp_path / "imu.csv"
    pose_path = tmp_path / "lidar.tum"
    t0 = 1000.0
    lines = ["time,gx,gy,gz,ax,ay,az"]
    lines += [
        ",".join(f"{v:.12f}" for v in [t0 + t, *g, *a])
        for t, g, a in zip(sim["imu_t"].tolist(), sim["gyro"][0].tolist(), sim["acc"][0].tolist())
    ]
    imu_path.write_text("\n".join(lines) + "\n")
    poses = [
        " ".join(f"{v:.12f}" for v in [t0 + t, *p, *q])
        for t, p, q in zip(sim["pose_t"].tolist(), sim["p_l"][0].tolist(), sim["q_l"][0].tolist())
    ]
    pose_path.write_text("# time x y z qx qy qz qw\n" + "\n".join(poses) + "\n")
    return imu_path, pose_path


def test_real_files_round_trip_is_exact(tmp_path):
    imu_path, pose_path = write_files(tmp_path, noise=False)
    args = L.Args(imu=str(imu_path), lidar_poses=str(pose_path), chunk_seconds=8.0)
    data = L.make_chunks([L.load_files(args)], 80, False)
    n = len(data["p"])
    assert n == 3
    for estimate_biases in (False, True):  # unbiased and noise-free: the bias states stay at zero
        error = L.lio_rmse(
            data,
            torch.arange(n),
            L.rpy_to_quat(L.TRUE_RPY_DEG).expand(n, 4),
            torch.tensor(L.TRUE_T, dtype=F64).expand(n, 3),
            torch.tensor(args.gravity, dtype=F64),
            estimate_biases,
        )
        assert error.max() < 1e-6


def test_bias_jacobians_match_preintegrating_the_corrected_imu():
    gen = torch.Generator().manual_seed(2)
    imu_t = torch.cumsum(0.01 + 0.01 * torch.rand(300, generator=gen, dtype=F64), 0)
    gyro = torch.randn(300, 3, generator=gen, dtype=F64)
    acc = torch.randn(300, 3, generator=gen, dtype=F64) + torch.tensor([0.0, 0.0, 9.81], dtype=F64)
    pose_t = torch.linspace(imu_t[3].item() + 0.003, imu_t[-5].item() - 0.004, 23, dtype=F64)
    pre = L.preintegrate(imu_t, gyro, acc, pose_t)

    def mv(m, x):  # matrix [I, 3, 3] times vector [3] -> [I, 3]
        return (m @ x[:, None])[..., 0]

    def residuals(b_g, b_a):  # first-order prediction against preintegrating the IMU with the biases taken out
        exact = L.preintegrate(imu_t, gyro - b_g, acc - b_a, pose_t)
        rot = pre["dR"] @ L.so3_exp(mv(pre["J_R"], b_g))
        return torch.stack(
            [
                L.so3_log(rot.transpose(-1, -2) @ exact["dR"]).norm(dim=-1).max(),
                (pre["dv"] + mv(pre["J_vg"], b_g) + mv(pre["J_va"], b_a) - exact["dv"]).abs().max(),
                (pre["dp"] + mv(pre["J_pg"], b_g) + mv(pre["J_pa"], b_a) - exact["dp"]).abs().max(),
                L.so3_log(pre["dR"].transpose(-1, -2) @ exact["dR"]).norm(dim=-1).max(),  # uncorrected
                (pre["dv"] - exact["dv"]).abs().max(),
                (pre["dp"] - exact["dp"]).abs().max(),
            ]
        )

    b_g = torch.tensor([0.01, -0.02, 0.015], dtype=F64)
    b_a = torch.tensor([0.1, 0.2, -0.15], dtype=F64)
    full = residuals(b_g, b_a)
    half = residuals(b_g / 2, b_a / 2)
    assert (full[:3] < 0.005 * full[3:]).all()  # the correction removes > 99.5 % of the bias effect
    assert (half[:3] < 0.3 * full[:3]).all()  # what is left is second order (a wrong Jacobian leaves first order)
    assert full[4] > 0.01  # the biases matter at this size (dv off by > 1 cm/s)


def reward_optimum(data, estimate_biases, iterations=4, h_rot=0.003, h_t=0.01):
    """The extrinsic that minimises the mean odometry error e over the chunks, by Newton steps on a central-difference
    gradient and Hessian around the truth (each step capped at 0.02 rad / 5 cm). Returns its rotation error (deg) and
    translation error (cm): the calibration error of the reward itself, whatever optimiser climbs it."""
    n = len(data["p"])
    gravity = torch.tensor([0.0, 0.0, -9.81], dtype=F64)
    q_true = L.rpy_to_quat(L.TRUE_RPY_DEG)
    t_true = torch.tensor(L.TRUE_T, dtype=F64)
    h = torch.tensor([h_rot] * 3 + [h_t] * 3, dtype=F64)
    basis = torch.eye(6, dtype=F64) * h
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    offsets = [torch.zeros(6, dtype=F64), *[s * basis[i] for i in range(6) for s in (1, -1)]]
    offsets += [si * basis[i] + sj * basis[j] for i, j in pairs for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
    offsets = torch.stack(offsets)  # [73, 6]: rotation vector (right perturbation), translation
    x = torch.zeros(6, dtype=F64)
    for _ in range(iterations):
        points = x + offsets
        q = L.quat_mul(q_true.expand(len(points), 4), L.quat_exp(points[:, :3]))
        t = t_true + points[:, 3:]
        ids = torch.arange(n).repeat(len(points))
        e = L.lio_rmse(data, ids, q.repeat_interleave(n, 0), t.repeat_interleave(n, 0), gravity, estimate_biases)
        f = e.reshape(len(points), n).mean(1)  # [73]
        grad = (f[1:13:2] - f[2:13:2]) / (2 * h)
        hess = torch.diag((f[1:13:2] - 2 * f[0] + f[2:13:2]) / h**2)
        for k, (i, j) in enumerate(pairs):
            a, b, c, d = f[13 + 4 * k : 17 + 4 * k]
            hess[i, j] = hess[j, i] = (a - b - c + d) / (4 * h[i] * h[j])
        step = -torch.linalg.solve(hess, grad)
        x = x + step * min(1.0, 0.02 / step[:3].norm().item(), 0.05 / step[3:].norm().item())
    return math.degrees(x[:3].norm().item()), 100 * x[3:].norm().item()


def test_bias_estimation_keeps_the_file_path_optimum(tmp_path):
    """A 60 s recording through the file path (CSV + TUM, 4 chunks of 15 s), with the IMU biases at 5x the toy's std
    (here gyro ~0.01 rad/s, accel ~0.1 m/s^2 per axis) and at zero, the other noise identical."""
    errors = {}
    for scale in (0.0, 5.0):
        imu_path, pose_path = write_files(tmp_path / f"bias{scale}", seconds=60.0, bias_scale=scale, seed=0)
        args = L.Args(imu=str(imu_path), lidar_poses=str(pose_path))  # chunk_seconds 15
        data = L.make_chunks([L.load_files(args)], 150, False)
        assert len(data["p"]) == 4
        for estimate_biases in (True,) if scale == 0 else (True, False):
            errors[scale, estimate_biases] = reward_optimum(data, estimate_biases)
    rot_clean, t_clean = errors[0.0, True]
    rot_biased, t_biased = errors[5.0, True]
    assert rot_biased <= 1.5 * rot_clean and t_biased <= 1.5 * t_clean  # within the unbiased case's +50%
    assert rot_biased < 0.1 and t_biased < 0.5  # and small: a few hundredths of a degree, a few mm
    rot_off, t_off = errors[5.0, False]  # the filter without bias states: the optimum leaves the truth
    assert rot_off > 5 * rot_clean and rot_off > 0.3 and t_off > 3 * t_clean


def test_real_files_through_main(tmp_path, runs_dir):
    imu_path, pose_path = write_files(tmp_path)
    L.main(
        tiny(imu=str(imu_path), lidar_poses=str(pose_path), chunk_seconds=8.0, arms=("l2calib", "hand-eye"), updates=6)
    )
    (run,) = runs_dir.iterdir()
    answers = json.loads((run / "result.json").read_text())
    q_true = L.rpy_to_quat(L.TRUE_RPY_DEG)
    assert L.quat_angle_deg(torch.tensor(answers["files_hand-eye"]["q_xyzw"], dtype=F64), q_true) < 0.5  # gyro-based
    assert answers["files_hand-eye"]["t_m"] is None and len(answers["files_l2calib"]["t_m"]) == 3
    summary = (run / "summary.md").read_text()
    assert "| files | l2calib" in summary and "files l2calib: IMU biases at this answer: gyro (" in summary
    last = metrics(run)[-1]
    assert last["arm"] == "files/l2calib" and "charts/ape_cm" in last and "charts/rot_err_deg" not in last


def expect_exit(match, fn, *a, **kw):
    with pytest.raises(SystemExit, match=match):
        fn(*a, **kw)


def test_bad_bingham_inputs_fail_clearly():
    m = random_orthonormal(0)
    q = random_quats(4)
    expect_exit(
        "concentrations must be finite and <= 0", L.bingham_log_normalizer, torch.tensor([-1.0, 2.0, -3.0], dtype=F64)
    )
    expect_exit(
        "concentrations must be finite and <= 0", L.sample_bingham, m, torch.tensor([1.0, -1, -1], dtype=F64), 5
    )
    expect_exit("must be orthonormal", L.bingham_log_prob, q, m + 0.1, torch.tensor([-1.0, -2, -3], dtype=F64))
    expect_exit("--z-init must be negative", L.main, tiny(z_init=5.0))


def test_bad_options_fail_before_any_work(tmp_path, runs_dir):
    imu_path, pose_path = write_files(tmp_path, seconds=12.0)
    expect_exit("multiple of --num-envs", L.main, tiny(num_collects=10))
    expect_exit("give both --imu and --lidar-poses", L.main, tiny(imu=str(imu_path)))
    expect_exit("excitation score above --select-threshold", L.main, tiny(select_threshold=1e9))
    expect_exit(
        "record longer or lower --chunk-seconds",
        L.main,
        tiny(imu=str(imu_path), lidar_poses=str(pose_path), chunk_seconds=30.0),
    )
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing half-written


def test_bad_files_fail_with_the_line_number(tmp_path, runs_dir):
    imu_path, pose_path = write_files(tmp_path, seconds=12.0)
    args = dict(imu=str(imu_path), lidar_poses=str(pose_path), chunk_seconds=5.0)
    lines = pose_path.read_text().splitlines()
    bad = tmp_path / "bad.tum"
    bad.write_text("\n".join([*lines[:5], lines[5].replace(lines[5].split()[2], "nan", 1), *lines[6:]]) + "\n")
    expect_exit(r"bad.tum:6: NaN", L.main, tiny(**{**args, "lidar_poses": str(bad)}))
    bad.write_text("\n".join([*lines[:8], " ".join(lines[8].split()[:7]), *lines[9:]]) + "\n")
    expect_exit(r"bad.tum:9: TUM poses needs 8 columns, got 7", L.main, tiny(**{**args, "lidar_poses": str(bad)}))
    shifted = [" ".join([f"{float(x.split()[0]) + 500:.6f}", *x.split()[1:]]) for x in lines[1:]]
    bad.write_text("\n".join(shifted) + "\n")
    expect_exit("do not overlap", L.main, tiny(**{**args, "lidar_poses": str(bad)}))
    bad.write_text("\n".join([lines[0], lines[1], lines[3], lines[2], *lines[4:]]) + "\n")
    expect_exit(r"bad.tum:4: time .* does not come after", L.main, tiny(**{**args, "lidar_poses": str(bad)}))
    imu_lines = imu_path.read_text().splitlines()
    bad_imu = tmp_path / "bad.csv"
    bad_imu.write_text(
        "\n".join(
            [
                imu_lines[0],
                *[
                    ",".join(x.split(",")[:4] + [f"{float(v) / 9.81:.6f}" for v in x.split(",")[4:]])
                    for x in imu_lines[1:]
                ],
            ]
        )
        + "\n"
    )
    expect_exit("give the accelerations in m/s", L.main, tiny(**{**args, "imu": str(bad_imu)}))
    bad_imu.write_text("\n".join([*imu_lines[:3], "0.1,abc,0,0,0,0,9.8", *imu_lines[4:]]) + "\n")
    expect_exit(r"bad.csv:4: not numbers", L.main, tiny(**{**args, "imu": str(bad_imu)}))
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


@pytest.mark.parametrize(
    "flags,match",
    [
        (dict(num_envs=0), "--num-envs must be at least 1"),
        (dict(ppo_epochs=0), "--ppo-epochs must be at least 1"),
        (dict(num_threads=0), "--num-threads must be at least 1"),
        (dict(gravity=(0.0, 0.0, 0.0)), "--gravity .* must be the gravity vector"),
        (dict(gravity=(0.0, 0.0, math.nan)), "--gravity .* must be the gravity vector"),
        (dict(clip_coef=-1.0), "--clip-coef must be a positive number"),
        (dict(clip_coef=0.0), "--clip-coef must be a positive number"),
        (dict(learning_rate=0.0), "--learning-rate must be a positive number"),
        (dict(learning_rate=-1e-3), "--learning-rate must be a positive number"),
        (dict(learning_rate=math.nan), "--learning-rate must be a positive number"),
        (dict(lr_gamma=0.0), "--lr-gamma"),
        (dict(lr_gamma=math.nan), "--lr-gamma"),
        (dict(lr_step=0), "--lr-step must be at least 1"),
        (dict(rho=math.nan), "--rho"),
        (dict(max_grad_norm=0.0), "--max-grad-norm"),
    ],
)
def test_bad_numbers_fail_before_any_work(flags, match, runs_dir):
    expect_exit(match, L.main, tiny(**flags))
    assert not runs_dir.exists()


def test_binary_files_fail_with_a_message(tmp_path, runs_dir):
    imu_path, pose_path = write_files(tmp_path, seconds=12.0)
    bag = tmp_path / "lidar.bag"
    bag.write_bytes(b"#ROSBAG V2.0\n" + bytes(range(256)) * 8)
    expect_exit("lidar.bag is a binary file", L.main, tiny(imu=str(imu_path), lidar_poses=str(bag)))
    latin = tmp_path / "imu.bin"
    latin.write_bytes(b"\xff\xfe" + b"\x93\x12" * 100)  # no NUL, not UTF-8 either
    expect_exit("imu.bin is a binary file", L.main, tiny(imu=str(latin), lidar_poses=str(pose_path)))
    assert not runs_dir.exists()


def test_the_command_line_refuses_without_a_traceback(tmp_path):
    env = dict(os.environ, REWARDLAB_RUNS=str(tmp_path / "runs"))
    command = [sys.executable, str(Path(L.__file__)), "--gravity", "0", "0", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1 and "error: --gravity" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()
