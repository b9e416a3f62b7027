"""Application logic. Services take plain arguments, use ``db.session``, and never touch the
request, the session or flash messages."""
