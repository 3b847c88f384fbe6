"""ultravox-etl: sync Ultravox scheduled call batches into SQL tables for reporting.

The Python API is one function, the one the command line and the Airflow tasks call::

    from etl import sync, load_config

    result = sync(load_config("etl.toml"), batch_ids=None)  # -> etl.RunResult
    for batch in result.batches:
        print(batch.batch.batch_id, batch.status, batch.counts)
    raise SystemExit(result.exit_code)

`sync`, `RunResult` and `load_config` are imported on first use, so `import etl` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["RunResult", "__version__", "load_config", "sync"]

if TYPE_CHECKING:
    from etl.config import load_config
    from etl.pipeline import sync
    from etl.report.results import RunResult

_LAZY = {
    "sync": "etl.pipeline",
    "RunResult": "etl.report.results",
    "load_config": "etl.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'etl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
