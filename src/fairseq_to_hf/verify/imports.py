"""Transformers, imported once per process, on a thread of its own while the converter writes.

Its lazy module is not safe to use from two threads at once, so every use goes through
`transformers()`, which first waits for an import still running on that thread.
"""

from __future__ import annotations

import gc
import importlib
import sys
import threading
from types import ModuleType

IMPORT_SWITCH_INTERVAL = 0.0005  # seconds a thread waiting for the GIL lets the importing thread run on


def import_quietly(architecture: str | None) -> None:
    """Imports Transformers and the model code of `architecture` (a class name) ahead of their use;
    a failure is left for the real import to report.

    An import runs Python code and holds the GIL nearly throughout, while the writer's threads need
    it only between their copies and checksums, and by default wait up to 5 ms for each handover: a
    shorter switch interval while the import runs took about 0.4 s off writing RoBERTa large.
    The import also creates about 300,000 objects the cyclic collector tracks, and so sets off its
    collections, the full ones walking torch's 165,000 as well: with the collector paused the import
    took 0.5-1.2 s less CPU here, and left 2,000 objects in cycles, collected once it is enabled again.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(IMPORT_SWITCH_INTERVAL)
    collecting = gc.isenabled()
    gc.disable()
    try:
        transformers = importlib.import_module("transformers")
        importlib.import_module("transformers.modeling_utils")  # what every model class imports first
        if architecture:
            getattr(transformers, architecture)  # the lazy module imports the class's own code here
    except Exception:  # noqa: BLE001 -- reported where the module is really needed
        return
    finally:
        if collecting:
            gc.enable()
        sys.setswitchinterval(interval)


class BackgroundImport:
    """`import_quietly` on a daemon thread, one at a time per process.

    A run that stops early (an error, Ctrl-C) does not wait for the import: it may take seconds, and
    the command line exits at once. Whatever uses Transformers next calls `wait()` first, since the
    lazy module of Transformers is not safe to use from two threads at once.
    """

    _running: threading.Thread | None = None
    _lock = threading.Lock()

    @classmethod
    def start(cls, architecture: str | None) -> None:
        with cls._lock:
            if cls._running is not None and cls._running.is_alive():
                return  # an earlier run's import, still going: it imports Transformers all the same
            cls._running = threading.Thread(target=import_quietly, args=(architecture,),
                                            name="import-transformers", daemon=True)
            cls._running.start()

    @classmethod
    def wait(cls) -> None:
        with cls._lock:
            running = cls._running
        if running is not None:
            running.join()


def transformers() -> ModuleType:
    """The transformers module, once no import of it runs on another thread."""
    BackgroundImport.wait()
    return importlib.import_module("transformers")
