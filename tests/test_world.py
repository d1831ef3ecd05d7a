"""The procedural world and the scores built on it: rendering, continuation, captions, tracking."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from magic141.engine import scores, world
from magic141.errors import InvalidInput


def state(**changes) -> world.WorldState:
    base = dict(
        shape="circle", colour="red", background=("navy", "teal"), x=0.5, y=0.5, direction="right", speed=0.6
    )
    return world.WorldState(**{**base, **changes})


def test_render_is_deterministic_and_shows_the_object_in_its_colour():
    s = state()
    a, b = world.render(s, 5), world.render(s, 5)
    assert a.shape == (5, 32, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    # the pixel under the centre is the object's colour; a far corner is the background's
    cx, cy = int(0.5 * 32), int(0.5 * 32)
    assert tuple(a[0, cy, cx]) == world.COLOURS["red"]
    assert tuple(a[0, 0, 0]) != world.COLOURS["red"]


def test_rendering_is_resolution_independent():
    s = state(x=0.9, y=0.3)
    small = world.centres_px(s, 3, 32) / 32
    large = world.centres_px(s, 3, 320) / 320
    assert np.allclose(small, large)
    big = world.render(s, 1, 320)[0]
    found = world.track(big[None], world.background(s, 320, 480))
    assert np.allclose(found.centres[0] / 320, (0.9, 0.3), atol=0.005)


def test_the_true_continuation_of_any_frame_is_the_tail_of_the_clip():
    s = state(x=1.2, speed=0.75)  # bounces off the right wall within the clip
    clip = world.render(s, 48)
    for k in (1, 10, 23, 40):
        assert np.array_equal(world.render(s.advance(Fraction(k, 24)), 48 - k), clip[k:])


def test_bounces_reverse_the_motion_and_keep_the_object_inside():
    s = state(x=1.3, direction="right", speed=0.75)
    xs = world.centres_px(s, 48, 32)[:, 0]
    assert xs.max() <= (1.5 - world.RADIUS) * 32 + 1e-9
    turn = int(np.argmax(xs))
    assert 0 < turn < 47 and xs[-1] < xs[turn]  # went right, hit the wall, came back
    assert s.advance(1.0).direction == "left" and s.advance(2.0).direction == "right"  # off both walls
    assert world.caption(s, 1.0) == "a red circle moves right and bounces off the wall"
    assert world.caption(state(x=0.5), 0.5) == "a red circle moves right"


def test_vertical_motion_moves_only_vertically():
    s = state(direction="up", y=0.8, shape="square", colour="green")
    c = world.centres_px(s, 10, 32)
    assert np.allclose(c[:, 0], c[0, 0]) and c[-1, 1] < c[0, 1]


def test_states_outside_the_grammar_are_refused_with_the_valid_choices():
    with pytest.raises(InvalidInput, match="colour must be one of red, green, blue, yellow"):
        state(colour="purple")
    with pytest.raises(InvalidInput, match="outside the frame"):
        state(x=0.0)
    with pytest.raises(InvalidInput, match="direction must be one of"):
        state(direction="sideways")


def test_sampled_states_can_be_kept_clear_of_the_walls():
    rng = np.random.default_rng(3)
    for _ in range(50):
        s = world.sample_state(rng, clear=0.4)
        assert not s.bounces(0.4)


# Gravity, spin and camera pans ------------------------------------------------------------------


def test_a_falling_object_accelerates_bounces_on_the_floor_and_returns_to_its_height():
    s = state(motion="falls", direction="down", speed=0.0, y=0.3, x=0.8)  # released at rest
    ys = world.centres_px(s, 73, 32)[:, 1] / 32
    assert np.allclose(world.centres_px(s, 73, 32)[:, 0], 0.8 * 32)  # straight down
    steps = np.diff(ys[:12])
    assert (steps > 0).all() and (np.diff(steps) > 0).all()  # falling faster and faster
    assert ys.max() <= 1 - world.RADIUS + 1e-9
    floor = int(np.argmax(ys))
    assert ys[floor + 1] < ys[floor]  # bounced
    assert ys[floor:].min() == pytest.approx(0.3, abs=0.01)  # elastic: back up to where it fell from
    after = s.advance(float(floor + 3) / 24)
    assert after.direction == "up" and after.motion == "falls"
    assert world.caption(s, 1.0) == "a red circle falls and bounces on the floor"
    assert world.caption(s, 0.2) == "a red circle falls"
    assert world.caption(after, 0.1) == "a red circle rises"


def test_continuations_stay_exact_under_gravity_spin_and_pans():
    s = state(shape="square", motion="falls", direction="up", speed=1.0, y=0.7, spin=0.5, angle=0.1, pan=-0.3)
    clip = world.render(s, 48)
    for k in (1, 17, 40):
        assert np.array_equal(world.render(s.advance(Fraction(k, 24)), 48 - k), clip[k:])
    assert world.caption(s, 1.0).startswith("a spinning red square rises and falls")
    assert world.caption(s, 1.0).endswith("as the camera pans left")


def test_a_spinning_square_turns_in_place_and_keeps_its_corners_inside():
    still = world.render(state(shape="square", speed=0.0), 7)
    spinning = world.render(state(shape="square", speed=0.0, spin=0.5), 7)
    assert np.array_equal(still[0], spinning[0]) and np.array_equal(still[0], still[-1])
    assert not np.array_equal(spinning[0], spinning[-1])  # a sixth of a turn later
    found = world.track(spinning, world.background(state(), 32, 48))
    assert np.abs(found.centres - found.centres[0]).max() < 0.3  # turning, not moving
    s = state(shape="square", spin=0.5, x=1.2, speed=0.75)
    xs = world.centres_px(s, 48, 32)[:, 0] / 32
    assert xs.max() <= 1.5 - world.SPIN_REACH + 1e-9  # bounces where a corner would touch the wall
    with pytest.raises(InvalidInput, match="only a square can spin"):
        state(spin=0.5)


def test_a_panning_camera_slides_the_background_and_not_the_object():
    s = state(speed=0.0, pan=0.375, posts=True)  # half a pixel per frame at 32 px
    clip = world.render(s, 5)
    bgs = world.backgrounds(s, world.frame_times(5), 32, 48)
    assert np.allclose(bgs[4][:, :-2], bgs[0][:, 2:], atol=1e-9)  # two pixels left after four frames
    found = world.track(clip, bgs)
    assert found.found.all() and np.abs(found.centres - found.centres[0]).max() < 0.01
    result = scores.score_clip(clip, s, world.caption(s, 0.2))
    assert result.flicker == 0.0 and result.trajectory_px < 0.5  # the pan is the truth, not flicker
    frozen = np.repeat(clip[:1], 5, axis=0)  # a generator that forgot to pan
    assert scores.score_clip(frozen, s, world.caption(s, 0.2)).flicker > 0.5
    assert scores.score_clip(frozen, s, world.caption(s, 0.2)).pan_ok is False
    assert scores.pan_of(clip, found.masks) == "right"  # the posts slid left by two pixels


def test_a_brightening_still_gradient_is_not_taken_for_a_pan():
    s = state(background=("navy", "teal"), speed=0.0)
    clip = world.render(s, 9).astype(int) + np.arange(9)[:, None, None, None]  # one level brighter a frame
    masks = world.track(world.render(s, 9), world.background(s, 32, 48)).masks
    assert scores.pan_of(np.clip(clip, 0, 255).astype(np.uint8), masks) is None


def test_the_posts_are_visible_but_never_taken_for_the_object():
    s = state(background=("navy", "navy"), posts=True)
    empty = (world.background(s, 32, 48) * 255).round().astype(np.uint8)
    assert empty[..., 2].max() - empty[..., 2].min() > 15  # the posts show on a solid colour
    flat = np.broadcast_to(np.array(world.BACKGROUNDS["navy"]) / 255, (32, 48, 3))
    assert not world.track(empty[None], flat).found.any()  # a tracker that does not know of them ignores them


def test_the_full_physics_draws_every_kind_of_motion_and_the_basic_one_only_the_first():
    rng = np.random.default_rng(1)
    states = [world.sample_state(rng, physics="full") for _ in range(300)]
    assert {s.motion for s in states} == {"moves", "falls"} and all(s.posts for s in states)
    assert any(s.spin for s in states) and any(s.pan > 0 for s in states) and any(s.pan < 0 for s in states)
    basic = [world.sample_state(rng) for _ in range(100)]
    assert all(s.motion == "moves" and not (s.spin or s.pan or s.posts) for s in basic)
    with pytest.raises(InvalidInput, match="physics must be one of basic, full"):
        world.sample_state(rng, physics="quantum")


def test_prompt_terms_read_free_text_as_well_as_captions():
    assert world.prompt_terms("a blue square moves up and bounces off the wall") == {
        "colour": "blue",
        "shape": "square",
        "direction": "up",
        "pan": None,
        "speed": None,
    }
    assert world.prompt_terms("The YELLOW ball keeps rolling left.") == {
        "colour": "yellow",
        "shape": None,
        "direction": "left",
        "pan": None,
        "speed": None,
    }
    assert world.prompt_terms("a red circle falls as the camera pans left") == {
        "colour": "red",
        "shape": "circle",
        "direction": "down",
        "pan": "left",
        "speed": None,
    }
    assert world.prompt_terms("a green square rises")["direction"] == "up"
    assert world.prompt_terms("a red circle moves slowly")["speed"] == "slowly"
    assert world.prompt_terms("a fast red circle moves left")["speed"] == "quickly"


def test_the_multimodal_world_leaves_direction_or_speed_open_and_its_speeds_are_two_bands():
    rng = np.random.default_rng(0)
    states = [world.sample_state(rng, physics="multimodal") for _ in range(400)]
    moving = [s for s in states if s.motion == "moves"]
    said = [world.prompt_terms(world.caption(s, 1.0)) for s in moving]
    unsaid = sum(t["direction"] is None for t in said) / len(moving)
    assert 0.2 < unsaid < 0.4
    assert 0.4 < sum(t["speed"] is not None for t in said) / len(moving) < 0.6
    for s, terms in zip(moving, said, strict=True):
        assert terms["speed"] in (None, world.speed_band(s.speed))
        assert any(lo <= s.speed <= hi for lo, hi in world.SPEED_BANDS.values())
    # a caption that leaves the direction out reads back with none; the full world's draws are unchanged
    vague = next(s for s in moving if not s.says_direction)
    assert world.prompt_terms(world.caption(vague, 1.0))["direction"] is None
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert world.sample_state(a, physics="full") == world.sample_state(b, physics="full")


def test_plausible_continuations_keep_the_frame_and_caption_and_vary_what_they_leave_open():
    rng = np.random.default_rng(1)
    seconds = 1.0
    vague = next(
        s for s in (world.sample_state(rng, physics="multimodal", clear=0.34) for _ in range(500))
        if s.motion == "moves" and not s.says_direction and not s.says_speed
    )
    found = world.plausible_states(vague, seconds, np.random.default_rng(2), 16)
    assert all(np.array_equal(world.render(p, 1), world.render(vague, 1)) for p in found)
    assert all(world.caption(p, seconds) == world.caption(vague, seconds) for p in found)
    assert len({p.direction for p in found}) >= 3  # the caption leaves the direction open
    ends = np.array([world.centres_px(p, 25, 32)[-1] for p in found])
    assert scores.spread(ends) > 4
    told = replace(vague, says_direction=True, says_speed=True)
    kept = world.plausible_states(told, seconds, np.random.default_rng(2), 16)
    assert {p.direction for p in kept} == {told.direction}
    assert all(world.speed_band(p.speed) == world.speed_band(told.speed) for p in kept)
    assert scores.spread(np.array([world.centres_px(p, 25, 32)[-1] for p in kept])) < scores.spread(ends)


def test_tracking_recovers_true_positions_and_colour():
    rng = np.random.default_rng(0)
    for _ in range(10):
        s = world.sample_state(rng, physics="full")
        clip = world.render(s, 25)
        found = world.track(clip, world.backgrounds(s, world.frame_times(25), 32, 48))
        assert found.found.all()
        assert np.abs(found.centres - world.centres_px(s, 25, 32)).max() < 0.5
        assert scores.colour_of(found.colours) == s.colour


def test_a_frame_without_the_object_is_lost_not_guessed():
    s = state()
    empty = (world.background(s, 32, 48) * 255).round().astype(np.uint8)[None]
    found = world.track(empty, world.background(s, 32, 48))
    assert not found.found.any()


# Scores ---------------------------------------------------------------------------------------


def test_the_true_clip_scores_perfectly():
    s = state(x=0.4)
    clip = world.render(s, 25)
    result = scores.score_clip(clip, s, world.caption(s, 1.0))
    assert result.psnr_first == 99.0
    assert result.trajectory_px < 0.5
    assert result.direction_ok and result.colour_ok and result.found == 1.0
    assert result.flicker == 0.0


def test_a_clip_moving_the_wrong_way_fails_direction_and_trajectory():
    s = state(x=0.75)
    wrong = world.render(state(x=0.75, direction="left"), 25)
    result = scores.score_clip(wrong, s, "a red circle moves right")
    assert not result.direction_ok
    assert result.trajectory_px > 5
    assert result.colour_ok  # still red


def test_a_frozen_object_has_no_direction_and_the_wrong_colour_is_caught():
    s = state(speed=0.0, colour="blue")
    clip = world.render(s, 25)
    result = scores.score_clip(clip, s, "a red circle moves right")
    assert not result.direction_ok and not result.colour_ok


def test_psnr_falls_with_noise():
    image = world.render(state(), 1)[0]
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-20, 21, image.shape), 0, 255)
    assert 20 < scores.psnr(noisy.astype(np.uint8), image) < 30
    with pytest.raises(InvalidInput, match="one shape"):
        scores.psnr(image, image[:10])


def test_flicker_sees_background_changes_but_not_the_objects_motion():
    s = state()
    clip = world.render(s, 10)
    masks = world.track(clip, world.background(s, 32, 48)).masks
    assert scores.flicker(clip, masks) == 0.0
    flickering = clip.astype(int)
    flickering[1::2] += 6  # every other frame brighter
    assert scores.flicker(np.clip(flickering, 0, 255).astype(np.uint8), masks) == pytest.approx(6, abs=0.5)


def test_background_drift_measures_a_colour_shift():
    s = state()
    clip = world.render(s, 4)
    bg = world.background(s, 32, 48)
    masks = world.track(clip, bg).masks
    assert scores.background_drift(clip, masks, bg) < 0.5
    shifted = np.clip(clip.astype(int) + np.array([10, 0, -10]), 0, 255).astype(np.uint8)
    assert scores.background_drift(shifted, masks, bg) == pytest.approx(20 / 3, abs=0.7)


def test_trajectory_error_charges_lost_frames_the_diagonal():
    truth = np.zeros((4, 2))
    tracked = np.array([[0, 0], [3, 4], [np.nan, np.nan], [0, 0]], dtype=float)
    assert scores.trajectory_error(tracked, truth, diagonal=100) == pytest.approx((0 + 5 + 100 + 0) / 4)


# Object IoU, edge sharpness and spread ----------------------------------------------------------


def box_blur(clip: np.ndarray, size: int) -> np.ndarray:
    """Each pixel the mean of the ``size`` x ``size`` pixels around it (edges repeated)."""
    half = size // 2
    padded = np.pad(clip.astype(np.float64), ((0, 0), (half, half), (half, half), (0, 0)), mode="edge")
    height, width = clip.shape[1:3]
    total = sum(padded[:, i : i + height, j : j + width] for i in range(size) for j in range(size))
    return np.round(total / size**2).astype(np.uint8)


def test_the_true_clip_has_the_objects_pixels_and_edges():
    rng = np.random.default_rng(11)
    for _ in range(6):
        s = world.sample_state(rng, physics="full")
        result = scores.score_clip(world.render(s, 12), s, world.caption(s, 0.5))
        # the tracker also takes pixels the object covers a little under half of: IoU a little under 1
        assert result.iou > 0.85
        assert result.sharpness == pytest.approx(1.0)


def test_a_blurred_clip_has_soft_edges_and_the_more_blur_the_softer():
    s = state(x=0.6)
    clip = world.render(s, 12)
    caption = world.caption(s, 0.5)
    slight = scores.score_clip(box_blur(clip, 3), s, caption).sharpness
    heavy = scores.score_clip(box_blur(clip, 5), s, caption).sharpness
    assert heavy < slight < 0.85
    assert scores.score_clip(clip, s, caption).sharpness == pytest.approx(1.0)


def test_an_object_a_few_pixels_off_scores_a_lower_iou():
    s = state(x=0.6)
    caption = world.caption(s, 0.5)
    true_iou = scores.score_clip(world.render(s, 12), s, caption).iou
    off = scores.score_clip(world.render(state(x=0.6 + 3 / 32), 12), s, caption).iou  # three pixels right
    far = scores.score_clip(world.render(state(x=1.1), 12), s, caption).iou  # elsewhere altogether
    assert off < true_iou - 0.3 and far < 0.05


def test_psnr_against_the_truth_is_split_into_the_object_and_the_background():
    s = state(x=0.6)
    clip = world.render(s, 12)
    caption = world.caption(s, 0.5)
    exact = scores.score_clip(clip, s, caption)
    assert exact.psnr_background == 99.0 and exact.psnr_object == 99.0
    tinted = clip.copy()
    tinted[..., 2] = np.minimum(tinted[..., 2].astype(int) + 40, 255)  # a bluer clip, object and all
    blurred = scores.score_clip(box_blur(clip, 3), s, caption)
    bluer = scores.score_clip(tinted, s, caption)
    assert bluer.psnr_background < 25 and bluer.psnr_object < 30
    assert blurred.psnr_object < blurred.psnr_background - 5  # blur costs the object's edges, not flat parts
    assert np.isnan(scores.masked_psnr(clip, clip, np.zeros(clip.shape[:3], bool)))
    assert np.isnan(scores.score_prompt(clip, caption).psnr_object)


def test_object_iou_counts_empty_frames():
    cover = np.zeros((3, 4, 4))
    cover[1, 1:3, 1:3] = 1.0
    masks = np.zeros((3, 4, 4), bool)
    masks[1, 1:3, 1:3] = True
    masks[2, 0, 0] = True  # an object where there is none
    assert scores.object_iou(masks, cover) == pytest.approx((1 + 1 + 0) / 3)
    assert scores.object_iou(np.zeros_like(masks), cover) == pytest.approx(2 / 3)  # the object missed
    with pytest.raises(InvalidInput, match="differ in shape"):
        scores.object_iou(masks[:2], cover)


def test_text_to_video_clips_have_no_iou_or_sharpness_and_the_summary_skips_them():
    s = state()
    clip = world.render(s, 12)
    caption = world.caption(s, 0.5)
    t2v = scores.score_prompt(clip, caption)
    assert np.isnan(t2v.iou) and np.isnan(t2v.sharpness)
    i2v = scores.score_clip(box_blur(clip, 3), s, caption)
    mixed = scores.summarise([t2v, i2v, t2v])
    assert mixed["iou"] == pytest.approx(i2v.iou) and mixed["sharpness"] == pytest.approx(i2v.sharpness)
    assert mixed["found"] == pytest.approx(np.mean([t2v.found, i2v.found, t2v.found]))
    assert np.isnan(scores.summarise([t2v, t2v])["iou"])


def test_spread_is_the_rms_distance_to_the_centroid():
    corners = np.array([[0, 0], [2, 0], [0, 2], [2, 2], [np.nan, np.nan]], dtype=float)
    assert scores.spread(corners) == pytest.approx(np.sqrt(2))  # the NaN row (object lost) left out
    assert scores.spread(corners * 3 + 7) == pytest.approx(3 * np.sqrt(2))  # moves with scale, not place
    assert np.isnan(scores.spread(corners[[0, 4]]))  # one point has no spread
    # seeds that all end where one continuation does have none; true continuations of one start do
    rng = np.random.default_rng(12)
    ends = [world.centres_px(world.sample_state(rng), 25, 32)[-1] for _ in range(8)]
    assert scores.spread(np.repeat(ends[:1], 8, axis=0)) == pytest.approx(0, abs=1e-9)
    assert scores.spread(np.array(ends)) > 3

