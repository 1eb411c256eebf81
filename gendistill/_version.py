"""The package version (imports nothing, so packaging tools and ``gendistill --version`` read it cheaply)."""

__version__ = "0.1.0"
