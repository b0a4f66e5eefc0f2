"""Keypoint decoding, PCK and OKS AP — AP checked against pycocotools' COCOeval on the same predictions."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visiondistill.data.keypoints import gaussian_heatmaps
from visiondistill.tasks.keypoint_metrics import PCK, KeypointAP, decode_heatmaps, keypoint_ap, keypoint_oks, pck


# ------------------------------------------------------------------------------------------------ decoding
def test_decode_recovers_gaussian_targets_within_a_quarter_heatmap_pixel():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(6, 58, size=(20, 2)), np.full((20, 1), 2.0)], axis=1)
    heatmaps = torch.from_numpy(gaussian_heatmaps(points, size=16, stride=4, sigma=1.0))[None]
    coords, scores = decode_heatmaps(heatmaps, stride=4)
    error = (coords[0] - torch.from_numpy(points[:, :2]).float()).abs()
    assert error.max() <= 0.25 * 4 + 1e-5  # argmax (±½ px) refined by a quarter pixel: at most ¼ px off per axis
    assert (scores > 0.5).all()


def test_dark_decoding_recovers_gaussian_centres_far_better_than_a_quarter_step():
    rng = np.random.default_rng(4)
    points = np.concatenate([rng.uniform(12, 52, size=(30, 2)), np.full((30, 1), 2.0)], axis=1)
    heatmaps = torch.from_numpy(gaussian_heatmaps(points, size=16, stride=4, sigma=1.0))[None]
    truth = torch.from_numpy(points[:, :2]).float()
    dark, scores = decode_heatmaps(heatmaps, stride=4, method="dark", sigma=1.0)
    quarter, _ = decode_heatmaps(heatmaps, stride=4)
    assert (dark[0] - truth).abs().max() < 0.01  # input pixels
    assert (quarter[0] - truth).abs().mean() > 20 * (dark[0] - truth).abs().mean()
    assert torch.allclose(scores, heatmaps.flatten(2).amax(-1))
    border = torch.zeros(1, 1, 8, 8)
    border[0, 0, 0, 1] = 1.0  # no derivatives two pixels from the border: the argmax stays
    assert decode_heatmaps(border, stride=2, method="dark")[0].tolist() == [[[3.0, 1.0]]]
    with pytest.raises(ValueError, match="'quarter' or 'dark'"):
        decode_heatmaps(heatmaps, method="taylor")


def test_decode_shifts_a_quarter_pixel_towards_the_higher_neighbour_and_not_at_the_border():
    heatmaps = torch.zeros(1, 2, 5, 5)
    heatmaps[0, 0, 2, 2], heatmaps[0, 0, 2, 1], heatmaps[0, 0, 3, 2] = 1.0, 0.6, 0.4  # left and below higher
    heatmaps[0, 1, 0, 4] = 1.0  # a corner: no neighbour on one side, no shift
    coords, _ = decode_heatmaps(heatmaps, stride=2)
    assert coords[0, 0].tolist() == [(2 - 0.25 + 0.5) * 2, (2 + 0.25 + 0.5) * 2]
    assert coords[0, 1].tolist() == [(4 + 0.5) * 2, (0 + 0.5) * 2]


# ---------------------------------------------------------------------------------------------------- PCK
def numpy_pck(pred, gt, size, threshold):
    correct = labelled = 0
    for n in range(gt.shape[0]):
        for k in range(gt.shape[1]):
            if gt[n, k, 2] > 0:
                labelled += 1
                correct += np.hypot(*(pred[n, k] - gt[n, k, :2])) <= threshold * size[n]
    return correct / labelled


def test_pck_matches_a_loop_transcription_and_skips_unlabelled_keypoints():
    rng = np.random.default_rng(1)
    gt = np.concatenate([rng.uniform(0, 64, (10, 4, 2)), rng.integers(0, 3, (10, 4, 1))], axis=2)
    pred = gt[..., :2] + rng.normal(0, 3, (10, 4, 2))
    size = rng.uniform(20, 60, 10)
    for threshold in (0.05, 0.1):
        expected = numpy_pck(pred, gt, size, threshold)
        value = pck(torch.tensor(pred), torch.tensor(gt), torch.tensor(size), threshold)
        assert float(value) == pytest.approx(expected, abs=1e-6)
        metric = PCK(threshold)
        metric.update(torch.tensor(pred[:4]), torch.tensor(gt[:4]), torch.tensor(size[:4]))
        metric.update(torch.tensor(pred[4:]), torch.tensor(gt[4:]), torch.tensor(size[4:]))
        assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_pck_rejects_a_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        PCK(0.0)


# ------------------------------------------------------------------------------------------------- OKS AP
SIGMAS = [0.05, 0.08, 0.05, 0.1]


def make_case(seed=0):
    """Ground truths in 6 images (one unlabelled, so ignored), and noisy predictions of varying quality."""
    rng = np.random.default_rng(seed)
    gts, dts = [], []
    for image_id in range(1, 7):
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(10, 60, 2)
            w, h = rng.uniform(15, 40, 2)
            points = np.stack([rng.uniform(x, x + w, 4), rng.uniform(y, y + h, 4), rng.integers(0, 3, 4)], axis=1)
            if len(gts) == 3:
                points[:, 2] = 0  # no labelled keypoint: COCOeval ignores it
            gts.append({"image_id": image_id, "bbox": [x, y, w, h], "area": w * h * 0.7, "keypoints": points})
            noise = rng.choice([0.5, 2.0, 6.0, 20.0])
            predicted = points[:, :2] + rng.normal(0, noise, (4, 2))
            dts.append({"image_id": image_id, "keypoints": predicted, "score": float(rng.uniform(0.1, 1.0))})
    dts.append({"image_id": 2, "keypoints": rng.uniform(0, 80, (4, 2)), "score": 0.95})  # a false positive
    return gts, dts


def cocoeval_ap(gts, dts):
    """COCOeval's AP over the images that hold a ground truth, with the test's four sigmas."""
    return float(coco_evaluation(gts, dts, sorted({g["image_id"] for g in gts}), SIGMAS).stats[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oks_ap_equals_pycocotools_cocoeval(seed):
    gts, dts = make_case(seed)
    expected = cocoeval_ap(gts, dts)
    assert 0.05 < expected < 0.95  # a case where matching and ranking matter
    ours = keypoint_ap(
        [g["image_id"] for g in gts],
        np.stack([g["keypoints"] for g in gts]),
        np.array([g["area"] for g in gts]),
        np.array([g["bbox"] for g in gts]),
        np.stack([d["keypoints"] for d in dts]),
        np.array([d["score"] for d in dts]),
        SIGMAS,
        prediction_image_ids=[d["image_id"] for d in dts],
    )
    assert ours == pytest.approx(expected, abs=1e-4)


def test_keypoint_ap_metric_accumulates_batches_like_the_function():
    gts, dts = make_case(3)
    dts = dts[: len(gts)]  # top-down: prediction i belongs to ground truth i
    tensors = [
        torch.tensor([g["image_id"] for g in gts]),
        torch.tensor(np.stack([g["keypoints"] for g in gts])),
        torch.tensor([g["area"] for g in gts]),
        torch.tensor(np.array([g["bbox"] for g in gts])),
        torch.tensor(np.stack([d["keypoints"] for d in dts])),
        torch.tensor([d["score"] for d in dts]),
    ]
    metric = KeypointAP(SIGMAS)
    metric.update(*[t[:5] for t in tensors])
    metric.update(*[t[5:] for t in tensors])
    expected = cocoeval_ap(gts, dts)
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="4 sigmas"):
        metric.update(tensors[0], tensors[1][:, :3], *tensors[2:])


def test_keypoint_ap_without_labelled_ground_truth_is_minus_one():
    keypoints = np.zeros((1, 4, 3))
    assert keypoint_ap([1], keypoints, np.ones(1), np.ones((1, 4)), np.zeros((1, 4, 2)), np.ones(1), SIGMAS) == -1.0


# ------------------------------------------------------------------------------------- decoding, transcribed
def numpy_dark(heatmaps: np.ndarray, stride: float, sigma: float) -> np.ndarray:
    """DARK as docs say: Gaussian smoothing (zero padding), rescaled to the peak, log, one Newton step."""
    radius = max(1, math.ceil(3 * sigma))
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-(taps**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    n, k, height, width = heatmaps.shape
    out = np.zeros((n, k, 2))
    for i in range(n):
        for j in range(k):
            m = heatmaps[i, j].astype(np.float64)
            y, x = divmod(int(np.argmax(m)), width)
            padded = np.pad(m, radius)
            rows = np.stack([np.convolve(r, kernel, mode="valid") for r in padded])
            smooth = np.stack([np.convolve(c, kernel, mode="valid") for c in rows.T]).T
            smooth = np.log(np.maximum(smooth * max(m.max(), 0) / max(smooth.max(), 1e-10), 1e-10))
            ox = oy = 0.0
            if 1 < x < width - 2 and 1 < y < height - 2:
                at = lambda dy, dx, s=smooth, y=y, x=x: s[y + dy, x + dx]  # noqa: E731
                gx, gy = 0.5 * (at(0, 1) - at(0, -1)), 0.5 * (at(1, 0) - at(-1, 0))
                dxx = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
                dyy = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
                dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
                det = dxx * dyy - dxy**2
                if abs(det) > 1e-12:
                    ox = float(np.clip(-(dyy * gx - dxy * gy) / det, -1, 1))
                    oy = float(np.clip(-(-dxy * gx + dxx * gy) / det, -1, 1))
            out[i, j] = [(x + ox + 0.5) * stride, (y + oy + 0.5) * stride]
    return out


def _blobs(n: int, k: int, height: int, width: int, seed: int) -> np.ndarray:
    """Skewed, non-Gaussian blobs (two overlapping anisotropic bumps plus noise) anywhere on non-square maps."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    maps = np.zeros((n, k, height, width))
    for i in range(n):
        for j in range(k):
            cy, cx = rng.uniform(0, height - 1), rng.uniform(0, width - 1)
            sy, sx = rng.uniform(0.8, 2.5, size=2)
            bump = np.exp(-((ys - cy) ** 2) / (2 * sy**2) - (xs - cx) ** 2 / (2 * sx**2))
            bump += 0.5 * np.exp(-((ys - cy - 1.3) ** 2 + (xs - cx + 0.7) ** 2) / 2.0)
            maps[i, j] = bump + 0.01 * rng.random((height, width))
    return maps


@pytest.mark.parametrize("sigma", [1.0, 1.5, 0.3])
def test_dark_decoding_equals_a_numpy_transcription_on_skewed_blobs(sigma: float):
    heatmaps = _blobs(3, 4, 11, 14, seed=int(sigma * 10))
    coords, scores = decode_heatmaps(torch.from_numpy(heatmaps).float(), stride=4, method="dark", sigma=sigma)
    expected = numpy_dark(heatmaps.astype(np.float32), 4, sigma)
    np.testing.assert_allclose(coords.numpy(), expected, atol=1e-5)  # float32 output of ~50 px: ~4e-6 apart
    np.testing.assert_allclose(scores.numpy(), heatmaps.astype(np.float32).max(axis=(2, 3)))
    # Not a degenerate fixture: many peaks are refined (the rest sit within two pixels of a border).
    argmax_only = (coords.numpy() / 4 - 0.5) % 1
    assert (np.abs(argmax_only) > 1e-3).mean() >= 0.4


def test_decoding_defaults():
    heatmaps = torch.from_numpy(_blobs(2, 3, 9, 12, seed=7)).float()
    torch.testing.assert_close(decode_heatmaps(heatmaps)[0], decode_heatmaps(heatmaps, stride=1.0, method="quarter")[0])
    dark = decode_heatmaps(heatmaps, method="dark")[0]
    torch.testing.assert_close(dark, decode_heatmaps(heatmaps, stride=1.0, method="dark", sigma=1.0)[0])


def test_quarter_decoding_of_a_batch_at_every_border_and_with_equal_neighbours():
    heatmaps = torch.zeros(2, 3, 5, 6)
    # Image 0: one pixel inside each far border (shifted), and equal neighbours (not shifted on x).
    heatmaps[0, 0, 3, 4], heatmaps[0, 0, 3, 3], heatmaps[0, 0, 2, 4] = 1.0, 0.5, 0.5  # x=W-2, y=H-2: left, above
    heatmaps[0, 1, 1, 1], heatmaps[0, 1, 1, 2], heatmaps[0, 1, 2, 1] = 1.0, 0.5, 0.5  # x=1, y=1: right, below
    heatmaps[0, 2, 2, 2], heatmaps[0, 2, 2, 1], heatmaps[0, 2, 2, 3] = 1.0, 0.5, 0.5  # equal left and right
    # Image 1: on each border: no shift across it.
    heatmaps[1, 0, 4, 2], heatmaps[1, 0, 3, 2] = 1.0, 0.5  # last row
    heatmaps[1, 1, 2, 0], heatmaps[1, 1, 2, 1] = 1.0, 0.5  # first column
    heatmaps[1, 2, 2, 5], heatmaps[1, 2, 2, 4] = 1.0, 0.5  # last column
    coords, scores = decode_heatmaps(heatmaps)
    assert coords[0].tolist() == [[4 - 0.25 + 0.5, 3 - 0.25 + 0.5], [1.25 + 0.5, 1.25 + 0.5], [2.5, 2.5]]
    assert coords[1].tolist() == [[2.5, 4.5], [0.5, 2.5], [5.5, 2.5]]
    assert scores.tolist() == [[1.0] * 3] * 2


# ------------------------------------------------------------------- OKS and AP against COCOeval, edge cases
def coco_evaluation(gts, dts, image_ids, sigmas):
    """COCOeval (keypoints) run on ``gts``/``dts`` over the listed images; returns the evaluated object."""
    k = len(sigmas)
    dataset = {
        "images": [{"id": int(i), "width": 100, "height": 100} for i in image_ids],
        "categories": [{"id": 1, "name": "shape", "keypoints": [f"k{i}" for i in range(k)], "skeleton": []}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": g["image_id"],
                "category_id": 1,
                "bbox": list(g["bbox"]),
                "area": g["area"],
                "iscrowd": 0,
                "keypoints": np.asarray(g["keypoints"], dtype=np.float64).ravel().tolist(),
                "num_keypoints": int((np.asarray(g["keypoints"])[:, 2] > 0).sum()),
            }
            for i, g in enumerate(gts)
        ],
    }
    results = [
        {
            "image_id": d["image_id"],
            "category_id": 1,
            "keypoints": np.concatenate([d["keypoints"], np.ones((k, 1))], axis=1).ravel().tolist(),
            "score": d["score"],
        }
        for d in dts
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results) if results else COCO(), iouType="keypoints")
        evaluation.params.kpt_oks_sigmas = np.array(sigmas, dtype=np.float64)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def ours_ap(gts, dts, sigmas):
    return keypoint_ap(
        [g["image_id"] for g in gts],
        np.array([g["keypoints"] for g in gts], dtype=np.float64).reshape(len(gts), len(sigmas), 3),
        np.array([g["area"] for g in gts], dtype=np.float64),
        np.array([g["bbox"] for g in gts], dtype=np.float64).reshape(-1, 4),
        np.array([d["keypoints"] for d in dts], dtype=np.float64).reshape(len(dts), len(sigmas), 2),
        np.array([d["score"] for d in dts], dtype=np.float64),
        sigmas,
        prediction_image_ids=[d["image_id"] for d in dts],
    )


def unlabelled_case():
    """Two ground truths without a labelled keypoint (COCOeval's enlarged-box OKS) next to labelled ones.

    Predictions sit inside the 3x box, left of / above it, right of / below it, and on the labelled instances.
    """
    sigmas = [0.05, 0.08, 0.1]
    labelled = np.array([[20.0, 22.0, 2.0], [30.0, 25.0, 1.0], [0.0, 0.0, 0.0]])
    gts = [
        {"image_id": 1, "bbox": [15.0, 18.0, 20.0, 12.0], "area": 150.0, "keypoints": labelled},
        {"image_id": 1, "bbox": [50.0, 40.0, 10.0, 8.0], "area": 60.0, "keypoints": np.zeros((3, 3))},
        {"image_id": 2, "bbox": [10.0, 12.0, 6.0, 9.0], "area": 40.0, "keypoints": np.zeros((3, 3))},
        {"image_id": 2, "bbox": [40.0, 40.0, 12.0, 12.0], "area": 100.0, "keypoints": labelled + [25, 20, 0]},
    ]
    dts = [
        # Image 1: on the labelled person (good), in the unlabelled one's 3x box, left/above and right/below it.
        {"image_id": 1, "keypoints": labelled[:, :2] + [[0.8, -0.5], [1.5, 0.5], [9.0, 9.0]], "score": 0.9},
        {"image_id": 1, "keypoints": np.array([[45.0, 35.0], [60.0, 50.0], [55.0, 45.0]]), "score": 0.8},
        {"image_id": 1, "keypoints": np.array([[37.0, 30.0], [38.0, 28.0], [39.5, 31.0]]), "score": 0.7},
        {"image_id": 1, "keypoints": np.array([[71.0, 57.0], [72.0, 58.5], [70.5, 59.0]]), "score": 0.6},
        # Image 2: near the unlabelled box (x0 = 4, x1 = 22, y0 = 3, y1 = 30) on each side, and a mediocre hit.
        {"image_id": 2, "keypoints": np.array([[3.0, 2.0], [23.5, 31.0], [12.0, 15.0]]), "score": 0.95},
        {"image_id": 2, "keypoints": labelled[:, :2] + [[25, 20]] + [[2.0, -1.0], [-1.5, 2.5], [0, 0]], "score": 0.5},
        {"image_id": 2, "keypoints": np.array([[2.0, 33.0], [24.0, 1.0], [3.5, 2.5]]), "score": 0.4},
    ]
    return gts, dts, sigmas


def test_keypoint_oks_equals_cocoeval_ious_including_ground_truths_without_labelled_keypoints():
    gts, dts, sigmas = unlabelled_case()
    evaluation = coco_evaluation(gts, dts, [1, 2], sigmas)
    for image in (1, 2):
        gt = [g for g in gts if g["image_id"] == image]
        dt = sorted((d for d in dts if d["image_id"] == image), key=lambda d: -d["score"])
        oks = keypoint_oks(
            np.array([d["keypoints"] for d in dt]),
            np.array([g["keypoints"] for g in gt]),
            np.array([g["area"] for g in gt]),
            np.array([g["bbox"] for g in gt]),
            np.array(sigmas),
        )
        expected = evaluation.ious[(image, 1)]
        np.testing.assert_allclose(oks, expected, rtol=1e-12, atol=1e-15)
        unlabelled = [j for j, g in enumerate(gt) if not (g["keypoints"][:, 2] > 0).any()]
        # Not a degenerate fixture: the box branch gives values strictly between 0 and 1 as well as exact ones.
        assert ((oks[:, unlabelled] > 0.01) & (oks[:, unlabelled] < 0.99)).any()
        assert (oks[:, unlabelled] == 1.0).any() or image == 2


def test_keypoint_ap_equals_cocoeval_with_unlabelled_ground_truths_matched_first():
    gts, dts, sigmas = unlabelled_case()
    expected = float(coco_evaluation(gts, dts, [1, 2], sigmas).stats[0])
    assert 0.05 < expected < 0.95
    assert ours_ap(gts, dts, sigmas) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "case",
    [
        "prediction_on_an_image_without_ground_truth",
        "ground_truth_without_prediction",
        "no_prediction_at_all",
        "only_an_unlabelled_ground_truth_matched",
        "more_than_twenty_predictions",
    ],
)
def test_keypoint_ap_empty_sets_and_detection_cap_equal_cocoeval(case):
    gts, dts, sigmas = unlabelled_case()
    images = [1, 2]
    if case == "prediction_on_an_image_without_ground_truth":
        images = [1, 2, 3]
        dts = [*dts, {"image_id": 3, "keypoints": np.full((3, 2), 20.0), "score": 0.99}]
    elif case == "ground_truth_without_prediction":
        dts = [d for d in dts if d["image_id"] == 1]
    elif case == "no_prediction_at_all":
        dts = []
    elif case == "only_an_unlabelled_ground_truth_matched":
        dts = [dts[1]]
    else:
        rng = np.random.default_rng(5)
        truth = gts[0]["keypoints"][:, :2]
        dts = [
            {"image_id": 1, "keypoints": truth + rng.normal(0, 1.0 + i, (3, 2)), "score": float(s)}
            for i, s in enumerate(rng.uniform(0.1, 1.0, 25))
        ]
    expected = float(coco_evaluation(gts, dts, images, sigmas).stats[0])
    assert ours_ap(gts, dts, sigmas) == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- PCK edges and DDP-style merging
def test_pck_counts_a_keypoint_exactly_at_the_threshold_and_defaults_to_a_tenth():
    truth = torch.tensor([[[0.0, 0.0, 2.0], [10.0, 10.0, 1.0]]])
    predicted = torch.tensor([[[6.0, 8.0], [10.0, 21.0]]])  # distances 10 (exactly 0.25 · 40) and 11
    assert float(pck(predicted, truth, torch.tensor([40.0]), threshold=0.25)) == 0.5
    # Default threshold 0.1: a box of 100 accepts the distance of 10 and not 11.
    assert float(pck(predicted, truth, torch.tensor([100.0]))) == 0.5
    assert float(pck(predicted, truth, torch.tensor([109.0]))) == 0.5
    assert float(pck(predicted, truth, torch.tensor([110.0]))) == 1.0
    # One labelled keypoint, correct: 1 / 1 (the zero-labelled clamp must not divide by more than the count).
    one = torch.tensor([[[0.0, 0.0, 2.0], [5.0, 5.0, 0.0]]])
    assert float(pck(predicted, one, torch.tensor([100.0]))) == 1.0
    metric = PCK()
    metric.update(predicted, one, torch.tensor([100.0]))
    assert float(metric.compute()) == 1.0
    metric = PCK()
    metric.update(predicted, truth, torch.tensor([109.0]))
    assert float(metric.compute()) == 0.5  # default 0.1 as for pck
    with pytest.raises(ValueError, match=r"^PCK threshold must be in \(0, 1\], got 1.5"):
        PCK(1.5)
    assert PCK(1.0).threshold == 1.0  # the closed upper end


def test_pck_states_merge_like_ddp():
    rng = np.random.default_rng(11)
    gt = np.concatenate([rng.uniform(0, 64, (9, 3, 2)), rng.integers(0, 3, (9, 3, 1))], axis=2)
    pred = gt[..., :2] + rng.normal(0, 4, (9, 3, 2))
    size = rng.uniform(20, 60, 9)
    rank0, rank1 = PCK(0.1), PCK(0.1)
    rank0.update(torch.tensor(pred[:3]), torch.tensor(gt[:3]), torch.tensor(size[:3]))
    rank1.update(torch.tensor(pred[3:]), torch.tensor(gt[3:]), torch.tensor(size[3:]))
    rank0.merge_state(rank1)
    merged = rank0.compute()
    assert merged.shape == ()
    assert float(merged) == pytest.approx(numpy_pck(pred, gt, size, 0.1), abs=1e-6)


def test_keypoint_ap_sigmas_are_checked_and_states_gather_by_concatenation():
    with pytest.raises(ValueError, match=r"^KeypointAP needs one positive sigma per keypoint, got \[\]"):
        KeypointAP([])
    for sigmas in ([0.05, 0.0], [0.0], [0.05, -0.1]):
        with pytest.raises(ValueError, match="KeypointAP needs one positive sigma per keypoint"):
            KeypointAP(sigmas)
    gts, dts = make_case(3)
    dts = dts[: len(gts)]
    tensors = [
        torch.tensor([g["image_id"] for g in gts]),
        torch.tensor(np.stack([g["keypoints"] for g in gts])),
        torch.tensor([g["area"] for g in gts]),
        torch.tensor(np.array([g["bbox"] for g in gts])),
        torch.tensor(np.stack([d["keypoints"] for d in dts])),
        torch.tensor([d["score"] for d in dts]),
    ]
    names = ("image_ids", "keypoints", "areas", "boxes", "predicted", "scores")
    rank0, rank1 = KeypointAP(SIGMAS, sync_on_compute=False), KeypointAP(SIGMAS)
    rank0.update(*[t[:4] for t in tensors])
    rank0.update(*[t[4:6] for t in tensors])
    rank1.update(*[t[6:] for t in tensors])
    # What DDP does: each state is all-gathered (rank 0's first), then reduced with its dist_reduce_fx.
    incoming = [torch.cat(getattr(rank1, name)) for name in names]

    def all_gather(tensor, group=None):
        other = incoming.pop(0)
        assert other.shape[1:] == tensor.shape[1:], "one gather per state, in the order the states were added"
        return [tensor, other]

    with rank0.sync_context(dist_sync_fn=all_gather, distributed_available=lambda: True):
        for name, expected in zip(names, tensors, strict=True):
            state = getattr(rank0, name)
            assert isinstance(state, torch.Tensor), name  # "cat": one tensor holding every rank's rows
            torch.testing.assert_close(state, expected.to(state.dtype))
        assert float(rank0.compute()) == pytest.approx(cocoeval_ap(gts, dts), abs=1e-4)
    assert not incoming


def _inner_blobs(scales: list[float], height: int, width: int, seed: int) -> np.ndarray:
    """One image of skewed blobs, each at least 3 pixels from the border and multiplied by its scale."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    maps = np.zeros((1, len(scales), height, width))
    for j, scale in enumerate(scales):
        cy, cx = rng.uniform(3.5, height - 4.5), rng.uniform(3.5, width - 4.5)
        sy, sx = rng.uniform(0.9, 1.8, size=2)
        bump = np.exp(-((ys - cy) ** 2) / (2 * sy**2) - (xs - cx) ** 2 / (2 * sx**2))
        bump += 0.4 * np.exp(-((ys - cy - 1.1) ** 2 + (xs - cx + 0.8) ** 2) / 2.0)
        maps[0, j] = scale * bump
    return maps


def test_dark_decoding_of_faint_maps_next_to_strong_ones_equals_the_transcription():
    # DarkPose rescales each smoothed map to its own original peak and floors it at 1e-10 before the log: a faint
    # map (peak ~1e-9) is partly floored near its peak, one of 1e-12 entirely (no refinement), whatever the other
    # maps of the batch hold.
    scales = [1.0, 2e-9, 6e-10, 2e-10, 1e-12, 0.05]
    heatmaps = _inner_blobs(scales, 12, 13, seed=8)
    coords, _ = decode_heatmaps(torch.from_numpy(heatmaps).float(), stride=4, method="dark", sigma=1.0)
    expected = numpy_dark(heatmaps.astype(np.float32), 4, 1.0)
    np.testing.assert_allclose(coords.numpy(), expected, atol=1e-5)
    cells = coords.numpy()[0] / 4 - 0.5
    assert (cells[4] == np.round(cells[4])).all()  # the 1e-12 map: argmax only
    assert (np.abs(cells[[0, 1, 2, 3, 5]] - np.round(cells[[0, 1, 2, 3, 5]])) > 1e-3).any(axis=1).all()


def test_dark_newton_step_is_clamped_to_one_pixel_each_way():
    # A one-pixel spike beside a broad bump: the smoothed map peaks on the bump, 2 px away, so the Newton step
    # (1.34 px here) is cut to 1 px in each of the four directions.
    ys, xs = np.mgrid[0:11, 0:11]
    heatmaps = np.zeros((1, 4, 11, 11))
    for j, (dy, dx) in enumerate([(0, 2), (0, -2), (2, 0), (-2, 0)]):
        heatmaps[0, j] = 0.9 * np.exp(-((ys - 5 - dy) ** 2 + (xs - 5 - dx) ** 2) / (2 * 1.5**2))
        heatmaps[0, j, 5, 5] = 1.0
    coords, scores = decode_heatmaps(torch.from_numpy(heatmaps).float(), method="dark")
    assert (coords[0] - 0.5).tolist() == [[6.0, 5.0], [4.0, 5.0], [5.0, 6.0], [5.0, 4.0]]
    assert scores.tolist() == [[1.0] * 4]
    np.testing.assert_allclose(coords.numpy(), numpy_dark(heatmaps.astype(np.float32), 1, 1.0), atol=1e-6)


def crowded_case():
    """Ties everywhere: detections as close to two ground truths (equal OKS), equal scores within and across images,
    ignored ground truths among labelled ones (18 in one image), an image with one unmatched ground truth and one
    of area 0."""
    sigmas = [0.05, 0.07, 0.05]
    base = np.array([[0.0, 0.0], [4.0, 3.0], [-3.0, 5.0]])
    gts, dts = [], []
    for i in range(6):
        centre = base + [20.0 + 18.0 * i, 30.0]
        for shift in (-0.5, 0.5):  # a pair half a pixel either side of the centre, listed left then right
            points = np.concatenate([centre + [shift, 0.0], np.full((3, 1), 2.0)], axis=1)
            gts.append({"image_id": 1, "bbox": [centre[0, 0] - 6, 20.0, 14.0, 18.0], "area": 80.0, "keypoints": points})
        dts.append({"image_id": 1, "keypoints": centre.copy(), "score": 0.9})  # equal OKS to both of its pair
        dts.append({"image_id": 1, "keypoints": centre + [-0.5, 0.1 * i], "score": 0.6})  # on the left one
    for x in (10.0, 30.0, 50.0, 70.0, 90.0, 110.0):  # ignored (no labelled keypoint), listed among the labelled ones
        gts.insert(3, {"image_id": 1, "bbox": [x, 60.0, 8.0, 8.0], "area": 50.0, "keypoints": np.zeros((3, 3))})
    dts.append({"image_id": 1, "keypoints": np.array([[12.0, 62.0], [13.0, 63.0], [11.0, 61.0]]), "score": 0.9})
    # Image 2: one person, a mediocre and a good detection of equal score (input order decides who matches first:
    # numpy's default, unstable sort puts the good one first here), and two far-off ones.
    person = np.concatenate([base + [40.0, 40.0], np.full((3, 1), 2.0)], axis=1)
    gts.append({"image_id": 2, "bbox": [35.0, 35.0, 12.0, 14.0], "area": 90.0, "keypoints": person})
    dts.append({"image_id": 2, "keypoints": person[:, :2] + [[0.6, 0.7]], "score": 0.6})
    dts.append({"image_id": 2, "keypoints": person[:, :2] + [[0.3, 0.2]], "score": 0.6})
    dts.append({"image_id": 2, "keypoints": person[:, :2] + [[30.0, 20.0]], "score": 0.9})
    dts.append({"image_id": 2, "keypoints": person[:, :2] + [[-30.0, 20.0]], "score": 0.7})
    # Image 3: a person nobody detected. Image 4: area 0 (every error but the smallest counts as a miss).
    gts.append({"image_id": 3, "bbox": [5.0, 5.0, 10.0, 10.0], "area": 60.0, "keypoints": person - [30, 30, 0]})
    gts.append({"image_id": 4, "bbox": [40.0, 40.0, 0.0, 0.0], "area": 0.0, "keypoints": person})
    dts.append({"image_id": 4, "keypoints": person[:, :2] + [[3e-9, 0.0], [0.0, 0.0], [0.0, 0.0]], "score": 0.5})
    # Images 5-10: one person each, a good and a mediocre detection, all of one score, in alternating order.
    for image in range(5, 11):
        gts.append({"image_id": image, "bbox": [35.0, 35.0, 12.0, 14.0], "area": 90.0, "keypoints": person})
        good = {"image_id": image, "keypoints": person[:, :2] + [[0.2, -0.3]], "score": 0.4}
        mediocre = {"image_id": image, "keypoints": person[:, :2] + [[0.6, 0.7]], "score": 0.4}
        dts.extend([good, mediocre] if image % 2 else [mediocre, good])
    return gts, dts, sigmas


def test_keypoint_ap_with_ties_equals_cocoeval():
    gts, dts, sigmas = crowded_case()
    evaluation = coco_evaluation(gts, dts, list(range(1, 11)), sigmas)
    for image in (1, 2, 4, 5, 6):
        gt = [g for g in gts if g["image_id"] == image]
        dt = [dts[i] for i in np.argsort([-d["score"] for d in dts], kind="mergesort") if dts[i]["image_id"] == image]
        oks = keypoint_oks(
            np.array([d["keypoints"] for d in dt]),
            np.array([g["keypoints"] for g in gt]),
            np.array([g["area"] for g in gt]),
            np.array([g["bbox"] for g in gt]),
            np.array(sigmas),
        )
        np.testing.assert_allclose(oks, evaluation.ious[(image, 1)], rtol=1e-12, atol=1e-15)
    zero_area = evaluation.ious[(4, 1)][0, 0]
    assert 0.5 < zero_area < 0.9  # the 3e-9 px error counts at area 0, exactly as COCOeval's spacing(1) makes it
    expected = float(evaluation.stats[0])
    assert 0.05 < expected < 0.95
    assert ours_ap(gts, dts, sigmas) == pytest.approx(expected, abs=1e-12)


def test_keypoint_oks_rejects_ground_truth_arrays_of_different_lengths():
    gts, dts, sigmas = unlabelled_case()
    keypoints = np.array([g["keypoints"] for g in gts])
    boxes = np.array([g["bbox"] for g in gts])
    with pytest.raises(ValueError, match="zip"):
        keypoint_oks(np.array([dts[0]["keypoints"]]), keypoints, np.ones(len(gts) - 1), boxes, np.array(sigmas))
