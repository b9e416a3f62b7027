"""Where work runs: thread pool, inline (eager) and Celery, without a broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, current_app, has_app_context

from drivesync import tasks


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Replace the job with one that records where and how it ran."""
    seen: list[dict[str, Any]] = []

    def fake_job(run_id: int, user_id: int, resolve: str | None = None) -> None:
        seen.append(
            {
                "args": (run_id, user_id, resolve),
                "context": has_app_context(),
                "app": current_app.name if has_app_context() else None,
                "thread": threading.get_ident(),
            }
        )

    monkeypatch.setattr(tasks, "run_job", fake_job)
    yield seen
    tasks.shutdown()


def test_thread_backend_runs_the_job_in_an_app_context(
    app: Flask, calls: list[dict[str, Any]]
) -> None:
    """The thread backend runs a job on a pool thread, inside a fresh app context."""
    app.config["TASK_BACKEND"] = "thread"
    tasks.init_app(app)
    with app.app_context():
        future = tasks.enqueue_run(7, 3, resolve="replace")
    assert future is not None
    future.result(timeout=10)
    assert calls == [
        {"args": (7, 3, "replace"), "context": True, "app": app.name, "thread": calls[0]["thread"]}
    ]
    assert calls[0]["thread"] != threading.get_ident()


def test_eager_backend_runs_inline(app: Flask, calls: list[dict[str, Any]]) -> None:
    """The eager backend runs the job synchronously in the caller's thread."""
    tasks.init_app(app)
    with app.app_context():
        assert tasks.enqueue_run(1, 2) is None
    assert calls[0]["args"] == (1, 2, None) and calls[0]["thread"] == threading.get_ident()


def test_celery_backend_builds_without_a_broker(app: Flask, calls: list[dict[str, Any]]) -> None:
    """The Celery app is created without connecting, with the settings acks_late relies on."""
    app.config.update(TASK_BACKEND="celery", CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    tasks.init_app(app)
    celery_app = app.extensions["celery"]
    conf = celery_app.conf
    assert conf.broker_url == "redis://127.0.0.1:1/0"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.task_serializer == "json"
    assert conf.task_ignore_result
    task = celery_app.tasks[tasks.EXECUTE_RUN]
    task(5, 6)  # runs in-process: FlaskTask pushes the app context itself
    assert calls == [
        {"args": (5, 6, None), "context": True, "app": app.name, "thread": threading.get_ident()}
    ]


def test_unknown_backend_is_refused(app: Flask) -> None:
    """A backend name that does not exist fails at start-up."""
    app.config["TASK_BACKEND"] = "rq"
    with pytest.raises(ValueError):
        tasks.init_app(app)


def test_thread_backend_executes_a_real_run(app: Flask, make_user: Any, make_file: Any) -> None:
    """Sync All on the thread backend returns at once and the run finishes in the background."""
    from drivesync.extensions import db
    from drivesync.models import Integration
    from drivesync.scope import user_scope
    from drivesync.services import sync
    from tests.fakes import FOLDER_ID, FakeDrive

    fake = FakeDrive()
    app.config.update(TASK_BACKEND="thread", SYNC_DRIVE_FACTORY=lambda user_id: fake)
    tasks.init_app(app)
    uid = make_user()
    make_file(uid, "a.txt", b"a")
    with app.app_context(), user_scope(uid):
        db.session.add(Integration(user_id=uid, folder_id=FOLDER_ID))
        db.session.commit()
        run = sync.request_sync(uid)
        tasks.shutdown(wait=True)  # joins the background job
        db.session.expire_all()
        finished = sync.run_status(uid, run.id)
        assert finished is not None and (finished.status, finished.succeeded) == ("done", 1)
    assert len(fake.uploads()) == 1


def test_inline_block_runs_jobs_in_the_caller(app: Flask, calls: list[dict[str, Any]]) -> None:
    """Inside tasks.inline() a job runs synchronously even on the thread backend."""
    app.config["TASK_BACKEND"] = "thread"
    tasks.init_app(app)
    with app.app_context(), tasks.inline():
        assert tasks.enqueue_run(4, 2) is None
    assert calls[0]["thread"] == threading.get_ident()
    with app.app_context():
        assert tasks.backend() == "thread"


def test_import_job_runs_on_each_backend(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """IMPORT is handed over by name: eager runs it here, thread in the pool, Celery by name."""
    from drivesync.services import imports

    ran: list[tuple[int, int, int]] = []
    monkeypatch.setattr(
        imports, "run_import", lambda job_id, uid: ran.append((job_id, uid, threading.get_ident()))
    )
    with app.app_context():
        assert tasks.enqueue_import(1, 2) is None
        app.config["TASK_BACKEND"] = "thread"
        tasks.init_app(app)
        future = tasks.enqueue_import(3, 4)
        assert future is not None
        future.result(timeout=10)
    assert ran[0] == (1, 2, threading.get_ident())
    assert ran[1][:2] == (3, 4) and ran[1][2] != threading.get_ident()
    app.config.update(TASK_BACKEND="celery", CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    tasks.init_app(app)
    app.extensions["celery"].tasks[tasks.IMPORT](5, 6)
    assert ran[2][:2] == (5, 6)
