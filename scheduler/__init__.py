"""A Redis-backed DurableTask TaskHubSidecarService with exact delayed starts."""
