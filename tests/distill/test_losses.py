"""Distillation losses against hand-computed values and independent straight-line numpy references."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visiondistill.distill.losses import (
    attention_map,
    attention_transfer_loss,
    binary_kd_loss,
    channel_wise_loss,
    dkd_loss,
    dkd_warmup,
    fgd_feature_loss,
    fgd_masks,
    heatmap_kd_loss,
    hint_loss,
    kd_loss,
    pairwise_similarity_loss,
    pixelwise_kd_loss,
    saliency_alignment_loss,
)

ATOL = 1e-6


def rand(*shape, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


def shapes_pattern(a, b):
    return re.escape(str(tuple(a))) + ".*" + re.escape(str(tuple(b)))


# ------------------------------------------------------------------------------------------- numpy references
def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_kl(p, q, axis):
    return (p * (np.log(p) - np.log(q))).sum(axis=axis)


def np_bilinear(image, out_h, out_w):
    """align_corners=False bilinear resize of an (H, W) array, as torch does without a scale_factor."""
    in_h, in_w = image.shape

    def taps(out_size, in_size):
        src = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        return i0, i1, src - i0

    y0, y1, ly = taps(out_h, in_h)
    x0, x1, lx = taps(out_w, in_w)
    out = np.empty((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            top = (1 - lx[j]) * image[y0[i], x0[j]] + lx[j] * image[y0[i], x1[j]]
            bottom = (1 - lx[j]) * image[y1[i], x0[j]] + lx[j] * image[y1[i], x1[j]]
            out[i, j] = (1 - ly[i]) * top + ly[i] * bottom
    return out


def np_attention(feature, p=2, size=None):
    amap = (np.abs(feature) ** p).mean(axis=1)  # (N, H, W)
    if size is not None:
        amap = np.stack([np_bilinear(m, *size) for m in amap])
    flat = amap.reshape(amap.shape[0], -1)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------- mdistiller DKD, transcribed
# mdistiller/distillers/DKD.py, with `size_average=False` written as its equivalent `reduction="sum"`.
def mdistiller_dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = F.kl_div(log_pred_student, pred_teacher, reduction="sum") * (temperature**2) / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = (
        F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * (temperature**2) / target.shape[0]
    )
    return alpha * tckd_loss + beta * nckd_loss


def _get_gt_mask(logits, target):
    target = target.reshape(-1)
    mask = torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()
    return mask


def _get_other_mask(logits, target):
    target = target.reshape(-1)
    mask = torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()
    return mask


def cat_mask(t, mask1, mask2):
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    rt = torch.cat([t1, t2], dim=1)
    return rt


# ------------------------------------------------------------------------------------------------------- KD
def test_kd_loss_by_hand():
    # T = 1, two classes: p_t = softmax([0, ln 3]) = [1/4, 3/4], p_s = [1/2, 1/2].
    student = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kd_loss(student, teacher, temperature=1.0).item() == pytest.approx(expected, abs=ATOL)
    # T = 2 on logits scaled by 2 gives the same distributions, times T² = 4.
    assert kd_loss(2 * student, 2 * teacher, temperature=2.0).item() == pytest.approx(4 * expected, abs=ATOL)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_matches_numpy(temperature):
    s, t = rand(5, 7, seed=1, scale=3), rand(5, 7, seed=2, scale=3)
    p_s = np_softmax(s.numpy() / temperature, axis=1)
    p_t = np_softmax(t.numpy() / temperature, axis=1)
    expected = np_kl(p_t, p_s, axis=1).mean() * temperature**2
    assert kd_loss(s, t, temperature).item() == pytest.approx(expected, abs=ATOL)
    assert kd_loss(t, t, temperature).item() == pytest.approx(0.0, abs=ATOL)


def test_kd_loss_errors():
    with pytest.raises(ValueError, match=shapes_pattern((4, 10), (4, 12))):
        kd_loss(torch.zeros(4, 10), torch.zeros(4, 12))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(4, 10), torch.zeros(4, 10), temperature=0.0)
    with pytest.raises(ValueError, match="2-D"):
        kd_loss(torch.zeros(4, 10, 2), torch.zeros(4, 10, 2))


# ------------------------------------------------------------------------------------------------------ DKD
@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 3.0)])
def test_dkd_loss_matches_mdistiller(alpha, beta, temperature):
    s, t = rand(6, 10, seed=3, scale=4), rand(6, 10, seed=4, scale=4)
    target = torch.tensor([0, 3, 9, 3, 5, 1])
    ours = dkd_loss(s, t, target, alpha=alpha, beta=beta, temperature=temperature)
    reference = mdistiller_dkd_loss(s, t, target, alpha, beta, temperature)
    assert ours.item() == pytest.approx(reference.item(), abs=ATOL)


def test_dkd_loss_float32_and_gradients_match_mdistiller():
    s = rand(4, 5, seed=5, scale=2).float().requires_grad_()
    s_ref = s.detach().clone().requires_grad_()
    t = rand(4, 5, seed=6, scale=2).float()
    target = torch.tensor([4, 0, 2, 2])
    ours = dkd_loss(s, t, target)
    reference = mdistiller_dkd_loss(s_ref, t, target, 1.0, 8.0, 4.0)
    ours.backward()
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), abs=1e-5)
    torch.testing.assert_close(s.grad, s_ref.grad, atol=1e-6, rtol=1e-5)


def test_dkd_loss_by_hand_two_classes():
    # With two classes the non-target distribution is a single certain class, so NCKD = 0 and DKD = α·KD.
    s, t = rand(3, 2, seed=7), rand(3, 2, seed=8)
    target = torch.tensor([0, 1, 1])
    assert dkd_loss(s, t, target, alpha=1.5, beta=8.0, temperature=2.0).item() == pytest.approx(
        1.5 * kd_loss(s, t, temperature=2.0).item(), abs=ATOL
    )


def test_dkd_loss_stays_finite_on_extreme_logits():
    s = torch.tensor([[-200.0, 200.0, 0.0]], requires_grad=True)
    t = torch.tensor([[200.0, -200.0, 0.0]])
    loss = dkd_loss(s, t, torch.tensor([0]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_loss_errors():
    with pytest.raises(ValueError, match=shapes_pattern((2, 3), (2, 4))):
        dkd_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target.*\(2,\).*\(3,\)"):
        dkd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="dtype"):
        dkd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2))


def test_dkd_warmup():
    assert dkd_warmup(0, 20) == 0.0
    assert dkd_warmup(5, 20) == 0.25
    assert dkd_warmup(20, 20) == 1.0
    assert dkd_warmup(100, 20) == 1.0
    assert dkd_warmup(0, 0) == 1.0
    with pytest.raises(ValueError):
        dkd_warmup(-1, 20)


# ------------------------------------------------------------------------------------------ attention transfer
def test_attention_map_by_hand():
    feature = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    feature[0, 0, 0] = torch.tensor([3.0, 0.0])
    feature[0, 1, 0] = torch.tensor([4.0, 0.0])  # mean_c A² = [12.5, 0] -> normalised [1, 0]
    torch.testing.assert_close(attention_map(feature), torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    feature[0, 1, 0, 1] = 5.0  # [12.5, 12.5] -> [1/√2, 1/√2]
    torch.testing.assert_close(attention_map(feature), torch.full((1, 2), 2**-0.5, dtype=torch.float64))


@pytest.mark.parametrize("p", [1, 2, 3])
def test_attention_map_matches_numpy(p):
    feature = rand(3, 5, 4, 6, seed=9)
    np.testing.assert_allclose(attention_map(feature, p).numpy(), np_attention(feature.numpy(), p), atol=ATOL)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((2, 4, 6, 6), (2, 16, 6, 6)), ((2, 4, 3, 5), (2, 8, 6, 10)), ((2, 4, 8, 8), (2, 8, 4, 4))],
)
def test_attention_transfer_loss_matches_numpy(student_shape, teacher_shape):
    s, t = rand(*student_shape, seed=10), rand(*teacher_shape, seed=11)
    q_s = np_attention(s.numpy(), size=teacher_shape[2:])
    q_t = np_attention(t.numpy())
    expected = ((q_s - q_t) ** 2).mean()
    assert attention_transfer_loss(s, t).item() == pytest.approx(expected, abs=ATOL)


def test_attention_transfer_loss_is_zero_for_scaled_copies():
    t = rand(2, 3, 4, 4, seed=12)
    assert attention_transfer_loss(torch.cat([2 * t, -t], dim=1), t).item() == pytest.approx(0.0, abs=ATOL)


def test_attention_transfer_loss_errors():
    with pytest.raises(ValueError, match=shapes_pattern((2, 3, 4, 4), (3, 3, 4, 4))):
        attention_transfer_loss(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        attention_transfer_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, 4))


# ------------------------------------------------------------------------------------------------------ hint
def test_hint_loss():
    s, t = rand(2, 3, 4, 4, seed=13), rand(2, 3, 4, 4, seed=14)
    assert hint_loss(s, t).item() == pytest.approx(((s.numpy() - t.numpy()) ** 2).mean(), abs=ATOL)
    assert hint_loss(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match=shapes_pattern((2, 8, 4, 4), (2, 16, 4, 4))):
        hint_loss(torch.zeros(2, 8, 4, 4), torch.zeros(2, 16, 4, 4))


# ------------------------------------------------------------------------------------------------- pixel-wise
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_pixelwise_kd_loss_matches_numpy(temperature):
    s, t = rand(2, 4, 3, 5, seed=15, scale=2), rand(2, 4, 3, 5, seed=16, scale=2)
    p_s = np_softmax(s.numpy() / temperature, axis=1)
    p_t = np_softmax(t.numpy() / temperature, axis=1)
    per_pixel = np_kl(p_t, p_s, axis=1)  # (N, H, W)
    expected = per_pixel.mean() * temperature**2
    assert pixelwise_kd_loss(s, t, temperature).item() == pytest.approx(expected, abs=ATOL)

    ignore = torch.zeros(2, 3, 5, dtype=torch.bool)
    ignore[0, :, 2:] = True
    ignore[1, 1] = True
    expected_masked = per_pixel[~ignore.numpy()].mean() * temperature**2
    assert pixelwise_kd_loss(s, t, temperature, ignore_mask=ignore).item() == pytest.approx(expected_masked, abs=ATOL)


def test_pixelwise_kd_loss_all_ignored_and_errors():
    s = rand(1, 3, 2, 2, seed=17).requires_grad_()
    loss = pixelwise_kd_loss(s, rand(1, 3, 2, 2, seed=18), ignore_mask=torch.ones(1, 2, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError, match=shapes_pattern((1, 3, 2, 2), (1, 4, 2, 2))):
        pixelwise_kd_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match=r"ignore_mask.*\(1, 2, 2\).*\(1, 2, 3\)"):
        pixelwise_kd_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), ignore_mask=torch.zeros(1, 2, 3).bool())


# ------------------------------------------------------------------------------------------------ channel-wise
@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_channel_wise_loss_matches_numpy(tau):
    s, t = rand(2, 3, 4, 5, seed=19, scale=2), rand(2, 3, 4, 5, seed=20, scale=2)
    p_s = np_softmax(s.numpy().reshape(6, 20) / tau, axis=1)
    p_t = np_softmax(t.numpy().reshape(6, 20) / tau, axis=1)
    expected = tau**2 * np_kl(p_t, p_s, axis=1).sum() / (2 * 3)
    assert channel_wise_loss(s, t, tau).item() == pytest.approx(expected, abs=ATOL)


def test_channel_wise_loss_by_hand_and_errors():
    # One channel, two positions, tau = 1: p_t = [1/4, 3/4], p_s = [1/2, 1/2].
    s = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    t = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64).view(1, 1, 1, 2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert channel_wise_loss(s, t).item() == pytest.approx(expected, abs=ATOL)
    with pytest.raises(ValueError, match=shapes_pattern((1, 2, 4, 4), (1, 2, 8, 8))):
        channel_wise_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 8, 8))


# ------------------------------------------------------------------------------------------------- pair-wise
def np_pairwise_loss(student, teacher):
    n, _, h, w = student.shape
    total = 0.0
    for b in range(n):
        fs = student[b].reshape(student.shape[1], -1)
        ft = teacher[b].reshape(teacher.shape[1], -1)
        for i in range(h * w):
            for j in range(h * w):
                a_s = fs[:, i] @ fs[:, j] / (np.linalg.norm(fs[:, i]) * np.linalg.norm(fs[:, j]))
                a_t = ft[:, i] @ ft[:, j] / (np.linalg.norm(ft[:, i]) * np.linalg.norm(ft[:, j]))
                total += (a_s - a_t) ** 2
    return total / (h * w) ** 2 / n


def test_pairwise_similarity_loss_matches_numpy():
    s, t = rand(2, 3, 3, 4, seed=21), rand(2, 7, 3, 4, seed=22)
    assert pairwise_similarity_loss(s, t).item() == pytest.approx(np_pairwise_loss(s.numpy(), t.numpy()), abs=ATOL)


def test_pairwise_similarity_loss_by_hand_and_errors():
    # Two positions: student vectors parallel (a_01 = 1), teacher orthogonal (a_01 = 0) -> 2·1² / 2² = 0.5.
    s = torch.tensor([[1.0, 2.0], [1.0, 2.0]]).view(1, 2, 1, 2)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    assert pairwise_similarity_loss(s, t).item() == pytest.approx(0.5, abs=ATOL)
    with pytest.raises(ValueError, match=shapes_pattern((1, 2, 4, 4), (1, 2, 4, 5))):
        pairwise_similarity_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))


# --------------------------------------------------------------------------------------------------- heatmap
class JointsMSELoss(torch.nn.Module):
    """HRNet / FPD's keypoint loss, transcribed, to pin down the documented relation to ours."""

    def __init__(self, use_target_weight):
        super().__init__()
        self.criterion = torch.nn.MSELoss(reduction="mean")
        self.use_target_weight = use_target_weight

    def forward(self, output, target, target_weight):
        batch_size = output.size(0)
        num_joints = output.size(1)
        heatmaps_pred = output.reshape((batch_size, num_joints, -1)).split(1, 1)
        heatmaps_gt = target.reshape((batch_size, num_joints, -1)).split(1, 1)
        loss = 0
        for idx in range(num_joints):
            heatmap_pred = heatmaps_pred[idx].squeeze()
            heatmap_gt = heatmaps_gt[idx].squeeze()
            if self.use_target_weight:
                loss += 0.5 * self.criterion(
                    heatmap_pred.mul(target_weight[:, idx]), heatmap_gt.mul(target_weight[:, idx])
                )
            else:
                loss += 0.5 * self.criterion(heatmap_pred, heatmap_gt)
        return loss / num_joints


def test_heatmap_kd_loss_matches_numpy():
    hs, ht, hg = rand(2, 3, 4, 4, seed=23), rand(2, 3, 4, 4, seed=24), rand(2, 3, 4, 4, seed=25)
    w = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 0.0]], dtype=torch.float64)
    a_s, a_t, a_g, a_w = hs.numpy(), ht.numpy(), hg.numpy(), w.numpy()[:, :, None, None]
    mse_t = (a_w * (a_s - a_t) ** 2).mean()
    mse_g = (a_w * (a_s - a_g) ** 2).mean()
    assert heatmap_kd_loss(hs, ht, hg, alpha=0.3, weights=w).item() == pytest.approx(
        0.7 * mse_g + 0.3 * mse_t, abs=ATOL
    )
    w4 = w.view(2, 3, 1, 1)
    assert heatmap_kd_loss(hs, ht, hg, alpha=0.3, weights=w4).item() == pytest.approx(
        0.7 * mse_g + 0.3 * mse_t, abs=ATOL
    )
    assert heatmap_kd_loss(hs, ht, weights=w).item() == pytest.approx(mse_t, abs=ATOL)
    plain = 0.5 * ((a_s - a_g) ** 2).mean() + 0.5 * ((a_s - a_t) ** 2).mean()
    assert heatmap_kd_loss(hs, ht, hg).item() == pytest.approx(plain, abs=ATOL)


def test_heatmap_kd_loss_is_twice_joints_mse_for_binary_weights():
    hs, ht = rand(2, 3, 4, 4, seed=26), rand(2, 3, 4, 4, seed=27)
    w = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    reference = JointsMSELoss(use_target_weight=True)(hs, ht, w.unsqueeze(-1))
    assert heatmap_kd_loss(hs, ht, weights=w).item() == pytest.approx(2 * reference.item(), abs=ATOL)


def test_heatmap_kd_loss_errors():
    with pytest.raises(ValueError, match=shapes_pattern((2, 3, 4, 4), (2, 3, 8, 8))):
        heatmap_kd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=shapes_pattern((2, 3, 4, 4), (2, 3, 4, 5))):
        heatmap_kd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"weights.*\(2, 3\).*\(2, 4\)"):
        heatmap_kd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), weights=torch.ones(2, 4))
    with pytest.raises(ValueError, match="alpha"):
        heatmap_kd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), alpha=1.5)


# ------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "make_loss",
    [
        lambda s: kd_loss(s.flatten(1), rand(2, 48, seed=30)),
        lambda s: dkd_loss(s.flatten(1), rand(2, 48, seed=30), torch.tensor([1, 7])),
        lambda s: attention_transfer_loss(s, rand(2, 5, 8, 8, seed=31)),
        lambda s: hint_loss(s, rand(2, 3, 4, 4, seed=32)),
        lambda s: pixelwise_kd_loss(s, rand(2, 3, 4, 4, seed=33), temperature=2.0),
        lambda s: channel_wise_loss(s, rand(2, 3, 4, 4, seed=34), tau=4.0),
        lambda s: pairwise_similarity_loss(s, rand(2, 6, 4, 4, seed=35)),
        lambda s: heatmap_kd_loss(s, rand(2, 3, 4, 4, seed=36), rand(2, 3, 4, 4, seed=37)),
    ],
    ids=["kd", "dkd", "at", "hint", "pixelwise", "cwd", "pairwise", "heatmap"],
)
def test_gradients_flow_to_student_only(make_loss):
    student = rand(2, 3, 4, 4, seed=38).requires_grad_()
    loss = make_loss(student)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_float32_inputs_give_float32_losses():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert kd_loss(s.flatten(1), t.flatten(1)).dtype == torch.float32
    assert attention_transfer_loss(s, t).dtype == torch.float32
    assert channel_wise_loss(s, t).dtype == torch.float32


# --------------------------------------------------------------------------------------- messages name the input
def _z(*shape):
    return torch.zeros(*shape)


# Every shape, rank and positivity check names the argument at fault and the layout it expects: a message that
# named the wrong tensor (or none) would send the user to the wrong input.
MESSAGE_CASES = [
    (lambda: kd_loss(_z(2, 3), _z(2, 4)), "student_logits and teacher_logits must have the same shape"),
    (lambda: kd_loss(_z(2, 3, 1), _z(2, 3, 1)), "student_logits must be 2-D (N, C), got shape (2, 3, 1)"),
    (lambda: kd_loss(_z(2, 3), _z(2, 3), temperature=0), "temperature must be a positive number, got 0"),
    (lambda: dkd_loss(_z(2, 3), _z(2, 4), torch.tensor([0, 1])), "student_logits and teacher_logits must have"),
    (lambda: dkd_loss(_z(2, 3, 1), _z(2, 3, 1), torch.tensor([0, 1])), "student_logits must be 2-D (N, C), got"),
    (lambda: dkd_loss(_z(2, 3), _z(2, 3), torch.tensor([0, 1]), temperature=-1.0), "temperature must be a positive"),
    (lambda: attention_transfer_loss(_z(2, 3, 4), _z(2, 3, 4, 4)), "student_feature must be 4-D (N, C, H, W), got"),
    (lambda: attention_transfer_loss(_z(2, 3, 4, 4), _z(2, 3, 4)), "teacher_feature must be 4-D (N, C, H, W), got"),
    (lambda: hint_loss(_z(2, 3, 4, 4), _z(2, 5, 4, 4)), "student_feature and teacher_feature must have the same shape"),
    (lambda: pixelwise_kd_loss(_z(2, 3, 4, 4), _z(2, 3, 4, 5)), "student_logits and teacher_logits must have the same"),
    (lambda: pixelwise_kd_loss(_z(2, 3, 4), _z(2, 3, 4)), "student_logits must be 4-D (N, C, H, W), got shape (2, 3"),
    (lambda: pixelwise_kd_loss(_z(2, 3, 4, 4), _z(2, 3, 4, 4), temperature=0), "temperature must be a positive number"),
    (lambda: channel_wise_loss(_z(2, 3, 4, 4), _z(2, 3, 4, 5)), "student_map and teacher_map must have the same shape"),
    (lambda: channel_wise_loss(_z(2, 3, 4), _z(2, 3, 4)), "student_map must be 4-D (N, C, H, W), got shape (2, 3, 4)"),
    (lambda: channel_wise_loss(_z(2, 3, 4, 4), _z(2, 3, 4, 4), tau=0), "tau must be a positive number, got 0"),
    (lambda: pairwise_similarity_loss(_z(2, 3, 4), _z(2, 3, 4, 4)), "student_feature must be 4-D (N, C, H, W), got"),
    (lambda: pairwise_similarity_loss(_z(2, 3, 4, 4), _z(2, 3, 4)), "teacher_feature must be 4-D (N, C, H, W), got"),
    (lambda: heatmap_kd_loss(_z(2, 3, 4, 4), _z(2, 3, 4, 5)), "student_heatmaps and teacher_heatmaps must have the"),
    (lambda: heatmap_kd_loss(_z(2, 3, 4), _z(2, 3, 4)), "student_heatmaps must be 4-D (N, K, H, W), got shape"),
    (
        lambda: heatmap_kd_loss(_z(2, 3, 4, 4), _z(2, 3, 4, 4), _z(2, 3, 4, 5)),
        "student_heatmaps and target_heatmaps must have the same shape",
    ),
    (lambda: heatmap_kd_loss(_z(2, 3, 4, 4), _z(2, 3, 4, 4), alpha=-0.1), "alpha must be in [0, 1], got -0.1"),
    (lambda: binary_kd_loss(_z(2, 5, 3), _z(2, 5, 4)), "student_logits and teacher_logits must have the same shape"),
    (lambda: binary_kd_loss(_z(2, 3), _z(2, 3), temperature=0), "temperature must be a positive number, got 0"),
    (
        lambda: fgd_feature_loss(_z(1, 3, 2, 2), _z(1, 4, 2, 2), _z(1, 2, 2), _z(1, 2, 2)),
        "student_feature and teacher_feature must have the same shape",
    ),
    (
        lambda: fgd_feature_loss(_z(3, 2, 2), _z(3, 2, 2), _z(3, 2, 2), _z(3, 2, 2)),
        "student_feature must be 4-D (N, C, H, W), got shape (3, 2, 2)",
    ),
    (
        lambda: fgd_feature_loss(_z(1, 3, 2, 2), _z(1, 3, 2, 2), _z(1, 2, 2), _z(1, 2, 2), temperature=0),
        "temperature must be a positive number, got 0",
    ),
]


@pytest.mark.parametrize(("call", "message"), MESSAGE_CASES)
def test_errors_name_the_argument_and_the_expected_layout(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        call()


# ------------------------------------------------------------------------------------ defaults and edge values
def test_pixelwise_kd_loss_default_temperature_is_one_and_one_kept_pixel_counts_once():
    s, t = rand(1, 3, 2, 2, seed=40), rand(1, 3, 2, 2, seed=41)
    assert float(pixelwise_kd_loss(s, t)) == pytest.approx(float(pixelwise_kd_loss(s, t, temperature=1.0)), rel=1e-12)
    # Only pixel (0, 1) kept: the loss is that pixel's KL, divided by a count of one.
    keep_one = torch.ones(1, 2, 2, dtype=torch.bool)
    keep_one[0, 0, 1] = False
    kl = F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), log_target=True, reduction="none").sum(dim=1)
    got = pixelwise_kd_loss(s, t, ignore_mask=keep_one)
    assert float(got) == pytest.approx(float(kl[0, 0, 1]), rel=1e-12)


def test_heatmap_kd_loss_accepts_alpha_at_both_ends():
    s, t, gt = rand(1, 2, 3, 3, seed=42), rand(1, 2, 3, 3, seed=43), rand(1, 2, 3, 3, seed=44)
    assert float(heatmap_kd_loss(s, t, gt, alpha=0.0)) == pytest.approx(float(F.mse_loss(s, gt)), rel=1e-12)
    assert float(heatmap_kd_loss(s, t, gt, alpha=1.0)) == pytest.approx(float(F.mse_loss(s, t)), rel=1e-12)


def test_heatmap_kd_loss_computes_in_the_heatmaps_dtype():
    s, t = torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3)
    weights = torch.tensor([[0.3, 1.0]], dtype=torch.float64)  # float64 weights do not promote float32 heatmaps
    assert heatmap_kd_loss(s, t, weights=weights).dtype == torch.float32


def test_fgd_masks_tight_scale_rows_and_columns_separately_and_clip_to_the_map():
    # A 32×64 (H×W) image on a 4×4 map: a row is 8 pixels, a column 16.
    boxes = [
        torch.tensor([[0.0, 0.0, 16.0, 8.0]]),  # the top-left cell exactly
        torch.tensor([[-20.0, -20.0, 100.0, 100.0]]),  # reaches outside: the whole map, no background left
        torch.tensor([[64.0, 32.0, 64.0, 32.0]]),  # empty box on the far corner: still the last cell
        torch.tensor([[16.0, 16.0, 16.0, 16.0]]),  # empty box on a cell corner: one cell, (2, 1)
    ]
    foreground, background = fgd_masks(boxes, 4, 4, (32, 64), extent="tight")
    expected_fg = torch.zeros(4, 4, 4)
    expected_fg[0, 0, 0] = 1.0
    expected_fg[1] = 1.0 / 16
    expected_fg[2, 3, 3] = 1.0
    expected_fg[3, 2, 1] = 1.0
    torch.testing.assert_close(foreground, expected_fg)
    assert torch.equal(background[1], torch.zeros(4, 4))  # all foreground: zeros, not 0/0
    for i, cell in ((0, (0, 0)), (2, (3, 3)), (3, (2, 1))):
        expected_bg = torch.full((4, 4), 1.0 / 15)
        expected_bg[cell] = 0.0
        torch.testing.assert_close(background[i], expected_bg)


def test_fgd_feature_loss_defaults_and_dtype():
    s, t = rand(1, 3, 2, 2, seed=45), rand(1, 3, 2, 2, seed=46)
    fg, bg = fgd_masks([torch.tensor([[0.0, 0.0, 4.0, 4.0]])], 2, 2, (8, 8))
    paper = fgd_feature_loss(s, t, fg, bg, alpha=1.0, beta=0.5, gamma=0.0, temperature=0.5)
    assert float(fgd_feature_loss(s, t, fg, bg)) == pytest.approx(float(paper), rel=1e-12)
    # float64 masks do not promote float32 features
    assert fgd_feature_loss(s.float(), t.float(), fg.double(), bg.double()).dtype == torch.float32
    with pytest.raises(ValueError, match=r"^background must have shape \(1, 2, 2\)"):
        fgd_feature_loss(s, t, fg, torch.zeros(1, 3, 3))


# ------------------------------------------------------------------------------------------ saliency alignment
def _np_minmax(x, eps):
    shifted = x - x.min(axis=1, keepdims=True)
    return shifted / (shifted.max(axis=1, keepdims=True) + eps)


def test_saliency_alignment_loss_matches_numpy_on_non_square_maps_of_another_size():
    student, teacher = rand(3, 2, 3, seed=50).abs(), rand(3, 4, 6, seed=51).abs()
    teacher[1] = 0.0  # an all-zero teacher map: cosine distance 1, min-max map all zeros
    resized = F.interpolate(student.unsqueeze(1), size=(4, 6), mode="bilinear", align_corners=False).squeeze(1)
    s, t = resized.flatten(1).numpy(), teacher.flatten(1).numpy()
    eps = 1e-7
    cosine = 1 - (s * t).sum(1) / (
        np.maximum(np.linalg.norm(s, axis=1), eps) * np.maximum(np.linalg.norm(t, axis=1), eps)
    )
    assert float(saliency_alignment_loss(student, teacher)) == pytest.approx(cosine.mean(), rel=1e-12)
    assert cosine[1] == pytest.approx(1.0)
    mse = ((_np_minmax(s, eps) - _np_minmax(t, eps)) ** 2).mean()
    assert float(saliency_alignment_loss(student, teacher, distance="mse")) == pytest.approx(mse, rel=1e-12)
    big_eps = 0.5  # eps enters both the norm clamp and the min-max denominator
    cosine_big = 1 - (s * t).sum(1) / (
        np.maximum(np.linalg.norm(s, axis=1), big_eps) * np.maximum(np.linalg.norm(t, axis=1), big_eps)
    )
    assert float(saliency_alignment_loss(student, teacher, eps=big_eps)) == pytest.approx(cosine_big.mean(), rel=1e-12)
    mse_big = ((_np_minmax(s, big_eps) - _np_minmax(t, big_eps)) ** 2).mean()
    got = saliency_alignment_loss(student, teacher, distance="mse", eps=big_eps)
    assert float(got) == pytest.approx(mse_big, rel=1e-12)


def test_saliency_alignment_loss_is_zero_for_scaled_or_shifted_copies_and_follows_the_student_dtype():
    cam = rand(2, 4, 4, seed=52).abs()
    assert float(saliency_alignment_loss(3 * cam, cam)) == pytest.approx(0.0, abs=1e-12)
    assert float(saliency_alignment_loss(2 * cam + 5, cam, distance="mse")) == pytest.approx(0.0, abs=1e-12)
    assert float(saliency_alignment_loss(cam, 1 - cam, distance="mse")) > 0.1
    assert saliency_alignment_loss(cam.float(), cam).dtype == torch.float32


def test_saliency_alignment_loss_errors():
    with pytest.raises(ValueError, match=r"^student_cam must be 3-D \(N, H, W\)"):
        saliency_alignment_loss(_z(2, 1, 4, 4), _z(2, 4, 4))
    with pytest.raises(ValueError, match=r"^teacher_cam must be 3-D \(N, H, W\)"):
        saliency_alignment_loss(_z(2, 4, 4), _z(4, 4))
    with pytest.raises(ValueError, match=r"^eps must be a positive number"):
        saliency_alignment_loss(_z(2, 4, 4), _z(2, 4, 4), eps=0)
    with pytest.raises(ValueError, match="same batch size"):
        saliency_alignment_loss(_z(2, 4, 4), _z(3, 4, 4))
    with pytest.raises(ValueError, match="distance must be 'cosine' or 'mse', got 'l1'"):
        saliency_alignment_loss(_z(2, 4, 4), _z(2, 4, 4), distance="l1")


def test_default_temperatures():
    s, t = rand(3, 5, seed=53), rand(3, 5, seed=54)
    assert float(kd_loss(s, t)) == pytest.approx(float(kd_loss(s, t, temperature=4.0)), rel=1e-12)
    assert float(binary_kd_loss(s, t)) == pytest.approx(float(binary_kd_loss(s, t, temperature=1.0)), rel=1e-12)


def test_binary_kd_loss_weights_of_small_total_and_in_another_dtype():
    s, t = rand(2, 3, seed=55), rand(2, 3, seed=56)
    # Weights summing to 0.5: the loss is the weighted mean, the total is not clamped up to 1.
    weights = torch.tensor([0.4, 0.1], dtype=torch.float64)
    per_location = torch.stack([binary_kd_loss(s[i : i + 1], t[i : i + 1]) for i in range(2)])
    expected = (per_location * weights).sum() / weights.sum()
    assert float(binary_kd_loss(s, t, weights=weights)) == pytest.approx(float(expected), rel=1e-12)
    assert binary_kd_loss(s.float(), t.float(), weights=weights).dtype == torch.float32


@pytest.mark.parametrize("p", [1, 3])
def test_attention_transfer_loss_uses_p_on_both_sides(p):
    s, t = rand(2, 3, 2, 2, seed=57), rand(2, 4, 4, 4, seed=58)
    q_s = F.normalize(F.interpolate(s.abs().pow(p).mean(1, keepdim=True), size=(4, 4), mode="bilinear").flatten(1))
    q_t = F.normalize(t.abs().pow(p).mean(1).flatten(1))
    expected = (q_s - q_t).pow(2).mean()
    assert float(attention_transfer_loss(s, t, p=p)) == pytest.approx(float(expected), rel=1e-9)


def test_dkd_non_target_term_lowers_the_target_logit_by_exactly_1000_as_mdistiller():
    # A target logit near 1000·T keeps some mass in mdistiller's "non-target" softmax; the offset must be 1000 exactly.
    generator = torch.Generator().manual_seed(60)
    s = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    t = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    target = torch.tensor([0, 2, 3])
    s[0, 0], t[0, 0], s[1, 2], t[1, 2] = 1995.0, 1998.0, 1990.0, 2003.0  # T = 2: scaled logits near 1000
    gt = torch.zeros_like(s).scatter_(1, target.view(-1, 1), 1.0)
    temperature = 2.0
    log_p_s = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
    p_t = F.softmax(t / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2 / 3
    assert p_t[1, 2] > 0.01  # the target still counts here
    got = dkd_loss(s, t, target, alpha=0.0, beta=1.0, temperature=temperature)
    assert float(got) == pytest.approx(float(nckd), rel=1e-12)
