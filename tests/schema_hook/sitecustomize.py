"""Started processes (the CLI, the daemon) validate what they write, as the test process
does: see ``tests/schema_check.py``."""

import os
import sys

if os.environ.get("SCHEMA_CHECK_FAILURES"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import schema_check

        schema_check.install()
    except ImportError:
        pass
    finally:
        del sys.path[0]
