"""sdlib: a workbench for training code LLMs to self-debug."""

__version__ = "0.1.0"
