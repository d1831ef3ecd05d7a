"""A generated clip's sound goes under it, on the track with its source's sound, and keeps sync."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import opentimelineio as otio
import pytest

from magic141.plugin import edits
from magic141.plugin import timeline as tl

RT, TR = otio.opentime.RationalTime, otio.opentime.TimeRange
RATE = Fraction(24000, 1001)


def _clip(name: str, url: str, first: int, count: int) -> otio.schema.Clip:
    r = float(RATE)
    return otio.schema.Clip(name=name, source_range=TR(RT(first, r), RT(count, r)),
                            media_reference=otio.schema.ExternalReference(
                                target_url=url, available_range=TR(RT(0, r), RT(40, r))))


def make_doc(folder: Path, sound_tracks: tuple[str, ...] = ("plate",)) -> tl.TimelineDoc:
    """V1: A (12 frames), B (10), C (10) of plate.mp4; one audio track per name in ``sound_tracks``
    holding that file's sound under the same cuts."""
    timeline = otio.schema.Timeline(name="cut")
    video = otio.schema.Track(name="V1")
    for name, first, count in (("A", 5, 12), ("B", 20, 10), ("C", 30, 10)):
        video.append(_clip(name, "plate.mp4", first, count))
    timeline.tracks.append(video)
    for number, source in enumerate(sound_tracks, 1):
        track = otio.schema.Track(name=f"A{number}", kind=otio.schema.TrackKind.Audio)
        for name, first, count in (("A", 5, 12), ("B", 20, 10), ("C", 30, 10)):
            track.append(_clip(f"{name} sound", f"{source}.mp4", first, count))
        timeline.tracks.append(track)
    path = folder / "cut.otio"
    otio.adapters.write_to_file(timeline, str(path))
    return tl.open_timeline(path)


def layout(track) -> list[tuple[str, int, int]]:
    return [(item.name or "gap", item.range_in_parent().start_time.to_frames(),
             item.range_in_parent().duration.to_frames()) for item in track]


def audio(doc: tl.TimelineDoc) -> list:
    return [t for t in doc.timeline.tracks if t.kind == otio.schema.TrackKind.Audio]


@pytest.mark.parametrize("sound, expected", [
    (7, [("A sound", 0, 12), ("A ext", 12, 7), ("B sound", 19, 10), ("C sound", 29, 10)]),
    (4, [("A sound", 0, 12), ("A ext", 12, 4), ("gap", 16, 3), ("B sound", 19, 10), ("C sound", 29, 10)]),
    (0, [("A sound", 0, 12), ("gap", 12, 7), ("B sound", 19, 10), ("C sound", 29, 10)]),
], ids=["sound", "shorter-sound", "video-only"])
def test_insert_puts_the_sound_under_the_clip_and_the_sound_track_ripples_with_the_picture(
        tmp_path, sound, expected):
    doc = make_doc(tmp_path)
    edits.add_generated_clip(doc, tl.find_clip(doc, "A"), tmp_path / "ext.mp4", 7, RATE, {"job_id": "j"},
                             "insert", audio_frames=sound)
    assert layout(doc.timeline.video_tracks()[0])[:3] == [("A", 0, 12), ("A ext", 12, 7), ("B", 19, 10)]
    (track,) = audio(doc)
    assert layout(track) == expected
    tl.save_timeline(doc)  # and it survives a save and a reload
    (track,) = audio(tl.open_timeline(tmp_path / "cut.otio"))
    assert layout(track) == expected
    if sound:
        placed = track[1]
        assert placed.media_reference.target_url == (tmp_path / "ext.mp4").resolve().as_uri()
        assert placed.source_range.start_time.to_frames() == 0 and not placed.markers
        assert placed.metadata["magic141"]["job_id"] == "j"


def test_the_sound_goes_on_the_track_with_the_sources_sound(tmp_path):
    doc = make_doc(tmp_path, sound_tracks=("music", "plate"))  # A1 holds other media; A2 the plate's
    edits.add_generated_clip(doc, tl.find_clip(doc, "A"), tmp_path / "ext.mp4", 7, RATE, {}, "insert",
                             audio_frames=7)
    music, plate = audio(doc)
    assert [name for name, _, _ in layout(music)] == ["A sound", "B sound", "C sound"]  # untouched
    assert layout(plate)[1] == ("A ext", 12, 7)


def test_overwrite_newtrack_and_a_timeline_without_sound(tmp_path):
    doc = make_doc(tmp_path)
    edits.add_generated_clip(doc, tl.find_clip(doc, "A"), tmp_path / "ext.mp4", 15, RATE, {}, "overwrite",
                             audio_frames=15)
    (track,) = audio(doc)
    assert layout(track) == [("A sound", 0, 12), ("A ext", 12, 15), ("C sound", 27, 5)]

    doc = make_doc(tmp_path)
    edits.add_generated_clip(doc, tl.find_clip(doc, "B"), tmp_path / "ext.mp4", 9, RATE, {}, "newtrack",
                             audio_frames=9)
    first, new = audio(doc)
    assert [name for name, _, _ in layout(first)] == ["A sound", "B sound", "C sound"]
    assert (new.name, layout(new)) == ("magic141 audio 1", [("gap", 0, 22), ("B ext", 22, 9)])

    doc = make_doc(tmp_path, sound_tracks=())
    edits.add_generated_clip(doc, tl.find_clip(doc, "C"), tmp_path / "ext.mp4", 9, RATE, {}, "insert",
                             audio_frames=9)
    (new,) = audio(doc)
    assert layout(new) == [("gap", 0, 32), ("C ext", 32, 9)]
    doc = make_doc(tmp_path, sound_tracks=())
    edits.add_generated_clip(doc, tl.find_clip(doc, "C"), tmp_path / "ext.mp4", 9, RATE, {}, "insert")
    assert audio(doc) == []  # video only into a timeline without sound: no empty audio track


def test_handles_leave_the_sound_under_the_source_too(tmp_path):
    doc = make_doc(tmp_path)
    edits.add_generated_clip(doc, tl.find_clip(doc, "A"), tmp_path / "ext.mp4", 9, RATE, {}, "insert",
                             handles=2, audio_frames=9)
    (track,) = audio(doc)
    placed = track[1]
    assert layout(track)[1] == ("A ext", 12, 7)
    assert placed.source_range.start_time.to_frames() == 2  # the same media frames as the picture
    assert placed.media_reference.available_range.duration.to_frames() == 9


def test_a_transition_where_the_sound_goes_is_refused_and_nothing_changes(tmp_path):
    doc = make_doc(tmp_path)
    (track,) = audio(doc)
    track.insert(1, otio.schema.Transition(in_offset=RT(2, float(RATE)), out_offset=RT(2, float(RATE))))
    before = [layout(t) for t in doc.timeline.tracks]
    with pytest.raises(tl.TimelineError, match="transition"):
        edits.add_generated_clip(doc, tl.find_clip(doc, "A"), tmp_path / "ext.mp4", 7, RATE, {}, "insert",
                                 audio_frames=7)
    assert [layout(t) for t in doc.timeline.tracks] == before
