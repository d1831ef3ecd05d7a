"""The procedural world and the scores built on it: rendering, continuation, captions, tracking."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from magic141.engine import scores, world
from magic141.engine.errors import InvalidInput


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


def test_prompt_terms_read_free_text_as_well_as_captions():
    assert world.prompt_terms("a blue square moves up and bounces off the wall") == {
        "colour": "blue",
        "shape": "square",
        "direction": "up",
    }
    assert world.prompt_terms("The YELLOW ball keeps rolling left.") == {
        "colour": "yellow",
        "shape": None,
        "direction": "left",
    }


def test_tracking_recovers_true_positions_and_colour():
    rng = np.random.default_rng(0)
    for _ in range(10):
        s = world.sample_state(rng)
        clip = world.render(s, 25)
        found = world.track(clip, world.background(s, 32, 48))
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
