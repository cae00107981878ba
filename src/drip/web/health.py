"""`GET /healthz` for load balancers: 200 when the database answers and its schema is current."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from drip.db import HEAD_REVISION, current_revision, reading
from drip.web.context import current

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    try:
        with reading(current().sessions) as session:
            revision = current_revision(session.connection())
    except Exception:  # any failure to reach the database is "unhealthy"
        return jsonify(status="unavailable", database="unreachable"), 503
    if revision != HEAD_REVISION:
        return jsonify(status="unavailable", database="schema not current"), 503
    return jsonify(status="ok"), 200
