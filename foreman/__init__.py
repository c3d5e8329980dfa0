"""foreman: one Ollama server made a dependable, shareable target for LLM clients."""

__version__ = "0.1.0"
