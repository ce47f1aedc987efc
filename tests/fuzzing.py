"""The fuzz targets' one switch: a few seconds each in the test suite, minutes under
``scripts/fuzz`` (docs/development.md, "Fuzzing").

A fuzz target is a Hypothesis test decorated with :func:`fuzz_target` (above ``@given``, and
without an ``@settings`` of its own). In the suite it runs ``examples`` examples. When
``KANAL_FUZZ_SECONDS`` is set (``scripts/fuzz`` sets it), the Hypothesis profile ``fuzz``
applies instead (many more examples per run, no deadline) and the target runs again and
again, each run with a new random seed, until that many seconds have passed; it then prints
how many runs and examples it made. A failing input is shrunk and printed by Hypothesis as
usual (and kept in ``.hypothesis/``): copy it into an ``@example`` of the target, so that the
suite replays it from then on.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

__all__ = ["FUZZ_SECONDS", "fuzz_target"]

FUZZ_SECONDS = float(os.environ.get("KANAL_FUZZ_SECONDS") or 0)
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "fuzz", max_examples=1_000, deadline=None, suppress_health_check=_HEALTH, print_blob=True
)

Test = TypeVar("Test", bound=Callable[..., None])


def fuzz_target(examples: int) -> Callable[[Test], Test]:
    """Mark a Hypothesis test as a fuzz target; ``examples`` is its share of the suite."""

    def decorate(test: Test) -> Test:
        if not FUZZ_SECONDS:
            tuned = settings(max_examples=examples, deadline=None, suppress_health_check=_HEALTH)
            marked: Test = pytest.mark.fuzz(tuned(test))
            return marked
        run_once = settings(settings.get_profile("fuzz"))(test)
        hypothesis_hooks: Any = getattr(run_once, "hypothesis")  # noqa: B009
        inner = hypothesis_hooks.inner_test
        calls = 0

        @functools.wraps(inner)
        def counted(*args: Any, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            inner(*args, **kwargs)

        hypothesis_hooks.inner_test = counted

        @functools.wraps(run_once)
        def repeated(*args: Any, **kwargs: Any) -> None:
            start = time.monotonic()
            runs = 0
            while runs == 0 or time.monotonic() - start < FUZZ_SECONDS:
                run_once(*args, **kwargs)
                runs += 1
            elapsed = time.monotonic() - start
            name = f"{test.__module__.removeprefix('tests.')}.{test.__name__}"
            print(f"\n{name}: {runs} runs, {calls} examples in {elapsed:.0f} s")

        marked_repeated: Test = pytest.mark.fuzz(repeated)
        return marked_repeated

    return decorate
