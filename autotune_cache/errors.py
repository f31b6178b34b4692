"""Errors a user can act on. The CLI prints their message on one line and exits 2."""


class AutotuneCacheError(Exception):
    """Base of every error whose message is meant for the user."""


class UnknownModelError(AutotuneCacheError):
    pass


class ConfigError(AutotuneCacheError):
    """A config.json (or snapshot dir) that cannot be read as a GDN model."""


class SpecError(AutotuneCacheError):
    """A build request that cannot be planned: bad TP degree, token count, target, dtype."""


class CacheDirError(AutotuneCacheError):
    """A cache directory that cannot be used: a file, unwritable, locked too long."""


class NoGPUError(AutotuneCacheError):
    pass


class BuildFailedError(AutotuneCacheError):
    """Some units stayed failed; the manifest holds the rest."""

    def __init__(self, message, manifest=None):
        super().__init__(message)
        self.manifest = manifest


class IntegrityError(CacheDirError):
    """A cache dir (or bundle) that must not be loaded: files differ from its manifest, are missing or foreign, or
    its signature does not verify. `files` names them (relative paths, or absolute for a parent dir)."""

    def __init__(self, message, files=()):
        super().__init__(message)
        self.files = list(files)


class BundleError(CacheDirError):
    """A bundle that cannot be imported: unsafe, damaged, or not ours."""


class CacheMissError(AutotuneCacheError):
    """Strict serving: a kernel would have been benchmarked in the server."""


class IncompatibleCacheError(AutotuneCacheError):
    """Strict serving: the cache was built in an environment whose disk keys differ from this one."""


class SharedWritableError(IntegrityError):
    """A cache dir, an entry in it or a parent that users other than the owner can write."""
