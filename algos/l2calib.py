# arXiv:2508.06330 (L2Calib) | docs: docs/l2calib.md (details, deviations, metrics, results, reproducing the paper)
"""L2Calib: SE(3)-Manifold Reinforcement Learning for Robust Extrinsic Calibration with Degenerate Motion Resilience
(Li et al., IROS 2025, https://arxiv.org/abs/2508.06330; code https://github.com/APRIL-ZJU/learn-to-calibrate).
The LiDAR-IMU extrinsic X = (R(q), t) is the action of a state-less one-step RL problem: each candidate X runs a
LiDAR-inertial odometry with X fixed and is rewarded by how well that trajectory aligns with the LiDAR's own, and PPO
moves a Gaussian (t) x Bingham (q) policy. The offline toy (a simulated rig on full and planar motion, L2Calib against
hand-eye and two ablations, about 4 minutes on 2 CPU cores): python algos/l2calib.py

Idea: no initial guess and no gradient of the odometry are needed, only its error. Rotations come from a Bingham
distribution on unit quaternions (q and -q have one density), translations from a Gaussian; a random search picks the
start, an excitation score keeps only well-excited chunks of data, and the answer is the policy mean of the update
whose batch had the lowest error. Under planar motion the unobservable axis (t_z) shows as a spread that stays wide.

    t ~ N(mu, diag sigma^2),  q ~ Bingham(M, Z),  M = GramSchmidt(A),  Z = (-exp(zeta), 0),  mode m = M[:, 4]
    p(q) = exp(sum_i z_i (m_i^T q)^2) / F,  F = 2 pi^2 int_0^1 e^{u (z1+z2)/2 + (1-u) z3/2} I0(u (z1-z2)/2)
                                                 I0((1-u) z3/2) du,  H = log F - sum_i z_i dlogF/dz_i
    r = exp(-e/2),  e = RMSE of LiDAR positions after Umeyama SE(3) alignment (m)
    L = -min(A ratio, A clip(ratio, 1 -+ 0.2)) + 0.5 max((V - r)^2, (V_clip - r)^2) - c_ent (H_gauss + H_bingham)

Source tags on the lines that implement a detail: [code <file>] = APRIL-ZJU/learn-to-calibrate@6639e06, the file under
rl_solver/ or Environment/ (the paper's text gives the idea; its settings are read from the code); [KGM] = Kent,
Ganeiber & Mardia 2013 (the Bingham sampler); [Forster] = Forster et al., T-RO 2017 (IMU preintegration);
"reconstruction" where none says (the mini-LIO that stands in for Faster-LIO, the simulator, the hand-eye baseline).
Arms, on each toy motion: l2calib (the flags as given), hand-eye (closed-form AX = XB on the same chunks), gaussian
(= --rot-dist gaussian, the code's other policy) and no-select (= --no-select: every chunk, no excitation score).

Commands:
    python algos/l2calib.py                                           # toy: every arm on full and planar motion
    python algos/l2calib.py --motions weak --arms l2calib hand-eye --updates 1000
    python algos/l2calib.py --imu imu.csv --lidar-poses lidar.tum --rho 0.1 --updates 8000 --arms l2calib hand-eye
    # a recording: IMU CSV (time, gyro xyz rad/s, accel xyz m/s^2) + LiDAR odometry poses (TUM: time x y z qx qy qz qw)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from shared.runs import Progress, RunLogger, fail, format_table, make_run_name, parse_args, pick_device, seed_everything

F64 = torch.float64  # every tensor: the tensors are tiny, and the Bingham normaliser wants the range
TRUE_RPY_DEG = (10.0, -5.0, 30.0)  # the toy rig's rotation: roll, pitch, yaw (degrees)
TRUE_T = (0.15, -0.10, 0.05)  # the toy rig's lever arm (m)
LIO_GAINS = (0.1, 0.2, 0.05)  # mini-LIO correction gains on rotation, position, velocity (reconstruction)
BIAS_GAINS = (0.02, 0.005)  # files: mini-LIO integral gains on the gyro and accelerometer biases (reconstruction)
SIM_NOISE = {  # toy sensor noise, standard deviations (reconstruction)
    "gyro": 0.005,  # rad/s, white
    "gyro_bias": 0.002,  # rad/s, constant per segment
    "accel": 0.05,  # m/s^2, white
    "accel_bias": 0.02,  # m/s^2, constant per segment
    "position": 0.003,  # m, LiDAR and INS odometry
    "rotation": math.radians(0.05),  # rad, LiDAR and INS odometry
}
INIT_ERROR_CAP_M = 300  # the init search clips e to [0, 300] m before r = exp(-e/2) [code train.py]
ODOMETRY_ROWS = 1024  # candidates per batched mini-LIO call: bounds the memory of one call
PRINT_EVERY_UPDATES = 50  # a progress line every 50 updates
PROGRESS_METRICS = ("reward", "charts/ape_cm", "charts/rot_err_deg")  # what the progress line shows (all: TensorBoard)


@dataclass
class Args:
    exp_name: str = "toy"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """seed of the simulator, the init search and the policies"""
    cuda: bool = True
    """run the odometry and the policies on the GPU when one is visible"""
    track: bool = False
    """also log to Weights & Biases"""
    num_threads: int = 1
    """torch CPU threads (1 is fastest: the tensors are tiny, more threads only add synchronisation)"""
    # data: a recording (files) or the toy
    imu: Optional[str] = None
    """IMU CSV (time s, gyro xyz rad/s, accel xyz m/s^2); with --lidar-poses, calibrate on these files"""
    lidar_poses: Optional[str] = None
    """LiDAR odometry in TUM format (time x y z qx qy qz qw): the filter's input and the reference"""
    gravity: tuple[float, float, float] = (0.0, 0.0, -9.81)
    """gravity in the pose file's world frame, m/s^2"""
    chunk_seconds: float = 15.0
    """length of a chunk of the files [code process_bag.cpp: 15 s]"""
    bias_estimation: Literal["auto", "on", "off"] = "auto"
    """estimate the gyro and accelerometer biases in the mini-LIO (two passes per run); auto: on for files, off in
    the toy (the toy's filter)"""
    motions: tuple[Literal["full", "weak", "planar"], ...] = ("full", "planar")
    """toy motions"""
    segments: int = 8
    """toy segments (chunks) per motion"""
    segment_seconds: float = 10.0
    """length of a toy segment"""
    noise: bool = True
    """add IMU and odometry noise in the toy"""
    # the arms and the method
    arms: tuple[Literal["l2calib", "hand-eye", "gaussian", "no-select"], ...] = (
        "l2calib",
        "hand-eye",
        "gaussian",
        "no-select",
    )
    """l2calib (the flags as given), hand-eye, gaussian (= --rot-dist gaussian), no-select (= --no-select)"""
    rot_dist: Literal["bingham", "gaussian"] = "bingham"
    """rotation distribution of the l2calib arm"""
    select: bool = True
    """keep only chunks whose excitation score passes --select-threshold"""
    select_threshold: float = 3e-3
    """excitation-score threshold [code process_bag.cpp]"""
    score_as_written: bool = False
    """score with the code's overlapping rows [code compute_eigen.hpp] instead of the intended H"""
    updates: int = 500
    """PPO updates per arm [code train.py: 1000, demos 8000]"""
    num_envs: int = 16
    """environments per call"""
    num_collects: int = 32
    """actions per update, a multiple of num_envs"""
    ppo_epochs: int = 8
    """full-batch epochs per update"""
    clip_coef: float = 0.2
    """PPO ratio clip and value clip"""
    vf_coef: float = 0.5
    """value-loss coefficient"""
    ent_coef: float = 0.01
    """entropy coefficient"""
    ent_halve_after: int = 300
    """halve the entropy coefficient after this update"""
    warmup_updates: int = 50
    """updates before this one train the value only"""
    learning_rate: float = 1e-3
    """Adam learning rate of every parameter"""
    lr_step: int = 300
    """StepLR period in updates"""
    lr_gamma: float = 10**-0.1
    """StepLR factor"""
    max_grad_norm: float = 1.0
    """gradient-norm clip per parameter group"""
    rho: float = 0.3
    """translation box [-rho, rho] m: init range and clamp on mu; sigma starts at and is capped to rho/2"""
    z_init: float = -20.0
    """initial Bingham concentrations (x3)"""
    z_cap: float = 5000.0
    """keep every z >= -z_cap (normaliser accuracy); not in the code"""
    init_search: bool = True
    """random-search initialisation; --no-init-search starts from t = 0, q = identity"""
    init_candidates: int = 64
    """random-search candidates"""
    init_stop_reward: float = 0.0
    """take the first candidate above this mean reward (code: 1e-3, of 8192); 0 takes the best"""
    clamp_as_written: bool = False
    """also clamp the 16 entries of A to [-rho, rho], like the code [code ppo.py]"""
    bingham_entropy_as_written: bool = False
    """the code's detached entropy gradient (pushes towards concentration) [code torch_bingham.py]"""


# ALGO LOGIC: rotations, scalar-last quaternions (x, y, z, w) as Eigen's Quaterniond(Vector4) [code evo_ape.hpp] -------
def so3_hat(w: torch.Tensor) -> torch.Tensor:
    """[..., 3] -> the cross-product matrix [w]x, [..., 3, 3]."""
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*w.shape[:-1], 3, 3)


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """[..., 4] (x, y, z, w) -> [..., 3, 3]: ((w^2 - v.v) I + 2 v v^T + 2 w [v]x) / |q|^2 (q need not be unit)."""
    v = q[..., :3]  # [..., 3], the vector part
    w = q[..., 3, None, None]  # [..., 1, 1], the scalar part
    eye = torch.eye(3, dtype=q.dtype, device=q.device)
    rot = (w**2 - (v * v).sum(-1)[..., None, None]) * eye + 2 * v[..., :, None] * v[..., None, :] + 2 * w * so3_hat(v)
    return rot / (q * q).sum(-1)[..., None, None]


def quat_mul(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hamilton product p (x) q, scalar-last."""
    pv = p[..., :3]  # [..., 3]
    pw = p[..., 3:]  # [..., 1]
    qv = q[..., :3]
    qw = q[..., 3:]
    return torch.cat([pw * qv + qw * pv + torch.cross(pv, qv, dim=-1), pw * qw - (pv * qv).sum(-1, keepdim=True)], -1)


def quat_conj(q: torch.Tensor) -> torch.Tensor:
    """The conjugate (the inverse of a unit quaternion)."""
    return torch.cat([-q[..., :3], q[..., 3:]], -1)


def quat_exp(phi: torch.Tensor) -> torch.Tensor:
    """Rotation vector [..., 3] -> unit quaternion."""
    theta = phi.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    return torch.cat([phi * torch.sin(theta / 2) / theta, torch.cos(theta / 2)], -1)


def quat_angle_deg(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between the rotations of p and q, degrees (sign-invariant)."""
    difference = quat_mul(quat_conj(p), q)
    return torch.rad2deg(2 * torch.atan2(difference[..., :3].norm(dim=-1), difference[..., 3].abs()))


def rpy_to_quat(rpy_deg) -> torch.Tensor:
    """Roll, pitch, yaw (degrees, R = Rz Ry Rx) -> quaternion."""
    qx, qy, qz = quat_exp(torch.eye(3, dtype=F64) * torch.deg2rad(torch.tensor(rpy_deg, dtype=F64))[:, None])
    return quat_mul(qz, quat_mul(qy, qx))


def so3_exp(phi: torch.Tensor) -> torch.Tensor:
    """Rotation vector [..., 3] -> [..., 3, 3] (Rodrigues, through the unit quaternion)."""
    return quat_to_rotmat(quat_exp(phi))


def so3_log(r: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] -> rotation vector (exact below pi; at pi itself the direction is lost)."""
    axis_sin = 0.5 * torch.stack(
        [r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1
    )
    sin = axis_sin.norm(dim=-1, keepdim=True)
    cos = 0.5 * (r.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True) - 1)
    theta = torch.atan2(sin, cos)
    return axis_sin * torch.where(sin < 1e-9, 1 + theta**2 / 6, theta / sin.clamp_min(1e-9))


def so3_right_jacobian(phi: torch.Tensor) -> torch.Tensor:
    """Right Jacobian [..., 3, 3], Exp(phi + d) ~ Exp(phi) Exp(J_r d), t = |phi|:
    J_r = I - (1 - cos t) / t^2 [phi]x + (t - sin t) / t^3 [phi]x^2."""
    theta = phi.norm(dim=-1)[..., None, None]
    small = theta < 1e-4
    safe = torch.where(small, torch.ones_like(theta), theta)
    c1 = torch.where(small, 0.5 - theta**2 / 24, (1 - torch.cos(safe)) / safe**2)
    c2 = torch.where(small, 1 / 6 - theta**2 / 120, (safe - torch.sin(safe)) / safe**3)
    hat = so3_hat(phi)
    return torch.eye(3, dtype=phi.dtype, device=phi.device) - c1 * hat + c2 * hat @ hat


# ALGO LOGIC: the Bingham distribution on S^3 [code bingham/; KGM] -----------------------------------------------------
GAUSS_LEGENDRE_NODES, GAUSS_LEGENDRE_WEIGHTS = np.polynomial.legendre.leggauss(128)  # on [-1, 1]; see the normaliser


def _check_bingham(z: torch.Tensor, m: torch.Tensor | None = None) -> None:
    """Concentrations finite and <= 0, M orthonormal: a message instead of a NaN later."""
    if not torch.isfinite(z).all() or (z > 0).any():
        fail(f"Bingham concentrations must be finite and <= 0 (z_4 = 0 belongs to the mode), got {z.tolist()}")
    if m is not None:
        err = (m.transpose(-1, -2) @ m - torch.eye(4, dtype=m.dtype, device=m.device)).abs().max().item()
        if not err < (1e-6 if m.dtype == F64 else 1e-4):
            fail(f"the Bingham matrix M must be orthonormal (max |M^T M - I| = {err:.2e}): pass A through gram_schmidt")


def gram_schmidt(a: torch.Tensor) -> torch.Tensor:
    """Classical Gram-Schmidt on the columns of [..., 4, 4], first to last [code bingham/gram_schmidt.py]."""
    cols = []
    for j in range(a.shape[-1]):
        v = a[..., :, j]
        for c in cols:
            v = v - (c * v).sum(-1, keepdim=True) * c
        cols.append(v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9))
    return torch.stack(cols, -1)


def bingham_log_normalizer(z: torch.Tensor) -> torch.Tensor:
    """log F for z [..., 3] (<= 0; z_4 = 0), F w.r.t. the surface measure of S^3 (F(0) = 2 pi^2):
    F = 2 pi^2 int_0^1 exp(u (z1+z2)/2 + (1-u) z3/2) I0(u (z1-z2)/2) I0((1-u) z3/2) du, 128-node Gauss-Legendre.
    Accurate to ~3e-5 for |z| <= 5000 (reconstruction; the code fits an MLP instead [code bingham/utils.py]);
    dlogF/dz_i = E[(m_i^T q)^2]."""
    _check_bingham(z)
    u = torch.as_tensor((GAUSS_LEGENDRE_NODES + 1) / 2, dtype=z.dtype, device=z.device)  # [128], nodes on [0, 1]
    log_w = torch.as_tensor(np.log(GAUSS_LEGENDRE_WEIGHTS / 2), dtype=z.dtype, device=z.device)  # [128]
    z1 = z[..., 0, None]  # [..., 1]
    z2 = z[..., 1, None]  # [..., 1]
    z3 = z[..., 2, None]  # [..., 1]
    x1 = u * (z1 - z2).abs() / 2  # [..., 128]
    x2 = (1 - u) * z3.abs() / 2  # [..., 128]
    g = u * (z1 + z2) / 2 + (1 - u) * z3 / 2 + log_i0(x1) + log_i0(x2)  # [..., 128]
    return math.log(2 * math.pi**2) + torch.logsumexp(g + log_w, -1)


def log_i0(x: torch.Tensor) -> torch.Tensor:
    """log I0(x) for x >= 0 without overflow: i0e(x) = exp(-x) I0(x)."""
    return torch.log(torch.special.i0e(x)) + x


def bingham_entropy(z: torch.Tensor, as_written: bool = False) -> torch.Tensor:
    """H = log F - sum_i z_i dlogF/dz_i. as_written: gradient through the explicit z only, like the code, which takes
    log F and dlogF/dz on a detached copy of Z [code bingham/torch_bingham.py entropy]."""
    graph = torch.is_grad_enabled() and z.requires_grad and not as_written
    zz = z if graph else z.detach().requires_grad_(True)
    with torch.enable_grad():
        log_f = bingham_log_normalizer(zz)
        (dlog_f,) = torch.autograd.grad(log_f.sum(), zz, create_graph=graph)
    if not graph:
        return log_f.detach() - (z * dlog_f.detach()).sum(-1)
    return log_f - (z * dlog_f).sum(-1)


def bingham_log_prob(q: torch.Tensor, m: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(q) = sum_{i<=3} z_i (m_i^T q)^2 - log F, q [..., 4], m [4, 4] (columns, mode m[:, 3]), z [3]."""
    _check_bingham(z, m)
    return (z * (q @ m[:, :3]) ** 2).sum(-1) - bingham_log_normalizer(z)


def sample_bingham(m: torch.Tensor, z: torch.Tensor, num_samples: int, generator=None) -> torch.Tensor:
    """[KGM]: rejection from an angular central Gaussian; [num_samples, 4], no gradient. The exact b, and proposals
    until every sample is accepted (the code takes b from its normaliser network and keeps an unaccepted proposal
    when none of 10 passes [code bingham/torch_bingham.py rsample])."""
    _check_bingham(z, m)
    m = m.detach()
    z = z.detach()
    lam = torch.cat([-z, z.new_zeros(1)])  # [4], eigenvalues of B = -M diag(z, 0) M^T
    lam_np = lam.cpu().double().numpy()
    low = 1e-12
    high = 4.0
    for _ in range(100):  # bisection: b in (0, 4] with sum_i 1 / (b + 2 lam_i) = 1
        b = 0.5 * (low + high)
        if (1 / (b + 2 * lam_np)).sum() > 1:
            low = b
        else:
            high = b
    omega = 1 + 2 * lam / b  # [4], eigenvalues of Omega = I + 2B/b
    log_m_star = -(4 - b) / 2 + 2 * math.log(4 / b)
    accepted = []
    have = 0
    options = dict(generator=generator, dtype=m.dtype, device=m.device)
    for _ in range(10_000):
        n = 2 * (num_samples - have) + 16
        y = torch.randn(n, 4, **options) / omega.sqrt() @ m.T  # [n, 4], y ~ N(0, Omega^-1)
        x = y / y.norm(dim=-1, keepdim=True)  # [n, 4], the ACG proposal
        x_m2 = (x @ m) ** 2  # [n, 4]
        log_accept = -(lam * x_m2).sum(-1) - log_m_star + 2 * torch.log((omega * x_m2).sum(-1))  # [n]
        accepted.append(x[torch.rand(n, **options).log() < log_accept])
        have += len(accepted[-1])
        if have >= num_samples:
            return torch.cat(accepted)[:num_samples]
    raise RuntimeError("Bingham sampler: no acceptance")


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, diag sigma^2) summed over the last axis."""
    return (-0.5 * ((x - mu) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_sigma: torch.Tensor) -> torch.Tensor:
    """Entropy of N(mu, diag sigma^2)."""
    return (0.5 + 0.5 * math.log(2 * math.pi) + log_sigma).sum(-1)


# ALGO LOGIC: the reward, a mini-LIO run per candidate and Umeyama [code evo_ape.hpp, solver.py] -----------------------
def umeyama_rmse(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """RMSE after the best SE(3) alignment (no scale) of estimate onto reference: [..., N, 3] x 2 -> [...]
    [code evo_ape.hpp]. The reward is r = exp(-e/2), unclipped [code solver.py]."""
    mu_e = estimate.mean(-2, keepdim=True)  # [..., 1, 3]
    mu_r = reference.mean(-2, keepdim=True)  # [..., 1, 3]
    u, _, vh = torch.linalg.svd((reference - mu_r).transpose(-1, -2) @ (estimate - mu_e))  # [..., 3, 3]
    d = torch.ones_like(u[..., 0])
    d[..., 2] = torch.det(u) * torch.det(vh)  # a rotation, not a reflection
    aligned = (estimate - mu_e) @ (u @ (d[..., :, None] * vh)).transpose(-1, -2) + mu_r
    return ((aligned - reference) ** 2).sum(-1).mean(-1).sqrt()


def preintegrate(imu_t, gyro, acc, pose_t) -> dict:
    """IMU deltas between consecutive pose stamps, each IMU sample held until the next (zero-order hold). With them
    R_j+1 = R_j dR, v_j+1 = v_j + R_j dv + g dt, p_j+1 = p_j + v_j dt + R_j dp + g dt^2/2: exactly the per-sample
    model R <- R Exp(w h), p <- p + v h + (R a + g) h^2/2, v <- v + (R a + g) h.
    Also the first-order bias Jacobians [Forster] ("On-manifold preintegration", T-RO 2017, eqs. in App. B):
    for biases b_g, b_a subtracted from the samples, dR(b) = dR Exp(J_R b_g), dv(b) = dv + J_vg b_g + J_va b_a,
    dp(b) = dp + J_pg b_g + J_pa b_a."""
    imu_t = imu_t.contiguous()
    pose_t = pose_t.contiguous()
    breaks = torch.unique(torch.cat([imu_t[(imu_t > pose_t[0]) & (imu_t < pose_t[-1])], pose_t]))  # sorted
    start = breaks[:-1]  # [P], start of each piece of constant IMU sample within one pose interval
    h = breaks.diff()  # [P], its length
    sample = torch.searchsorted(imu_t, start, right=True) - 1  # held IMU sample of each piece
    interval = torch.searchsorted(pose_t, start, right=True) - 1  # pose interval of each piece
    n_int = len(pose_t) - 1
    slot = torch.arange(len(start)) - torch.searchsorted(interval, torch.arange(n_int))[interval]
    pieces = int(slot.max()) + 1  # K, the most pieces in one interval
    w_pad = imu_t.new_zeros(n_int, pieces, 3)  # [I, K, 3], the gyro sample of each piece (zero-padded)
    a_pad = imu_t.new_zeros(n_int, pieces, 3)  # [I, K, 3], the accelerometer sample
    h_pad = imu_t.new_zeros(n_int, pieces)  # [I, K], the piece's length (0 = padding)
    w_pad[interval, slot] = gyro[sample]
    a_pad[interval, slot] = acc[sample]
    h_pad[interval, slot] = h
    dq = torch.tensor([0.0, 0, 0, 1], dtype=F64).repeat(n_int, 1)  # [I, 4]
    dv = imu_t.new_zeros(n_int, 3)  # [I, 3]
    dp = imu_t.new_zeros(n_int, 3)  # [I, 3]
    j_r = imu_t.new_zeros(n_int, 3, 3)  # the bias Jacobians, [I, 3, 3] each
    j_vg = imu_t.new_zeros(n_int, 3, 3)
    j_va = imu_t.new_zeros(n_int, 3, 3)
    j_pg = imu_t.new_zeros(n_int, 3, 3)
    j_pa = imu_t.new_zeros(n_int, 3, 3)
    for k in range(pieces):  # vectorised over intervals
        rot_k = quat_to_rotmat(dq)  # [I, 3, 3]
        h_k = h_pad[:, k, None]  # [I, 1]
        acc_k = (rot_k @ a_pad[:, k, :, None])[..., 0]  # [I, 3]
        h_m = h_k[..., None]  # [I, 1, 1]
        rot_acc_jr = rot_k @ so3_hat(a_pad[:, k]) @ j_r  # dR [a]x J_R, [I, 3, 3]
        j_pa = j_pa + j_va * h_m - 0.5 * rot_k * h_m**2  # the position Jacobians take the old velocity ones
        j_pg = j_pg + j_vg * h_m - 0.5 * rot_acc_jr * h_m**2
        j_va = j_va - rot_k * h_m
        j_vg = j_vg - rot_acc_jr * h_m
        step = w_pad[:, k] * h_k  # [I, 3]
        j_r = so3_exp(step).transpose(-1, -2) @ j_r - so3_right_jacobian(step) * h_m
        dp = dp + dv * h_k + 0.5 * acc_k * h_k**2  # the old dv
        dv = dv + acc_k * h_k
        dq = quat_mul(dq, quat_exp(w_pad[:, k] * h_k))
    jacobians = {"J_R": j_r, "J_vg": j_vg, "J_va": j_va, "J_pg": j_pg, "J_pa": j_pa}
    return {"dq": dq, "dR": quat_to_rotmat(dq), "dv": dv, "dp": dp, "dt": pose_t.diff(), **jacobians}


def lio_run(data: dict, chunk, q_hat, t_hat, gravity, biases=None, bias_gains=(0.0, 0.0)):
    """One mini-LIO pass per candidate X_hat = (q_hat [B, 4], t_hat [B, 3]) on chunk [B] (reconstruction: it stands in
    for the code's Faster-LIO [code fasterlio/], on poses instead of scans: start at the first pose through X_hat,
    propagate with the IMU, pull (R, p, v) towards each pose by LIO_GAINS). Returns the LiDAR positions [B, N, 3]
    and, with biases = (b_g [B, 3], b_a [B, 3]) (the IMU biases, body frame), their estimates at every
    pose ([B, N, 3] each): the preintegrated deltas are corrected to first order, and the biases are integral states
    b_g -= k_bg phi / dt, b_a -= k_ba R^T d / dt^2 on the rotation (phi) and position (d) innovations."""
    k_r, k_p, k_v = LIO_GAINS
    k_bg, k_ba = bias_gains
    r_wl = data["R"][chunk]  # [B, N, 3, 3], the LiDAR orientations
    p_wl = data["p"][chunk]  # [B, N, 3], the LiDAR positions
    d_r = data["dR"][chunk]  # [B, N-1, 3, 3], the preintegrated rotations
    d_pv = torch.stack([data["dp"][chunk], data["dv"][chunk]], -1)  # [B, N-1, 3, 2]
    dt = data["dt"][chunk, :, None]  # [B, N-1, 1]
    g_dt = gravity * dt  # [B, N-1, 3]
    g_dt2 = 0.5 * gravity * dt**2  # [B, N-1, 3]
    r_m = r_wl @ quat_to_rotmat(q_hat).transpose(-1, -2)[:, None]  # IMU orientations implied by X_hat, [B, N, 3, 3]
    p_m = p_wl - (r_m @ t_hat[:, None, :, None])[..., 0]  # IMU positions implied by X_hat, [B, N, 3]
    if biases is not None:
        j_r = data["J_R"][chunk]  # [B, N-1, 3, 3]
        j_g = torch.stack([data["J_pg"][chunk], data["J_vg"][chunk]], -1)  # [B, N-1, 3, 3, 2]: (position, velocity)
        j_a = torch.stack([data["J_pa"][chunk], data["J_va"][chunk]], -1)  # [B, N-1, 3, 3, 2]
        b_g, b_a = biases
        trace = [(b_g, b_a)]

    def deltas(j):  # the preintegrated rotation and (position, velocity) deltas of interval j, bias-corrected
        if biases is None:
            return d_r[:, j], d_pv[:, j]
        correction = torch.einsum("bikc,bk->bic", j_g[:, j], b_g) + torch.einsum("bikc,bk->bic", j_a[:, j], b_a)
        return d_r[:, j] @ so3_exp((j_r[:, j] @ b_g[..., None])[..., 0]), d_pv[:, j] + correction

    rot = r_m[:, 0]  # [B, 3, 3]
    pos = p_m[:, 0]  # [B, 3]
    vel = (p_m[:, 1] - pos - (rot @ deltas(0)[1][..., :1])[..., 0] - g_dt2[:, 0]) / dt[:, 0]  # exact under the model
    rotations = [rot]
    positions = [pos]
    for j in range(r_wl.shape[1] - 1):
        d_rot, d_pos_vel = deltas(j)
        inc = rot @ d_pos_vel  # [B, 3, 2]
        pos = pos + vel * dt[:, j] + inc[..., 0] + g_dt2[:, j]  # 1. propagate (with the old velocity)
        vel = vel + inc[..., 1] + g_dt[:, j]
        rot = rot @ d_rot
        phi = so3_log(rot.transpose(-1, -2) @ r_m[:, j + 1])  # rotation innovation, body frame, [B, 3]
        rot = rot @ so3_exp(k_r * phi)  # 2. correct towards the pose
        delta = p_m[:, j + 1] - pos
        pos = pos + k_p * delta
        vel = vel + k_v * delta / dt[:, j]
        if biases is not None:  # 3. the bias states (files only)
            b_g = b_g - k_bg * phi / dt[:, j]
            b_a = b_a - k_ba * (rot.transpose(-1, -2) @ delta[..., None])[..., 0] / dt[:, j] ** 2
            trace.append((b_g, b_a))
        rotations.append(rot)
        positions.append(pos)
    lidar_pos = (
        torch.stack(positions, 1) + (torch.stack(rotations, 1) @ t_hat[:, None, :, None])[..., 0]
    )  # 4. output, [B, N, 3]
    if biases is None:
        return lidar_pos, None
    return lidar_pos, tuple(torch.stack(b, 1) for b in zip(*trace))


def lio_biases(data: dict, chunk, q_hat, t_hat, gravity) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1 of the bias-estimating mini-LIO: run from zero biases with BIAS_GAINS; the estimate is the mean over the
    second half of the chunk (after the integral states have settled). Returns (b_g [B, 3], b_a [B, 3])."""
    zeros = torch.zeros_like(t_hat)
    _, (b_g, b_a) = lio_run(data, chunk, q_hat, t_hat, gravity, (zeros, zeros), BIAS_GAINS)  # [B, N, 3] each
    half = b_g.shape[1] // 2
    return b_g[:, half:].mean(1), b_a[:, half:].mean(1)


def lio_rmse(data: dict, chunk, q_hat, t_hat, gravity, estimate_biases: bool = False) -> torch.Tensor:
    """One mini-LIO run per candidate X_hat = (q_hat [B, 4], t_hat [B, 3]) on chunk [B]; returns e [B] in metres.
    estimate_biases: two passes, the second with the biases of `lio_biases` held (a 15 s chunk is short against
    bias drift), so the chunk's start is not spent converging."""
    biases = lio_biases(data, chunk, q_hat, t_hat, gravity) if estimate_biases else None
    lidar_pos, _ = lio_run(data, chunk, q_hat, t_hat, gravity, biases)
    e = umeyama_rmse(lidar_pos, data["p"][chunk])
    return torch.nan_to_num(e, nan=1e3, posinf=1e3)  # a diverged run scores badly


def excitation_score(r_wl: torch.Tensor, dt: torch.Tensor, as_written: bool = False) -> torch.Tensor:
    """From a chunk's LiDAR orientations [N, 3, 3]: H = sum_j [w_j]x^T [w_j]x, (l1, l2, l3) = eig(H)/100,
    score = l1 l2 + l1 l3 + l2 l3 [code compute_eigen.hpp]. as_written: the 3x3 blocks written one row apart, so
    they overlap, as the code's row index does (its unwritten rows are zeros here)."""
    hats = so3_hat(so3_log(r_wl[:-1].transpose(-1, -2) @ r_wl[1:]) / dt[:, None])  # body rates, [N-1, 3, 3]
    # H = J^T J with the blocks stacked 3 rows apart; as written, 1 row apart: row k = first row of block k
    jac = torch.cat([hats[:, 0], hats[-1, 1:]]) if as_written else hats.reshape(-1, 3)
    lam = torch.linalg.eigvalsh(jac.T @ jac) / 100  # [3]
    return lam[0] * lam[1] + lam[0] * lam[2] + lam[1] * lam[2]


# ALGO LOGIC: the hand-eye baseline, closed-form AX = XB (reconstruction) ----------------------------------------------
def hand_eye(relative_a, relative_b):
    """Closed-form AX = XB: the rotation is the null vector of the stacked L(q_A) - R(q_B), the translation least
    squares on (R_A - I) t = R t_B - t_A. relative_a / relative_b: (quaternions [K, 4], translations [K, 3] or None)
    of the IMU and LiDAR relative motions. Returns (q_x [4], t_x [3] or None, the 4 singular values of the rotation
    system: two near zero mean the rotation is not observable, e.g. planar motion)."""
    qa, ta = relative_a
    qb, tb = relative_b
    qa = qa * torch.sign(qa[:, 3:])  # [K, 4], one sign convention (w >= 0)
    qb = qb * torch.sign(qb[:, 3:])
    eye = torch.eye(3, dtype=qa.dtype)

    def mult(q, left):  # [K, 4, 4]: q (x) p = L(q) p, p (x) q = R(q) p
        top = q[:, 3, None, None] * eye + (1 if left else -1) * so3_hat(q[:, :3])
        return torch.cat([torch.cat([top, q[:, :3, None]], -1), torch.cat([-q[:, None, :3], q[:, 3:, None]], -1)], 1)

    _, sing, vh = torch.linalg.svd((mult(qa, True) - mult(qb, False)).reshape(-1, 4))  # q_A (x) q_X = q_X (x) q_B
    q_x = vh[-1] * torch.sign(vh[-1, 3])
    if ta is None:
        return q_x, None, sing
    rhs = (quat_to_rotmat(q_x) @ tb[..., None])[..., 0] - ta  # (R_A - I) t = R t_B - t_A
    t_x = torch.linalg.lstsq((quat_to_rotmat(qa) - eye).reshape(-1, 3), rhs.reshape(-1, 1), driver="gelsd").solution
    return q_x, t_x[:, 0], sing


# TRY NOT TO MODIFY: data: the toy simulator (reconstruction), the files, the chunks -----------------------------------
def simulate(motion: str, n_seg: int, seconds: float, noise: bool, gen, imu_rate=50, every=5, bias_scale=1.0) -> dict:
    """n_seg segments with the filter's own discrete model: IMU [S, K+1, 3], LiDAR and INS poses every `every`.
    bias_scale multiplies the std of the constant IMU biases (0.002 rad/s, 0.02 m/s^2 per axis) alone."""
    steps = int(seconds * imu_rate) // every * every  # IMU steps, a whole number of LiDAR intervals
    dt = 1 / imu_rate
    g = torch.tensor([0.0, 0, -9.81], dtype=F64)
    t = torch.arange(steps + 1, dtype=F64) * dt  # [K+1]

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=F64)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    level = torch.linspace(1.0, 0.15, n_seg, dtype=F64)[torch.randperm(n_seg, generator=gen)]  # excitation per segment

    def sines(amplitude):  # [S, K+1, 3], three sines of 0.05-0.5 Hz, rms level * amplitude / sqrt 2
        weights = rand(n_seg, 3, 3)
        frequency = 0.05 + 0.45 * rand(n_seg, 3, 3)
        phase = 2 * math.pi * rand(n_seg, 3, 3)
        waves = torch.sin(2 * math.pi * frequency[:, None] * t[:, None, None] + phase[:, None])  # [S, K+1, 3, 3]
        amplitude = level[:, None, None] * torch.tensor(amplitude, dtype=F64)
        return amplitude * (waves * (weights / weights.norm(dim=-1, keepdim=True))[:, None]).sum(-1)

    omega = sines([math.radians(a) for a in {"full": (40, 40, 60), "weak": (3, 3, 40), "planar": (0, 0, 40)}[motion]])
    if motion == "full":  # random attitude, world accelerations +-1.5 m/s^2
        q = torch.nn.functional.normalize(randn(n_seg, 4), dim=-1)  # [S, 4]
        vel = 0.5 * randn(n_seg, 3)  # [S, 3]
        acc_w = sines([1.5] * 3)  # [S, K+1, 3]
    else:  # car-like: level start, 2 +- 0.5 m/s forward, a = R (w x v_b + dv_b/dt)
        q = quat_exp(torch.cat([torch.zeros(n_seg, 2, dtype=F64), 2 * math.pi * rand(n_seg, 1)], -1))
        phase = 2 * math.pi * rand(n_seg, 1)
        v_b = torch.stack([2 + 0.5 * torch.sin(0.3 * t + phase), 0 * t.expand(n_seg, -1), 0 * t.expand(n_seg, -1)], -1)
        acc_b = torch.cross(omega, v_b, dim=-1) + 0.15 * torch.cos(0.3 * t + phase)[..., None] * torch.eye(3)[0]
        vel = (quat_to_rotmat(q) @ v_b[:, 0, :, None])[..., 0]
    pos = torch.zeros(n_seg, 3, dtype=F64)
    quats = []
    positions = []
    specific = []
    for k in range(steps + 1):
        rot = quat_to_rotmat(q)
        a_w = acc_w[:, k] if motion == "full" else (rot @ acc_b[:, k, :, None])[..., 0]
        quats.append(q)
        positions.append(pos)
        specific.append((rot.transpose(-1, -2) @ (a_w - g)[..., None])[..., 0])  # accelerometer: R^T (a - g)
        pos = pos + vel * dt + 0.5 * a_w * dt**2  # with the old velocity
        vel = vel + a_w * dt
        q = quat_mul(q, quat_exp(omega[:, k] * dt))
    sd = SIM_NOISE if noise else {name: 0.0 for name in SIM_NOISE}
    gyro = omega + sd["gyro"] * randn(n_seg, steps + 1, 3) + bias_scale * sd["gyro_bias"] * randn(n_seg, 1, 3)
    white = sd["accel"] * randn(n_seg, steps + 1, 3)
    acc = torch.stack(specific, 1) + white + bias_scale * sd["accel_bias"] * randn(n_seg, 1, 3)
    q_i = torch.stack(quats, 1)[:, ::every]  # [S, N, 4], IMU poses at the LiDAR stamps
    p_i = torch.stack(positions, 1)[:, ::every]  # [S, N, 3]
    x_q = rpy_to_quat(TRUE_RPY_DEG).expand_as(q_i)
    x_t = torch.tensor(TRUE_T, dtype=F64)

    def noisy(quaternions, points):  # an odometry's error: a small rotation, then a position jitter
        rotated = quat_mul(quaternions, quat_exp(sd["rotation"] * randn(*points.shape)))
        return rotated, points + sd["position"] * randn(*points.shape)

    q_l, p_l = noisy(quat_mul(q_i, x_q), p_i + (quat_to_rotmat(q_i) @ x_t[:, None])[..., 0])  # T_WL = T_WI X
    q_ins, p_ins = noisy(q_i, p_i)
    return dict(imu_t=t, gyro=gyro, acc=acc, pose_t=t[::every], q_l=q_l, p_l=p_l, q_ins=q_ins, p_ins=p_ins)


def read_table(path: str, columns: int, what: str) -> torch.Tensor:
    """Rows of a CSV / whitespace file; '#' lines and one header line skipped; errors name the line."""
    if not Path(path).is_file():
        fail(f"{what} file {path} does not exist")
    with open(path, "rb") as file:
        binary = b"\x00" in file.read(65536)  # a rosbag or a .npy shows itself here, before a large read
    try:
        text = None if binary else Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None:
        fail(f"{path} is a binary file: {what} must be text (CSV or whitespace-separated numbers, one row a line)")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            if number == 1:
                continue  # a header
            fail(f"{path}:{number}: not numbers: {line.strip()!r}")
        if len(values) != columns:
            fail(f"{path}:{number}: {what} needs {columns} columns, got {len(values)}")
        if not all(map(math.isfinite, values)):
            fail(f"{path}:{number}: NaN or infinite value in {what}")
        if rows and values[0] <= rows[-1][0]:
            fail(f"{path}:{number}: time {values[0]} does not come after {rows[-1][0]}")
        rows.append(values)
    if len(rows) < 2:
        fail(f"{path}: fewer than 2 rows of {what}")
    return torch.tensor(rows, dtype=F64)


def load_files(args: Args) -> dict:
    """The real path: IMU CSV + TUM poses -> one recording laid out like a toy segment."""
    imu = read_table(args.imu, 7, "IMU (time, gyro xyz, accel xyz)")
    tum = read_table(args.lidar_poses, 8, "TUM poses")
    accel = imu[:, 4:].norm(dim=-1).median().item()
    if not 0.5 < accel / float(np.linalg.norm(args.gravity)) < 1.5:
        fail(f"median |accel| is {accel:.3g}, far from |gravity|: give the accelerations in m/s^2")
    keep = (tum[:, 0] >= imu[0, 0]) & (tum[:, 0] <= imu[-1, 0])
    if not keep.any():
        fail(
            f"IMU times [{imu[0, 0]:.3f}, {imu[-1, 0]:.3f}] and pose times [{tum[0, 0]:.3f}, {tum[-1, 0]:.3f}] do "
            "not overlap: both files must use one clock"
        )
    norm = tum[keep, 4:].norm(dim=-1, keepdim=True)
    tum = tum[keep]
    if (norm < 0.5).any():
        fail(f"{args.lidar_poses}: a quaternion has norm {norm.min().item():.3g}; expected unit qx qy qz qw")
    rec = dict(imu_t=imu[:, 0], gyro=imu[:, 1:4], acc=imu[:, 4:], pose_t=tum[:, 0], p_l=tum[:, 1:4])
    return dict(rec, q_l=tum[:, 4:] / norm)


def make_chunks(recordings: list[dict], size: int | None, score_as_written: bool) -> dict:
    """Cut recordings into chunks of `size` poses (None: one per recording), preintegrate and score each."""
    out = {}
    for rec in recordings:
        n = len(rec["pose_t"])
        if n < (size or 3):
            fail(
                f"only {n} poses lie inside the IMU time range, but a chunk needs {size or 3}: record longer or "
                "lower --chunk-seconds"
            )
        for s in range(0, n - (size or n) + 1, size or n):
            part = {k: rec[k][s : s + (size or n)] for k in ("pose_t", "q_l", "p_l", "q_ins", "p_ins") if k in rec}
            chunk = preintegrate(rec["imu_t"], rec["gyro"], rec["acc"], part.pop("pose_t"))
            chunk.update(part, R=quat_to_rotmat(part["q_l"]), p=part["p_l"])
            chunk["score"] = excitation_score(chunk["R"], chunk["dt"], score_as_written)
            for k, v in chunk.items():
                out.setdefault(k, []).append(v)
    return {k: torch.stack(v) for k, v in out.items()}


# ALGO LOGIC: the policies: Gaussian t x Bingham q [code common.py CustomActor_B], 7-D Gaussian [code common.py Actor] -
def init_policy(kind: str, t0: torch.Tensor, q0: torch.Tensor, args: Args, gen) -> dict[str, torch.nn.Parameter]:
    """mu = t0, sigma = rho/2; Bingham: A = [random orthonormal | q0], z = z_init; Gaussian: mu_q = q0, std 0.1."""
    half = math.log(args.rho / 2)
    if kind == "gaussian":
        log_sigma = torch.tensor([half] * 3 + [math.log(0.1)] * 4, dtype=t0.dtype, device=t0.device)
        policy = {"mu": torch.cat([t0, q0]), "log_sigma": log_sigma}
    else:
        columns = torch.rand(4, 3, generator=gen, dtype=t0.dtype, device=t0.device)  # the code uses np.random.rand
        a = gram_schmidt(torch.cat([q0[:, None], columns], 1))[:, [1, 2, 3, 0]]  # last column: q0 itself
        zeta = torch.full_like(t0, math.log(-args.z_init))
        policy = {"mu": t0, "log_sigma": torch.full_like(t0, half), "a": a, "zeta": zeta}
    return {k: torch.nn.Parameter(v.clone()) for k, v in policy.items()}


def policy_mean(policy: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(mode quaternion, mean translation)."""
    if "a" in policy:
        return gram_schmidt(policy["a"])[:, 3], policy["mu"]
    return policy["mu"][3:] / policy["mu"][3:].norm(), policy["mu"][:3]


def sample_actions(policy: dict, n: int, gen) -> torch.Tensor:
    """[n, 7] actions (t, q); with the Gaussian, q is the raw unnormalised sample."""
    eps = torch.randn(n, len(policy["mu"]), generator=gen, dtype=policy["mu"].dtype, device=policy["mu"].device)
    x = policy["mu"] + policy["log_sigma"].exp() * eps
    return (
        torch.cat([x, sample_bingham(gram_schmidt(policy["a"]), -policy["zeta"].exp(), n, gen)], 1)
        if "a" in policy
        else x
    )


def log_prob_entropy(
    policy: dict, actions: torch.Tensor, as_written: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(a) [n] and the entropy of the policy (Gaussian + Bingham)."""
    if "a" not in policy:
        return gaussian_log_prob(actions, policy["mu"], policy["log_sigma"]), gaussian_entropy(policy["log_sigma"])
    z = -policy["zeta"].exp()
    log_p = gaussian_log_prob(actions[:, :3], policy["mu"], policy["log_sigma"])
    log_p = log_p + bingham_log_prob(actions[:, 3:], gram_schmidt(policy["a"]), z)
    return log_p, gaussian_entropy(policy["log_sigma"]) + bingham_entropy(z, as_written)


def rotation_spread_deg(policy: dict) -> torch.Tensor:
    """Rotation std per IMU axis: Bingham axis i turns about a_i = vec(m_i (x) m*) with variance 2/|z_i|."""
    m = gram_schmidt(policy["a"])
    axes = quat_mul(m[:, :3].T, quat_conj(m[:, 3]).expand(3, 4))[:, :3]  # [3 Bingham axes, xyz]
    return torch.rad2deg(((2 / policy["zeta"].exp())[:, None] * axes**2).sum(0).sqrt())


# ALGO LOGIC: the method: random-search init and state-less one-step PPO [code ppo.py, solver.py] ----------------------
def ppo_losses(
    log_p: torch.Tensor,
    old_log_p: torch.Tensor,
    advantage: torch.Tensor,
    value: torch.Tensor,
    old_value: torch.Tensor,
    reward: torch.Tensor,
    clip_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO-clip [code ppo.py]: -mean min(A rho, A clip(rho, 1 -+ c)), rho = pi/pi_old, and the clipped value loss
    mean max((V - r)^2, (V_old + clip(V - V_old, -+c) - r)^2); the value V is one scalar (no observation).
    Returns (policy loss, value loss, fraction of clipped ratios); log_p, old_log_p, advantage, reward: [n]."""
    ratio = torch.exp(log_p - old_log_p)  # [n]
    clipped = ratio.clamp(1 - clip_coef, 1 + clip_coef)  # [n]
    policy_loss = -torch.min(advantage * ratio, advantage * clipped).mean()
    value_clipped = old_value + (value - old_value).clamp(-clip_coef, clip_coef)
    value_loss = torch.max((value - reward) ** 2, (value_clipped - reward) ** 2).mean()
    clip_fraction = ((ratio - 1).abs() > clip_coef).double().mean()
    return policy_loss, value_loss, clip_fraction


@dataclass
class Arm:
    """One RL arm on one data set: the chunks it may use, its own generator, and (after the init search) its policy
    and optimiser. `name` (e.g. "planar/no-select") is its TensorBoard run, arms/<name>/."""

    name: str
    kind: str
    chunks: torch.Tensor
    generator: torch.Generator
    calls: int = 0
    policy: Optional[dict] = None
    value: Optional[torch.nn.Parameter] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    scheduler: Optional[torch.optim.lr_scheduler.StepLR] = None
    best_err: float = math.inf
    answer: Optional[tuple] = None
    curves: list = field(default_factory=list)


def next_chunk_ids(arm: Arm, rows: int, num_envs: int) -> torch.Tensor:
    """Chunk ids [rows] for the arm's next rows // num_envs calls: env i of call c runs chunk (i + num_envs c) mod n
    [code bind.cpp]."""
    env = torch.arange(rows, device=arm.chunks.device)
    ids = arm.chunks[(env + num_envs * arm.calls) % len(arm.chunks)]
    arm.calls += rows // num_envs
    return ids


def odometry_errors(
    bank: dict, requests: list, gravity, estimate_biases: bool, rows: int = ODOMETRY_ROWS, progress=None
) -> list:
    """One mini-LIO run per candidate for every (q [B, 4], t [B, 3], chunk ids [B]) in `requests`, batched across
    them in calls of at most `rows` candidates; returns each request's errors [B] (m). `progress` (a Progress)
    advances by one per call."""
    q = torch.cat([request[0] for request in requests])  # [sum B, 4]
    t = torch.cat([request[1] for request in requests])  # [sum B, 3]
    ids = torch.cat([request[2] for request in requests])  # [sum B]
    errors = []
    for s in range(0, len(q), rows):
        errors.append(lio_rmse(bank, ids[s : s + rows], q[s : s + rows], t[s : s + rows], gravity, estimate_biases))
        if progress is not None:
            progress.update()
    return list(torch.cat(errors).split([len(request[0]) for request in requests]))


def ppo_update(arm: Arm, actions, old_log_p, old_value, reward, update: int, args: Args) -> dict:
    """Steps 7-8 of main for one arm: standardised advantage, full-batch PPO epochs, the clamps. Returns the stats."""
    policy = arm.policy
    value = arm.value
    # 7. advantage r - V standardised over the batch (one-step episodes: no discount, no GAE) [code buffer.py]
    adv = reward - old_value  # [n]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    # 8. full-batch PPO epochs; during the warm-up only V learns [code solver.py]
    warm = update < args.warmup_updates
    ent_coef = args.ent_coef / 2 if update > args.ent_halve_after else args.ent_coef
    pg_loss = torch.zeros(())  # what the warm-up logs: no policy step
    entropy = torch.zeros(())
    clip_frac = torch.zeros(())
    for _ in range(args.ppo_epochs):
        if warm:
            v_clip = old_value + (value - old_value).clamp(-args.clip_coef, args.clip_coef)
            v_loss = args.vf_coef * torch.max((value - reward) ** 2, (v_clip - reward) ** 2).mean()
            loss = v_loss
        else:
            log_p, entropy = log_prob_entropy(policy, actions, args.bingham_entropy_as_written)
            pg_loss, v_loss, clip_frac = ppo_losses(log_p, old_log_p, adv, value, old_value, reward, args.clip_coef)
            v_loss = args.vf_coef * v_loss
            loss = pg_loss + v_loss - ent_coef * entropy
            if "a" not in policy:  # the Gaussian's unit-norm penalty on mu_q [code ppo.py]
                loss = loss + 0.1 * (policy["mu"][3:].norm() - 1) ** 2
        arm.optimizer.zero_grad()
        loss.backward()
        for group in arm.optimizer.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], args.max_grad_norm)
        arm.optimizer.step()
        if not warm:  # the clamps after every step: sigma in [1e-3, rho/2], mu in [-rho, rho] [code ppo.py]
            with torch.no_grad():
                policy["log_sigma"].clamp_(math.log(1e-3), math.log(args.rho / 2))
                policy["mu"][:3].clamp_(-args.rho, args.rho)
                if "a" in policy:
                    policy["zeta"].clamp_(max=math.log(args.z_cap))
                    if args.clamp_as_written:  # the code's clamp hits the whole state vector [code ppo.py]
                        policy["a"].clamp_(-args.rho, args.rho)
    arm.scheduler.step()
    return dict(pg_loss=pg_loss, v_loss=v_loss, entropy=entropy, clip_frac=clip_frac)


def run_hand_eye(data: dict) -> dict:
    """AX = XB on relative poses 0.5 s apart: INS poses in the toy, the integrated gyro (rotation only) on files."""
    gap = max(1, round(0.5 / data["dt"].median().item()))
    data = {k: v.cpu() for k, v in data.items()}

    def relative(q, p):  # [C, N, 4], [C, N, 3] -> motions from pose j to pose j + gap
        dp = (quat_to_rotmat(q[:, :-gap]).transpose(-1, -2) @ (p[:, gap:] - p[:, :-gap])[..., None])[..., 0]
        return quat_mul(quat_conj(q[:, :-gap]), q[:, gap:]).reshape(-1, 4), dp.reshape(-1, 3)

    lidar = relative(data["q_l"], data["p_l"])
    if "q_ins" in data:
        imu = relative(data["q_ins"], data["p_ins"])
    else:
        dq = data["dq"]  # [C, N-1, 4], the preintegrated gyro between poses
        q_a = dq[:, : 1 - gap or None]
        span = dq.shape[1] - gap + 1
        for k in range(1, gap):
            q_a = quat_mul(q_a, dq[:, k : k + span])
        imu = (q_a.reshape(-1, 4), None)
        lidar = (lidar[0], None)
    q_x, t_x, singular_values = hand_eye(imu, lidar)
    return {"q": q_x, "t": t_x, "singular_values": singular_values}


# TRY NOT TO MODIFY: the curves, the table and the option checks -------------------------------------------------------
def format_per_axis(values: Optional[torch.Tensor], decimals: int = 2) -> Optional[str]:
    """[3] -> "x/y/z" (None stays None: the table prints "-")."""
    if values is None:
        return None
    return "/".join(f"{x:.{decimals}f}" for x in values.tolist())


def save_curves(path: Path, curves: dict, keys: list[str]) -> None:
    """Error of each arm's policy mean against the update, one row per data set. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return print("matplotlib is not installed: no error_curves.png")
    fig, axes = plt.subplots(len(curves), len(keys), figsize=(5.5 * len(keys), 3.3 * len(curves)), squeeze=False)
    for row, (name, arms) in enumerate(curves.items()):
        for ax, key in zip(axes[row], keys):
            for arm, points in arms.items():
                ax.plot([p["update"] for p in points], [p[key] for p in points], label=arm, lw=1)
            ax.set(title=f"{name}: {key}", xlabel="update", yscale="log")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def check_args(args: Args) -> None:
    """Step 0 of main: every option checked before any file is read or any run folder is made."""
    counts = "num_envs num_collects ppo_epochs updates init_candidates segments lr_step num_threads"
    for name in counts.split():
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in "warmup_updates ent_halve_after".split():
        if getattr(args, name) < 0:
            fail(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.num_collects % args.num_envs:
        fail(f"--num-collects {args.num_collects} must be a multiple of --num-envs {args.num_envs}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        fail(f"--learning-rate must be a positive number, got {args.learning_rate}")
    if not 0 < args.lr_gamma <= 1:
        fail(f"--lr-gamma (the StepLR factor on the learning rate) must be in (0, 1], got {args.lr_gamma}")
    if not (math.isfinite(args.clip_coef) and args.clip_coef > 0):
        fail(
            f"--clip-coef must be a positive number (PPO's ratio and value clip, 0.2 in the code), got {args.clip_coef}"
        )
    if not (math.isfinite(args.max_grad_norm) and args.max_grad_norm > 0):
        fail(f"--max-grad-norm must be a positive number, got {args.max_grad_norm}")
    if not (math.isfinite(args.vf_coef) and args.vf_coef >= 0 and math.isfinite(args.ent_coef) and args.ent_coef >= 0):
        fail(f"--vf-coef and --ent-coef must be numbers >= 0, got {args.vf_coef} and {args.ent_coef}")
    if not (math.isfinite(args.rho) and args.rho > 0):
        fail(f"--rho (the translation box, m) must be a positive number, got {args.rho}")
    if not (math.isfinite(args.z_cap) and args.z_cap > 0 and -args.z_cap < args.z_init < 0):
        fail(f"--z-init must be negative (Bingham concentrations are <= 0) and above -z_cap, got {args.z_init}")
    if not (args.segment_seconds > 1 and args.chunk_seconds > 0):
        fail(
            f"--segment-seconds must be above 1 and --chunk-seconds positive, got {args.segment_seconds} and "
            f"{args.chunk_seconds}"
        )
    if not (math.isfinite(args.select_threshold) and 0 <= args.init_stop_reward < 1):
        fail("--select-threshold must be a number and --init-stop-reward in [0, 1) (rewards are exp(-e/2))")
    gravity = float(np.linalg.norm(args.gravity))
    if not (math.isfinite(gravity) and gravity > 0.1):
        fail(f"--gravity {args.gravity} must be the gravity vector in m/s^2 in the pose file's world, e.g. 0 0 -9.81")
    if (args.imu is None) != (args.lidar_poses is None):
        fail("give both --imu and --lidar-poses (real files), or neither (the offline toy)")
    if not args.arms or len(set(args.arms)) != len(args.arms) or len(set(args.motions)) != len(args.motions):
        fail(f"--arms must not be empty, --arms and --motions must not repeat, got {args.arms} and {args.motions}")
    if args.imu is None and not args.motions:
        fail("--motions must name at least one toy motion (full, weak, planar)")


def main(args: Args) -> None:
    # TRY NOT TO MODIFY: 0. fail early: options, files and the data selection are checked before the run folder exists
    check_args(args)
    seed_everything(args.seed)
    device = pick_device(args.cuda)
    torch.set_num_threads(args.num_threads)
    gravity = torch.tensor(args.gravity, dtype=F64, device=device)
    estimate_biases = args.bias_estimation == "on" or (args.bias_estimation == "auto" and args.imu is not None)
    # 1. the data: name -> chunks (the recording's, or each toy motion's segments); the truth is known in the toy only
    datasets = {}
    truth = None
    if args.imu is not None:
        recording = load_files(args)
        size = max(3, round(args.chunk_seconds / recording["pose_t"].diff().median().item()))
        datasets["files"] = make_chunks([recording], size, args.score_as_written)
    else:
        truth = (rpy_to_quat(TRUE_RPY_DEG).to(device), torch.tensor(TRUE_T, dtype=F64, device=device))
        for i, motion in enumerate(args.motions):
            generator = torch.Generator().manual_seed(100 * args.seed + i)
            sim = simulate(motion, args.segments, args.segment_seconds, args.noise, generator)
            segments = [{k: v if k.endswith("_t") else v[s] for k, v in sim.items()} for s in range(args.segments)]
            datasets[motion] = make_chunks(segments, None, args.score_as_written)
    # 2. excitation-score selection [code process_bag.cpp]: the chunks each arm may use (ids into the bank of chunks)
    notes = []
    chosen = {}  # (data, arm) -> chunk ids
    ranges = {}  # data -> the ids of all its chunks
    offset = 0
    for name, data in datasets.items():
        kept = data["score"] > args.select_threshold
        ranges[name] = torch.arange(offset, offset + len(data["score"]))
        scores = [round(s, 4) for s in data["score"].tolist()]
        notes.append(f"{name}: excitation scores {scores}, {int(kept.sum())} of {len(kept)} kept")
        for arm_name in args.arms:
            selects = args.select and arm_name != "no-select"
            if selects and not kept.any():
                fail(
                    f"no chunk of {name} has an excitation score above --select-threshold {args.select_threshold} "
                    f"({notes[-1]}): lower it or pass --no-select"
                )
            chosen[name, arm_name] = ranges[name][kept] if selects else ranges[name]
        offset += len(kept)
    bank = {k: torch.cat([d[k] for d in datasets.values()]).to(device) for k in next(iter(datasets.values()))}
    rl_arms = sum(arm_name != "hand-eye" for _, arm_name in chosen)
    run = RunLogger(
        make_run_name("l2calib", args.exp_name, args.seed),
        args,
        track=args.track,
        print_every=PRINT_EVERY_UPDATES * max(1, rl_arms),  # one log call per RL arm and update
        show=PROGRESS_METRICS,
        total_steps=args.updates,
    )

    # 3. the closed-form hand-eye baseline on its chunks; every RL arm gets its own generator, seeded alike
    arms = {}
    results = {}
    for (name, arm_name), ids in chosen.items():
        if arm_name == "hand-eye":
            results[name, arm_name] = run_hand_eye({k: v[ids] for k, v in bank.items()})
            singular_values = [float(f"{v:.3g}") for v in results[name, arm_name]["singular_values"]]
            notes.append(f"{name} hand-eye: singular values of the rotation system {singular_values}")
        else:
            kind = "gaussian" if arm_name == "gaussian" else args.rot_dist
            generator = torch.Generator(device).manual_seed(args.seed)
            arms[name, arm_name] = Arm(f"{name}/{arm_name}", kind, ids.to(device), generator)
    print("\n".join(notes), flush=True)

    # ALGO LOGIC: 4. random-search init [code solver.py init_ppo]: each candidate's mean reward over num_collects
    #    chunk runs, e clipped to [0, 300] m; t ~ U[-rho, rho]^3, q uniform on S^3 (a normalised Gaussian = the code's
    #    Shoemake law); the best of --init-candidates. One batched odometry call serves every arm.
    identity = (torch.zeros(3, dtype=F64, device=device), torch.tensor([0.0, 0, 0, 1], dtype=F64, device=device))
    starts = {key: identity for key in arms}  # --no-init-search: t = 0, q = identity
    if args.init_search and arms:
        candidates = {}
        requests = []
        for key, arm in arms.items():
            uniform = torch.rand(args.init_candidates, 3, generator=arm.generator, dtype=F64, device=device)
            t_c = args.rho * (2 * uniform - 1)  # [candidates, 3]
            q_c = torch.randn(args.init_candidates, 4, generator=arm.generator, dtype=F64, device=device)
            q_c = q_c / q_c.norm(dim=-1, keepdim=True)  # [candidates, 4]
            candidates[key] = (t_c, q_c)
            ids = next_chunk_ids(arm, args.init_candidates * args.num_collects, args.num_envs)
            repeat = args.num_collects
            requests.append((q_c.repeat_interleave(repeat, 0), t_c.repeat_interleave(repeat, 0), ids))
        runs = len(arms) * args.init_candidates * args.num_collects
        progress = Progress("init search", total=math.ceil(runs / ODOMETRY_ROWS))
        init_errors = odometry_errors(bank, requests, gravity, estimate_biases, progress=progress)
        progress.done(f"{runs} odometry runs")
        for (key, (t_c, q_c)), err in zip(candidates.items(), init_errors):
            reward = torch.exp(-err.clamp(0, INIT_ERROR_CAP_M) / 2)  # [candidates * num_collects]
            score = reward.reshape(-1, args.num_collects).mean(1)  # [candidates]
            above = (score > args.init_stop_reward).nonzero()[:, 0]
            best = int(above[0]) if args.init_stop_reward > 0 and len(above) else int(score.argmax())
            starts[key] = (t_c[best], q_c[best])
    # 5. each policy from its init; one Adam over two parameter groups (policy, value) as in the code, StepLR
    #    [code ppo.py]
    for key, arm in arms.items():
        t_start, q_start = starts[key]
        arm.policy = init_policy(arm.kind, t_start, q_start, args, arm.generator)
        arm.value = torch.nn.Parameter(torch.zeros((), dtype=F64, device=device))
        groups = [{"params": list(arm.policy.values())}, {"params": [arm.value]}]
        arm.optimizer = torch.optim.Adam(groups, lr=args.learning_rate)
        arm.scheduler = torch.optim.lr_scheduler.StepLR(arm.optimizer, step_size=args.lr_step, gamma=args.lr_gamma)
        arm.answer = policy_mean(arm.policy)

    # ALGO LOGIC: the training loop, all arms in step (one batched odometry call serves every arm's candidates)
    for update in range(1, args.updates + 1):
        # 6. each arm samples num_collects actions; one odometry run per action, on chunks that rotate per call
        batches = {}
        requests = []
        for key, arm in arms.items():
            with torch.no_grad():
                actions = sample_actions(arm.policy, args.num_collects, arm.generator)  # [n, 7]
                old_log_p, _ = log_prob_entropy(arm.policy, actions)  # [n]
                old_value = arm.value.detach().clone()
            batches[key] = (actions, old_log_p, old_value)
            q_action = actions[:, 3:] / actions[:, 3:].norm(dim=-1, keepdim=True)  # [n, 4]
            requests.append((q_action, actions[:, :3], next_chunk_ids(arm, len(actions), args.num_envs)))
        errors = odometry_errors(bank, requests, gravity, estimate_biases) if arms else []
        for (key, arm), err in zip(arms.items(), errors):
            actions, old_log_p, old_value = batches[key]
            reward = torch.exp(-err / 2)  # [n], r = exp(-e/2)
            # 7.-8. advantage and the PPO epochs
            stats = ppo_update(arm, actions, old_log_p, old_value, reward, update, args)
            # 9. keep the policy mean of the update whose batch had the lowest mean error [code solver.py]
            with torch.no_grad():
                q_mean, t_mean = policy_mean(arm.policy)
                point = {"update": update, "ape_cm": 100 * err.mean().item()}
                if truth is not None:
                    point["rot_err_deg"] = quat_angle_deg(q_mean, truth[0]).item()
                    point["t_err_cm"] = 100 * (t_mean - truth[1]).norm().item()
                arm.curves.append(point)
                if err.mean().item() < arm.best_err:
                    arm.best_err = err.mean().item()
                    arm.answer = (q_mean.clone(), t_mean.clone())
                # TRY NOT TO MODIFY: log, the same tags for every arm (TRL / CleanRL names), one TensorBoard run each
                metrics = {
                    "reward": reward.mean(),
                    "reward_std": reward.std(),
                    "entropy": stats["entropy"],
                    "clip_ratio": stats["clip_frac"],
                    "losses/policy_loss": stats["pg_loss"],
                    "losses/value_loss": stats["v_loss"],
                    "charts/learning_rate": arm.optimizer.param_groups[0]["lr"],
                    "charts/sigma_t_cm": 100 * arm.policy["log_sigma"][:3].exp().mean(),
                }
                metrics.update({f"charts/{k}": v for k, v in point.items() if k != "update"})
                if "a" in arm.policy:
                    metrics["charts/bingham_min_abs_z"] = arm.policy["zeta"].exp().min()
                run.log(update, metrics, arm=arm.name)
    with torch.no_grad():
        for key, arm in arms.items():
            spread = rotation_spread_deg(arm.policy) if "a" in arm.policy else None
            sigma_t = 100 * arm.policy["log_sigma"][:3].exp()
            results[key] = dict(q=arm.answer[0], t=arm.answer[1], sigma_t_cm=sigma_t, sigma_rot_deg=spread)
            results[key]["curves"] = arm.curves

    # TRY NOT TO MODIFY: 10. each answer: error against the truth, policy spread, odometry RMSE over every chunk of
    #     its data; the table, result.json and the error curves
    rows = []
    answers = {}
    curves = {}
    for name, arm_name in chosen:
        result = results[name, arm_name]
        ids = ranges[name].to(device)
        q_x = result["q"].to(device)
        t_x = None if result["t"] is None else result["t"].to(device)
        t_eval = torch.zeros(3, dtype=F64, device=device) if t_x is None else t_x  # hand-eye on files: rotation only
        q_all = q_x.expand(len(ids), 4)
        t_all = t_eval.expand(len(ids), 3)
        ape = 100 * lio_rmse(bank, ids, q_all, t_all, gravity, estimate_biases).mean().item()
        if estimate_biases and t_x is not None:  # what the mini-LIO makes of the IMU biases under this answer
            gyro_bias, accel_bias = lio_biases(bank, ids, q_all, t_all, gravity)  # [chunks, 3] each
            gyro = ", ".join(f"{v:.4f}" for v in gyro_bias.mean(0).tolist())
            accel = ", ".join(f"{v:.3f}" for v in accel_bias.mean(0).tolist())
            notes.append(f"{name} {arm_name}: IMU biases at this answer: gyro ({gyro}) rad/s, accel ({accel}) m/s^2")
        row = {"data": name, "arm": arm_name}
        if truth is not None:
            t_err = [None] * 3 if t_x is None else (100 * (t_x - truth[1]).abs()).tolist()
            row["rot_err_deg"] = quat_angle_deg(q_x, truth[0]).item()
            row["t_err_x_cm"] = t_err[0]
            row["t_err_y_cm"] = t_err[1]
            row["t_err_z_cm"] = t_err[2]
        else:
            row["t_cm"] = None if t_x is None else format_per_axis(100 * t_x, 1)
            row["q_xyzw"] = format_per_axis(q_x, 4)
        row["sigma_t_cm"] = format_per_axis(result.get("sigma_t_cm"))
        row["sigma_rot_deg"] = format_per_axis(result.get("sigma_rot_deg"))
        row["ape_cm"] = ape
        rows.append(row)
        answers[f"{name}_{arm_name}"] = {"q_xyzw": q_x.tolist(), "t_m": None if t_x is None else t_x.tolist()}
        t_norm = math.nan if t_x is None or truth is None else 100 * (t_x - truth[1]).norm().item()
        flat = [
            dict(update=u, ape_cm=ape, rot_err_deg=row.get("rot_err_deg"), t_err_cm=t_norm) for u in (1, args.updates)
        ]
        curves.setdefault(name, {})[arm_name] = result.get("curves", flat)
    run.save_text("result.json", json.dumps(answers, indent=2) + "\n")
    save_curves(run.dir / "error_curves.png", curves, ["rot_err_deg", "t_err_cm"] if truth else ["ape_cm"])
    head = (
        "L2Calib (policy mean of the best batch) against its ablations and hand-eye. rot_err: geodesic (deg); "
        "t_err: |error| per axis (cm); sigma: final policy spread per axis x/y/z; ape: odometry RMSE of the "
        "answer over every chunk of its data (cm)."
    )
    run.finish("\n".join([head, "", format_table(rows, floatfmt=".2f"), "", *notes]))


if __name__ == "__main__":
    main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph
