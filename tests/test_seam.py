"""The cut: a continued clip comes out at its source's size and in its source's colour."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import opentimelineio as otio
import PIL.Image
import pytest

from magic141.engine import media, seam
from magic141.engine.generate import Engine
from magic141.plugin.extend import extend_clip
from magic141.protocol import JobSpec, Source, clip_record


def _plate(height: int = 128, width: int = 192) -> np.ndarray:
    """A frame with a colour gradient, a dark band and a red square: colours a match must keep apart."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([40 + 60 * x / width, 90 + 80 * y / height, 150 - 50 * x / width], axis=-1)
    frame[height // 3: height // 2] *= 0.4
    frame[10:40, 20:50] = (220, 30, 30)
    return frame.round().astype(np.uint8)


def _shifted(frame: np.ndarray) -> np.ndarray:
    """What a drifting model does: warmer, darker, a lifted black."""
    linear = seam.to_linear(frame) * np.array([1.15, 0.85, 0.7]) + 0.02
    return seam.from_linear(linear)


def test_colour_match_undoes_a_colour_shift_and_strength_blends():
    source = _plate()
    drifted = _shifted(source)
    before = seam.mean_colour_difference(drifted, source)
    full = seam.ColourMatch.fit(drifted, source).apply(drifted[None])[0]
    half = seam.ColourMatch.fit(drifted, source, 0.5).apply(drifted[None])[0]
    off = seam.ColourMatch.fit(drifted, source, 0.0).apply(drifted[None])[0]
    after = seam.mean_colour_difference(full, source)
    assert before > 0.03 and after < before / 10
    assert after < seam.mean_colour_difference(half, source) < before
    assert np.array_equal(off, drifted)
    # Per pixel too (not only on average): the red square and the band come back near their colours.
    assert np.abs(full.astype(int) - source).mean() < np.abs(drifted.astype(int) - source).mean() / 3


def test_the_seam_score_sees_a_colour_shift_and_the_match_lowers_it():
    source = _plate()
    drifted = _shifted(source)
    matched = seam.ColourMatch.fit(drifted, source).apply(drifted[None])[0]
    same, shifted, fixed = (seam.seam_score(source, frame) for frame in (source, drifted, matched))
    assert same == {"ciede2000": 0.0, "psnr": 99.0}
    # CIEDE2000 about 1 is a just-noticeable difference: the drift is plain, the match brings it near 1.
    assert shifted["ciede2000"] > 5 and fixed["ciede2000"] < shifted["ciede2000"] / 3
    assert fixed["psnr"] > shifted["psnr"] + 6
    small = seam.resize(matched[None], 96, 64)[0]  # a frame at another size is compared at the source's
    assert seam.seam_score(source, small)["ciede2000"] < shifted["ciede2000"] / 2


def test_mkl_agrees_with_color_matcher():
    mvgd = pytest.importorskip("color_matcher.mvgd_matcher", reason="color-matcher is a test extra")
    rng = np.random.default_rng(0)
    source = rng.random((500, 3)) @ np.array([[1.0, 0.2, 0.1], [0.0, 0.8, 0.3], [0.1, 0.0, 0.5]])
    reference = rng.random((400, 3)) @ np.array([[0.6, 0.1, 0.0], [0.2, 1.1, 0.1], [0.0, 0.3, 0.9]])
    theirs = mvgd.TransferMVGD(method="mkl")
    theirs.multivar_transfer(source[:, None, :], reference[:, None, :])
    # Equal up to the regulariser on the inverse root (ours 1e-6 so flat frames stay finite; theirs 2e-16).
    assert np.allclose(seam.mkl_transform(source, reference), theirs.transfer_mat.real, rtol=1e-4, atol=0)


def test_resize_reaches_the_exact_size_and_leaves_an_equal_size_alone():
    frames = np.stack([_plate(32, 48)] * 2)
    big = seam.resize(frames, 192, 128)
    assert big.shape == (2, 128, 192, 3) and big.dtype == np.uint8
    assert seam.resize(frames, 48, 32) is frames


@pytest.fixture(scope="module")
def tiny_engine():
    return Engine.load("tiny", device="cpu")


@pytest.fixture
def plate(tmp_path):
    path = tmp_path / "plate.mp4"
    frame = _plate()
    with media.VideoWriter(path, fps=Fraction(24), codec="h264", width=192, height=128) as writer:
        writer.write(np.stack([frame] * 6))
    return path


def matched_spec(plate, tmp_path, **changes) -> dict:
    return JobSpec(Source("media", str(plate), Fraction(5, 24)), "the ball rolls on", str(tmp_path),
                   seconds=Fraction(1, 2), seed=3, **changes).to_json()


def _extend(engine, plate, tmp_path, name, **changes):
    return engine.generate(JobSpec.from_json(matched_spec(plate, tmp_path, **changes)), tmp_path / name)


def test_a_continued_clip_comes_out_at_its_sources_size_and_colour(tiny_engine, plate, tmp_path):
    matched = _extend(tiny_engine, plate, tmp_path, "matched.mp4")
    raw = _extend(tiny_engine, plate, tmp_path, "raw.mp4", color_match=0.0)
    native = _extend(tiny_engine, plate, tmp_path, "native.mp4", match_source=False, color_match=0.0)

    probed = media.probe_video(matched.path)
    assert (matched.width, matched.height) == (192, 128) == (probed.width, probed.height)
    assert (native.width, native.height) == (96, 64)  # the tiny model's own size
    record = clip_record("j1", JobSpec.from_json(matched_spec(plate, tmp_path)), matched,
                         source_clip="Plate", source_frame=5)
    assert record["native_size"] == [96, 64] and record["color_match"] == 1.0
    source = media.read_frames(plate)[-1]
    first_matched, first_raw = media.read_frames(matched.path)[0], media.read_frames(raw.path)[0]
    assert first_raw.shape == source.shape
    difference = seam.mean_colour_difference
    assert difference(first_matched, source) < difference(first_raw, source) / 3


def test_a_continued_clip_starts_one_frame_after_its_source_frame(tiny_engine, plate, tmp_path):
    """The model's first frame shows the source frame's instant again; a continued clip leaves it
    out (it would hold that instant at the cut), where a job from a still starts on it. ProRes is
    intra-only, so equal frames encode equally whatever their neighbours."""
    still = tmp_path / "frame5.png"
    media.grab_frame(plate, Fraction(5, 24)).save(still)
    common = dict(prompt="the ball rolls on", output_dir=str(tmp_path), seed=3, codec="prores",
                  match_source=False, color_match=0.0)
    continued = tiny_engine.generate(JobSpec(Source("media", str(plate), Fraction(5, 24)),
                                             seconds=Fraction(6, 24), **common), tmp_path / "continued.mov")
    from_still = tiny_engine.generate(JobSpec(Source("image", str(still)), seconds=Fraction(7, 24), **common),
                                      tmp_path / "still.mov")
    assert continued.frames == 6 and from_still.frames == 7
    np.testing.assert_array_equal(media.read_frames(continued.path), media.read_frames(from_still.path)[1:])


def test_a_still_image_job_keeps_the_models_size(tiny_engine, tmp_path):
    image = tmp_path / "still.png"
    PIL.Image.fromarray(_plate()).save(image)
    result = tiny_engine.generate(JobSpec(Source("image", str(image)), "a ball", str(tmp_path),
                                          seconds=Fraction(1, 4)), tmp_path / "still.mp4")
    assert (result.width, result.height) == (96, 64)


def test_a_flat_generated_frame_is_not_stretched_into_halos():
    source = _plate()
    flat = np.full_like(source, (30, 40, 70))
    flat[10:40, 60:90] = (200, 60, 50)  # the ball, blurred away from everything else
    match = seam.ColourMatch.fit(flat, source)
    gains = np.linalg.eigvalsh(match.matrix)
    assert gains.max() <= seam.MAX_GAIN + 1e-9 and gains.min() >= 1 / seam.MAX_GAIN - 1e-9
    matched = match.apply(flat[None])[0]
    background = matched[60:, 100:].reshape(-1, 3)
    assert background.std(axis=0).max() < 1  # a flat background stays flat (no noise blown up)


def _one_clip_timeline(folder, media_path, frames: int, rate: Fraction):
    at = otio.opentime.RationalTime
    whole = otio.opentime.TimeRange(at(0, float(rate)), at(frames, float(rate)))
    timeline = otio.schema.Timeline(name="cut")
    track = otio.schema.Track(name="V1")
    reference = otio.schema.ExternalReference(target_url=media_path.name, available_range=whole)
    track.append(otio.schema.Clip(name="Plate", source_range=whole, media_reference=reference))
    timeline.tracks.append(track)
    path = folder / "cut.otio"
    otio.adapters.write_to_file(timeline, str(path))
    return path


@pytest.mark.parametrize("codec, aspect, rate", [("prores", Fraction(4, 3), Fraction(24000, 1001)),
                                                ("h264", None, Fraction(25))],
                         ids=["10-bit-anamorphic-23.976", "8-bit-square-25"])
def test_the_extension_keeps_its_sources_format_pixel_aspect_and_rate(tiny_engine, tmp_path, codec, aspect,
                                                                        rate):
    source = tmp_path / f"plate{'.mov' if codec == 'prores' else '.mp4'}"
    with media.VideoWriter(source, fps=rate, codec=codec, width=96, height=64,
                           sample_aspect=aspect) as writer:
        writer.write(np.stack([_plate(64, 96)] * 6))

    def run_job(job_id, spec):
        Path(spec.output_dir).mkdir(exist_ok=True)
        return tiny_engine.generate(spec, spec.output_path(job_id))

    done = extend_clip(_one_clip_timeline(tmp_path, source, 6, rate), "Plate", prompt="the ball rolls on",
                       seconds=Fraction(1, 2), run_job=run_job, model="tiny", ambience=0.0)
    assert done.media.suffix == source.suffix  # ProRes 422 HQ for a 10-bit source, H.264 for 8-bit
    assert media.picture_format(done.media) == media.picture_format(source)
    probed = media.probe_video(done.media)
    assert (probed.width, probed.height, probed.fps, probed.frames) == (96, 64, rate, round(rate / 2))
    model_aspect = done.result.settings["width"] / done.result.settings["height"]
    shown = 96 * (aspect or 1) / 64  # the model drew the picture as it is shown: 2:1, or 3:2
    stored = 96 / 64
    assert abs(model_aspect - shown) <= abs(model_aspect - stored) if aspect else model_aspect == stored
