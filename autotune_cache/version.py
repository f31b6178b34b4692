"""The package version, in a module of its own: lower rooms (cache/, builder/) name it without importing the package's
public face (__init__.py imports them)."""
__version__ = "0.1.0"
