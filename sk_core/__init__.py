"""sk-functions core: Semantic Kernel prompt functions as HTTP APIs, host-independent."""

__version__ = "0.1.0"
