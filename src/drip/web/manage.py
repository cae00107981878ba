"""The manage page every lesson email links to (`/m/<token>`, the signed manage token of
`drip.links`): pause and resume, timezone and send time, progress, GDPR export and erase.

GET never changes anything (mail scanners follow links); every change is a POST carrying the
CSRF token of the page (Flask-WTF, installed app-wide) and answers with a redirect back to the
page (303), which says what was done. Erasing asks first, on its own page. The export is emailed
to the reader's own address and never shown here: a manage link can be forwarded. An invalid
link, or one whose reader was erased, shows a friendly page. No rule is decided here: the
handlers call `drip.preferences`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from flask import Blueprint, Flask, Response, redirect, render_template, request, url_for
from flask_limiter import Limiter

from drip import preferences
from drip.errors import FatalTransportError, InvalidTokenError, NotFoundError
from drip.statuses import SubscriberStatus
from drip.web.context import current

bp = Blueprint("manage", __name__)

EXPORT_LIMITS = "3 per day"
"""Export emails per manage link (and so per reader): each one mails the reader's inbox."""
EXPORT_IP_LIMITS = "10 per hour"
CHANGE_LIMITS = "30 per minute"
"""POSTs per client IP on the manage endpoints (the app-wide default is far higher)."""

WEEKDAYS = "月火水木金土日"

TIMEZONES: tuple[tuple[str, str], ...] = (
    ("Asia/Tokyo", "日本(東京)"),
    ("Asia/Seoul", "韓国(ソウル)"),
    ("Asia/Shanghai", "中国(北京・上海)"),
    ("Asia/Taipei", "台湾(台北)"),
    ("Asia/Hong_Kong", "香港"),
    ("Asia/Manila", "フィリピン(マニラ)"),
    ("Asia/Singapore", "シンガポール"),
    ("Asia/Bangkok", "タイ(バンコク)"),
    ("Asia/Ho_Chi_Minh", "ベトナム(ホーチミン)"),
    ("Asia/Jakarta", "インドネシア(ジャカルタ)"),
    ("Asia/Kolkata", "インド"),
    ("Asia/Dubai", "アラブ首長国連邦(ドバイ)"),
    ("Europe/London", "イギリス(ロンドン)"),
    ("Europe/Paris", "フランス(パリ)"),
    ("Europe/Berlin", "ドイツ(ベルリン)"),
    ("America/New_York", "アメリカ東部(ニューヨーク)"),
    ("America/Chicago", "アメリカ中部(シカゴ)"),
    ("America/Denver", "アメリカ山岳部(デンバー)"),
    ("America/Los_Angeles", "アメリカ西部(ロサンゼルス)"),
    ("Pacific/Honolulu", "ハワイ(ホノルル)"),
    ("America/Toronto", "カナダ(トロント)"),
    ("America/Vancouver", "カナダ(バンクーバー)"),
    ("America/Sao_Paulo", "ブラジル(サンパウロ)"),
    ("Australia/Sydney", "オーストラリア(シドニー)"),
    ("Australia/Perth", "オーストラリア(パース)"),
    ("Pacific/Auckland", "ニュージーランド(オークランド)"),
)

DONE_TEXTS = {
    "paused": "配信を一時停止しました。",
    "resumed": "配信を再開しました。",
    "not_active": "配信中ではないため、一時停止できませんでした。",
    "not_paused": "一時停止中ではないため、再開の必要はありません。",
    "schedule": "配信の時刻とタイムゾーンを保存しました。",
    "exported": "ご登録のメールアドレス宛てに、保存しているデータをお送りしました。",
    "export_failed": "データをお送りできませんでした。しばらくしてから、もう一度お試しください。",
}

SCHEDULE_ERRORS = {
    preferences.ScheduleProblem.BAD_TIMEZONE: "タイムゾーンを一覧から選んでください。",
    preferences.ScheduleProblem.BAD_SEND_TIME: "配信時刻を一覧から選んでください。",
    preferences.ScheduleProblem.QUIET_SEND_TIME: (
        "その時刻は深夜・早朝の配信しない時間帯にあたるため、選べません。"
    ),
}

STATUS_TEXTS = {
    SubscriberStatus.PENDING: "登録の確認待ち",
    SubscriberStatus.ACTIVE: "配信中",
    SubscriberStatus.PAUSED: "一時停止中",
    SubscriberStatus.COMPLETED: "全レッスン配信済み",
    SubscriberStatus.UNSUBSCRIBED: "配信停止済み",
    SubscriberStatus.BOUNCED: "配信停止(メールが届きませんでした)",
    SubscriberStatus.COMPLAINED: "配信停止(迷惑メール報告により)",
}


def register(app: Flask, limiter: Limiter) -> None:
    """Register the manage page on `app`, with its rate limits."""
    app.register_blueprint(bp)
    limiter.limit(CHANGE_LIMITS, methods=["POST"])(bp)
    # Both limits are registered under the view's name; the wrapper checks them all.
    view = app.view_functions["manage.export"]
    limiter.limit(EXPORT_IP_LIMITS)(view)
    wrapped = limiter.limit(EXPORT_LIMITS, key_func=_token_key)(view)
    app.view_functions["manage.export"] = cast("Any", wrapped)


def _token_key() -> str:
    return "manage-export:" + str((request.view_args or {}).get("token", ""))


@bp.app_template_filter("ja_moment")
def ja_moment(moment: datetime | None) -> str:
    """`12月3日(木) 7:30` (the moment is already in the reader's zone)."""
    if moment is None:
        return ""
    return (
        f"{moment.year}年{moment.month}月{moment.day}日({WEEKDAYS[moment.weekday()]})"
        f" {moment.hour}:{moment.minute:02d}"
    )


@bp.app_template_filter("ja_day")
def ja_day(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return f"{moment.month}月{moment.day}日({WEEKDAYS[moment.weekday()]})"


def masked(email: str) -> str:
    """`ya***@example.com`: enough for the reader to recognise, little for a forwarded link."""
    local, _, domain = email.partition("@")
    return f"{local[:2]}***@{domain}"


def _reader(token: str) -> int | None:
    context = current()
    try:
        return context.mailer.links.read("manage", token, now=context.now())
    except InvalidTokenError:
        return None


def _gone() -> tuple[str, int]:
    return render_template("manage_gone.html"), 404


def _back(token: str, done: str) -> Response:
    return redirect(url_for("manage.page", token=token, done=done), 303)  # type: ignore[return-value]


def _page(token: str, subscriber_id: int, **extra: Any) -> str | None:
    context = current()
    view = preferences.manage_view(context.sessions, context.course, subscriber_id)
    if view is None:
        return None
    zones = list(TIMEZONES)
    if view.subscriber.timezone not in {zone for zone, _ in zones}:
        zones.insert(0, (view.subscriber.timezone, view.subscriber.timezone))
    return render_template(
        "manage.html",
        token=token,
        view=view,
        status_text=STATUS_TEXTS[view.subscriber.status],
        address=masked(view.subscriber.email),
        zones=zones,
        send_times=preferences.send_time_choices(context.course),
        course_send_time=context.course.settings.send_time.strftime("%H:%M"),
        pause_weeks=preferences.PAUSE_WEEKS,
        unsubscribe_url=context.mailer.links.unsubscribe_url(subscriber_id),
        done=DONE_TEXTS.get(request.args.get("done", "")),
        **extra,
    )


@bp.get("/m/<token>")
def page(token: str) -> tuple[str, int] | str:
    subscriber_id = _reader(token)
    if subscriber_id is None:
        return _gone()
    html = _page(token, subscriber_id)
    return _gone() if html is None else html


@bp.post("/m/<token>/pause")
def pause(token: str) -> Response | tuple[str, int]:
    subscriber_id = _reader(token)
    if subscriber_id is None:
        return _gone()
    raw = request.form.get("weeks", "")
    choices = {str(weeks): weeks for weeks in preferences.PAUSE_WEEKS}
    if raw != "0" and raw not in choices:
        return _invalid(token, subscriber_id, "一時停止の期間を選んでください。")
    context = current()
    try:
        paused = preferences.pause(
            context.sessions, subscriber_id, weeks=choices.get(raw), now=context.now()
        )
    except NotFoundError:
        return _gone()
    return _back(token, "paused" if paused else "not_active")


@bp.post("/m/<token>/resume")
def resume(token: str) -> Response | tuple[str, int]:
    subscriber_id = _reader(token)
    if subscriber_id is None:
        return _gone()
    context = current()
    try:
        resumed = preferences.resume(
            context.sessions, context.course, subscriber_id, now=context.now()
        )
    except NotFoundError:
        return _gone()
    return _back(token, "resumed" if resumed else "not_paused")


@bp.post("/m/<token>/schedule")
def change_schedule(token: str) -> Response | tuple[str, int]:
    subscriber_id = _reader(token)
    if subscriber_id is None:
        return _gone()
    context = current()
    timezone = request.form.get("timezone", "")
    send_time = request.form.get("send_time", "") or None
    problem = preferences.schedule_problem(context.course, timezone, send_time)
    if problem is not None:
        return _invalid(token, subscriber_id, SCHEDULE_ERRORS[problem])
    try:
        preferences.change_schedule(
            context.sessions,
            context.course,
            subscriber_id,
            timezone=timezone,
            send_time=send_time,
            now=context.now(),
        )
    except NotFoundError:
        return _gone()
    return _back(token, "schedule")


@bp.post("/m/<token>/export")
def export(token: str) -> Response | tuple[str, int]:
    subscriber_id = _reader(token)
    if subscriber_id is None:
        return _gone()
    context = current()
    try:
        sent = preferences.send_export(
            context.sessions, context.mailer, subscriber_id, now=context.now()
        )
    except FatalTransportError:
        sent = False
    if sent is None:
        return _gone()
    return _back(token, "exported" if sent else "export_failed")


@bp.get("/m/<token>/erase")
def erase_form(token: str) -> tuple[str, int] | str:
    subscriber_id = _reader(token)
    if subscriber_id is None:
        return _gone()
    context = current()
    view = preferences.manage_view(context.sessions, context.course, subscriber_id)
    if view is None:
        return _gone()
    return render_template("manage_erase.html", token=token, address=masked(view.subscriber.email))


@bp.post("/m/<token>/erase")
def erase(token: str) -> tuple[str, int] | str:
    subscriber_id = _reader(token)
    if subscriber_id is None:
        return _gone()
    context = current()
    if request.form.get("confirm") != "yes":
        view = preferences.manage_view(context.sessions, context.course, subscriber_id)
        if view is None:
            return _gone()
        return (
            render_template(
                "manage_erase.html",
                token=token,
                address=masked(view.subscriber.email),
                error="削除してよいことを確認するため、チェックを入れてください。",
            ),
            400,
        )
    if not preferences.erase(context.sessions, subscriber_id, now=context.now()):
        return _gone()
    return render_template("manage_erased.html")


def _invalid(token: str, subscriber_id: int, error: str) -> tuple[str, int]:
    html = _page(token, subscriber_id, error=error)
    return _gone() if html is None else (html, 400)
