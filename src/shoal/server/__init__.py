"""The coordinator: pure reactor and scheduler, the service loop around them, and the HTTP app."""
