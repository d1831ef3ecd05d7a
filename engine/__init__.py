"""The generation engine: models, pipeline, media, CLI commands."""
