"""AuxOL's stream end to end, one image at a time (radjax.papers.auxol.stream.process_image):
a deterministic fake SAM whose answer is a known mask, the real online learner (a narrow
U-Net, so that a step takes milliseconds), and the expected prompts, crops, feedback, queue
entries and predictions worked out by hand from ``main.py:predict_with_prompt``
(qianxihaoyue/AuxOL at 3bc8009; the line numbers below are that file's).

Images are (H, W) / (H, W, 3) arrays, boxes ``(x1, y1, x2, y2)`` with exclusive ends, points
``(x, y)``; masks are built with ``mask[y1:y2, x1:x2]``."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from radjax.papers.auxol import crops, fusion, learner, stream
from radjax.papers.auxol.unet import UNetConfig

H = W = 64
CROP, QUEUE = 32, 3
UNET = UNetConfig(in_channels=4, base=4, bilinear=True)
LEARNER = learner.LearnerConfig(queue_size=QUEUE, crop_size=CROP)
CERTAIN = 8.0  # the fake SAM's logit magnitude: sigmoid(8) > 0.999
TOL = 1e-4  # the step's forward of the padded queue vs a direct forward of one crop
IMAGE = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _rect(y1, y2, x1, x2) -> np.ndarray:
    """uint8 (H, W) with ones in [y1:y2, x1:x2]."""
    mask = np.zeros((H, W), np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def _ellipse(cy, cx, ry, rx) -> np.ndarray:
    """uint8 (H, W): the pixels (y, x) with ((y - cy) / ry)^2 + ((x - cx) / rx)^2 <= 1."""
    yy, xx = np.mgrid[:H, :W]
    inside = (yy - cy) ** 2 * rx**2 + (xx - cx) ** 2 * ry**2 <= (rx * ry) ** 2
    return inside.astype(np.uint8)


def _logits(mask: np.ndarray) -> np.ndarray:
    """A confident SAM answer: f32 (H, W), +CERTAIN on the mask, -CERTAIN elsewhere."""
    return np.where(mask > 0, CERTAIN, -CERTAIN).astype(np.float32)


def _hand_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """metric.calc_dice of two {0, 1} masks: (2 |P G| + 1) / (|P| + |G| + 1)."""
    inter, p, g = int((pred * gt).sum()), int(pred.sum()), int(gt.sum())
    return (2.0 * inter + 1) / (p + g + 1)


def _crop(a: np.ndarray, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return a[y1:y2, x1:x2]


def _box_indicator(box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return _rect(y1, y2, x1, x2)


class FakeSam:
    """A ``stream.Segmenter`` that answers every prompt with one fixed f32 (H, W) logit map
    and records the prompts it was given (boxes as ints, points as floats)."""

    def __init__(self, logits: np.ndarray):
        self.logits = np.asarray(logits, np.float32)
        self.boxes, self.points = [], []

    def set_image(self, image: np.ndarray) -> None:
        assert image.shape == (H, W, 3) and image.dtype == np.uint8

    def predict(self, *, box=None, point=None) -> np.ndarray:
        if box is not None:
            self.boxes.append(tuple(int(v) for v in box))
        if point is not None:
            self.points.append(tuple(float(v) for v in point))
        return self.logits.copy()


@dataclasses.dataclass(frozen=True)
class Call:
    """One online step the stream took: the state before and after, the U-Net input x
    (S, S, 4), the target y (S, S, 1), whether the crop was labelled, the (S, S) logits."""

    before: learner.LearnerState
    after: learner.LearnerState
    x: np.ndarray
    y: np.ndarray
    labelled: bool
    logits: np.ndarray


class RecordingStep:
    """``learner.make_step``'s step, recording every call."""

    def __init__(self, step):
        self.step, self.calls = step, []

    def __call__(self, state, x, y, labelled):
        after, logits, loss = self.step(state, x, y, labelled)
        self.calls.append(
            Call(state, after, np.asarray(x), np.asarray(y), bool(labelled), np.asarray(logits))
        )
        return after, logits, loss


class Net(NamedTuple):
    state: learner.LearnerState  # fresh: random U-Net, empty queue
    step: object  # the compiled online step, shared by every test (one compilation)
    forward: object  # (params, x (S, S, C)) -> (S, S) logits


@pytest.fixture(scope="module")
def net() -> Net:
    graphdef, state = learner.init_learner(UNET, LEARNER, seed=0)
    forward = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x[None])[0, :, :, 0])
    return Net(state, learner.make_step(graphdef, LEARNER), forward)


@dataclasses.dataclass
class Processed:
    state: learner.LearnerState
    row: dict
    sam_alone: np.ndarray
    auxol: np.ndarray
    calls: list[Call]
    history: stream.History


def _process(net, sam, mask, cfg, *, image=IMAGE, state=None, history=None, index=0, rng=None):
    """One image through ``stream.process_image`` with a recording step."""
    step = RecordingStep(net.step)
    history = stream.History() if history is None else history
    state, row, sam_alone, auxol = stream.process_image(
        sam,
        step,
        net.state if state is None else state,
        history,
        image,
        mask,
        index,
        cfg,
        CROP,
        np.random.default_rng(0) if rng is None else rng,
    )
    return Processed(state, row, sam_alone, auxol, step.calls, history)


def _forward(net, params, x) -> np.ndarray:
    return np.asarray(net.forward(params, x))


def _assert_predicted_by(net, call: Call, params, other_params) -> None:
    """The crop's logits are ``params``' forward of x, and measurably not ``other_params``'."""
    want = _forward(net, params, call.x)
    np.testing.assert_allclose(call.logits, want, rtol=0, atol=TOL)
    assert np.abs(_forward(net, other_params, call.x) - want).max() > 20 * TOL


def _newest(queue: learner.Queue) -> tuple[np.ndarray, np.ndarray]:
    """The FIFO queue's newest entry: (image (S, S, C), mask (S, S))."""
    return np.asarray(queue.images[-1]), np.asarray(queue.masks[-1, :, :, 0])


def _assert_queue_unchanged(before: learner.Queue, after: learner.Queue) -> None:
    for name in ("images", "masks", "valid"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)


def _with_out_bias(params, value: float):
    """The U-Net's parameters with the OutConv bias set to ``value`` (so that its logits are
    ~value everywhere: a prediction that fills whatever crop it is put into)."""

    def put(path, leaf):
        name = jax.tree_util.keystr(path)
        return jnp.full_like(leaf, value) if "outc" in name and "bias" in name else leaf

    return jax.tree_util.tree_map_with_path(put, params)


def _alpha_zero_history() -> stream.History:
    """Five best alphas of 0: the next crop is fused with alpha 0, i.e. the U-Net alone."""
    return stream.History(best=[0.0] * 5, used=[1.0] * 5)


def _seed(pattern: tuple[bool, ...]) -> int:
    """The first seed whose first draws fall below 1/2 exactly where ``pattern`` is True."""
    for seed in range(1000):
        if tuple(np.random.default_rng(seed).random(len(pattern)) < 0.5) == pattern:
            return seed
    raise AssertionError(f"no seed draws {pattern}")


# --- point prompts (main.py:119-143) --------------------------------------------------------

POINT_GT = _rect(10, 52, 10, 50)  # one object: centroid (29.5, 30.5)
BLOB_A, BLOB_B = _rect(8, 26, 8, 26), _rect(36, 56, 34, 54)  # SAM's two confident blobs
HALF = _rect(12, 20, 30, 46)  # SAM unsure: logit -0.5, probability 0.3775 (< 0.5, > 0.25)
POINT_CROP = (3, 3, 58, 60)  # the hull's box (8, 8, 54, 56), 46 x 48, grown by int(4.6), int(4.8)


def _point_sam() -> FakeSam:
    logits = _logits(BLOB_A | BLOB_B)
    logits[HALF > 0] = -0.5
    return FakeSam(logits)


def test_point_prompt_crop_is_the_grown_box_of_the_convex_hull_of_sams_prediction(net):
    """main.py:120-137: the prompt is the object's centroid with label 1; the crop is
    ``calc_predict_information(convex_hull_image(binary(pred)))``'s first (smallest) box,
    grown by ``int(0.1 * width / height)`` per side. SAM's two blobs are one hull, so the crop
    spans both (the raw components would give the smaller blob's box). The crop and the
    ground truth's crop (main.py:179-185) feed the U-Net; with a U-Net that predicts
    foreground everywhere and a fused alpha of 0 the image's prediction is exactly the box
    (main.py:327-331: each crop is put into its box)."""
    sam = _point_sam()
    state = net.state._replace(params=_with_out_bias(net.state.params, 50.0))
    out = _process(
        net,
        sam,
        POINT_GT,
        stream.StreamConfig(prompt="point"),
        state=state,
        history=_alpha_zero_history(),
    )
    assert sam.points == [(29.5, 30.5)] and sam.boxes == []
    (call,) = out.calls
    sam_binary = (BLOB_A | BLOB_B).astype(np.uint8)
    want_x = crops.unet_input(_crop(IMAGE, POINT_CROP), _crop(sam_binary, POINT_CROP), CROP)
    np.testing.assert_array_equal(call.x, want_x)
    np.testing.assert_array_equal(
        call.y[:, :, 0], crops.unet_target(_crop(POINT_GT, POINT_CROP), CROP)
    )
    assert out.history.used[-1] == 0.0
    np.testing.assert_array_equal(out.auxol, _box_indicator(POINT_CROP))


@pytest.mark.parametrize(
    "counted_twice, want_feedback", [(True, False), (False, True)], ids=["twice", "once"]
)
def test_point_prompt_map_counts_twice_in_sam_alone_and_in_the_dice_gate(
    net, counted_twice, want_feedback
):
    """main.py:124-125 and 142-143: a point prompt's probabilities are added to ``raw_merge``
    twice (``calc_raw_dice`` is always true), so SAM alone (``binary(raw_merge)``, > 0.5)
    keeps the 0.3775 pixels; ``point_counted_twice=False`` adds them once. The Dice gate
    (main.py:198-200) reads that same merge: with the gate between the two Dices the quirk
    decides whether the image gets feedback. The crop (probabilities > 0.5) is the same."""
    twice = (BLOB_A | BLOB_B | HALF).astype(np.uint8)
    once = (BLOB_A | BLOB_B).astype(np.uint8)
    d_twice, d_once = _hand_dice(twice, POINT_GT), _hand_dice(once, POINT_GT)
    assert d_twice > d_once
    cfg = stream.StreamConfig(
        prompt="point", point_counted_twice=counted_twice, dice_gate=(d_twice + d_once) / 2
    )
    out = _process(net, _point_sam(), POINT_GT, cfg)
    want = twice if counted_twice else once
    np.testing.assert_array_equal(out.sam_alone, want)
    assert out.row["dice_sam"] == _hand_dice(want, POINT_GT)
    assert out.row["feedback"] is want_feedback
    assert int(np.asarray(out.state.queue.valid).sum()) == int(want_feedback)
    (call,) = out.calls
    want_x = crops.unet_input(_crop(IMAGE, POINT_CROP), _crop(once, POINT_CROP), CROP)
    np.testing.assert_array_equal(call.x, want_x)


# --- the Dice gate (main.py:69, 198-201) ----------------------------------------------------

GATE_GT = _rect(20, 36, 20, 42)  # 16 x 22 = 352 px, box (20, 20, 42, 36)
GATE_BOX = (20, 20, 42, 36)


def _gate_sam() -> FakeSam:
    """211 px inside the ground truth: Dice (2 * 211 + 1) / (211 + 352 + 1) = 0.75 exactly
    (in f32 and f64 alike)."""
    mask = _rect(21, 35, 22, 37)  # 14 x 15 = 210 px
    mask[35, 22] = 1
    return FakeSam(_logits(mask))


@pytest.mark.parametrize(
    "gate, index, interval, want_feedback",
    [
        (1.0, 0, 1, True),  # 1: no gate (main.py:198 gates only below 1)
        (0.75, 0, 1, True),  # SAM's Dice equals the gate: <= (main.py:200)
        (0.7499, 0, 1, False),  # SAM is better than the gate: the clinician does not correct
        (0.8, 1, 2, False),  # below the gate, but not an interval-th image
        (0.8, 2, 2, True),
    ],
)
def test_dice_gate_decides_feedback_and_nothing_else(net, gate, index, interval, want_feedback):
    """main.py:198-201: the gate only ANDs ``flag`` (every interval-th image, main.py:69) with
    ``calc_dice(binary(raw_merge), mask) <= dice_percent``. With the flag the crop and its
    ground truth enter the queue and the net's forward before the step predicts
    (main.py:232-252); without it the queue is replayed once and the updated net predicts
    (main.py:253-267). Either way SAM alone is the same and the alpha search still reads the
    ground truth's crop (main.py:179, 270-282). A first image with feedback fills the queue so
    that the replay is visible; the U-Net leans to foreground (OutConv bias 3), so that the
    ground truth's crop (all foreground) and SAM's own mask ask for different alphas."""
    sam = _gate_sam()
    state = net.state._replace(params=_with_out_bias(net.state.params, 3.0))
    first = _process(net, sam, GATE_GT, stream.StreamConfig(), state=state)
    cfg = stream.StreamConfig(dice_gate=gate, interval=interval)
    out = _process(net, sam, GATE_GT, cfg, state=first.state, history=first.history, index=index)
    assert out.row["dice_sam"] == 0.75
    assert out.row["feedback"] is want_feedback
    assert sam.boxes == [GATE_BOX, GATE_BOX]
    (call,) = out.calls
    assert call.labelled is want_feedback
    assert int(out.state.steps) == 2  # a step with feedback, a replay without
    if want_feedback:
        assert int(np.asarray(out.state.queue.valid).sum()) == 2
        image, mask = _newest(out.state.queue)
        np.testing.assert_array_equal(image, call.x)
        np.testing.assert_array_equal(mask, crops.unet_target(_crop(GATE_GT, GATE_BOX), CROP))
        _assert_predicted_by(net, call, call.before.params, call.after.params)
    else:
        _assert_queue_unchanged(first.state.queue, out.state.queue)
        _assert_predicted_by(net, call, call.after.params, call.before.params)
    aux = crops.resize_logits(call.logits, (16, 22))
    sam_crop = _crop(sam.logits, GATE_BOX)
    grid = fusion.alpha_grid()
    against_truth = fusion.best_alpha(sam_crop, aux, _crop(GATE_GT, GATE_BOX), grid)[0]
    against_sam = fusion.best_alpha(sam_crop, aux, (sam_crop > 0).astype(np.uint8), grid)[0]
    assert against_truth != against_sam
    assert len(out.history.best) == 2 and out.history.best[-1] == against_truth


# --- the feedback interval (main.py:69, 232-267) --------------------------------------------


def test_feedback_every_interval_th_image_pushes_and_predicts_before_the_update(net):
    """main.py:69: ``flag = index % interval == 0``. With the flag (main.py:232-252) the crop
    is appended to the queue, ``output = net(queue)`` and the crop's prediction is
    ``output[-1]`` of that forward, BEFORE ``optimizer.step()``; without it (main.py:253-267)
    the queue is replayed once (a step) and the updated net predicts the crop. Images differ
    per index so that each queue entry is identifiable."""
    sam = _gate_sam()
    cfg = stream.StreamConfig(interval=2)
    state, history, queue_sizes, feedback = net.state, stream.History(), [], []
    for index in range(4):
        image = np.roll(IMAGE, 7 * index, axis=1)
        out = _process(
            net, sam, GATE_GT, cfg, image=image, state=state, history=history, index=index
        )
        (call,) = out.calls
        feedback.append(out.row["feedback"])
        queue_sizes.append(int(np.asarray(out.state.queue.valid).sum()))
        assert int(out.state.steps) == index + 1  # a step per object: pushed, or replayed
        if index % 2 == 0:
            np.testing.assert_array_equal(_newest(out.state.queue)[0], call.x)
            _assert_predicted_by(net, call, call.before.params, call.after.params)
        else:
            _assert_queue_unchanged(state.queue, out.state.queue)
            _assert_predicted_by(net, call, call.after.params, call.before.params)
        state = out.state
    assert feedback == [True, False, True, False]
    assert queue_sizes == [1, 1, 2, 2]
    images = np.asarray(state.queue.images)
    want = [
        crops.unet_input(
            _crop(np.roll(IMAGE, 7 * i, axis=1), GATE_BOX), _crop(sam.logits > 0, GATE_BOX), CROP
        )
        for i in (0, 2)
    ]
    np.testing.assert_array_equal(images[-2:], np.stack(want))


# --- mask noise and box-shift noise (main.py:96-112, 145-179) -------------------------------

NOISE_GT = _ellipse(30, 32, 11, 14)  # box (18, 19, 47, 42): 29 wide, 23 high
NOISE_BOX = (18, 19, 47, 42)


def _noise_sam() -> FakeSam:
    return FakeSam(_logits(_ellipse(30, 32, 8, 10)))


def _dilated(mask: np.ndarray, k: int) -> np.ndarray:
    """cv2.dilate with a k x k (odd) kernel: the border adds nothing."""
    return ndimage.binary_dilation(mask, np.ones((k, k), bool)).astype(np.uint8)


def _eroded(mask: np.ndarray, k: int) -> np.ndarray:
    """cv2.erode with a k x k (odd) kernel: the border removes nothing."""
    return ndimage.binary_erosion(mask, np.ones((k, k), bool), border_value=1).astype(np.uint8)


@pytest.mark.parametrize(
    "noise_type, noise, seed, want",
    [
        ("dilation", 0.25, 0, "dilated5"),  # kernel int(0.25 * min(23, 29)) = 5
        ("erosion", 0.25, 0, "eroded5"),
        ("both", 0.25, _seed((True,)), "eroded5"),  # random.random() < 0.5: erode
        ("both", 0.25, _seed((False,)), "dilated5"),
        ("dilation", 0.01, 0, "dilated3"),  # kernel int(0.23) = 0: cv2's default 3 x 3
        ("both", 0.0, 0, "clean"),
    ],
)
def test_the_queue_gets_the_noisy_rectified_mask(net, noise_type, noise, seed, want):
    """main.py:145-179: with ``noise > 0`` the rectified crop mask is the ground truth's crop
    dilated / eroded (``both``: erode when ``random.random() < 0.5``) with an all-ones kernel
    of ``int(min(h, w) * noise)`` px; that mask is what ``crop_mask_queue`` holds, so it is
    what the queue trains on (main.py:226-234). With noise 0 it is the clean crop and no
    random number is drawn."""
    clean = _crop(NOISE_GT, NOISE_BOX)
    expected = dict(
        clean=clean,
        dilated5=_dilated(clean, 5),
        eroded5=_eroded(clean, 5),
        dilated3=_dilated(clean, 3),
    )[want]
    rng = np.random.default_rng(seed)
    untouched = rng.bit_generator.state
    cfg = stream.StreamConfig(noise=noise, noise_type=noise_type)
    out = _process(net, _noise_sam(), NOISE_GT, cfg, rng=rng)
    _, mask = _newest(out.state.queue)
    np.testing.assert_array_equal(mask, crops.unet_target(expected, CROP))
    if want == "clean":
        assert rng.bit_generator.state == untouched
    else:
        assert (crops.unet_target(expected, CROP) != crops.unet_target(clean, CROP)).any()


def _shifted(pattern: tuple[bool, bool]) -> tuple[int, int, int, int]:
    """NOISE_BOX moved by prompt_noise 0.2 (5.8 px across, 4.6 px down): left / up where
    ``pattern`` is True (main.py:99-112: ``max(0, int(x1 - 5.8))``, or ``int(x2 + 5.8)``, and
    the size kept)."""
    left, up = pattern
    x1, x2 = (12, 41) if left else (23, 52)
    y1, y2 = (14, 37) if up else (23, 46)
    return x1, y1, x2, y2


@pytest.mark.parametrize(
    "pattern", [(True, True, True), (False, False, False), (True, False, False)]
)
def test_box_shift_noise_moves_the_prompt_and_the_crop_then_the_mask_noise_draws(net, pattern):
    """main.py:96-115: with ``prompt_noise`` (run.sh's ``lrud``) the box SAM sees is moved
    left / right by ``p * width`` (first draw < 0.5: left) and up / down by ``p * height``
    (second draw), its size kept; the crop, its SAM mask and its rectified mask are taken at
    the moved box (main.py:145-185), the mask noise (``both``) then making the third draw."""
    box = _shifted(pattern[:2])
    rng = np.random.default_rng(_seed(pattern))
    sam = _noise_sam()
    cfg = stream.StreamConfig(prompt_noise=0.2, noise=0.25, noise_type="both")
    out = _process(net, sam, NOISE_GT, cfg, rng=rng)
    assert sam.boxes == [box]
    (call,) = out.calls
    sam_binary = (sam.logits > 0).astype(np.uint8)
    np.testing.assert_array_equal(
        call.x, crops.unet_input(_crop(IMAGE, box), _crop(sam_binary, box), CROP)
    )
    noisy = (_eroded if pattern[2] else _dilated)(_crop(NOISE_GT, box), 5)
    np.testing.assert_array_equal(_newest(out.state.queue)[1], crops.unet_target(noisy, CROP))


def test_without_box_shift_noise_sam_sees_the_objects_box(net):
    sam = _noise_sam()
    rng = np.random.default_rng(0)
    untouched = rng.bit_generator.state
    _process(net, sam, NOISE_GT, stream.StreamConfig(), rng=rng)
    assert sam.boxes == [NOISE_BOX]
    assert rng.bit_generator.state == untouched  # main.py:96: no draw without the noise


# --- the pseudo-label switch (radjax's; not in main.py) -------------------------------------

PSEUDO_GT = _rect(16, 40, 18, 46)  # box (18, 16, 46, 40)
PSEUDO_BOX = (18, 16, 46, 40)
PSEUDO_CORE = _rect(19, 37, 21, 43)
PSEUDO_EVEN = _rect(19, 37, 30, 32)  # logit 0: probability exactly 0.5, not > 0.5


def _pseudo_sam() -> FakeSam:
    logits = _logits(PSEUDO_CORE)
    logits[PSEUDO_EVEN > 0] = 0.0
    return FakeSam(logits)


@pytest.mark.parametrize("pseudo_label", [True, False], ids=["on", "off"])
def test_pseudo_label_queues_sams_binarised_crop_for_an_image_without_feedback(net, pseudo_label):
    """``pseudo_label=True``: an image without feedback (interval 2, index 1) puts its crop
    into the queue with SAM's crop binarised as main.py:184 binarises it (probability > 0.5,
    so the pixels at exactly 0.5 are background) as the label, and the crop is predicted by
    the net before the step, as a feedback image is. Off (the code, main.py:253-267): the
    queue is only replayed. Either way the row says the image had no feedback."""
    sam = _pseudo_sam()
    cfg = stream.StreamConfig(interval=2, pseudo_label=pseudo_label)
    first = _process(net, sam, PSEUDO_GT, cfg)
    out = _process(net, sam, PSEUDO_GT, cfg, state=first.state, history=first.history, index=1)
    assert first.row["feedback"] and not out.row["feedback"]
    ground_truth = crops.unet_target(_crop(PSEUDO_GT, PSEUDO_BOX), CROP)
    np.testing.assert_array_equal(_newest(first.state.queue)[1], ground_truth)
    (call,) = out.calls
    assert int(out.state.steps) == 2
    if pseudo_label:
        label = crops.unet_target(_crop(PSEUDO_CORE & (1 - PSEUDO_EVEN), PSEUDO_BOX), CROP)
        assert (label != ground_truth).any()
        assert int(np.asarray(out.state.queue.valid).sum()) == 2
        image, mask = _newest(out.state.queue)
        np.testing.assert_array_equal(image, call.x)
        np.testing.assert_array_equal(mask, label)
        _assert_predicted_by(net, call, call.before.params, call.after.params)
    else:
        _assert_queue_unchanged(first.state.queue, out.state.queue)
        _assert_predicted_by(net, call, call.after.params, call.before.params)
