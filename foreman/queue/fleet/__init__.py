"""A fleet: several boxes, each a foreman in front of its own Ollama, sharing
one queue (ADR-0026)."""
