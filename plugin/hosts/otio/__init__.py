"""Magic141 as an OpenTimelineIO plugin (entry point ``opentimelineio.plugins``: ``magic141``).

OTIO loads ``plugin_manifest.json`` from this package. It registers:

- the hook script ``magic141_markers`` on ``post_adapter_read``: after any OTIO read, every clip
  marker named ``magic141: <prompt> [seconds=S] [seed=N]`` carries its parsed request (or the
  reason it is wrong) in ``marker.metadata["magic141"]``;
- the adapter ``magic141_mlt`` (suffix ``.mlt``, write only): MLT XML for melt, Shotcut and Kdenlive.

OTIO imports the plugin modules from their files, outside any package, so they use absolute
imports only.
"""
