"""OTIO hook ``magic141_markers`` (``post_adapter_read``): annotate ``magic141:`` clip markers.

Runs inside every OTIO read in this Python, whatever tool reads: it must be cheap, never raise
on a bad marker, and import nothing heavy (no torch, no Qt).
"""

from magic141.plugin.markers import annotate


def hook_function(in_timeline, argument_map=None):
    annotate(in_timeline)
    return in_timeline
