"""The HTTP side of the core: handlers, the error/tracing boundary, rendering, bodies, OpenAPI."""
