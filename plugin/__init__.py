"""Timeline and host integration, and the engine client. Never imports torch."""
