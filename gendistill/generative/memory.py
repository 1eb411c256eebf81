"""Minimax criteria (Gu et al., "Efficient Dataset Distillation via Minimax Diffusion", CVPR 2024).

Two FIFO memories per class, held as ring buffers ``[num_classes, capacity, dim]``: clean real samples and
detached predictions ``x0_hat``. For every class present in a batch whose prediction memory is non-empty:

* representativeness ``L_r = 1 - min_{i, m} cos(x0_hat_i, real_m)``: pull toward the least similar real sample;
* diversity ``L_d = max_{i, p} cos(x0_hat_i, pred_p)``: push away from the most similar earlier prediction;

both summed over those classes and divided by the number of classes present in the batch (the reference's
``num_ry``, which also counts classes whose memory is still empty). The losses are computed before the memories
take the batch in, so a class seen for the first time only fills its memories. With ``temperature > 0`` the hard
min / max become the smooth ``-T logsumexp(-cos / T)`` / ``T logsumexp(cos / T)`` (an option, reported
separately from the reference). Everything is batched over classes: no Python loop over images or classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ClassMemory", "MinimaxMemories", "minimax_losses"]


class ClassMemory:
    """A per-class FIFO of at most ``capacity`` vectors (oldest evicted first)."""

    def __init__(self, num_classes: int, capacity: int, dim: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise ValueError("memory capacity must be at least 1")
        self.capacity = capacity
        self.items = torch.zeros(num_classes, capacity, dim, device=device)
        self.count = torch.zeros(num_classes, dtype=torch.long, device=device)  # valid entries per class
        self.head = torch.zeros(num_classes, dtype=torch.long, device=device)  # next write slot per class

    def valid_mask(self) -> torch.Tensor:
        """``[num_classes, capacity]`` True where a slot holds an entry."""
        slots = torch.arange(self.capacity, device=self.count.device)
        return slots.unsqueeze(0) < self.count.unsqueeze(1)

    def push(self, values: torch.Tensor, labels: torch.Tensor) -> None:
        """Append ``values [B, dim]`` of classes ``labels [B]`` in batch order."""
        values = values.detach().to(self.items.dtype)
        labels = labels.to(self.count.device)
        num_classes = self.items.shape[0]
        onehot = F.one_hot(labels, num_classes)
        rank = (onehot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)  # position within its class
        per_class = onehot.sum(0)
        keep = rank >= per_class[labels] - self.capacity  # more than capacity of a class: only the newest stay
        slot = (self.head[labels] + rank) % self.capacity
        self.items[labels[keep], slot[keep]] = values[keep]
        self.head = (self.head + per_class) % self.capacity
        self.count = torch.clamp(self.count + per_class, max=self.capacity)

    def ordered(self, c: int) -> torch.Tensor:
        """The entries of class ``c``, oldest first (for inspection and tests)."""
        n = int(self.count[c])
        start = (int(self.head[c]) - n) % self.capacity
        idx = (torch.arange(n) + start) % self.capacity
        return self.items[c, idx.to(self.items.device)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"items": self.items, "count": self.count, "head": self.head}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["items"].shape != self.items.shape:
            raise ValueError(f"memory shape {tuple(state['items'].shape)} != {tuple(self.items.shape)}")
        self.items.copy_(state["items"])
        self.count.copy_(state["count"])
        self.head.copy_(state["head"])


def _class_reduce(values: torch.Tensor, labels: torch.Tensor, num_classes: int, how: str) -> torch.Tensor:
    """Reduce per-sample values ``[B]`` to per-class ``[num_classes]`` (``amin``/``amax``)."""
    fill = float("inf") if how == "amin" else float("-inf")
    out = torch.full((num_classes,), fill, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, labels, values, reduce=how, include_self=True)


def _class_logsumexp(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class logsumexp of per-sample values (``-inf`` for absent classes)."""
    peak = _class_reduce(values.detach(), labels, num_classes, "amax")
    safe_peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    sums = torch.zeros(num_classes, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, labels, torch.exp(values - safe_peak[labels]))
    return torch.log(sums.clamp_min(torch.finfo(values.dtype).tiny)) + safe_peak


def _extreme_similarity(pred: torch.Tensor, labels: torch.Tensor, memory: ClassMemory, largest: bool,
                        temperature: float, active: torch.Tensor, center: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """Per class: the (soft) max or min over samples of that class and memory entries of cosine similarity.

    Rows of inactive classes are left unmasked so that every reduction stays finite (their values are unused).
    """
    num_classes = memory.items.shape[0]
    items = memory.items[labels] if center is None else memory.items[labels] - center
    if center is not None:
        pred = pred - center
    bank = F.normalize(items, dim=-1)  # [B, capacity, dim]
    cos = torch.einsum("bd,bkd->bk", F.normalize(pred, dim=-1), bank)
    valid = memory.valid_mask()[labels] | ~active[labels].unsqueeze(1)
    sign = 1.0 if largest else -1.0
    if temperature > 0:
        scaled = torch.where(valid, sign * cos / temperature, torch.full_like(cos, float("-inf")))
        per_sample = torch.logsumexp(scaled, dim=1)
        return sign * temperature * _class_logsumexp(per_sample, labels, num_classes)
    masked = torch.where(valid, sign * cos, torch.full_like(cos, float("-inf")))
    return sign * _class_reduce(masked.amax(dim=1), labels, num_classes, "amax")


def minimax_losses(pred: torch.Tensor, labels: torch.Tensor, real_memory: ClassMemory, pred_memory: ClassMemory,
                   temperature: float = 0.0, center: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Representativeness and diversity losses of a batch against the current memories.

    Args:
        pred: predicted clean samples ``[B, dim]`` (with gradient).
        labels: their classes ``[B]``.
        real_memory / pred_memory: the two memories (read only here).
        temperature: 0 for the reference's hard min/max, else the smooth version.
        center: extension: subtract this vector from every sample before the cosine (mean-centred cosine;
            None = the reference's raw cosine).

    Returns:
        ``(L_r, L_d, active)``: the losses summed over active classes divided by the number of classes present
        in the batch (zero when no class is active), and the number of classes that contributed.
    """
    num_classes = real_memory.items.shape[0]
    present = torch.zeros(num_classes, dtype=torch.bool, device=labels.device)
    present[labels] = True
    active = present & (pred_memory.count > 0) & (real_memory.count > 0)
    n_active = active.sum()
    denom = present.sum().clamp_min(1).to(pred.dtype)  # the reference's num_ry: classes present in the batch
    min_real = _extreme_similarity(pred, labels, real_memory, False, temperature, active, center)
    max_pred = _extreme_similarity(pred, labels, pred_memory, True, temperature, active, center)
    zero = torch.zeros_like(min_real)
    rep = torch.where(active, 1.0 - min_real, zero).sum() / denom
    div = torch.where(active, max_pred, zero).sum() / denom
    return rep, div, n_active


class MinimaxMemories:
    """The real and prediction memories of one fine-tuning run (checkpointable)."""

    def __init__(self, num_classes: int, capacity: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.real = ClassMemory(num_classes, capacity, dim, device)
        self.pred = ClassMemory(num_classes, capacity, dim, device)

    def real_mean(self) -> torch.Tensor | None:
        """Mean of every real entry held (all classes), or None while the memory is empty."""
        mask = self.real.valid_mask()
        if not bool(mask.any()):
            return None
        return self.real.items[mask].mean(0)

    def losses_then_update(self, pred: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                           temperature: float = 0.0, centered: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The losses against the memories as they stand, then the batch enters both memories.

        ``centered`` (extension): cosines of samples minus the mean real entry held, so a background shared by
        every image (MNIST's -1 border) stops dominating the similarity.
        """
        center = self.real_mean() if centered else None
        rep, div, active = minimax_losses(pred, labels, self.real, self.pred, temperature, center)
        self.real.push(real, labels)
        self.pred.push(pred.detach(), labels)
        return rep, div, active

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"real": self.real.state_dict(), "pred": self.pred.state_dict()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.real.load_state_dict(state["real"])
        self.pred.load_state_dict(state["pred"])
