"""The one place the product's version is written (engine, add-on and build read it)."""

__version__ = "0.1.0"
