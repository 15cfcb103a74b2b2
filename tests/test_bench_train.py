"""`segpipe bench train`'s cost figures: FLOPs counted from the graph (exact on a hand-countable
model, the TF profiler's count, scaling with the pixel count on DeepLab) and the profile of a few
steps (the TensorBoard trace file and its summary). No wall-clock assertions."""
from __future__ import annotations

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest
import tensorflow as tf
import tf_keras as keras

from trainer_module import profiling
from trainer_module.bench import PROFILE_STEPS, benchmark, build_train_step, forward_flops


def test_count_flops_is_exact_and_matches_the_tf_profiler():
    """Conv 3x3 (3->8, 16x16 output) + dense (8->4) + an einsum, counted by hand (a multiply-add
    is 2 FLOPs), and the same total as tf.compat.v1.profiler's float_operation view without the
    einsum (which TensorFlow does not register)."""
    conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)
    dense = keras.layers.Dense(4, use_bias=False)
    x, w = tf.zeros([1, 16, 16, 3]), tf.zeros([5, 6])

    def model():
        return dense(tf.reduce_mean(conv(x), [1, 2]))

    counted = profiling.count_flops(tf.function(model).get_concrete_function())
    assert counted["by_type"]["Conv2D"] == 2 * 16 * 16 * 8 * 3 * 3 * 3
    assert counted["by_type"]["MatMul"] == 2 * 8 * 4
    from tensorflow.python.profiler import option_builder
    opts = option_builder.ProfileOptionBuilder(
        option_builder.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    concrete = tf.function(model).get_concrete_function()
    v1 = tf.compat.v1.profiler.profile(concrete.graph, options=opts).total_float_ops
    assert v1 == profiling.count_flops(concrete)["total"]

    einsum = profiling.count_flops(tf.function(lambda: tf.einsum("ij,jk->ik", w, tf.zeros([6, 7])))
                                   .get_concrete_function())
    assert einsum["by_type"] == {"Einsum": 2 * 5 * 6 * 7}


def test_self_time_and_wall_time_attribution():
    """Thread 1 runs X over [0, 10) with Y nested in [2, 5); thread 2 runs Z over [4, 8). Self time
    excludes nested ops; overlapping ops share the wall time; the windows clip."""
    segments = profiling._self_segments([(0, 10, "X"), (2, 5, "Y")]) + profiling._self_segments([(4, 8, "Z")])
    assert sorted(segments) == [(0, 2, "X"), (2, 5, "Y"), (4, 8, "Z"), (5, 10, "X")]
    wall, busy = profiling._attribute_wall_time(segments)
    assert dict(wall) == {"X": 5.5, "Y": 2.5, "Z": 2.0} and busy == 10
    clipped = profiling._clip(segments, [(1, 3), (9, 20)])
    assert sorted(clipped) == [(1, 2, "X"), (2, 3, "Y"), (9, 10, "X")]


def test_deeplab_flops_scale_with_the_pixel_count():
    """Fully convolutional: every conv but the three atrous ASPP branches costs exactly 4x at 2x
    the side. TF runs a dilated conv through SpaceToBatchND on a grid padded to a multiple of the
    rate, which on a 4x4 or 8x8 feature map (rate 6/12/18) computes more than the nominal count;
    those branches are the only ops that do not scale, and the total stays within [2x, 4x]."""
    name = "deeplabv3plus_mobilenetv2"
    by_size = {size: forward_flops(name, build_train_step(name, size, 1)) for size in (64, 128)}
    atrous = ("aspp_1_conv/", "aspp_2_conv/", "aspp_3_conv/")

    def plain(flops):
        return sum(f for name, f in flops["by_op"].items() if not any(a in name for a in atrous))

    small, large = by_size[64], by_size[128]
    assert plain(small) > 0.4 * small["total"] > 0
    assert plain(large) / plain(small) == pytest.approx(4.0, rel=0.1)
    assert 2.0 < large["total"] / small["total"] <= 4.0
    convs = sum(f for t, f in large["by_type"].items() if "Conv" in t)
    assert convs > 0.99 * large["total"]  # what the count is made of
    assert small["uncounted"] == 0


def test_benchmark_reports_flops_and_a_profile(tmp_path):
    result = benchmark("deeplabv3plus_mobilenetv2", 64, 1, seconds=1, warmup_steps=1, profile_dir=str(tmp_path))
    forward, train = result["gflops_per_image_forward"], result["gflops_per_image_train"]
    assert forward > 0 and train == pytest.approx(3 * forward, abs=2e-3)
    assert result["achieved_gflops_per_s"] == pytest.approx(train * result["img_per_s"], rel=1e-3, abs=0.01)
    assert sum(result["gflops_forward_by_op_type"].values()) == pytest.approx(forward, rel=0.01)

    profile = result["profile"]
    traces = list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))
    assert [str(p) for p in traces] == [profile["trace"]]
    assert json.loads((tmp_path / profiling.PROFILE_SUMMARY).read_text()) == json.loads(json.dumps(profile))
    assert profile["steps"] == PROFILE_STEPS
    assert profile["step_ms"] > 0 and 0 < profile["tf_ops_ms"] <= profile["step_ms"] + 1e-3
    assert profile["host_ms"] == pytest.approx(profile["step_ms"] - profile["tf_ops_ms"], abs=2e-3)
    for listing in ("top_ops", "top_op_types"):
        ops = profile[listing]
        assert 0 < len(ops) <= 15
        assert sum(op["pct_of_step"] for op in ops) <= 100.0 + 0.1
        assert all(op["ms"] > 0 for op in ops)
    assert any(op["op_type"] == "Conv2D" for op in profile["top_op_types"])
    assert any("Conv2D" in op["op_type"] for op in profile["top_ops"])
    assert {"forward", "backward", "optimizer"} <= set(profile["phases"])
    assert sum(p["pct_of_step"] for p in profile["phases"].values()) == pytest.approx(profile["tf_ops_pct"], abs=0.1)


@pytest.mark.slow
def test_benchmark_profiles_mask_rcnn(tmp_path):
    """The same for the instance task (Mask R-CNN's training forward: RoI heads on sampled RoIs)."""
    result = benchmark("maskrcnn_mobilenetv2_fpn", 128, 1, seconds=1, warmup_steps=1, profile_dir=str(tmp_path))
    assert result["gflops_per_image_forward"] > 0 and result["gflops_forward_by_op_type"]["Conv2D"] > 0
    profile = result["profile"]
    assert (tmp_path / profiling.PROFILE_SUMMARY).exists() and os.path.exists(profile["trace"])
    assert sum(op["pct_of_step"] for op in profile["top_ops"]) <= 100.0 + 0.1
    assert any("Conv" in op["op_type"] for op in profile["top_op_types"])
