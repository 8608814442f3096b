"""The ASGI app for uvicorn (`uvicorn api.main:app`).

Once the app is built, everything that lives as long as the process (modules, routes, the ORM's mappers,
compiled codecs) is moved out of the garbage collector's sight with `gc.freeze()`. Otherwise every full
collection walks those hundreds of thousands of objects again: measured on a sync push of 500 mutations,
a full collection took 73-85 ms (one every five batches, about 15 % of the push rate); after the freeze
it takes about 4 ms. Tests build their own apps with `create_app` and do not freeze.

Logging is configured here too, in every process that serves the app: `steward serve --workers N` configures
it only in the parent, and uvicorn's worker processes (spawned, not forked) set up uvicorn's loggers alone, so
the service's own lines (the log SMS sender's...) were printed nowhere. `configure_logging` is idempotent:
with one worker this is the process that already did it, and its handler is not added twice.

The thread switch interval is set here for the same reason (`STEWARD_THREAD_SWITCH_MS`, 1 ms; Python's default
is 5 ms): a sync pull runs in a pool thread, and the event loop that reads the next requests and writes the
answers waited up to 5 ms for the interpreter at each hand-over. At 50 pulls/s from 100 devices (20,000
households, PostgreSQL) the devices' p95 was lower with 1 ms in all 5 runs alternating with 5 ms: 16.7-23.5 ms
against 21.6-43.4 ms; push and the first sync did not change (docs/sync-benchmarks.md).
"""

import gc
import sys

from api.app import create_app
from api.security import configure_logging
from api.settings import get_settings

settings = get_settings()
configure_logging(settings.log_level)
sys.setswitchinterval(settings.thread_switch_ms / 1000)
app = create_app(settings)

gc.collect()
gc.freeze()
