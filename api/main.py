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
"""

import gc

from api.app import create_app
from api.security import configure_logging
from api.settings import get_settings

configure_logging(get_settings().log_level)
app = create_app()

gc.collect()
gc.freeze()
