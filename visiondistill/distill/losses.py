"""Distillation losses as pure tensor functions (no Lightning).

Every function follows the formula listed in ``docs/formulas.md`` and the
reference code of its paper; the docstrings say where a choice had to be made. Inputs are validated
up front and a mismatch raises a `ValueError` that names both shapes. Weights (``1000`` for attention
transfer, the DKD warm-up, ...) are applied by the callbacks, not here, except where the formula itself
carries them (``alpha``/``beta`` of DKD, ``alpha`` of heatmap KD).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from visiondistill.core.maps import attention_map
from visiondistill.core.validation import check_ndim, check_positive, check_same_shape

__all__ = [
    "attention_map",
    "attention_transfer_loss",
    "binary_kd_loss",
    "channel_wise_loss",
    "dkd_loss",
    "dkd_warmup",
    "fgd_feature_loss",
    "fgd_masks",
    "heatmap_kd_loss",
    "hint_loss",
    "kd_loss",
    "pairwise_similarity_loss",
    "pixelwise_kd_loss",
    "saliency_alignment_loss",
]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Classic knowledge distillation loss (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network").

    ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` summed over classes and averaged over the batch. The ``T²`` factor
    keeps the gradient magnitude independent of the temperature.

    Args:
        student_logits: Student logits, shape (N, C).
        teacher_logits: Teacher logits, shape (N, C).
        temperature: Softmax temperature ``T`` (> 0).

    Returns:
        Scalar loss.

    Raises:
        ValueError: If the shapes differ, are not 2-D, or the temperature is not positive.

    Example:
        >>> logits = torch.tensor([[1.0, 2.0, 3.0]])
        >>> float(kd_loss(logits, logits))
        0.0
    """
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    check_ndim("student_logits", student_logits, 2, "(N, C)")
    check_positive("temperature", temperature)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation").

    Follows ``mdistiller/distillers/DKD.py``: with ``b = [p_gt, 1 − p_gt]`` of ``softmax(z/T)``,
    ``TCKD = KL(b_t ‖ b_s)·T²`` and ``NCKD = KL`` between the non-target distributions, obtained by subtracting
    1000 from the target logit (after dividing by ``T``, as mdistiller does) before the softmax, ``·T²``. Both are
    summed over the batch and divided by the batch size; the result is ``alpha·TCKD + beta·NCKD``. The warm-up
    factor ``min(epoch / W, 1)`` (see `dkd_warmup`) is applied by the callback, not here.

    Unlike mdistiller, ``log b_s`` is computed with log-sum-exp instead of ``log(sum of probabilities)``, which is
    the same value but stays finite (and keeps gradients finite) when a probability underflows.

    Args:
        student_logits: Student logits, shape (N, C), C ≥ 2.
        teacher_logits: Teacher logits, shape (N, C).
        target: Ground-truth class indices, shape (N,), integer dtype.
        alpha: Weight of the target-class term (TCKD).
        beta: Weight of the non-target-class term (NCKD).
        temperature: Softmax temperature ``T`` (> 0).

    Returns:
        Scalar loss.

    Raises:
        ValueError: If the logits' shapes differ, are not 2-D with C ≥ 2, ``target`` is not (N,) integer,
            or the temperature is not positive.
    """
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    check_ndim("student_logits", student_logits, 2, "(N, C)")
    check_positive("temperature", temperature)
    n, c = student_logits.shape
    if c < 2:
        raise ValueError(f"dkd_loss needs at least 2 classes, got logits of shape {tuple(student_logits.shape)}")
    if target.shape != (n,) or target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"target must be integer class indices of shape ({n},) to match logits of shape "
            f"{tuple(student_logits.shape)}, got shape {tuple(target.shape)} and dtype {target.dtype}"
        )
    gt_mask = torch.zeros_like(student_logits, dtype=torch.bool).scatter_(1, target.long().view(-1, 1), True)

    def binary_log_probs(logits: Tensor) -> Tensor:
        scaled = logits / temperature
        log_z = torch.logsumexp(scaled, dim=1, keepdim=True)
        log_gt = scaled.gather(1, target.long().view(-1, 1)) - log_z
        log_other = torch.logsumexp(scaled.masked_fill(gt_mask, float("-inf")), dim=1, keepdim=True) - log_z
        return torch.cat([log_gt, log_other], dim=1)

    # Teacher as probabilities (not log-probabilities): kl_div treats a zero target probability as 0·log 0 = 0.
    b_t = binary_log_probs(teacher_logits).exp()
    tckd = F.kl_div(binary_log_probs(student_logits), b_t, reduction="sum") * (temperature**2 / n)
    mask_offset = 1000.0 * gt_mask.to(student_logits.dtype)
    log_p_s_other = F.log_softmax(student_logits / temperature - mask_offset, dim=1)
    p_t_other = F.softmax(teacher_logits / temperature - mask_offset, dim=1)
    nckd = F.kl_div(log_p_s_other, p_t_other, reduction="sum") * (temperature**2 / n)
    return alpha * tckd + beta * nckd


def dkd_warmup(epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up factor of DKD, ``min(epoch / W, 1)`` (``1`` when ``W = 0``).

    mdistiller counts epochs from 1 (its first epoch already gets ``1 / W``); Lightning's ``current_epoch`` counts
    from 0, so pass ``current_epoch + 1`` to reproduce mdistiller (``current_epoch`` alone zeroes the first epoch).

    Args:
        epoch: Epoch number as the caller counts it (≥ 0).
        warmup_epochs: Warm-up length ``W`` in epochs (≥ 0); mdistiller uses 20.

    Returns:
        The factor in [0, 1].

    Raises:
        ValueError: If either argument is negative.

    Example:
        >>> dkd_warmup(5, 20), dkd_warmup(40, 20), dkd_warmup(0, 0)
        (0.25, 1.0, 1.0)
    """
    if epoch < 0 or warmup_epochs < 0:
        raise ValueError(f"epoch and warmup_epochs must be >= 0, got epoch={epoch} and warmup_epochs={warmup_epochs}")
    if warmup_epochs == 0:
        return 1.0
    return min(epoch / warmup_epochs, 1.0)


def attention_transfer_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2) -> Tensor:
    """Attention transfer loss (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention").

    ``mean((q_s − q_t)²)`` over batch and positions, as the reference code ``(at(x) - at(y)).pow(2).mean()``.
    The student's un-normalised map ``mean_c |A_c|^p`` is resized bilinearly (``align_corners=False``) to the
    teacher's H×W before normalisation. Channel counts may differ. The paper's weight (β = 1000) is applied by the
    callback.

    Args:
        student_feature: Student feature map, shape (N, C_s, H_s, W_s).
        teacher_feature: Teacher feature map, shape (N, C_t, H_t, W_t).
        p: Exponent of the absolute activations (> 0).

    Returns:
        Scalar loss.

    Raises:
        ValueError: If a feature is not 4-D or the batch sizes differ.
    """
    q_s, q_t = _attention_pair(student_feature, teacher_feature, p)
    return (q_s - q_t).pow(2).mean()


def _attention_pair(student_feature: Tensor, teacher_feature: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Student and teacher attention maps on the teacher's grid, each (N, H_t·W_t)."""
    check_ndim("student_feature", student_feature, 4, "(N, C, H, W)")
    check_ndim("teacher_feature", teacher_feature, 4, "(N, C, H, W)")
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            "student_feature and teacher_feature must have the same batch size, got "
            f"{tuple(student_feature.shape)} and {tuple(teacher_feature.shape)}"
        )
    size = (teacher_feature.shape[-2], teacher_feature.shape[-1])
    return attention_map(student_feature, p, size=size), attention_map(teacher_feature, p)


def hint_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets").

    Mean squared error between the (already connected) student feature and the teacher feature. The connector that
    maps student channels to teacher channels lives in the callback, so the shapes must match here.

    Args:
        student_feature: Connector output, any shape, typically (N, C, H, W).
        teacher_feature: Teacher feature of the same shape.

    Returns:
        Scalar loss, the mean over all elements.

    Raises:
        ValueError: If the shapes differ.
    """
    check_same_shape("student_feature", student_feature, "teacher_feature", teacher_feature)
    return F.mse_loss(student_feature, teacher_feature)


def pixelwise_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    ignore_mask: Tensor | None = None,
    pixel_weights: Tensor | None = None,
) -> Tensor:
    """Pixel-wise knowledge distillation for dense prediction (Liu et al., CVPR 2019, "Structured KD").

    ``T² · mean over pixels of KL(softmax(t_ij/T) ‖ softmax(s_ij/T))``, the KL summed over classes and averaged over
    every (non-ignored) pixel of every image. The ``T²`` factor is Hinton's: it keeps gradient magnitudes comparable
    across temperatures, and is 1 at the default ``T = 1`` (the setting of Liu et al.), so the default matches the
    paper exactly.

    Args:
        student_logits: Student class logits, shape (N, C, H, W).
        teacher_logits: Teacher class logits, shape (N, C, H, W).
        temperature: Softmax temperature ``T`` (> 0).
        ignore_mask: Optional bool mask, shape (N, H, W); ``True`` pixels are left out of the mean (e.g. the
            ``ignore_index`` pixels of the labels). When every pixel is ignored the loss is 0 (still attached to
            the graph).
        pixel_weights: Optional non-negative weights, shape (N, H, W): the mean becomes the weighted mean
            ``Σ w·KL / Σ w`` over the kept pixels (e.g. class weights of the teacher's predicted class, so that rare
            foreground pixels are not outvoted by the background; `PixelwiseDistillation`'s ``class_weights``).

    Returns:
        Scalar loss.

    Raises:
        ValueError: If the shapes differ or are not 4-D, the mask or weight shape is not (N, H, W), or ``T`` ≤ 0.
    """
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    check_ndim("student_logits", student_logits, 4, "(N, C, H, W)")
    check_positive("temperature", temperature)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    per_pixel = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="none").sum(dim=1)  # (N, H, W)
    if ignore_mask is None and pixel_weights is None:
        return per_pixel.mean() * temperature**2
    n, _, h, w = student_logits.shape
    if pixel_weights is not None:
        if pixel_weights.shape != (n, h, w):
            raise ValueError(
                f"pixel_weights must have shape (N, H, W) = {(n, h, w)} to match logits of shape "
                f"{tuple(student_logits.shape)}, got {tuple(pixel_weights.shape)}"
            )
        weights = pixel_weights.to(per_pixel.dtype)
        if ignore_mask is not None:
            weights = weights.masked_fill(ignore_mask.bool(), 0.0)
        return (per_pixel * weights).sum() / weights.sum().clamp_min(1e-12) * temperature**2
    if ignore_mask.shape != (n, h, w):
        raise ValueError(
            f"ignore_mask must have shape (N, H, W) = {(n, h, w)} to match logits of shape "
            f"{tuple(student_logits.shape)}, got {tuple(ignore_mask.shape)}"
        )
    keep = ~ignore_mask.bool()
    count = keep.sum()
    total = per_pixel.masked_fill(~keep, 0.0).sum()
    return total / count.clamp_min(1) * temperature**2


def channel_wise_loss(student_map: Tensor, teacher_map: Tensor, tau: float = 1.0) -> Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021, "Channel-wise Knowledge Distillation for Dense Prediction").

    Each channel is turned into a distribution over its H·W positions with a softmax at ``tau``;
    loss = ``tau² · Σ_{n,c} KL(teacher ‖ student) / (N·C)``, as in the reference ``ChannelWiseDivergence``.

    Args:
        student_map: Student logits or (connected) features, shape (N, C, H, W).
        teacher_map: Teacher map of the same shape.
        tau: Softmax temperature (> 0); 1 for segmentation, 4 is common for detection.

    Returns:
        Scalar loss.

    Raises:
        ValueError: If the shapes differ or are not 4-D, or ``tau`` ≤ 0.
    """
    check_same_shape("student_map", student_map, "teacher_map", teacher_map)
    check_ndim("student_map", student_map, 4, "(N, C, H, W)")
    check_positive("tau", tau)
    n, c = student_map.shape[:2]
    log_p_s = F.log_softmax(student_map.flatten(2) / tau, dim=2)
    log_p_t = F.log_softmax(teacher_map.flatten(2) / tau, dim=2)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum") * tau**2 / (n * c)


def _pairwise_cosine(feature: Tensor, eps: float = 1e-8) -> Tensor:
    """(N, HW, HW) cosine similarities between the C-dimensional vectors at every pair of positions."""
    flat = feature.flatten(2)  # (N, C, HW)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(eps)
    return torch.einsum("bcm,bcn->bmn", flat, flat)


def pairwise_similarity_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Pair-wise similarity distillation of SKD (Liu et al., CVPR 2019, "Structured Knowledge Distillation").

    ``a_ij = cos(f_i, f_j)`` between the feature vectors of every pair of spatial positions;
    loss = ``Σ_ij (a^s_ij − a^t_ij)² / (HW)²`` averaged over the batch. Pooling the features into coarser nodes (the
    paper's ``β`` patch size) is the caller's job. The reference code divides by ``‖f‖ + 1e-8`` with the norm
    detached; here the norm is clamped at 1e-8 and gradients flow through it (the exact gradient of the formula).

    Args:
        student_feature: Student feature, shape (N, C_s, H, W).
        teacher_feature: Teacher feature, shape (N, C_t, H, W); channels may differ, N, H, W must match.

    Returns:
        Scalar loss.

    Raises:
        ValueError: If a feature is not 4-D or batch or spatial sizes differ.
    """
    check_ndim("student_feature", student_feature, 4, "(N, C, H, W)")
    check_ndim("teacher_feature", teacher_feature, 4, "(N, C, H, W)")
    s_shape, t_shape = student_feature.shape, teacher_feature.shape
    if s_shape[0] != t_shape[0] or s_shape[2:] != t_shape[2:]:
        raise ValueError(
            "student_feature and teacher_feature must have the same batch and spatial sizes (channels may differ), "
            f"got {tuple(s_shape)} and {tuple(t_shape)}"
        )
    n, hw = s_shape[0], s_shape[2] * s_shape[3]
    diff = _pairwise_cosine(student_feature) - _pairwise_cosine(teacher_feature)
    return diff.pow(2).sum() / (hw**2 * n)


def heatmap_kd_loss(
    student_heatmaps: Tensor,
    teacher_heatmaps: Tensor,
    target_heatmaps: Tensor | None = None,
    alpha: float = 0.5,
    weights: Tensor | None = None,
) -> Tensor:
    """Heatmap distillation for pose estimation (Zhang et al., CVPR 2019, "Fast Human Pose Estimation", FPD).

    ``(1 − α)·MSE(H_s, H_gt) + α·MSE(H_s, H_t)``; without ground truth only the teacher term, with weight 1.

    Each MSE is ``mean_{n,k,y,x} w_nk · (H_s − H)²``: the squared error of keypoint k of image n is multiplied by its
    visibility weight ``w_nk`` (1 when ``weights`` is None) and the mean runs over all N·K·H·W elements, invisible
    keypoints included (they count as zeros). The common ``JointsMSELoss(use_target_weight=True)`` instead
    multiplies both heatmaps by ``w`` before squaring (``w²``) and halves the result, so for 0/1 weights this is
    exactly twice that loss.

    Args:
        student_heatmaps: Student heatmaps, shape (N, K, H, W).
        teacher_heatmaps: Teacher heatmaps of the same shape.
        target_heatmaps: Optional ground-truth heatmaps of the same shape.
        alpha: Weight ``α`` of the teacher term, in [0, 1].
        weights: Optional per-keypoint weights, shape (N, K) or (N, K, 1, 1); applied to both terms.

    Returns:
        Scalar loss.

    Raises:
        ValueError: If shapes differ or are not 4-D, ``weights`` has another shape, or ``alpha`` is outside [0, 1].
    """
    check_same_shape("student_heatmaps", student_heatmaps, "teacher_heatmaps", teacher_heatmaps)
    check_ndim("student_heatmaps", student_heatmaps, 4, "(N, K, H, W)")
    if target_heatmaps is not None:
        check_same_shape("student_heatmaps", student_heatmaps, "target_heatmaps", target_heatmaps)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    n, k = student_heatmaps.shape[:2]
    if weights is not None:
        if weights.shape not in ((n, k), (n, k, 1, 1)):
            raise ValueError(
                f"weights must have shape (N, K) = {(n, k)} or (N, K, 1, 1) to match heatmaps of shape "
                f"{tuple(student_heatmaps.shape)}, got {tuple(weights.shape)}"
            )
        weights = weights.reshape(n, k, 1, 1).to(student_heatmaps.dtype)

    def weighted_mse(reference: Tensor) -> Tensor:
        squared = (student_heatmaps - reference).pow(2)
        if weights is not None:
            squared = squared * weights
        return squared.mean()

    if target_heatmaps is None:
        return weighted_mse(teacher_heatmaps)
    return (1.0 - alpha) * weighted_mse(target_heatmaps) + alpha * weighted_mse(teacher_heatmaps)


def _minmax_normalize(maps: Tensor, eps: float) -> Tensor:
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    shifted = flat - low
    return shifted / (shifted.max(dim=1, keepdim=True).values + eps)


def saliency_alignment_loss(
    student_cam: Tensor, teacher_cam: Tensor, distance: str = "cosine", eps: float = 1e-7
) -> Tensor:
    """Distance between student and teacher saliency maps (CAMs), batch mean.

    The student's maps are resized bilinearly (``align_corners=False``) to the teacher's H×W first. Per image, with
    ``s`` and ``t`` the flattened maps:

    - ``"cosine"``: ``1 − ⟨s, t⟩ / (max(‖s‖, ε) · max(‖t‖, ε))`` (0 = same up to scale; an all-zero map gives 1);
    - ``"mse"``: ``mean((ŝ − t̂)²)`` of the min-max normalised maps ``x̂ = (x − min x) / (max(x − min x) + ε)``,
      the [0, 1] scaling grad-cam applies to its maps (ε = 1e-7, as grad-cam).

    Args:
        student_cam: Student maps, shape (N, H_s, W_s) — differentiable.
        teacher_cam: Teacher maps, shape (N, H_t, W_t) — the reference (detach it to hold it fixed).
        distance: ``"cosine"`` or ``"mse"``.
        eps: The ε above (> 0).

    Returns:
        Scalar loss.

    Raises:
        ValueError: If a map is not 3-D, the batch sizes differ, or ``distance`` is unknown.

    Example:
        >>> cam = torch.rand(2, 4, 4)
        >>> float(saliency_alignment_loss(3 * cam, cam)) < 1e-6
        True
    """
    check_ndim("student_cam", student_cam, 3, "(N, H, W)")
    check_ndim("teacher_cam", teacher_cam, 3, "(N, H, W)")
    check_positive("eps", eps)
    if student_cam.shape[0] != teacher_cam.shape[0]:
        raise ValueError(
            "student_cam and teacher_cam must have the same batch size, got "
            f"{tuple(student_cam.shape)} and {tuple(teacher_cam.shape)}"
        )
    if distance not in ("cosine", "mse"):
        raise ValueError(f"distance must be 'cosine' or 'mse', got {distance!r}")
    if student_cam.shape[-2:] != teacher_cam.shape[-2:]:
        size = tuple(teacher_cam.shape[-2:])
        student_cam = F.interpolate(student_cam.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        student_cam = student_cam.squeeze(1)
    s, t = student_cam.flatten(1), teacher_cam.flatten(1).to(student_cam.dtype)
    if distance == "cosine":
        norms = s.norm(dim=1).clamp_min(eps) * t.norm(dim=1).clamp_min(eps)
        return (1.0 - (s * t).sum(dim=1) / norms).mean()
    return (_minmax_normalize(s, eps) - _minmax_normalize(t, eps)).pow(2).mean()


# -- detection (FCOS-style dense heads) ----------------------------------------------------------------------------


def binary_kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, weights: Tensor | None = None
) -> Tensor:
    """KD on sigmoid (focal-loss) classification logits: a binary KL per class and location, at temperature ``T``.

    With ``p = σ(t/T)`` (teacher) and ``q = σ(s/T)`` (student) for each location ``a`` and class ``k``::

        KL_ak = p·log(p/q) + (1 − p)·log((1 − p)/(1 − q))
        loss  = T² · Σ_a w_a · Σ_k KL_ak / Σ_a w_a            (w_a = 1 without weights: the mean over locations)

    Each class of a sigmoid head is its own two-way distribution (object of class k or not), so the KL is summed over
    classes, not taken over a softmax across them. Computed from logits with ``logsigmoid`` (stable for large ones).

    Args:
        student_logits: Student logits, shape (N, A, K) or any shape ending in K.
        teacher_logits: Teacher logits of the same shape.
        temperature: ``T`` (> 0).
        weights: Optional non-negative per-location weights, shape ``logits.shape[:-1]`` (e.g. the teacher's best
            class probability, to focus on likely objects).

    Returns:
        Scalar loss (0 when every weight is 0).

    Raises:
        ValueError: If the shapes differ, ``weights`` has another shape, or ``temperature`` ≤ 0.
    """
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    check_positive("temperature", temperature)
    s, t = student_logits / temperature, teacher_logits / temperature
    p = torch.sigmoid(t)
    log_p, log_not_p = F.logsigmoid(t), F.logsigmoid(-t)
    log_q, log_not_q = F.logsigmoid(s), F.logsigmoid(-s)
    kl = (p * (log_p - log_q) + (1 - p) * (log_not_p - log_not_q)).sum(dim=-1)
    if weights is None:
        return kl.mean() * temperature**2
    if weights.shape != kl.shape:
        raise ValueError(f"weights must have shape {tuple(kl.shape)} (one per location), got {tuple(weights.shape)}")
    weights = weights.to(kl.dtype)
    return (kl * weights).sum() / weights.sum().clamp_min(1e-12) * temperature**2


def fgd_masks(
    boxes_per_image: list[Tensor],
    height: int,
    width: int,
    image_size: tuple[int, int],
    extent: Literal["reference", "tight"] = "reference",
) -> tuple[Tensor, Tensor]:
    """Foreground scale masks and background masks of FGD (Yang et al., CVPR 2022) on one feature map.

    ``extent="reference"`` (default) reproduces the authors' code exactly (``mmdet/distillation/losses/fgd.py``,
    ``FeatureLoss.forward``): a box ``x0, y0, x1, y1`` (input pixels) is scaled to the map in the boxes' dtype as
    ``x / W_img · W`` and ``y / H_img · H``; with ``hmin = ⌊y0'⌋``, ``hmax = ⌈y1'⌉`` (``wmin``, ``wmax`` alike) it
    covers the rows ``hmin … hmax`` *inclusive* (the slice ``hmin:hmax+1``, cut at the map's edge) and every covered
    cell gets ``max(current, 1 / ((hmax + 1 − hmin)(wmax + 1 − wmin)))`` — the area counts the cells of the uncut
    extent, so the smallest box wins where boxes overlap. The one deviation: a negative ``hmin`` or ``wmin`` (a box
    reaching past the top or left edge) starts at 0, where the reference's negative slice start would wrap around.

    ``extent="tight"`` covers ``⌊y0'⌋ … ⌈y1'⌉ − 1`` (at least one cell, cut at the edge) with ``1 / (covered cells)``:
    exactly the cells the box touches, and areas that sum to 1 over a box inside the map.

    The background mask is 1 on cells no box covers, divided by their count (0 everywhere when boxes cover the
    whole map), in both conventions.

    Args:
        boxes_per_image: One ``M×4`` xyxy tensor per image (``M`` may be 0).
        height: Feature-map height ``H``.
        width: Feature-map width ``W``.
        image_size: ``(H_img, W_img)`` of the input the boxes refer to.
        extent: ``"reference"`` (the FGD authors' inclusive extent) or ``"tight"``.

    Returns:
        ``(foreground, background)``, each float32 ``(N, H, W)``.

    Raises:
        ValueError: On an unknown ``extent``.
    """
    if extent not in ("reference", "tight"):
        raise ValueError(f"extent must be 'reference' or 'tight', got {extent!r}")
    n = len(boxes_per_image)
    foreground = torch.zeros(n, height, width)
    background = torch.ones(n, height, width)
    image_h, image_w = image_size
    for i, boxes in enumerate(boxes_per_image):
        boxes = boxes.detach().reshape(-1, 4).cpu()
        if not boxes.is_floating_point():
            boxes = boxes.to(torch.get_default_dtype())
        # The reference's arithmetic, in the boxes' dtype, so that floor/ceil see the same values.
        wmin = torch.floor(boxes[:, 0] / image_w * width).long().tolist()
        hmin = torch.floor(boxes[:, 1] / image_h * height).long().tolist()
        wmax = torch.ceil(boxes[:, 2] / image_w * width).long().tolist()
        hmax = torch.ceil(boxes[:, 3] / image_h * height).long().tolist()
        for top, left, bottom, right in zip(hmin, wmin, hmax, wmax, strict=True):
            if extent == "reference":
                value = 1.0 / ((bottom + 1 - top) * (right + 1 - left))
                rows = slice(max(top, 0), bottom + 1)
                cols = slice(max(left, 0), right + 1)
            else:
                top, left = min(max(top, 0), height - 1), min(max(left, 0), width - 1)
                bottom, right = min(max(bottom, top + 1), height), min(max(right, left + 1), width)
                value = 1.0 / ((bottom - top) * (right - left))
                rows, cols = slice(top, bottom), slice(left, right)
            foreground[i, rows, cols] = foreground[i, rows, cols].clamp_min(value)
            background[i, rows, cols] = 0.0
        count = background[i].sum()
        if count > 0:
            background[i] /= count
    return foreground, background


def _fgd_attention(feature: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """FGD's spatial ``H·W·softmax(mean_c|F| / T)`` (N, H, W) and channel ``C·softmax(mean_hw|F| / T)`` (N, C)."""
    n, c, h, w = feature.shape
    magnitude = feature.abs()
    spatial = h * w * F.softmax((magnitude.mean(dim=1) / temperature).flatten(1), dim=1).view(n, h, w)
    channel = c * F.softmax(magnitude.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial, channel


def fgd_feature_loss(
    student_feature: Tensor,
    teacher_feature: Tensor,
    foreground: Tensor,
    background: Tensor,
    alpha: float = 1.0,
    beta: float = 0.5,
    gamma: float = 0.0,
    temperature: float = 0.5,
) -> Tensor:
    """Focal and attention feature distillation of FGD (Yang et al., CVPR 2022, "Focal and Global KD for Detectors").

    With the teacher's attention ``A^S = H·W·softmax(mean_c|F_t|/T)`` (spatial) and ``A^C = C·softmax(mean_hw|F_t|/T)``
    (channel), the foreground scale mask ``M_fg`` and background mask ``M_bg`` of `fgd_masks`::

        focal     = α · Σ M_fg·A^S·A^C·(F_t − F_s)² + β · Σ M_bg·A^S·A^C·(F_t − F_s)²      (sums over n, c, h, w)
        attention = γ · (Σ |A^S_t − A^S_s| + Σ |A^C_t − A^C_s|)                         (student attentions alike)
        loss      = (focal + attention) / N

    as the reference ``FeatureLoss`` (its global GcBlock term is left out). The reference defaults for RetinaNet
    (α = 0.001, β = 0.0005, γ = 0.0005) suit 256-channel FPNs over 800 px images; the weights here are relative
    and the callback's weight scales the whole.

    Args:
        student_feature: Student feature (already mapped to the teacher's channels), shape (N, C, H, W).
        teacher_feature: Teacher feature of the same shape.
        foreground: Foreground scale mask, shape (N, H, W).
        background: Background mask, shape (N, H, W).
        alpha: Foreground weight ``α``.
        beta: Background weight ``β``.
        gamma: Attention-loss weight ``γ``.
        temperature: Attention temperature ``T`` (> 0; 0.5 in the paper).

    Returns:
        Scalar loss.

    Raises:
        ValueError: If shapes differ or are not 4-D, the masks are not (N, H, W), or ``temperature`` ≤ 0.
    """
    check_same_shape("student_feature", student_feature, "teacher_feature", teacher_feature)
    check_ndim("student_feature", student_feature, 4, "(N, C, H, W)")
    check_positive("temperature", temperature)
    n, _, h, w = student_feature.shape
    for name, mask in (("foreground", foreground), ("background", background)):
        if tuple(mask.shape) != (n, h, w):
            raise ValueError(f"{name} must have shape {(n, h, w)} (N, H, W), got {tuple(mask.shape)}")
    teacher_feature = teacher_feature.detach()
    spatial_t, channel_t = _fgd_attention(teacher_feature, temperature)
    attention = spatial_t.unsqueeze(1) * channel_t.view(n, -1, 1, 1)
    squared = (teacher_feature - student_feature).pow(2) * attention
    masks = alpha * foreground.to(squared) + beta * background.to(squared)
    loss = (squared * masks.unsqueeze(1)).sum()
    if gamma:
        spatial_s, channel_s = _fgd_attention(student_feature, temperature)
        loss = loss + gamma * ((spatial_t - spatial_s).abs().sum() + (channel_t - channel_s).abs().sum())
    return loss / n
