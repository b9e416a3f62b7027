"""gunicorn settings for drivesync: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Command-line flags override these (``--bind``, ``--workers``); so does ``GUNICORN_CMD_ARGS``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Loopback behind the reverse proxy (README, Production).
bind = ["127.0.0.1:8000"]

# Threaded workers: a request whose body trickles in (an upload from a slow phone) holds one
# thread, not a whole process. With the sync worker class four slow uploads stopped the app.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * (os.cpu_count() or 1))
threads = int(os.environ.get("DRIVESYNC_WEB_THREADS") or 16)

# With gthread, ``timeout`` is the worker heartbeat, not a per-request limit: a long upload keeps
# its thread busy while the worker still reports alive, so uploads of any length are not killed.
timeout = 60
# On SIGTERM (systemd stop, deploy) finish in-flight requests, uploads included, for this long.
graceful_timeout = 120
# Idle keep-alive connections from the proxy; short, they each hold a slot in the poller.
keepalive = 5

# Trust X-Forwarded-Proto/-For only from the proxy, and only when DRIVESYNC_PROXY_COUNT says
# there is one (the app's ProxyFix trusts exactly that many hops).
_proxies = int(os.environ.get("DRIVESYNC_PROXY_COUNT") or 0)
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1") if _proxies else ""

# Prometheus multiprocess mode: each worker writes its metrics under this folder and /metrics
# sums them. Must be set before the app imports prometheus_client, hence here.
_created_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _created_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="drivesync-metrics-")
_metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])

# JSON logs: gunicorn's own (stderr) and the access log (stdout, no query strings).
accesslog = "-"
access_log_format = "access"  # the fields come from AccessJsonFormatter, not this string
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level"},
        },
        "access": {"()": "drivesync.observability.logs.AccessJsonFormatter"},
    },
    "handlers": {
        "error": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        },
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "access",
            "stream": "ext://sys.stdout",
        },
    },
    # The app installs its own root handler (drivesync.observability.logs) in each worker.
    "root": {"level": "INFO", "handlers": []},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
    },
}


def on_starting(server: Any) -> None:
    """Start with an empty metrics folder (counters from a previous master are not ours)."""
    _metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in _metrics_dir.glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (its counters stay in the sums, as Prometheus expects)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics folder if this file made it."""
    if _created_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
