"""Sign up, sign in, sign out."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from ..extensions import limiter, login_manager
from ..services import accounts as accounts_service
from ..services.errors import ValidationError
from .htmx import is_htmx, redirect_to, safe_next

bp = Blueprint("accounts", __name__)


@login_manager.user_loader
def load_user(user_id: str) -> Any:
    """Load the signed-in user from the session."""
    try:
        return accounts_service.get_user(int(user_id))
    except ValueError:
        return None


@login_manager.unauthorized_handler
def unauthorized() -> Any:
    """Send anonymous users to sign in; htmx requests get HX-Redirect (they cannot see a 302)."""
    target = url_for("accounts.login", next=request.full_path if request.method == "GET" else None)
    if is_htmx():
        return "", 401, {"HX-Redirect": target}
    return redirect_to(target)


def _login_key() -> str:
    """Rate-limit key for sign-in attempts against one account, whatever the address."""
    return "login:" + accounts_service.normalise_email(request.form.get("email", ""))


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


@bp.get("/")
def index() -> Any:
    """Send visitors to their library, or to sign in."""
    if current_user.is_authenticated:
        return redirect_to(url_for("library.index"))
    return redirect_to(url_for("accounts.login"))


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Any:
    """Create an account and sign in."""
    if current_user.is_authenticated:
        return redirect_to(url_for("library.index"))
    errors: dict[str, str] = {}
    if request.method == "POST":
        try:
            user = accounts_service.create_user(
                request.form.get("email", ""),
                request.form.get("password", ""),
                request.form.get("confirm", ""),
            )
        except ValidationError as e:
            errors = e.errors
        else:
            login_user(user)
            flash("Welcome! Upload your first files below.", "success")
            return redirect_to(url_for("library.index"))
    status = 400 if errors else 200
    return render_template(
        "accounts/signup.html", errors=errors, email=request.form.get("email", "")
    ), status


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
@limiter.limit(_login_limit, methods=["POST"], key_func=_login_key)
def login() -> Any:
    """Sign in with e-mail and password."""
    next_url = safe_next(request.values.get("next"), url_for("library.index"))
    if current_user.is_authenticated:
        return redirect_to(next_url)
    error = None
    if request.method == "POST":
        user = accounts_service.authenticate(
            request.form.get("email", ""), request.form.get("password", "")
        )
        if user is not None:
            login_user(user, remember=request.form.get("remember") == "on")
            return redirect_to(next_url)
        error = "Incorrect e-mail or password."
    return render_template(
        "accounts/login.html", error=error, email=request.form.get("email", ""), next=next_url
    ), (401 if error else 200)


@bp.post("/logout")
@login_required
def logout() -> Any:
    """Sign out."""
    logout_user()
    flash("You are signed out.", "info")
    return redirect_to(url_for("accounts.login"))
