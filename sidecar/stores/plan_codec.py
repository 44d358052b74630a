"""A StorePlan as one ``EVALSHA`` of ``lua/check.lua``, and the script's reply as results.

The command is built straight into RESP bytes: the Redis store sends the
commands of many Checks in one socket write, and building them here costs a
fraction of what a general-purpose client spends per command. The argument
layout is documented at the top of ``check.lua``. Parameter fragments that
depend only on the rule (algorithm, limit, period, ...) are encoded once and
reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidecar.stores.base import (
    ActiveCheck,
    ActiveResult,
    BlockSet,
    BlockSetResult,
    CohortCount,
    CountResult,
    LimitCheck,
    LimitResult,
    LimitSpec,
    LimitState,
    Operation,
    OpResult,
    RevocationCheck,
    RevocationResult,
)

_ALGORITHM_CODES = {"sliding_window": "s", "token_bucket": "t", "fixed_window": "f"}
_MAX_FRAGMENTS = 8192  # distinct rule parameter sets kept encoded


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """One RESP command (for the rare commands the store sends itself)."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(arg) for arg in args)


def _args(*values: object) -> bytes:
    return b"".join(bulk(str(value).encode()) for value in values)


_SHADOW = (bulk(b"0"), bulk(b"1"))
_REVOCATION = bulk(b"R")


class PlanCodec:
    __slots__ = ("_fragments", "_prefix")

    def __init__(self, sha: str) -> None:
        self._prefix = b"$7\r\nEVALSHA\r\n" + bulk(sha.encode())
        # Cached encodings, keyed by everything but the key: (op kind, parameters...)
        # -> (RESP bytes, number of arguments in them).
        self._fragments: dict[tuple[object, ...], tuple[bytes, int]] = {}

    def encode(self, operations: Sequence[Operation], shadow: bool) -> bytes:
        keys: list[str] = []
        parts: list[bytes] = [_SHADOW[shadow]]
        nargs = 1
        fragments = self._fragments
        signature: tuple[object, ...]
        for op in operations:
            kind = type(op)
            if kind is LimitCheck:
                assert isinstance(op, LimitCheck)
                limits = op.limits
                signature = ("L", len(limits))
                fragment = fragments.get(signature)
                if fragment is None:
                    fragment = self._remember(signature, _args("L", len(limits)), 2)
                parts.append(fragment[0])
                nargs += 2
                for spec in limits:
                    keys.append(spec.key)
                    # (algorithm, limit, period_ms, burst, cost): everything but the key.
                    signature = spec[1:]
                    fragment = fragments.get(signature)
                    if fragment is None:
                        fragment = self._remember(signature, _limit_args(spec), 5)
                    parts.append(fragment[0])
                nargs += 5 * len(limits)
                continue
            if kind is ActiveCheck:
                assert isinstance(op, ActiveCheck)
                signature = ("A", *op.denying)
                keys.extend(op.keys)
            elif kind is CohortCount:
                assert isinstance(op, CohortCount)
                signature = ("C", op.threshold, op.period_ms, op.member_ttl_ms)
                keys.append(op.counter_key)
                keys.append(op.member_key)
            elif kind is RevocationCheck:
                assert isinstance(op, RevocationCheck)
                keys.append(op.key)
                parts.append(_REVOCATION)
                nargs += 1
                continue
            elif kind is BlockSet:
                assert isinstance(op, BlockSet)
                signature = ("B", len(op.keys), op.ttl_ms, op.value)
                keys.extend(op.keys)
            else:
                raise TypeError(f"the Redis store cannot run {kind.__name__}")
            fragment = fragments.get(signature)
            if fragment is None:
                fragment = self._remember(signature, *_op_args(op))
            parts.append(fragment[0])
            nargs += fragment[1]
        encoded = [key.encode() for key in keys]
        return b"".join(
            [
                b"*%d\r\n" % (3 + len(keys) + nargs),
                self._prefix,
                bulk(b"%d" % len(keys)),
                *[b"$%d\r\n%b\r\n" % (len(key), key) for key in encoded],
                *parts,
            ]
        )

    def _remember(
        self, signature: tuple[object, ...], encoded: bytes, count: int
    ) -> tuple[bytes, int]:
        if len(self._fragments) >= _MAX_FRAGMENTS:
            self._fragments.clear()
        fragment = (encoded, count)
        self._fragments[signature] = fragment
        return fragment

    @staticmethod
    def decode(operations: Sequence[Operation], reply: Sequence[Any]) -> list[OpResult | None]:
        """One result per operation; None for operations the script did not run."""
        ran = reply[0]
        at = 1
        results: list[OpResult | None] = []
        for index, op in enumerate(operations):
            if index >= ran:
                results.append(None)
                continue
            if isinstance(op, LimitCheck):
                allowed = reply[at] == 1
                at += 1
                states = []
                for _ in op.limits:
                    states.append(LimitState(reply[at], reply[at + 1], reply[at + 2]))
                    at += 3
                results.append(LimitResult(allowed, tuple(states)))
            elif isinstance(op, ActiveCheck):
                values: list[str | None] = []
                ttls: list[int] = []
                for _ in op.keys:
                    raw = reply[at]
                    values.append(None if raw is None else raw.decode())
                    ttls.append(reply[at + 1])
                    at += 2
                results.append(ActiveResult(tuple(values), tuple(ttls)))
            elif isinstance(op, CohortCount):
                results.append(CountResult(reply[at], reply[at + 1] == 1, reply[at + 2] == 1))
                at += 3
            elif isinstance(op, RevocationCheck):
                results.append(RevocationResult(reply[at] == 1))
                at += 1
            else:
                results.append(BlockSetResult())
                at += 1
        return results


def _limit_args(spec: LimitSpec) -> bytes:
    return _args(
        _ALGORITHM_CODES[spec.algorithm], spec.limit, spec.period_ms, spec.burst, spec.cost
    )


def _op_args(op: Operation) -> tuple[bytes, int]:
    if isinstance(op, ActiveCheck):
        flags = ["1" if denying else "0" for denying in op.denying]
        return _args("A", len(op.keys), *flags), 2 + len(flags)
    if isinstance(op, CohortCount):
        return _args("C", op.threshold, op.period_ms, op.member_ttl_ms), 4
    if isinstance(op, BlockSet):
        return _args("B", len(op.keys), op.ttl_ms, op.value), 4
    raise TypeError(f"no fixed arguments for {type(op).__name__}")


def denies(op: Operation, result: OpResult | None) -> bool:
    """Whether this result stops a (non-shadow) plan, as the script decides it."""
    if result is None:
        return False
    if isinstance(result, LimitResult):
        return not result.allowed
    if isinstance(result, RevocationResult):
        return result.revoked
    if isinstance(result, ActiveResult) and isinstance(op, ActiveCheck):
        return any(
            value is not None and denying
            for value, denying in zip(result.values, op.denying, strict=True)
        )
    return False
