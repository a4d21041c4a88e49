"""K independent LoRA adapters trained in one forward/backward of a frozen base model.

A batch is K equal groups of rows, group k belonging to adapter k. Every LoRA-wrapped linear runs
its base weight once over the whole batch and each group's own A and B as one batched matmul
(``x.view(K, m, in) @ A[k]^T @ B[k]^T``: a grouped GEMM with equal groups, forward and backward
through autograd). All adapters live in one fp32 parameter ``flat [K, P]`` laid out as
:class:`LoRALayout` flattens a PEFT state dict, so a checkpoint is ``layout.unflatten(flat)[k]``
and per-adapter quantities (gradient norm, learning rate, Adam step) are rows of small tensors.

The maths per adapter is PEFT's (``base(x) + B(A(x)) * alpha / r``, kaiming-uniform A, zero B),
the loss each adapter's own mean token cross-entropy, clipping each adapter's own gradient norm
and AdamW each adapter's own step and learning rate: K adapters trained together end where K
plain PEFT runs end (tests/test_multi_lora.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dnd_fast.layout import LoRALayout
from dnd_fast.packed_weights import compute_dtype

_PREFIX = "base_model.model."
COMPILE_MODES = (None, "default", "reduce-overhead")


class MultiLoRALinear(nn.Module):
    """A frozen linear plus K adapters whose A ([K, r, in]) and B ([K, out, r]) are views of a shared flat buffer."""

    def __init__(self, base: nn.Linear, owner: MultiLoRA, a_slice: tuple[int, int], b_slice: tuple[int, int]):
        super().__init__()
        self.base = base
        self._owner = [owner]  # a list, so the owner is not registered as a submodule (no cycle)
        self.a_slice, self.b_slice = a_slice, b_slice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self._owner[0]
        y = self.base(x)
        k = owner.num_adapters
        flat = owner.flat
        r = owner.rank
        a = flat[:, self.a_slice[0]:self.a_slice[1]].view(k, r, self.base.in_features)
        b = flat[:, self.b_slice[0]:self.b_slice[1]].view(k, self.base.out_features, r)
        groups = x.reshape(k, -1, x.shape[-1])
        dtype = compute_dtype(x)
        low = torch.bmm(groups.to(dtype), a.to(dtype).transpose(1, 2))
        delta = torch.bmm(low, b.to(dtype).transpose(1, 2)) * owner.scaling
        return y + delta.view(y.shape).to(y.dtype)


class MultiLoRA(nn.Module):
    """Wraps ``model`` (a transformers causal LM, modified in place) with K adapters of one LoRA config."""

    def __init__(self, model, lora_config, num_adapters: int, compile_mode: str | None = None):
        """``compile_mode``: None (eager), or a ``torch.compile`` mode ("default", "reduce-overhead": CUDA graphs)
        for the base model's transformer stack with the adapters in it, compiled once for any batch and length."""
        super().__init__()
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {compile_mode!r}: choose one of {', '.join(map(str, COMPILE_MODES))}")
        if num_adapters < 1:
            raise ValueError(f"num_adapters must be >= 1, got {num_adapters}")
        if getattr(lora_config, "lora_dropout", 0.0):
            raise ValueError("MultiLoRA trains without LoRA dropout (lora_dropout must be 0)")
        self.model = model.requires_grad_(False)
        self.num_adapters = num_adapters
        self.rank = int(lora_config.r)
        self.scaling = lora_config.lora_alpha / lora_config.r
        self.layout = LoRALayout.from_config(model.config, lora_config)
        base = next(model.parameters())
        dtype = torch.float64 if base.dtype == torch.float64 else torch.float32  # fp32 adapters on a bf16 base
        self.flat = nn.Parameter(torch.zeros(num_adapters, self.layout.num_params, device=base.device, dtype=dtype))
        slices: dict[str, dict[str, tuple[int, int]]] = {}
        for (key, (rows, cols)), offset in zip(self.layout.tensors, self.layout.offsets):
            path, which = key[len(_PREFIX):].rsplit(".lora_", 1)
            slices.setdefault(path, {})[which[0]] = (offset, offset + rows * cols)
        self.paths = sorted(slices)
        for path, ab in slices.items():
            parent_name, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, MultiLoRALinear(getattr(parent, child), self, ab["A"], ab["B"]))
        stack = model.get_decoder()
        # one compile for every shape (rows x padded length): the lengths of real batches vary step to step; in a
        # list, so the compiled wrapper is no submodule (its parameters would appear twice in state_dict)
        self._stack = [stack if compile_mode is None else torch.compile(stack, mode=compile_mode, dynamic=True)]

    # ---- adapter state ---------------------------------------------------------------------------
    def init_adapter(self, k: int, seed: int) -> None:
        """PEFT's init for adapter ``k``: A ~ kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in)), B = 0."""
        g = torch.Generator().manual_seed(seed)
        row = torch.zeros(self.layout.num_params, dtype=torch.float64)
        for (key, (rows, cols)), offset in zip(self.layout.tensors, self.layout.offsets):
            if ".lora_A." in key:
                bound = 1 / math.sqrt(cols)
                row[offset:offset + rows * cols] = torch.rand(rows * cols, generator=g) * 2 * bound - bound
        with torch.no_grad():
            self.flat[k].copy_(row)

    def load_adapter(self, k: int, state_dict: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.flat[k].copy_(self.layout.flatten(state_dict)[0])

    def adapter_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Adapter ``k`` as a PEFT state dict (canonical keys), copied to the host."""
        return self.layout.unflatten(self.flat.detach()[k:k + 1].cpu().clone())[0]

    # ---- one training step -----------------------------------------------------------------------
    def losses(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[K] mean next-token cross-entropy of each adapter over its own group's labelled tokens.

        Logits are computed only at labelled positions (answers are a few tokens of a 256-token row)."""
        k = self.num_adapters
        if input_ids.shape[0] % k:
            raise ValueError(f"a batch of {input_ids.shape[0]} rows does not split into {k} equal adapter groups")
        hidden = self._stack[0](input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        targets = labels[:, 1:]
        where = targets != -100
        logits = self.model.get_output_embeddings()(hidden[:, :-1][where])
        token_loss = F.cross_entropy(logits.float() if logits.dtype != torch.float64 else logits, targets[where],
                                     reduction="none")
        group = torch.arange(input_ids.shape[0], device=input_ids.device).div(input_ids.shape[0] // k,
                                                                             rounding_mode="floor")
        group = group[:, None].expand_as(targets)[where]
        sums = token_loss.new_zeros(k).index_add_(0, group, token_loss)
        counts = token_loss.new_zeros(k).index_add_(0, group, torch.ones_like(token_loss))
        return sums / counts.clamp_min(1)


class MultiAdamW:
    """AdamW over ``flat [K, P]`` with a learning rate and a step count per adapter (row), weight decay 0 by
    default, and each row's gradient clipped to its own norm first (as ``clip_grad_norm_`` on one adapter)."""

    def __init__(self, flat: nn.Parameter, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 max_norm: float | None = 1.0):
        self.flat, self.betas, self.eps, self.weight_decay, self.max_norm = flat, betas, eps, weight_decay, max_norm
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = torch.zeros(flat.shape[0], 1, device=flat.device, dtype=flat.dtype)

    @torch.no_grad()
    def step(self, lr: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """One update with per-row ``lr`` [K]; rows where ``active`` is False are left untouched.
        Returns each row's gradient norm before clipping."""
        grad = self.flat.grad
        norms = grad.norm(dim=1)
        if self.max_norm is not None:
            grad.mul_((self.max_norm / (norms + 1e-6)).clamp(max=1.0)[:, None])
        on = torch.ones_like(norms, dtype=torch.bool) if active is None else active.to(norms.device)
        on = on[:, None]
        lr = lr.to(grad.device, grad.dtype)[:, None]
        beta1, beta2 = self.betas
        self.steps += on
        self.flat.mul_(torch.where(on, 1 - lr * self.weight_decay, 1.0))
        self.exp_avg.copy_(torch.where(on, self.exp_avg.lerp(grad, 1 - beta1), self.exp_avg))
        self.exp_avg_sq.copy_(torch.where(on, self.exp_avg_sq * beta2 + (1 - beta2) * grad * grad, self.exp_avg_sq))
        t = self.steps.clamp_min(1)
        step_size = lr / (1 - beta1 ** t)
        denom = (self.exp_avg_sq.sqrt() / (1 - beta2 ** t).sqrt()).add_(self.eps)
        self.flat.sub_(torch.where(on, step_size * self.exp_avg / denom, 0.0))
        return norms

    def state_rows(self, k: int) -> dict[str, torch.Tensor]:
        return {"exp_avg": self.exp_avg[k].cpu(), "exp_avg_sq": self.exp_avg_sq[k].cpu(),
                "step": self.steps[k].cpu()}

    def load_rows(self, k: int, rows: dict[str, torch.Tensor]) -> None:
        self.exp_avg[k].copy_(rows["exp_avg"])
        self.exp_avg_sq[k].copy_(rows["exp_avg_sq"])
        self.steps[k].copy_(rows["step"])
