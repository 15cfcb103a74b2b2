"""Mask R-CNN ops against straightforward numpy references."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np
import tensorflow as tf

from trainer_module.models.mask_rcnn import anchors, box_ops, mask_ops, nms, roi_align, roi_sampler


def random_boxes(rng, n, size, min_side=2.0):
    y = rng.uniform(0, size - min_side, n)
    x = rng.uniform(0, size - min_side, n)
    h = rng.uniform(min_side, size / 2, n)
    w = rng.uniform(min_side, size / 2, n)
    return np.stack([y, x, np.minimum(y + h, size), np.minimum(x + w, size)], -1).astype(np.float32)


def np_iou(a, b):
    out = np.zeros((len(a), len(b)), np.float64)
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            ih = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            iw = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = ih * iw
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def np_greedy_nms(boxes, scores, thr, max_out):
    order = np.argsort(-scores, kind="stable")
    iou = np_iou(boxes, boxes)
    keep = []
    for i in order:
        if all(iou[i, j] <= thr for j in keep):
            keep.append(i)
    return keep[:max_out]


def test_anchors_levels_sizes_and_ratios():
    all_anchors, counts = anchors.multilevel_anchors((128, 192))
    assert counts == [32 * 48 * 3, 16 * 24 * 3, 8 * 12 * 3, 4 * 6 * 3, 2 * 3 * 3]
    assert all_anchors.shape == (sum(counts), 4)
    p2 = all_anchors[:3]  # first location of P2, three ratios
    h = p2[:, 2] - p2[:, 0]
    w = p2[:, 3] - p2[:, 1]
    np.testing.assert_allclose(h / w, [0.5, 1.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(h * w), 32.0, rtol=1e-5)  # 8 * stride 4
    np.testing.assert_allclose((p2[:, 0] + p2[:, 2]) / 2, 2.0)   # centre of cell (0, 0)
    p6 = all_anchors[-3:]
    np.testing.assert_allclose(np.sqrt((p6[:, 2] - p6[:, 0]) * (p6[:, 3] - p6[:, 1])), 512.0, rtol=1e-5)


def test_encode_decode_roundtrip_and_iou():
    rng = np.random.default_rng(0)
    a = random_boxes(rng, 50, 100)
    b = random_boxes(rng, 50, 100)
    for weights in (box_ops.RPN_BOX_WEIGHTS, box_ops.HEAD_BOX_WEIGHTS):
        deltas = box_ops.encode_boxes(tf.constant(b), tf.constant(a), weights)
        np.testing.assert_allclose(box_ops.decode_boxes(deltas, tf.constant(a), weights).numpy(), b,
                                   atol=1e-3)
    np.testing.assert_allclose(box_ops.iou_matrix(tf.constant(a), tf.constant(b[:7])).numpy(),
                               np_iou(a, b[:7]), atol=1e-5)


def test_nms_matches_greedy_reference_under_xla():
    rng = np.random.default_rng(1)
    batch = 3
    boxes = np.stack([random_boxes(rng, 60, 50) for _ in range(batch)])
    scores = rng.uniform(0, 1, (batch, 60)).astype(np.float32)
    run = tf.function(lambda b, s: nms.non_max_suppression_padded(b, s, 20, 0.4), jit_compile=True)
    out_boxes, out_scores, out_idx, valid = [t.numpy() for t in run(tf.constant(boxes), tf.constant(scores))]
    for i in range(batch):
        want = np_greedy_nms(boxes[i], scores[i], 0.4, 20)
        got = out_idx[i][valid[i]].tolist()
        assert got == want
        np.testing.assert_allclose(out_boxes[i][valid[i]], boxes[i][want])
        assert np.all(out_scores[i][~valid[i]] == 0)


def np_bilinear(fmap, y, x):
    h, w = fmap.shape[:2]
    y = min(max(y, 0.0), h - 1.0)
    x = min(max(x, 0.0), w - 1.0)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * fmap[y0, x0] + (1 - ly) * lx * fmap[y0, x1]
            + ly * (1 - lx) * fmap[y1, x0] + ly * lx * fmap[y1, x1])


def np_roi_align(features, boxes, out):
    b, n = boxes.shape[:2]
    c = features[2].shape[-1]
    result = np.zeros((b, n, out, out, c))
    for i in range(b):
        for j in range(n):
            y1, x1, y2, x2 = boxes[i, j]
            scale = np.sqrt(max(y2 - y1, 0) * max(x2 - x1, 0))
            level = int(np.clip(np.floor(4 + np.log2(scale / 224.0 + 1e-8)), 2, 5))
            stride = 2.0 ** level
            for p in range(out):
                for q in range(out):
                    yy = (y1 + (p + 0.5) * (y2 - y1) / out) / stride - 0.5
                    xx = (x1 + (q + 0.5) * (x2 - x1) / out) / stride - 0.5
                    result[i, j, p, q] = np_bilinear(features[level][i], yy, xx)
    return result


def test_multilevel_roi_align_matches_numpy():
    rng = np.random.default_rng(2)
    size = 512  # big enough for boxes on every level 2..5
    features = {level: rng.standard_normal((2, size // 2 ** level, size // 2 ** level, 3)).astype(np.float32)
                for level in range(2, 6)}
    boxes = np.stack([np.concatenate([random_boxes(rng, 6, size, 8), [[10, 20, 500, 480], [3, 3, 20, 9]]])
                      for _ in range(2)]).astype(np.float32)
    levels = roi_align.assign_levels(tf.constant(boxes), 2, 5).numpy()
    assert levels.min() == 2 and levels.max() == 5
    got = tf.function(lambda f, b: roi_align.multilevel_roi_align(f, b, 7), jit_compile=True)(
        {level: tf.constant(v) for level, v in features.items()}, tf.constant(boxes)).numpy()
    np.testing.assert_allclose(got, np_roi_align(features, boxes, 7), atol=1e-4)


def test_crop_and_resize_masks_matches_numpy():
    rng = np.random.default_rng(3)
    masks = (rng.uniform(size=(1, 3, 40, 30)) > 0.5).astype(np.uint8)
    boxes = random_boxes(rng, 4, 30)[None]
    index = np.array([[0, 2, 1, 2]], np.int32)
    got = roi_align.crop_and_resize_masks(tf.constant(masks), tf.constant(index), tf.constant(boxes), 5).numpy()
    for j in range(4):
        y1, x1, y2, x2 = boxes[0, j]
        for p in range(5):
            for q in range(5):
                want = np_bilinear(masks[0, index[0, j]].astype(float),
                                   y1 + (p + 0.5) * (y2 - y1) / 5 - 0.5, x1 + (q + 0.5) * (x2 - x1) / 5 - 0.5)
                assert abs(got[0, j, p, q] - want) < 1e-5


def test_sample_subset_counts():
    cand = tf.constant(np.random.default_rng(4).uniform(size=(3, 200)) > 0.7)
    sel = roi_sampler.sample_subset(cand, tf.constant([5, 0, 500]), 64).numpy()
    counts = cand.numpy().sum(1)
    assert sel.sum(1).tolist() == [5, 0, min(64, counts[2])]
    assert not np.any(sel & ~cand.numpy())


def test_rpn_targets_and_roi_sampling():
    rng = np.random.default_rng(5)
    all_anchors, _ = anchors.multilevel_anchors((128, 128))
    gt = np.zeros((2, 6, 4), np.float32)
    gt[:, :4] = random_boxes(rng, 4, 128, 10)
    classes = np.array([[1, 2, 3, 1, 0, 0], [2, 2, 0, 0, 0, 0]], np.int32)
    labels, weights, targets = [t.numpy() for t in roi_sampler.rpn_targets(
        tf.constant(all_anchors), tf.constant(gt), tf.constant(classes), 64)]
    assert np.all(weights.sum(1) <= 64) and np.all(labels <= weights)
    assert np.all((labels.sum(1) >= 1) & (labels.sum(1) <= 32))
    iou = np_iou(all_anchors, gt[0, :4])
    for m in range(4):  # each gt's best anchor is positive unless the 32 cap dropped it
        best = np.argmax(iou[:, m])
        assert labels[0, best] == 1 or labels[0].sum() == 32
    pos = labels[0] > 0
    decoded = box_ops.decode_boxes(tf.constant(targets[0][pos]), tf.constant(all_anchors[pos])).numpy()
    assert np.all(np_iou(decoded, gt[0, :4]).max(1) > 0.999)

    proposals = np.stack([random_boxes(rng, 100, 128) for _ in range(2)])
    valid = np.ones((2, 100), bool)
    valid[:, 90:] = False
    s = {k: v.numpy() for k, v in roi_sampler.sample_rois(
        tf.constant(proposals), tf.constant(valid), tf.constant(gt), tf.constant(classes), 64, 0.25).items()}
    for i in range(2):
        fg = s["is_fg"][i]
        assert fg.sum() >= 1 and fg.sum() <= 16
        n_fg = fg.sum()
        assert np.all(fg[:n_fg])  # foreground first
        assert np.all(s["classes"][i][fg] == classes[i][s["matched"][i][fg]])
        assert np.all(s["classes"][i][~fg] == 0)
        assert np.all(np_iou(s["rois"][i][fg], gt[i][s["matched"][i][fg]]).diagonal() >= 0.5 - 1e-6)
        assert s["is_valid"][i].sum() == min(64, 90 + (classes[i] > 0).sum())


def test_paste_masks_fills_the_box():
    probs = np.ones((1, 2, 28, 28), np.float32)
    boxes = np.array([[[2, 3, 10, 20], [0, 0, 0, 0]]], np.float32)
    pasted = mask_ops.paste_masks(tf.constant(probs), tf.constant(boxes), 16, 24).numpy()
    want = np.zeros((16, 24), np.uint8)
    want[2:10, 3:20] = 1
    np.testing.assert_array_equal(pasted[0, 0], want)
    assert pasted[0, 1].sum() == 0
    # A left-half mask lands on the left half of the box.
    probs[0, 0, :, 14:] = 0
    pasted = mask_ops.paste_masks(tf.constant(probs), tf.constant(boxes), 16, 24).numpy()
    assert pasted[0, 0, 2:10, 3:11].all() and not pasted[0, 0, :, 12:].any()
