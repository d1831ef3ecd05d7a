"""Shipped data, installed as package data of ``magic141.resources``: the ``world`` model and its
card (``world/``), sample media and timelines (``samples/``, ``world_sample/``). Read it through
``importlib.resources.files("magic141.resources")``, never through a path relative to a source file:
a wheel install has no repository around it."""

if __name__ != "magic141.resources":
    raise ImportError(f"import magic141.resources, not {__name__}: this folder is part of magic141")
