"""Session-wide settings: Prefect stays local, quiet and patient with a loaded CI machine."""

import os
import tempfile

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-tests-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Prefect logs "Stopping temporary server" at interpreter exit, after pytest has closed its streams
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
