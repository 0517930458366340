"""ollamafs: Ollama's model store and registries as a FUSE filesystem."""

__version__ = "0.1.0"
