"""Reading AbusePolicy documents from YAML text, files and directories.

Every problem becomes a PolicyError naming the file, the document index and the
field path the way the user wrote it (``spec.rateLimits[2].period``). The same
loader serves ``serve``, ``check`` and ``validate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sidecar.errors import PolicyError
from sidecar.model.policy import AbusePolicy, _FieldError

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    source: str
    index: int
    policy: AbusePolicy | None
    error: PolicyError | None
    # Best-effort "ns/name" of a document that failed validation, so the policy's
    # last good version can be kept serving and the error reported against it.
    policy_id: str | None = None


def field_path(loc: Iterable[int | str]) -> str:
    """('spec', 'rateLimits', 2, 'period') -> 'spec.rateLimits[2].period'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out


def _join(base: str, extra: str) -> str:
    if not base:
        return extra
    return f"{base}{extra}" if extra.startswith("[") else f"{base}.{extra}"


def validation_error(exc: ValidationError, source: str, index: int | None) -> PolicyError:
    """The first error of a pydantic ValidationError, as a PolicyError."""
    first = exc.errors(include_url=False)[0]
    path = field_path(first["loc"])
    message = str(first["msg"])
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldError):
        path = _join(path, cause.path)
        message = str(cause).split(": ", 1)[1]
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "required field is missing"
    elif "input" in first and first["type"].endswith("_pattern_mismatch"):
        message = f"{first['input']!r} does not match {first['ctx']['pattern']}"
    total = exc.error_count()
    if total > 1:
        message += f" (and {total - 1} more problem{'s' if total > 2 else ''})"
    return PolicyError(source, index, path, message)


def parse_document(data: Any, source: str, index: int) -> AbusePolicy:
    if not isinstance(data, dict):
        raise PolicyError(source, index, "", "document is not a mapping (an AbusePolicy object)")
    try:
        return AbusePolicy.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source, index) from None


def load_text(text: str, source: str) -> list[LoadedDocument]:
    """Every ``---`` document of a YAML stream; empty documents are skipped."""
    try:
        raw_documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return [
            LoadedDocument(
                source, 0, None, PolicyError(source, None, "", f"YAML{where}: {problem}")
            )
        ]
    out: list[LoadedDocument] = []
    for index, data in enumerate(raw_documents):
        if data is None:
            continue
        try:
            out.append(LoadedDocument(source, index, parse_document(data, source, index), None))
        except PolicyError as err:
            out.append(LoadedDocument(source, index, None, err, _guess_id(data)))
    return out


def _guess_id(data: Any) -> str | None:
    meta = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    namespace = meta.get("namespace")
    return f"{namespace if isinstance(namespace, str) else 'default'}/{meta['name']}"


def load_file(path: Path) -> list[LoadedDocument]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [
            LoadedDocument(
                str(path), 0, None, PolicyError(str(path), None, "", f"cannot read: {exc}")
            )
        ]
    return load_text(text, str(path))


def policy_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named directly, and YAML files in directories (recursively, sorted).

    Hidden entries are skipped: Kubernetes mounts ConfigMaps through ``..data``
    symlinks and timestamped ``..2024_...`` directories that must not be read twice.
    """
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if child.is_file() and child.suffix in YAML_SUFFIXES:
                    yield child
        else:
            yield path
