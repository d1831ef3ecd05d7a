"""DaVinci Resolve bridge.

``menu_script.py`` runs inside Resolve (Workspace > Scripts); it is kept thin and uses only the
standard library and Resolve's API. ``bridge.py`` runs in Magic141's own Python and does
everything that can be tested without Resolve: the work copy, the edit, and the plan of API calls.
"""
