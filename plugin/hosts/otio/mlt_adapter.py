"""OTIO adapter ``magic141_mlt``: write a timeline as MLT XML (``.mlt``) for melt, Shotcut, Kdenlive.

Write only: MLT documents carry more than OTIO can hold (filters, compositing), so reading one
back would lose the editor's work silently. Adapter arguments: ``width`` and ``height`` override
the frame size probed from the first video clip's media.
"""

from magic141.plugin.mlt import to_mlt, write_mlt


def write_to_string(input_otio, width=None, height=None):
    return to_mlt(input_otio, width=width, height=height)


def write_to_file(input_otio, filepath, width=None, height=None):
    write_mlt(input_otio, filepath, width=width, height=height)
