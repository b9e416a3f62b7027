"""Sign up, sign in, sign out; password reset and change; sign out everywhere."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    after_this_request,
    current_app,
    flash,
    g,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required, login_user, logout_user

from ..extensions import limiter, login_manager
from ..mail import mail_enabled
from ..models import User
from ..services import accounts as accounts_service
from ..services import throttle
from ..services.errors import ValidationError
from .htmx import is_htmx, message_response, redirect_to, safe_next

bp = Blueprint("accounts", __name__)

RESET_SESSION_KEY = "password_reset_token"  # noqa: S105 - a session key name, not a secret
DEVICE_MAX_AGE = 365 * 24 * 3600


@login_manager.user_loader
def load_user(key: str) -> Any:
    """Load the user of a live server-side session (from the session or remember cookie)."""
    user = accounts_service.session_user(key)
    if user is not None:
        g.session_key = key
    return user


@login_manager.unauthorized_handler
def unauthorized() -> Any:
    """Send anonymous users to sign in; htmx requests get HX-Redirect (they cannot see a 302)."""
    target = url_for("accounts.login", next=request.full_path if request.method == "GET" else None)
    if is_htmx():
        return "", 401, {"HX-Redirect": target}
    return redirect_to(target)


def _address() -> str:
    return request.remote_addr or "unknown"


def _limit(key: str) -> Any:
    return lambda: current_app.config[key]


def _email_key() -> str:
    """Rate-limit key for one e-mail address, whatever the client's address."""
    return "email:" + accounts_service.normalise_email(request.form.get("email", ""))[:254]


def _public_url(endpoint: str, **values: Any) -> str:
    """Return an absolute URL for a mail, from configuration rather than the request's Host
    (a forged Host header must not put an attacker's site into a reset link)."""
    cfg = current_app.config
    base = cfg.get("PUBLIC_URL") or ""
    if not base and cfg.get("MS_REDIRECT_URI"):
        parts = urlsplit(cfg["MS_REDIRECT_URI"])
        base = f"{parts.scheme}://{parts.netloc}"
    if base:
        return base.rstrip("/") + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


def _sign_in(user: User, remember: bool) -> None:
    """Start a fresh session for ``user``: new session cookie, new CSRF secret, new server-side
    session row (whose key the remember-me cookie carries, so it too is new at every sign-in)."""
    session.clear()  # nothing of the anonymous session survives, its CSRF secret included (I6)
    g.pop("csrf_token", None)
    key = accounts_service.start_session(user.id, remember)
    login_user(user, remember=remember)
    session["_user_id"] = key  # flask-login stored the bare id; the session key replaces it
    g.session_key = key
    device = throttle.device_cookie_for(user.id, secrets.token_urlsafe(16))

    @after_this_request
    def _set_device(response: Any) -> Any:
        cfg = current_app.config
        response.set_cookie(
            throttle.DEVICE_COOKIE,
            device,
            max_age=DEVICE_MAX_AGE,
            secure=cfg["SESSION_COOKIE_SECURE"],
            httponly=True,
            samesite="Lax",
        )
        return response


def _sign_out_here() -> None:
    """End this browser's session on the server and drop its cookies."""
    key = g.get("session_key")
    session.clear()
    logout_user()  # asks flask-login to delete the remember-me cookie too
    if key:
        accounts_service.end_session(key)


@bp.get("/")
def index() -> Any:
    """Send visitors to their library, or to sign in."""
    if current_user.is_authenticated:
        return redirect_to(url_for("library.index"))
    return redirect_to(url_for("accounts.login"))


SIGNUP_SESSION_KEY = "signup_token"  # noqa: S105 - a session key name, not a secret


@bp.route("/signup", methods=["GET", "POST"])
@limiter.limit(_limit("SIGNUP_RATE_LIMIT"), methods=["POST"])
@limiter.limit(_limit("SIGNUP_RATE_LIMIT"), methods=["POST"], key_func=_email_key)
def signup() -> Any:
    """Start an account: mail a link to the address (same answer whether it has one or not)."""
    if current_user.is_authenticated:
        return redirect_to(url_for("library.index"))
    if current_app.config["SIGNUP"] == "closed" or not mail_enabled():
        return render_template("accounts/signup_closed.html", can_mail=mail_enabled()), 403
    errors: dict[str, str] = {}
    email = request.form.get("email", "")
    if request.method == "POST":
        try:
            accounts_service.request_signup(
                email,
                lambda token: _public_url("accounts.signup_link", token=token),
                _public_url("accounts.login"),
            )
        except ValidationError as e:
            errors = e.errors
        else:
            return render_template(
                "accounts/signup_sent.html",
                email=accounts_service.normalise_email(email),
                hours=accounts_service.SIGNUP_LINK_HOURS,
            )
    return render_template("accounts/signup.html", errors=errors, email=email), (
        400 if errors else 200
    )


@bp.get("/signup/<token>")
def signup_link(token: str) -> Any:
    """Open a mailed sign-up link."""
    return _link_hop(SIGNUP_SESSION_KEY, token, "accounts.complete_signup")


@bp.route("/signup/complete", methods=["GET", "POST"])
def complete_signup() -> Any:
    """Choose the password of a new account, create it and sign in."""
    return _password_form(
        SIGNUP_SESSION_KEY,
        "accounts/signup_complete.html",
        accounts_service.signup_email_for_token,
        accounts_service.complete_signup,
        "Welcome! Upload your first files below.",
    )


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Sign in with e-mail and password."""
    next_url = safe_next(request.values.get("next"), url_for("library.index"))
    if current_user.is_authenticated:
        return redirect_to(next_url)
    error, status, headers = None, 200, {}
    if request.method == "POST":
        email = accounts_service.normalise_email(request.form.get("email", ""))[:254]
        attempt = throttle.Attempt(
            address=_address(),
            email=email,
            device=throttle.device_of(
                request.cookies.get(throttle.DEVICE_COOKIE),
                accounts_service.user_id_for_email(email),
            ),
        )
        try:
            throttle.before_sign_in(attempt)
        except throttle.Throttled as exc:
            error, status = exc.message, 429
            headers["Retry-After"] = str(exc.retry_after)
        else:
            user = accounts_service.authenticate(email, request.form.get("password", ""))
            if user is not None:
                _sign_in(user, remember=request.form.get("remember") == "on")
                return redirect_to(next_url)
            throttle.sign_in_failed(attempt)
            error, status = "Incorrect e-mail or password.", 401
    if error and is_htmx():
        # htmx does not swap a 401/429 page: the message goes to the flash area (views/htmx.py).
        response = message_response(error, "error")
        response.headers.update(headers)
        return response
    return (
        render_template(
            "accounts/login.html",
            error=error,
            email=request.form.get("email", ""),
            next=next_url,
            can_reset=mail_enabled(),
        ),
        status,
        headers,
    )


@bp.post("/logout")
@login_required
def logout() -> Any:
    """Sign out: this session ends on the server, and its remember-me cookie with it."""
    _sign_out_here()
    flash("You are signed out.", "info")
    return redirect_to(url_for("accounts.login"))


# -- password reset ------------------------------------------------------------------------------


@bp.route("/password/forgot", methods=["GET", "POST"])
@limiter.limit(_limit("RESET_RATE_LIMIT"), methods=["POST"])
@limiter.limit(_limit("RESET_RATE_LIMIT"), methods=["POST"], key_func=_email_key)
def forgot_password() -> Any:
    """Ask for a reset link by e-mail (same answer whether or not the address has an account)."""
    sent = False
    if request.method == "POST" and mail_enabled():
        accounts_service.request_password_reset(
            request.form.get("email", ""),
            lambda token: _public_url("accounts.reset_link", token=token),
        )
        sent = True
    return render_template(
        "accounts/forgot.html",
        sent=sent,
        email=request.form.get("email", ""),
        can_reset=mail_enabled(),
        minutes=current_app.config["RESET_MINUTES"],
    )


@bp.get("/password/reset/<token>")
def reset_link(token: str) -> Any:
    """Open a mailed password-reset link."""
    return _link_hop(RESET_SESSION_KEY, token, "accounts.reset_password")


@bp.route("/password/reset", methods=["GET", "POST"])
def reset_password() -> Any:
    """Choose a new password through a reset link; every session of the account ends."""
    return _password_form(
        RESET_SESSION_KEY,
        "accounts/reset.html",
        lambda token: (user := accounts_service.user_for_reset_token(token)) and user.email,
        accounts_service.reset_password,
        "Your password is changed and you are signed in. Every other session of your account "
        "is signed out.",
    )


def _link_hop(session_key: str, token: str, endpoint: str) -> Any:
    """Move a mailed token out of the URL (access logs, Referer) into the session, then redirect
    to the form that uses it."""
    if len(token) > 500:
        abort(404)
    session[session_key] = token
    return redirect_to(url_for(endpoint))


def _password_form(
    session_key: str,
    template: str,
    email_for: Callable[[str], str | None],
    complete: Callable[[str, str, str], User],
    welcome: str,
) -> Any:
    """Show and handle the password form of a mailed link (sign-up or reset); on success the
    mail has proved the address, so sign in here."""
    token = session.get(session_key, "")
    email = email_for(token) if token else None
    if not email:
        session.pop(session_key, None)
        return render_template(template, dead=True, errors={}), 400
    errors: dict[str, str] = {}
    if request.method == "POST":
        try:
            user = complete(
                token, request.form.get("password", ""), request.form.get("confirm", "")
            )
        except ValidationError as e:
            errors = e.errors
        else:
            _sign_in(user, remember=False)
            flash(welcome, "success")
            return redirect_to(url_for("library.index"))
    return render_template(template, dead=False, errors=errors, email=email), (
        400 if errors else 200
    )


# -- the account's security page -----------------------------------------------------------------


def _security_page(errors: dict[str, str] | None = None, status: int = 200) -> Any:
    return render_template(
        "accounts/security.html",
        errors=errors or {},
        sessions=accounts_service.count_sessions(current_user.id),
    ), status


@bp.get("/account/security")
@login_required
def security() -> Any:
    """Show the password change form and the sign-out-everywhere button."""
    return _security_page()


@bp.post("/account/security/password")
@login_required
def change_password() -> Any:
    """Change the password (the current one is required); every other session ends."""
    try:
        accounts_service.change_password(
            current_user.id,
            request.form.get("current", ""),
            request.form.get("password", ""),
            request.form.get("confirm", ""),
            keep_session=g.get("session_key"),
        )
    except ValidationError as e:
        return _security_page(e.errors, 400)
    flash("Your password is changed. Every other session of your account is signed out.", "success")
    return redirect_to(url_for("accounts.security"))


@bp.post("/account/security/sign-out-everywhere")
@login_required
def sign_out_everywhere() -> Any:
    """End every other session of the account (other browsers, remember-me cookies)."""
    ended = accounts_service.end_other_sessions(current_user.id, keep=g.get("session_key"))
    flash(
        f"Signed out everywhere else ({ended} other session{'s' if ended != 1 else ''} ended).",
        "success",
    )
    return redirect_to(url_for("accounts.security"))
