"""The product's own error types.

Third-party exceptions (redis, kubernetes, maxminddb, jwt, graphql-core) are
caught in the one module that wraps each library and re-raised as one of these,
chained with ``from exc``, so callers never depend on a library's error tree.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every error this package raises on purpose."""


class PolicyError(SidecarError):
    """A policy document is invalid. Names the file, the document and the field."""

    def __init__(self, source: str, doc_index: int | None, field_path: str, message: str) -> None:
        self.source = source
        self.doc_index = doc_index
        self.field_path = field_path
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.source
        if self.doc_index is not None:
            where += f" (document {self.doc_index})"
        field = f"{self.field_path}: " if self.field_path else ""
        return f"{where}: {field}{self.message}"


class SectionError(ValueError):
    """A policy section its step cannot build; names the field the way users write it.

    Step builders raise it (or a subclass); the compiler turns it into a PolicyError
    with the file and document added.
    """

    def __init__(self, field_path: str, message: str) -> None:
        self.field_path = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}")


class StoreUnavailable(SidecarError):
    """The shared store (Redis) could not answer in time; callers follow failureMode."""

    def __init__(self, store: str, detail: str) -> None:
        self.store = store
        self.detail = detail
        super().__init__(f"{store} store unavailable: {detail}")


class ConfigurationError(SidecarError):
    """A command-line flag or environment variable is unusable."""
