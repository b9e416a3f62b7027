"""drivesync: a file library that syncs each user's files to their own Microsoft OneDrive."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import mail, observability, scope, tasks, web
from .cli import register_cli
from .config import load_config, validate_config
from .extensions import csrf, db, install_sqlite_tuning, limiter, login_manager, migrate
from .services import autosync, export, imports, liveness, runs, scheduler
from .views import register_blueprints

__all__ = ["create_app"]


def _late(module: ModuleType, name: str) -> Callable[..., Any]:
    """Return a function calling ``module.name`` as it is when called (patched in tests too)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(module, name)(*args, **kwargs)

    call.__qualname__ = f"{module.__name__}.{name}"
    return call


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Create and configure the app: config, extensions, blueprints, CLI. Tests pass overrides."""
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
    app.config.update(load_config())
    if overrides:
        app.config.update(overrides)
    if "MAX_UPLOAD_MB" in (overrides or {}):
        app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_UPLOAD_MB"] * 1024 * 1024
    validate_config(app.config)

    observability.init_app(app)  # first: logging and request ids for everything after

    web.configure(app)
    install_sqlite_tuning()  # WAL: sync threads and page views do not queue on SQLite's lock
    db.init_app(app)
    scope.install(db.session)
    # Batch mode lets SQLite alter tables; compare_type keeps the drift test strict.
    migrate.init_app(
        app, db, directory=str(web.MIGRATIONS_DIR), render_as_batch=True, compare_type=True
    )
    login_manager.init_app(app)
    csrf.init_app(app)
    mail.init_app(app)
    limiter.init_app(app)

    # The job bodies are handed to tasks here, so tasks imports no service (no import cycle).
    tasks.init_app(
        app,
        jobs={
            tasks.EXECUTE_RUN: _late(runs, "execute_run"),
            tasks.BUILD_EXPORT: _late(export, "build_export"),
            tasks.IMPORT: _late(imports, "run_import"),
            tasks.TICK: _late(scheduler, "tick"),
            tasks.WAKE_USER: _late(scheduler, "wake_user"),
        },
        nudge=_late(scheduler, "notify"),
        on_shutdown=_late(liveness, "begin_shutdown"),
    )

    autosync.install(db.session)  # uploads mark automatic syncs due

    register_blueprints(app)

    register_cli(app)

    # Trust exactly PROXY_COUNT hops of X-Forwarded-*: more would let clients spoof their address.
    if n := app.config["PROXY_COUNT"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)  # type: ignore[method-assign]
    return app
