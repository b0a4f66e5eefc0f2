"""Agreement between teacher and student explanations: saliency maps, attention maps and features.

The definitions are those of ``docs/metrics.md`` (they are also spelled out below). Each family has a
functional core (batched torch, float64 inside) and a torchmetrics `Metric` whose states are sums (or, for CKA,
concatenated features) so that it reduces correctly under DDP:

- `saliency_agreement` / `saliency_agreement_per_image` / `SaliencyAgreement`: pearson, spearman, topk_iou, cosine,
  sim, kld between teacher and student CAMs;
- `pointing_game` / `pointing_game_hits` / `PointingGame` (with `boxes_to_masks`): does a map's peak fall on the
  object;
- `attention_distance`, `attention_cosine` / `AttentionAgreement`: attention-transfer maps of feature layers;
- `linear_cka` / `LinearCKA`: linear centred kernel alignment of feature batches.

Nothing here knows about Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from visiondistill.core.maps import attention_map, boxes_to_masks

__all__ = [
    "SALIENCY_KEYS",
    "AttentionAgreement",
    "LinearCKA",
    "PointingGame",
    "SaliencyAgreement",
    "attention_cosine",
    "attention_distance",
    "attention_map",
    "boxes_to_masks",
    "linear_cka",
    "pointing_game",
    "pointing_game_hits",
    "saliency_agreement",
    "saliency_agreement_per_image",
]

#: Keys of the dicts returned by `saliency_agreement` and `SaliencyAgreement`, in this order.
SALIENCY_KEYS: tuple[str, ...] = ("pearson", "spearman", "topk_iou", "cosine", "sim", "kld")

_STD_EPS = 1e-8  # below this standard deviation a map counts as constant (pearson = spearman = 0)
_KLD_EPS = 2.2204e-16  # the MIT saliency benchmark's epsilon


# --------------------------------------------------------------------------------------------- saliency agreement
def _as_batch(maps: Tensor, name: str) -> Tensor:
    if maps.ndim == 2:
        maps = maps.unsqueeze(0)
    if maps.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (H, W), got {tuple(maps.shape)}")
    return maps


def _resize_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear (``align_corners=False``) resize of (N, H, W) maps; a convex combination, so never negative."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def _pearson_rows(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise Pearson correlation of (N, L) float64 tensors; 0 where either standard deviation < 1e-8."""
    xc = x - x.mean(dim=1, keepdim=True)
    yc = y - y.mean(dim=1, keepdim=True)
    std_x = xc.pow(2).mean(dim=1).sqrt()
    std_y = yc.pow(2).mean(dim=1).sqrt()
    cov = (xc * yc).mean(dim=1)
    degenerate = (std_x < _STD_EPS) | (std_y < _STD_EPS)
    r = cov / torch.where(degenerate, torch.ones_like(cov), std_x * std_y)
    return torch.where(degenerate, torch.zeros_like(r), r.clamp(-1.0, 1.0))


def _average_ranks(x: Tensor) -> Tensor:
    """Row-wise ranks 1..L of an (N, L) tensor, ties given their average rank (``scipy.stats.rankdata``'s default)."""
    n, length = x.shape
    sorted_x, order = torch.sort(x, dim=1, stable=True)
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    # Give every run of equal values a global id, then average the 1-based positions within each run.
    run_id = new_run.long().cumsum(dim=1) - 1 + torch.arange(n, device=x.device).unsqueeze(1) * length
    positions = torch.arange(1, length + 1, device=x.device, dtype=torch.float64).expand(n, length)
    run_sum = torch.zeros(n * length, device=x.device, dtype=torch.float64).scatter_add_(
        0, run_id.flatten(), positions.flatten()
    )
    run_count = torch.zeros(n * length, device=x.device, dtype=torch.float64).scatter_add_(
        0, run_id.flatten(), torch.ones(n * length, device=x.device, dtype=torch.float64)
    )
    sorted_ranks = (run_sum / run_count.clamp_min(1))[run_id]
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def _topk_count(top_k: float, length: int) -> int:
    # Rounding k·L to 9 decimals first keeps float noise (0.07 · 100 = 7.000000000000001) from adding a pixel.
    return min(max(math.ceil(round(top_k * length, 9)), 1), length)


def _topk_iou_rows(x: Tensor, y: Tensor, top_k: float) -> Tensor:
    n, length = x.shape
    count = _topk_count(top_k, length)
    top_x = torch.argsort(x, dim=1, descending=True, stable=True)[:, :count]
    top_y = torch.argsort(y, dim=1, descending=True, stable=True)[:, :count]
    in_x = torch.zeros(n, length, dtype=torch.bool, device=x.device).scatter_(1, top_x, True)
    in_y = torch.zeros(n, length, dtype=torch.bool, device=x.device).scatter_(1, top_y, True)
    intersection = (in_x & in_y).sum(dim=1).to(torch.float64)
    return intersection / (2 * count - intersection)


def _to_distribution(x: Tensor) -> Tensor:
    """Rows divided by their sums; an all-zero row becomes the uniform distribution (pysaliency's SIM)."""
    total = x.sum(dim=1, keepdim=True)
    uniform = torch.full_like(x, 1.0 / x.shape[1])
    return torch.where(total > 0, x / torch.where(total > 0, total, torch.ones_like(total)), uniform)


def _sum_normalised(x: Tensor) -> Tensor:
    """``if any(map(:)) map = map / sum(map(:))`` of the MIT benchmark: an all-zero row stays zero."""
    total = x.sum(dim=1, keepdim=True)
    return x / torch.where(total > 0, total, torch.ones_like(total))


def _min_max_normalised(x: Tensor) -> Tensor:
    """The MIT benchmark's ``(map − min) / (max − min)`` per row; a constant row (0/0 in MATLAB, NaN) becomes 0."""
    low = x.min(dim=1, keepdim=True).values
    span = x.max(dim=1, keepdim=True).values - low
    return torch.where(span > 0, (x - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))


def _sim_rows(t: Tensor, s: Tensor, convention: str) -> Tensor:
    if convention == "mit":
        return torch.minimum(_sum_normalised(_min_max_normalised(t)), _sum_normalised(_min_max_normalised(s))).sum(1)
    return torch.minimum(_to_distribution(t), _to_distribution(s)).sum(dim=1)


SimConvention = Literal["mit", "pysaliency"]


def _check_sim(sim: str) -> None:
    if sim not in ("mit", "pysaliency"):
        raise ValueError(f"sim must be 'mit' or 'pysaliency', got {sim!r}")


def _check_top_k(top_k: float) -> None:
    if not (isinstance(top_k, (int, float)) and 0.0 < top_k <= 1.0):
        raise ValueError(f"top_k must be a fraction in (0, 1], got {top_k!r}")


def _saliency_per_image64(
    teacher_maps: Tensor, student_maps: Tensor, top_k: float, sim: SimConvention = "mit"
) -> dict[str, Tensor]:
    """The float64 (N,) scores of `saliency_agreement_per_image`."""
    _check_top_k(top_k)
    _check_sim(sim)
    teacher = _as_batch(teacher_maps, "teacher_maps")
    student = _as_batch(student_maps, "student_maps")
    if teacher.shape[0] != student.shape[0]:
        raise ValueError(
            "teacher_maps and student_maps must hold the same number of maps, got "
            f"{tuple(teacher_maps.shape)} and {tuple(student_maps.shape)}"
        )
    teacher = teacher.detach().to(torch.float64)
    student = _resize_maps(student.detach().to(torch.float64), teacher.shape[-2:])
    for name, maps in (("teacher_maps", teacher), ("student_maps", student)):
        if maps.numel() and maps.min() < 0:
            raise ValueError(f"{name} must be non-negative, got a minimum of {maps.min().item():.3g}")
    t = teacher.flatten(1)
    s = student.flatten(1)

    norm_product = t.norm(dim=1) * s.norm(dim=1)
    dot = (t * s).sum(dim=1)
    cosine = torch.where(norm_product > 0, dot / torch.where(norm_product > 0, norm_product, 1.0), 0.0)
    p_t, p_s = _sum_normalised(t), _sum_normalised(s)
    return {
        "pearson": _pearson_rows(t, s),
        "spearman": _pearson_rows(_average_ranks(t), _average_ranks(s)),
        "topk_iou": _topk_iou_rows(t, s, top_k),
        "cosine": cosine.clamp(-1.0, 1.0),
        "sim": _sim_rows(t, s, sim),
        "kld": (p_t * torch.log(_KLD_EPS + p_t / (p_s + _KLD_EPS))).sum(dim=1),
    }


def saliency_agreement_per_image(
    teacher_maps: Tensor, student_maps: Tensor, top_k: float = 0.1, sim: SimConvention = "mit"
) -> dict[str, Tensor]:
    """Per-image agreement between teacher and student saliency maps (the definitions of ``docs/metrics.md``).

    For every image, with T the teacher map and S the student map flattened to L pixels:

    - ``pearson`` = cov(T, S) / (σ_T σ_S); 0 when either σ (population) is < 1e-8 (a constant map).
    - ``spearman`` = Pearson of the average ranks (ties share the mean of their ranks, as ``scipy.stats.rankdata``).
    - ``topk_iou`` = |A ∩ B| / |A ∪ B| for A, B the ⌈k·L⌉ highest pixels of T and S. Ties are broken by position:
      pixels are ordered by ``torch.argsort(descending=True, stable=True)``, so among equal values the lower
      flattened (row-major) index comes first. This makes the value deterministic; for an all-constant map it
      selects the first ⌈k·L⌉ pixels.
    - ``cosine`` = ⟨T, S⟩ / (‖T‖ ‖S‖); 0 when either norm is 0.
    - ``sim`` (``sim="mit"``, default) = Σ min(T̂/ΣT̂, Ŝ/ΣŜ) with T̂ = (T − min T)/(max T − min T): the MIT saliency
      benchmark's ``similarity.m`` exactly. A constant map (where MATLAB divides 0 by 0) counts as all-zero, which
      that code leaves unnormalised, so its SIM is 0. ``sim="pysaliency"`` is pysaliency's ``SIM``: Σ min(T/ΣT, S/ΣS)
      without min-max, an all-zero map replaced by the uniform map (pysaliency returns NaN there).
    - ``kld`` = Σ P_T · log(ε + P_T / (P_S + ε)), P = map / sum, ε = 2.2204e-16: the MIT benchmark's ``KLdiv.m``
      exactly, with the teacher as the reference (its fixation map); an all-zero map stays zero, as there.
      Lower is better; every other key is a similarity (1 = same).

    When the spatial sizes differ, the student maps are resized to the teacher's H×W bilinearly
    (``align_corners=False``). Computation is in float64.

    Args:
        teacher_maps: Non-negative teacher maps, shape (N, H, W) or (H, W).
        student_maps: Non-negative student maps, shape (N, H', W') or (H', W'), same N.
        top_k: Fraction k of pixels for ``topk_iou``, in (0, 1].
        sim: ``"mit"`` (the MIT saliency benchmark's SIM, min-max first) or ``"pysaliency"``.

    Returns:
        Dict with the keys of `SALIENCY_KEYS`, each a tensor of shape (N,) in the dtype of ``teacher_maps`` (the
        default float dtype for non-float inputs).

    Raises:
        ValueError: On bad shapes, different batch sizes, negative values, or ``top_k`` outside (0, 1].
    """
    out_dtype = teacher_maps.dtype if teacher_maps.is_floating_point() else torch.get_default_dtype()
    values = _saliency_per_image64(teacher_maps, student_maps, top_k, sim)
    return {key: values[key].to(out_dtype) for key in SALIENCY_KEYS}


def saliency_agreement(
    teacher_maps: Tensor, student_maps: Tensor, top_k: float = 0.1, sim: SimConvention = "mit"
) -> dict[str, Tensor]:
    """Agreement between teacher and student saliency maps, macro-averaged over images.

    The per-image values of `saliency_agreement_per_image` (see there for the exact definitions), averaged.

    Args:
        teacher_maps: Non-negative teacher maps, shape (N, H, W) or (H, W).
        student_maps: Non-negative student maps, shape (N, H', W') or (H', W'); resized to the teacher's size.
        top_k: Fraction k of pixels for ``topk_iou``, in (0, 1].
        sim: SIM convention, ``"mit"`` or ``"pysaliency"`` (see `saliency_agreement_per_image`).

    Returns:
        Dict with the keys of `SALIENCY_KEYS` (pearson, spearman, topk_iou, cosine, sim, kld), scalar tensors.

    Raises:
        ValueError: On bad shapes, different batch sizes, negative values, or ``top_k`` outside (0, 1].

    Example:
        >>> maps = torch.rand(4, 8, 8)
        >>> scores = saliency_agreement(maps, maps)
        >>> round(float(scores["pearson"]), 6), abs(float(scores["kld"])) < 1e-6
        (1.0, True)
    """
    per_image = saliency_agreement_per_image(teacher_maps, student_maps, top_k, sim)
    return {key: value.mean() for key, value in per_image.items()}


# ------------------------------------------------------------------------------------------------- pointing game
def pointing_game_hits(maps: Tensor, masks: Tensor, tolerance: float = 0.0) -> Tensor:
    """Per-image pointing-game hits (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation Backprop").

    An image is a hit when a mask pixel lies *strictly* closer than ``tolerance`` pixels (Euclidean distance between
    pixel centres) to the argmax of its map — TorchRay's ``PointingGame.evaluate`` (``(v + u) < tolerance**2``)
    exactly; the original protocol uses 15 px at 224×224. ``tolerance=0`` (default) means "the peak is inside the
    mask", which is TorchRay with any tolerance in (0, 1] (TorchRay itself would count no hit at 0). Maps of another
    size are first resized bilinearly (``align_corners=False``) to the mask's size — the map, not the mask, so the
    object keeps its exact extent. Ties in the map go to the first maximum in row-major order (``torch.argmax``), so
    an all-zero map points at the top-left pixel. An empty mask is always a miss.

    Args:
        maps: Saliency maps, shape (N, H', W') or (H', W').
        masks: Bool object masks, shape (N, H, W) or (H, W) (see `boxes_to_masks` for boxes).
        tolerance: Hit radius in pixels of the mask grid (≥ 0); strict, so a mask pixel at exactly this distance is
            not reached; 0 = the peak inside the mask.

    Returns:
        Bool tensor of shape (N,).

    Raises:
        ValueError: On bad shapes, different batch sizes, or a negative tolerance.
    """
    maps_b = _as_batch(maps, "maps")
    masks_b = _as_batch(masks, "masks").bool()
    if maps_b.shape[0] != masks_b.shape[0]:
        raise ValueError(
            f"maps and masks must hold the same number of images, got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
    n, height, width = masks_b.shape
    resized = _resize_maps(maps_b.detach().to(torch.float64), (height, width)).to(masks_b.device)
    peak = resized.flatten(1).argmax(dim=1)
    if tolerance == 0:
        return masks_b.flatten(1).gather(1, peak.unsqueeze(1)).squeeze(1)
    peak_y = (peak // width).view(n, 1, 1)
    peak_x = (peak % width).view(n, 1, 1)
    ys = torch.arange(height, device=masks_b.device).view(1, height, 1)
    xs = torch.arange(width, device=masks_b.device).view(1, 1, width)
    near = (ys - peak_y).pow(2) + (xs - peak_x).pow(2) < tolerance**2
    return (near & masks_b).flatten(1).any(dim=1)


def pointing_game(maps: Tensor, masks: Tensor, tolerance: float = 0.0) -> Tensor:
    """Pointing-game hit rate: the fraction of images whose map peak falls on the object.

    See `pointing_game_hits` for the exact rule.

    Args:
        maps: Saliency maps, shape (N, H', W') or (H', W').
        masks: Bool object masks, shape (N, H, W) or (H, W).
        tolerance: Hit radius in pixels (≥ 0, strict; 0 = the peak inside the mask).

    Returns:
        Scalar float tensor in [0, 1].

    Raises:
        ValueError: On bad shapes, different batch sizes, or a negative tolerance.

    Example:
        >>> maps = torch.zeros(2, 4, 4)
        >>> maps[0, 1, 1] = maps[1, 3, 3] = 1.0
        >>> float(pointing_game(maps, boxes_to_masks([torch.tensor([[0, 0, 2, 2]])] * 2, 4, 4)))
        0.5
    """
    return pointing_game_hits(maps, masks, tolerance).to(torch.get_default_dtype()).mean()


# ----------------------------------------------------------------------------------------- attention and features
def _attention_per_image(student_feature: Tensor, teacher_feature: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Per-image AT distance (mean over positions of (q_s − q_t)²) and cosine ⟨q_s, q_t⟩, each (N,)."""
    for name, feature in (("student_feature", student_feature), ("teacher_feature", teacher_feature)):
        if feature.ndim != 4:
            raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(feature.shape)}")
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            "student_feature and teacher_feature must have the same batch size, got "
            f"{tuple(student_feature.shape)} and {tuple(teacher_feature.shape)}"
        )
    teacher = teacher_feature.detach()
    q_s = attention_map(student_feature.detach(), p, size=(teacher.shape[-2], teacher.shape[-1]))
    q_t = attention_map(teacher, p)
    return (q_s - q_t).pow(2).mean(dim=1), (q_s * q_t).sum(dim=1)


def attention_distance(student_feature: Tensor, teacher_feature: Tensor, p: float = 2) -> Tensor:
    """Attention-transfer distance: the AT loss ``mean((q_s − q_t)²)`` (see `attention_transfer_loss`).

    The student's map is resized to the teacher's H×W before normalisation; channel counts may differ.

    Args:
        student_feature: Student feature map, shape (N, C_s, H_s, W_s).
        teacher_feature: Teacher feature map, shape (N, C_t, H_t, W_t).
        p: Exponent of the absolute activations.

    Returns:
        Scalar tensor (0 = same attention). Computed without gradients.

    Raises:
        ValueError: If a feature is not 4-D or the batch sizes differ.
    """
    return _attention_per_image(student_feature, teacher_feature, p)[0].mean()


def attention_cosine(student_feature: Tensor, teacher_feature: Tensor, p: float = 2) -> Tensor:
    """Mean cosine ⟨q_s, q_t⟩ of the unit-norm attention maps of student and teacher.

    Per image, then averaged; the student's map is resized to the teacher's H×W as in the AT loss. Because the
    maps are non-negative the value lies in [0, 1] (0 also when a feature is all zero).

    Args:
        student_feature: Student feature map, shape (N, C_s, H_s, W_s).
        teacher_feature: Teacher feature map, shape (N, C_t, H_t, W_t).
        p: Exponent of the absolute activations.

    Returns:
        Scalar tensor (1 = same attention). Computed without gradients.

    Raises:
        ValueError: If a feature is not 4-D or the batch sizes differ.
    """
    return _attention_per_image(student_feature, teacher_feature, p)[1].mean()


def _flatten_features(x: Tensor, name: str) -> Tensor:
    if x.ndim == 4:
        return x.flatten(1)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, p) or (N, C, H, W), got {tuple(x.shape)}")
    return x


def _unbiased_centered_gram(gram: Tensor) -> Tensor:
    """U-centring of a Gram matrix (Song et al. 2012), as ``center_gram(unbiased=True)`` of Kornblith et al."""
    n = gram.shape[0]
    gram = gram.clone()
    gram.fill_diagonal_(0.0)
    means = gram.sum(dim=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    gram = gram - means.unsqueeze(1) - means.unsqueeze(0)
    gram.fill_diagonal_(0.0)
    return gram


def linear_cka(x: Tensor, y: Tensor, debiased: bool = False) -> Tensor:
    """Linear centred kernel alignment (Kornblith et al., ICML 2019, "Similarity of NN Representations Revisited").

    With X, Y the column-centred feature matrices of the same n examples,
    ``CKA = ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F · ‖Yᵀ Y‖_F)``, computed in float64 through the n×n Gram matrices when the
    features are wider than the batch. It is invariant to orthogonal transforms and isotropic scaling of either
    side, and symmetric. Degenerate input (fewer than 2 examples — 4 when debiased —, or a side with no variance,
    i.e. a centred norm below 1e-10 of its uncentred norm) gives 0.

    With few examples and many features the plain estimate is biased towards 1 (two independent random feature
    sets of 64 examples × 16k features score ≈ 0.99). ``debiased=True`` uses the unbiased HSIC estimator instead
    (Song et al. 2012; ``feature_space_linear_cka(debiased=True)`` of Kornblith et al.'s code, see also Nguyen et al.
    2021), which is close to 0 for unrelated features and may be slightly negative.

    Args:
        x: Features of shape (n, p1), or (n, C, H, W) flattened per example to (n, C·H·W).
        y: Features of shape (n, p2), or (n, C', H', W'); same n.
        debiased: Use the unbiased HSIC estimator.

    Returns:
        Scalar float tensor (in [0, 1] unless debiased), in the default float dtype.

    Raises:
        ValueError: If a shape is not 2-D or 4-D or the numbers of examples differ.

    Example:
        >>> x = torch.randn(16, 5)
        >>> round(float(linear_cka(x, 3.0 * x)), 6), round(float(linear_cka(x, 3.0 * x, debiased=True)), 6)
        (1.0, 1.0)
    """
    x2 = _flatten_features(x, "x")
    y2 = _flatten_features(y, "y")
    if x2.shape[0] != y2.shape[0]:
        raise ValueError(f"x and y must hold the same number of examples, got {tuple(x.shape)} and {tuple(y.shape)}")
    zero = torch.zeros((), dtype=torch.get_default_dtype(), device=x.device)
    n = x2.shape[0]
    if n < (4 if debiased else 2):
        return zero
    x64 = x2.detach().to(torch.float64)
    y64 = y2.detach().to(torch.float64)
    xc = x64 - x64.mean(dim=0, keepdim=True)
    yc = y64 - y64.mean(dim=0, keepdim=True)
    # Centring a constant column leaves rounding noise, which must not be mistaken for signal.
    if xc.norm() <= 1e-10 * x64.norm() or yc.norm() <= 1e-10 * y64.norm():
        return zero
    if debiased:
        gram_x, gram_y = _unbiased_centered_gram(xc @ xc.T), _unbiased_centered_gram(yc @ yc.T)
        denominator = gram_x.norm() * gram_y.norm()
        if denominator <= 0:
            return zero
        return ((gram_x * gram_y).sum() / denominator).to(zero.dtype)
    if max(xc.shape[1], yc.shape[1]) > n:
        gram_x, gram_y = xc @ xc.T, yc @ yc.T  # ‖YᵀX‖_F² = tr(K L) and ‖XᵀX‖_F = ‖X Xᵀ‖_F
        cross = (gram_x * gram_y).sum()
        norm_x, norm_y = gram_x.norm(), gram_y.norm()
    else:
        cross = (yc.T @ xc).pow(2).sum()
        norm_x, norm_y = (xc.T @ xc).norm(), (yc.T @ yc).norm()
    return (cross / (norm_x * norm_y)).clamp(0.0, 1.0).to(zero.dtype)


# ------------------------------------------------------------------------------------------------ Metric classes
class SaliencyAgreement(Metric):
    """Running macro mean of `saliency_agreement` over every image seen (DDP-reducible sums).

    ``update(teacher_maps, student_maps)`` adds each image's scores to per-key sums; ``compute()`` returns the dict of
    `saliency_agreement` for all images together, whatever the batch sizes were. ``higher_is_better`` is None because
    the keys disagree: ``kld`` is a divergence (lower is better), the other five are similarities.

    Args:
        top_k: Fraction k of pixels for ``topk_iou``, in (0, 1].
        sim: SIM convention, ``"mit"`` (default) or ``"pysaliency"`` (see `saliency_agreement_per_image`).
        **kwargs: Passed to `torchmetrics.Metric`.

    Raises:
        ValueError: If ``top_k`` is outside (0, 1] or ``sim`` is unknown.

    Example:
        >>> metric = SaliencyAgreement()
        >>> maps = torch.rand(3, 8, 8)
        >>> metric.update(maps, maps)
        >>> round(float(metric.compute()["spearman"]), 6)
        1.0
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, top_k: float = 0.1, sim: SimConvention = "mit", **kwargs) -> None:
        super().__init__(**kwargs)
        _check_top_k(top_k)
        _check_sim(sim)
        self.top_k, self.sim = top_k, sim
        for key in SALIENCY_KEYS:
            self.add_state(f"sum_{key}", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, teacher_maps: Tensor, student_maps: Tensor) -> None:
        """Adds the per-image scores of a batch of (N, H, W) or (H, W) maps."""
        per_image = _saliency_per_image64(teacher_maps, student_maps, self.top_k, self.sim)
        for key, values in per_image.items():
            state = getattr(self, f"sum_{key}")
            setattr(self, f"sum_{key}", state + values.sum().to(state.device))
        self.count += per_image["pearson"].numel()

    def compute(self) -> dict[str, Tensor]:
        """Returns the macro mean of every key over all images (NaN before any update)."""
        count = self.count.to(torch.float64)
        return {key: (getattr(self, f"sum_{key}") / count).float() for key in SALIENCY_KEYS}


class PointingGame(Metric):
    """Running pointing-game hit rate (see `pointing_game_hits`), as sums of hits and images.

    Args:
        tolerance: Hit radius in pixels (≥ 0, strict; 0 = the peak inside the mask).
        **kwargs: Passed to `torchmetrics.Metric`.

    Raises:
        ValueError: If ``tolerance`` is negative.

    Example:
        >>> metric = PointingGame()
        >>> maps = torch.zeros(1, 4, 4)
        >>> maps[0, 0, 0] = 1.0
        >>> metric.update(maps, boxes_to_masks([torch.tensor([[0, 0, 1, 1]])], 4, 4))
        >>> float(metric.compute())
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, tolerance: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
        self.tolerance = tolerance
        self.add_state("hits", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, maps: Tensor, masks: Tensor) -> None:
        """Counts the hits of a batch of maps against bool masks (N, H, W)."""
        hits = pointing_game_hits(maps, masks, self.tolerance)
        self.hits += hits.sum().to(self.hits.device)
        self.total += hits.numel()

    def compute(self) -> Tensor:
        """Returns hits / images (NaN before any update)."""
        return self.hits.float() / self.total.float()


class AttentionAgreement(Metric):
    """Running means of `attention_distance` (``at_distance``) and `attention_cosine` (``at_cosine``).

    Per-image values are summed, so ``compute()`` equals the functional result on all images together.
    ``higher_is_better`` is None: lower ``at_distance`` and higher ``at_cosine`` are better.

    Args:
        p: Exponent of the absolute activations of the attention map.
        **kwargs: Passed to `torchmetrics.Metric`.

    Example:
        >>> metric = AttentionAgreement()
        >>> feature = torch.rand(2, 4, 5, 5)
        >>> metric.update(feature, feature)
        >>> {key: round(float(value), 6) for key, value in metric.compute().items()}
        {'at_distance': 0.0, 'at_cosine': 1.0}
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, p: float = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        if not p > 0:
            raise ValueError(f"p must be a positive number, got {p!r}")
        self.p = p
        self.add_state("sum_distance", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_cosine", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, student_feature: Tensor, teacher_feature: Tensor) -> None:
        """Adds a batch of student (N, C_s, H_s, W_s) and teacher (N, C_t, H_t, W_t) features."""
        distance, cosine = _attention_per_image(student_feature, teacher_feature, self.p)
        self.sum_distance += distance.sum().to(self.sum_distance.device, torch.float64)
        self.sum_cosine += cosine.sum().to(self.sum_cosine.device, torch.float64)
        self.count += distance.numel()

    def compute(self) -> dict[str, Tensor]:
        """Returns ``{"at_distance": ..., "at_cosine": ...}`` averaged over all images (NaN before any update)."""
        count = self.count.to(torch.float64)
        return {"at_distance": (self.sum_distance / count).float(), "at_cosine": (self.sum_cosine / count).float()}


class LinearCKA(Metric):
    """Linear CKA (`linear_cka`) between student and teacher features of every example seen.

    CKA is not a mean of per-batch values, so the metric keeps the flattened features themselves in list states
    reduced with ``dist_reduce_fx="cat"`` and computes the exact full-data CKA in ``compute()``. Memory is
    n·(p_s + p_t) floats (kept in the features' dtype) for n examples of p_s and p_t features each — e.g. 64 probe
    images of 256×8×8 features per side take 8 MiB in float32. Use it on a probe set or pooled features, not on a
    whole dataset of large maps.

    Args:
        debiased: Use the unbiased HSIC estimator (see `linear_cka`); advisable when the examples are few and the
            features many.
        **kwargs: Passed to `torchmetrics.Metric`.

    Example:
        >>> metric = LinearCKA()
        >>> x = torch.randn(10, 6)
        >>> metric.update(x[:4], 2.0 * x[:4])
        >>> metric.update(x[4:], 2.0 * x[4:])
        >>> round(float(metric.compute()), 6)
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, debiased: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.debiased = debiased
        self.add_state("student", default=[], dist_reduce_fx="cat")
        self.add_state("teacher", default=[], dist_reduce_fx="cat")

    def update(self, student_feature: Tensor, teacher_feature: Tensor) -> None:
        """Stores a batch of (n, p) or (N, C, H, W) features of each side (same n)."""
        student = _flatten_features(student_feature, "student_feature").detach()
        teacher = _flatten_features(teacher_feature, "teacher_feature").detach()
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(
                "student_feature and teacher_feature must hold the same number of examples, got "
                f"{tuple(student_feature.shape)} and {tuple(teacher_feature.shape)}"
            )
        self.student.append(student)
        self.teacher.append(teacher)

    def compute(self) -> Tensor:
        """Returns the CKA of all stored examples (0 with fewer than two)."""
        if isinstance(self.student, list) and not self.student:  # torchmetrics warns about compute() before update()
            return torch.zeros((), device=self.device)
        return linear_cka(dim_zero_cat(self.student), dim_zero_cat(self.teacher), debiased=self.debiased)
