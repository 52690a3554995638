"""Mixed precision through `accelerate`: fp32 master weights for what is trained, bf16 / fp16 for the arithmetic.

Training a model whose weights are themselves bf16 silently fails at the learning rates of the papers (1e-6 to
1e-5): an AdamW step of lr * ~1 is below half a bf16 ulp of most weights, so they round back to where they were.
DeepSpeed, the HF Trainer and OpenRLHF all keep an fp32 master copy; so do we:

    precision = setup_precision(args.dtype, args.cuda)          # "auto": bf16 autocast on a GPU, fp32 on the CPU
    policy = load_causal_lm(name, precision.device, precision.trained_dtype)[0]    # fp32 master weights
    reference = load_causal_lm(name, precision.device, precision.frozen_dtype)[0]  # frozen: may be bf16
    optimizer = precision.prepare_optimizer(torch.optim.AdamW(policy.parameters(), lr=1e-6))
    with precision.autocast():                                  # forward in bf16, weights and grads stay fp32
        loss = ...
    precision.backward(loss)                                    # fp16: scaled, unscaled again before clipping
    grad_norm = precision.clip_grad_norm_(policy.parameters(), max_norm)
    optimizer.step()

`--dtype bf16` on the CPU runs CPU bf16 autocast, so the CPU tests exercise the same path as a GPU run. Training
the weights in the compute dtype itself (no master copy) stays possible with `fp32_master=False`, and says at start
that it is there at the user's risk.

The models are not passed through `accelerator.prepare`: its forward wrapper casts every output to fp32, which for
a language model is one more full-vocabulary fp32 copy of the logits. Forwards run inside `autocast()` instead.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from shared.runs import fail, pick_device, pick_dtype

MIXED_PRECISION_NAMES = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Precision:
    """Where and in which dtypes a run computes; `accelerator` is None for plain fp32 without autocast."""

    device: torch.device
    compute_dtype: torch.dtype  # the autocast dtype of forward and backward (fp32: no autocast)
    trained_dtype: torch.dtype  # the dtype of trained weights and their optimizer state (fp32 master weights)
    frozen_dtype: torch.dtype  # the dtype of frozen models: reference policies, reward models, encoders
    accelerator: object

    @property
    def mixed(self) -> bool:
        """Whether forwards run under autocast in a lower precision than the trained weights."""
        return self.compute_dtype != self.trained_dtype

    def autocast(self):
        """The autocast context of every forward pass of a run (a no-op in fp32 or without master weights)."""
        if not self.mixed:
            return nullcontext()
        return self.accelerator.autocast()

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer, wrapped so that fp16 steps with inf / nan gradients are skipped by the loss scaler."""
        return self.accelerator.prepare_optimizer(optimizer, device_placement=False)

    def release(self) -> None:
        """Forget the optimizers prepared so far (accelerate keeps a reference to each, and so to its state and its
        model's parameters): call it when a model's training ends, so that its memory can be freed."""
        self.accelerator.free_memory()

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled by the fp16 loss scaler where there is one."""
        self.accelerator.backward(loss)

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        """Clip the gradient norm (after unscaling fp16 gradients); returns the norm before clipping."""
        return self.accelerator.clip_grad_norm_(parameters, max_norm)


def setup_precision(dtype_name: str = "auto", cuda: bool = True, fp32_master: bool = True) -> Precision:
    """The device and dtypes of a run from `--dtype` and `--cuda`.

    `auto` is bf16 autocast on a GPU and fp32 on the CPU; `bf16` / `fp16` autocast in that dtype over fp32 master
    weights; with `fp32_master=False` the trained weights are held in the compute dtype itself (with a warning)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = pick_device(cuda)
    compute_dtype = pick_dtype(dtype_name, device)
    if compute_dtype == torch.float16 and device.type == "cpu":
        fail("--dtype fp16 needs a GPU (the CPU has no fp16 autocast): use --dtype bf16 or fp32 on the CPU")
    if compute_dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        fail("this GPU has no bf16 support: use --dtype fp16 (loss-scaled) or --dtype fp32")
    trained_dtype = torch.float32 if fp32_master else compute_dtype
    if not fp32_master and compute_dtype != torch.float32:
        print(
            f"warning: training the weights in {compute_dtype} without fp32 master weights. At learning rates "
            "near 1e-6 most low-precision weights never change (the update is below half a unit in the last "
            "place); keep the fp32 master weights unless memory forces otherwise.",
            flush=True,
        )
    mixed_precision = MIXED_PRECISION_NAMES[compute_dtype] if fp32_master else "no"
    # one process can run several scripts' main() one after another (the tests do): forget the last run's choice,
    # but keep the process group that `accelerate launch` set up
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu")
    if accelerator.num_processes > 1:  # under `accelerate launch`: each process on its own GPU (or the CPU)
        device = accelerator.device
    return Precision(
        device=device,
        compute_dtype=compute_dtype,
        trained_dtype=trained_dtype,
        frozen_dtype=compute_dtype,
        accelerator=accelerator,
    )
