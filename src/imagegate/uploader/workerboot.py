"""What the codec workers' forkserver loads before it forks them: the image code and nothing of
the server (uploader/pool.py names this module as the forkserver's only preload).

Two costs are avoided here, each paid by every worker before (``imagegate serve`` took 11-45 s
to answer on a loaded machine):

- the image libraries (Pillow, simplejpeg, numpy) are imported once, in the forkserver, so a
  new or replacing worker is a fork that has them already;
- multiprocessing makes each child re-import its parent's ``__main__`` (the ``imagegate``
  script, which imported the whole server: FastAPI, SQLAlchemy, boto3...) so that functions
  defined there can be unpickled. The forkserver's default preload names ``__main__``, but
  Python 3.11 never hands it the script's path, so every worker ran the script itself. Workers
  run only functions of this package's modules (uploader/jobs.py), so that re-import is
  switched off here, in the forkserver, and its children inherit the switch.

Only the forkserver imports this module; importing it elsewhere would change nothing but that
process's own children's start (none: the server's workers all come from the forkserver).
"""

from __future__ import annotations

import importlib
from multiprocessing import spawn

# What the workers run (pool.py's jobs), with the image libraries they import.
PRELOADED = ("imagegate.uploader.process", "imagegate.variants.render")
for _module in PRELOADED:
    importlib.import_module(_module)


def _main_not_needed(_: str) -> None:
    """A child's main-module fix-up: nothing to do, nothing of ``__main__`` is unpickled."""


# multiprocessing's private hooks (3.11-3.13): a Python without them keeps its own behaviour,
# slower but correct.
for _hook in ("_fixup_main_from_path", "_fixup_main_from_name"):
    if hasattr(spawn, _hook):
        setattr(spawn, _hook, _main_not_needed)
