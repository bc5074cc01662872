"""`contracts.errors`: every guardstream exception derives from `GuardstreamError` and carries
its retry policy, the module's table says which, and `runtime.loop.is_transient` reads only
that policy (plus the one table for third-party errors)."""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError

import guardstream
from guardstream.contracts import errors
from guardstream.contracts.errors import GuardstreamError, PermanentError, TransientError
from guardstream.contracts.events import ContractError
from guardstream.runtime.loop import is_transient
from guardstream.runtime.redisstore import Unavailable
from guardstream.scorer.engine import EngineDead, ScoringError

pytestmark = pytest.mark.unit


def project_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a guardstream module, by name."""
    for info in pkgutil.walk_packages(guardstream.__path__, "guardstream."):
        if info.name != "guardstream.__main__":  # runs the CLI
            importlib.import_module(info.name)
    found: dict[str, type[BaseException]] = {}
    for name, module in list(sys.modules.items()):
        if name != "guardstream" and not name.startswith("guardstream."):
            continue
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                assert value.__name__ not in found, f"two exceptions named {value.__name__}"
                found[value.__name__] = value
    return found


def documented() -> dict[str, tuple[str, bool]]:
    """The module docstring's table: class name → (module, retriable)."""
    rows = re.findall(
        r"^\| `(\w+)`[^|]*\| (\S+) +\|[^|]*\| (yes|no) +\|$", errors.__doc__ or "", re.M
    )
    return {cls: (module, retriable == "yes") for cls, module, retriable in rows}


def test_every_project_exception_carries_a_retry_policy() -> None:
    found = project_exceptions()
    assert len(found) >= 29
    for name, cls in found.items():
        assert issubclass(cls, GuardstreamError), name
        if cls is not GuardstreamError:
            # Exactly one policy, inherited from one of the two bases.
            assert issubclass(cls, TransientError) != issubclass(cls, PermanentError), name
            assert cls.retriable is issubclass(cls, TransientError), name


def test_the_table_lists_every_exception_with_its_policy() -> None:
    found = project_exceptions()
    table = documented()
    assert set(table) == set(found) - {"GuardstreamError"}
    for name, (module, retriable) in table.items():
        assert found[name].__module__ == f"guardstream.{module}", name
        assert found[name].retriable is retriable, name


def test_built_in_bases_are_kept_for_the_callers_that_catch_them() -> None:
    found = project_exceptions()
    for name in (
        "ContractError",
        "AdapterError",
        "PolicyLoadError",
        "PolicyConflictError",
        "ArchiveError",
        "TemplateTooLong",
        "NotTrainable",
        "InvalidSubmission",
        "KeyRequestInvalid",
    ):
        assert issubclass(found[name], ValueError), name
    for name in ("TelemetryError", "TinyCheckpointError", "AuditFailed", "StackError"):
        assert issubclass(found[name], RuntimeError), name


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TransientError("broker away"), True),
        (ScoringError("request failed"), True),
        (Unavailable("get"), True),
        (ContractError("invalid_json", "x"), False),
        (EngineDead("gone"), False),
        (KafkaConnectionError(), True),  # aiokafka's own policy: retriable
        (MessageSizeTooLargeError(), False),  # ... and not
        (KafkaError(), False),
        (RuntimeError("a bug"), False),
        (ValueError("a bug"), False),
    ],
)
def test_is_transient_reads_only_the_policy(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient
