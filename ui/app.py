"""The marketers' web page: a small Starlette app with server-rendered Jinja2 pages.

Pages (every one needs a session, :mod:`ui.session`): Overview, Segments, List builder,
Lists, Customer, Results. The list builder previews through
:func:`models.targeting.make_list` -- the one path ``rapport targets`` and ``POST
/targets`` take -- with no sink (nothing written) on :class:`ui.data.CachedLists`, and saves
through it again on the same kept candidates (suppressions read afresh), then delivers the
list (:meth:`models.targeting.TargetList.deliver`): the definition goes to the workspace's
saved lists (``rapport targets --list NAME`` makes the same list), the list to
``<home>/exports/<list_id>.csv|.parquet`` and the audit tables, like ``rapport targets``.

Queries run in this process, on a read-only warehouse connection per request, never in
the scoring service's workers. The static assets (htmx, the style sheet) are in the
package: the page needs no internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from features.control import ControlGroup
from features.spec import FeatureSpec, default_spec
from features.tables.control import ControlFileError, read_control
from features.tables.lists import (
    LIST_ID,
    AuditTables,
    TargetError,
    WarehouseUnavailableError,
    save_definition,
    write_members,
)
from features.tables.scores import NoScoresError
from features.warehouse import connect
from models.catalog import Catalog
from models.expressions import ExpressionError
from models.targeting import (
    TargetDefinition,
    TargetList,
    definition_from,
    field_types,
    make_list,
    select_targets,
)
from rapport.settings import Settings, get_settings
from ui import data
from ui.live import LiveScorer
from ui.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    Session,
    Sessions,
    SignInError,
    same_token,
)

HERE = Path(str(resources.files("ui")))
#: download formats and their media types
FORMATS = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
#: rows of a preview shown on the page
PREVIEW_ROWS = 20
#: how long a sign-in waits for the page's start-up read (:meth:`UiApp.prepare`) before
#: it asks the marketer to sign in again in a moment
READY_WAIT = 120.0


#: what the sign-in page says while the start-up read runs, and to a sign-in that waited
#: :data:`READY_WAIT` for it in vain
LOADING = "Reading the latest scores: signing in waits until they are read (up to a minute)."
NOT_READY = "The page is still reading the latest scores: sign in again in a moment."


# --------------------------------------------------------------------------- formatting
def fmt_num(value: Any, digits: int = 0) -> str:
    """``12,345`` / ``1,234.50``; a dash for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    try:
        return f"{float(value):,.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def fmt_money(value: Any) -> str:
    return fmt_num(value, 2)


def fmt_pct(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.{digits}f}%"


def fmt_when(value: Any) -> str:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def spark(values: list[float], width: int = 160, height: int = 36) -> str:
    """An SVG polyline of ``values`` (a trend next to a KPI); empty for < 2 points."""
    points = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if len(points) < 2:
        return ""
    low, high = min(points), max(points)
    span = (high - low) or 1.0
    step = width / (len(points) - 1)
    coords = " ".join(
        f"{i * step:.1f},{height - 2 - (v - low) / span * (height - 4):.1f}"
        for i, v in enumerate(points)
    )
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-hidden="true"><polyline fill="none" stroke="currentColor" stroke-width="2" '
        f'points="{coords}"/></svg>'
    )


def make_templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, money=fmt_money, pct=fmt_pct, when=fmt_when)
    env.globals["spark"] = spark
    return env


# --------------------------------------------------------------------------- the app
class UiApp:
    """State of one UI process: settings, sessions, templates, the preview cache."""

    def __init__(self, settings: Settings | None = None, spec: FeatureSpec | None = None) -> None:
        self.settings = settings or get_settings()
        self.spec = spec or default_spec()
        self.sessions = Sessions(self.settings.api_keys, self.settings.home)
        self.templates = make_templates()
        self.cache = data.PreviewCache()
        self.columns = data.FeatureColumns(
            self.spec,
            self.settings.warehouse_path,
            self.cache.ttl,
            self.cache.max_age,
            snapshots=self.settings.score_snapshots_dir,
        )
        self.control_memo = data.ControlMemo()
        self.live = LiveScorer(self.settings, self.spec)
        #: set when the start-up read (:meth:`prepare`) is done: sign-ins wait for it, so
        #: the first preview finds the run's scores and columns read
        self.ready = threading.Event()
        self._started = time.monotonic()
        #: seconds the start-up read took (None before it ends)
        self.ready_after: float | None = None

    def warm(self) -> None:
        """Read what the pages share when the page starts, before it accepts sign-ins
        (:attr:`ready`): what every list needs (:meth:`prepare`), the live scorer's models
        (loading beside the monthly revenue and every segment's profile). Nothing heavy
        is left to run beside a marketer's first requests; only stale columns are read
        again later, behind the previews (:class:`ui.data.FeatureColumns`)."""

        def run() -> None:
            try:
                with contextlib.suppress(Exception):  # the first preview shows the error
                    self.prepare()
                self.live.start()
                with contextlib.suppress(WarehouseUnavailableError):  # nothing to read yet
                    self.kept(("revenue",), data.monthly_revenue)
                    self.read(self.segment_profiles)
                self.live.wait(READY_WAIT)
            finally:
                self.ready_after = time.monotonic() - self._started
                self.ready.set()

        threading.Thread(target=run, name="ui-warm", daemon=True).start()

    def prepare(self) -> None:
        """What every list needs, read before the page accepts sign-ins: the run's
        scores, the catalog's columns (consent, contacts, cool-downs) computed fresh as a
        save needs them, who is in the control group, the suppressions -- through one
        list of every customer's best action (as a save makes it, nothing written), whose
        selection also warms what the first preview's would otherwise pay for (a first
        selection over a million rows takes about a second longer than the next)."""
        with self.columns.previewing():
            self.target_list(definition_from({}), fresh=True)
            with self.source() as source:  # the previews' (kept) suppressions
                source.suppressed()

    def source(self, fresh: bool = False) -> data.CachedLists:
        """The list builder's source: what the page keeps (scores, feature columns);
        ``fresh`` (a save): suppressions read now and fresh feature columns only (never
        the scoring run's snapshot), as ``rapport targets`` reads them."""
        return data.CachedLists(
            self.settings.warehouse_path,
            self.cache,
            self.columns,
            fresh,
            fresh,
            memo=self.control_memo,
        )

    # ----------------------------------------------------------------- rendering

    def control(self) -> ControlGroup:
        """The control group as the workspace holds it now (lists leave its members out)."""
        return read_control(self.settings.home).group

    def page(
        self,
        request: Request,
        template: str,
        session: Session | None,
        status: int = 200,
        **ctx: Any,
    ) -> HTMLResponse:
        html = self.templates.get_template(template).render(
            request=request,
            path=request.url.path,
            csrf=session.csrf if session else "",
            signed_in=session is not None,
            live_problem=self.live.problem,  # why live scores are missing, where a page shows them
            **ctx,
        )
        return HTMLResponse(html, status_code=status)

    def read(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(db)`` on a read-only warehouse connection."""
        with data.reading(self.settings.warehouse_path) as db:
            return fn(db)

    # ----------------------------------------------------------------- sign-in
    async def signin_form(self, request: Request) -> Response:
        if self.session(request) is not None:
            return RedirectResponse("/", status_code=303)
        return self.signin_page(request, "")

    def signin_page(self, request: Request, error: str, status: int = 200) -> Response:
        token = request.cookies.get(SIGNIN_COOKIE) or _token()
        response = self.page(
            request,
            "signin.html",
            None,
            status,
            error=error,
            signin_token=token,
            loading="" if self.ready.is_set() else LOADING,
        )
        response.set_cookie(
            SIGNIN_COOKIE, token, httponly=True, samesite="strict", max_age=3600, path="/signin"
        )
        return response

    async def _until_ready(self) -> bool:
        """Wait (up to :data:`READY_WAIT`) for the start-up read on the event loop: a
        thread per waiting sign-in would starve the page reads of the thread pool."""
        deadline = time.monotonic() + READY_WAIT
        while not self.ready.is_set():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def signin(self, request: Request) -> Response:
        form = await request.form()
        if not same_token(request.cookies.get(SIGNIN_COOKIE), str(form.get(CSRF_FIELD) or "")):
            return _forbidden("the form's token is missing or stale: reload the page")
        try:
            session = self.sessions.sign_in(str(form.get("key") or ""))
        except SignInError as exc:
            return self.signin_page(request, str(exc), status=401)
        if not await self._until_ready():
            self.sessions.sign_out(session.sid)
            return self.signin_page(request, NOT_READY, status=503)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session.sid,
            httponly=True,
            samesite="strict",
            max_age=self.sessions.seconds,
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(SIGNIN_COOKIE, path="/signin")
        return response

    async def signout(self, request: Request, session: Session) -> Response:
        self.sessions.sign_out(session.sid)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    async def readiness(self, request: Request) -> Response:
        """``/readyz``: 200 once the start-up read is done (sign-ins no longer wait),
        else 503; ``/healthz`` answers as soon as the process serves."""
        if self.ready.is_set():
            return Response(f"ready after {self.ready_after or 0.0:.1f} s", media_type="text/plain")
        return Response(LOADING, status_code=503, media_type="text/plain")

    # ----------------------------------------------------------------- pages
    async def overview(self, request: Request, session: Session) -> Response:
        view, problem = await self._read(data.overview)
        if view is not None:  # a scan of every order: kept like the previews' candidates
            view["revenue"] = await run_in_threadpool(self.kept, ("revenue",), data.monthly_revenue)
        return self.page(request, "overview.html", session, view=view, problem=problem)

    async def segments(self, request: Request, session: Session) -> Response:
        chosen = request.query_params.get("segment")

        def read(db: Any) -> dict[str, Any]:
            run, points, matrix = data.segment_map(db)
            profile = self.segment_profiles(db).get(chosen) if chosen else None
            return {"run": run, "points": points, "matrix": matrix, "profile": profile}

        view, problem = await self._read(read)
        chart = segment_chart(view["points"]) if view else ""
        profile = (view or {}).get("profile")
        reasons = None
        if profile and profile["sample"]:
            sample = tuple(profile["sample"])
            if self.live.ready:  # kept once the models have loaded (else None, said why)
                reasons = await run_in_threadpool(
                    self.cache.get, ("reasons", sample), lambda: self.live.common_reasons(sample)
                )
            else:
                reasons = await run_in_threadpool(self.live.common_reasons, sample)
        return self.page(
            request,
            "segments.html",
            session,
            view=view,
            problem=problem,
            chosen=chosen,
            chart=chart,
            reasons=reasons,
        )

    def segment_profiles(self, db: Any) -> dict[str, dict[str, Any]]:
        """Every segment's profile of the latest run, kept like the preview's candidates
        (:class:`ui.data.PreviewCache`: consent in them is up to its ``max_age`` old)."""
        run = data.score_run(db)
        if run is None:
            return {}
        return self.kept(("profiles", run.run_id), data.segment_profiles)  # type: ignore[no-any-return]

    def kept(self, key: tuple[Any, ...], fn: Callable[[Any], Any]) -> Any:
        """``fn(db)`` through the preview cache, on a connection of its own (a refresh
        runs after the request that found the value stale)."""
        return self.cache.get(key, lambda: self.read(fn))

    async def builder(self, request: Request, session: Session) -> Response:
        params = request.query_params
        form = {k: params.get(k, "") for k in ("filter", "action", "budget", "top", "name")}
        form["profitable_only"] = params.get("profitable_only", "")
        actions, problem = await self._read(_actions)
        fields = sorted(field_types(self.spec).items())
        preview = None
        if actions is not None and form["filter"]:
            preview = await run_in_threadpool(self.preview_context, form)
        return self.page(
            request,
            "builder.html",
            session,
            form=form,
            actions=actions or [],
            fields=fields,
            problem=problem,
            preview=preview,
        )

    async def preview(self, request: Request, session: Session) -> Response:
        form = _form_dict(await request.form())
        context = await run_in_threadpool(self.preview_context, form)
        return self.page(request, "_preview.html", session, preview=context)

    def preview_context(self, form: Mapping[str, str]) -> dict[str, Any]:
        """The preview's figures, or the error to show beside the form."""
        start = time.perf_counter()
        try:
            with self.columns.previewing():
                target, source = self.target_list(definition_of(form))
        except ExpressionError as exc:
            return {"error": str(exc), "field": "filter"}
        except (TargetError, NoScoresError, WarehouseUnavailableError, ControlFileError) as exc:
            return {"error": str(exc)}
        return {
            **selection_view(target),
            "from_snapshot": source.from_snapshot,
            "seconds": time.perf_counter() - start,
        }

    def target_list(
        self, definition: TargetDefinition, fresh: bool = False
    ) -> tuple[TargetList, data.CachedLists]:
        """The list for ``definition`` through :func:`models.targeting.make_list` from
        what the page keeps (nothing written), and the source it came from; its
        ``as_of`` is when the oldest feature column it read was computed (the scoring
        run's ``as_of`` for a column from its snapshot: ``source.from_snapshot``).
        ``fresh`` (a save): fresh columns only, see :meth:`source`."""
        source = self.source(fresh)
        control = data.MemoControl.of(self.control(), self.control_memo)
        target = make_list(
            source,
            definition,
            self.spec,
            datetime.now(UTC),
            control=control,
            select=partial(select_targets, unique=True),  # the kept scores: one row each
        )
        target.as_of = source.features_as_of or target.as_of
        return target, source

    async def save(self, request: Request, session: Session) -> Response:
        form = _form_dict(await request.form())
        result = await run_in_threadpool(self.save_list, form)
        if "error" in result:  # shown in place of the preview (htmx swaps 2xx only)
            return self.page(request, "_preview.html", session, preview=result)
        return self.page(request, "_saved.html", session, saved=result)

    def save_list(self, form: Mapping[str, str]) -> dict[str, Any]:
        """Save the definition under its name and make the list from the preview's
        candidates (the scores and the fresh feature columns the page keeps; the
        suppressions read afresh), then export it and record it for audit. A column the
        preview took from the scoring run's snapshot is not used: the save waits for its
        fresh read (under way since the preview) so that the list is the one ``rapport
        targets --list NAME`` makes, with consent and contacts as of now."""
        name = form.get("name", "").strip()
        if not name:
            return {"error": "Give the list a name to save it."}
        try:
            definition = definition_of(form, name)
            path = save_definition(
                self.settings.target_lists_path,
                name,
                definition.model_dump(exclude_none=True, exclude={"name"}),
            )
            # fresh columns (waits for the background read of those the preview took
            # from the scoring run's snapshot): the list `rapport targets --list` makes
            target, _ = self.target_list(definition, fresh=True)
            with data.WAREHOUSE.write():  # no read-only connection of this process open
                try:
                    con = connect(self.settings.warehouse_path)
                except Exception as exc:
                    raise WarehouseUnavailableError(
                        f"the warehouse is busy (another job writes it): try again ({exc})"
                    ) from None
                try:
                    target.deliver(Exports(con, Path(self.settings.exports_dir)))
                finally:
                    con.disconnect()
        except ExpressionError as exc:
            return {"error": str(exc), "field": "filter"}
        except (TargetError, NoScoresError, WarehouseUnavailableError, ControlFileError) as exc:
            return {"error": str(exc)}
        return {**selection_view(target), "name": name, "saved_to": str(path)}

    async def lists(self, request: Request, session: Session) -> Response:
        history, problem = await self._read(data.list_history)
        return self.page(request, "lists.html", session, history=history, problem=problem)

    async def download(self, request: Request, session: Session) -> Response:
        list_id = request.path_params["list_id"]
        fmt = request.query_params.get("format", "csv")
        if not LIST_ID.fullmatch(list_id) or fmt not in FORMATS:
            return Response("unknown list or format", status_code=404)
        exported = Path(self.settings.exports_dir) / f"{list_id}.{fmt}"
        if exported.is_file():
            return FileResponse(exported, media_type=FORMATS[fmt], filename=exported.name)
        # lists made elsewhere: their members as recorded for audit
        members, _ = await self._read(lambda db: data.list_members(db, list_id))
        if members is None or not len(members):
            return Response("no such list", status_code=404)
        buffer = io.BytesIO()
        if fmt == "csv":
            members.to_csv(buffer, index=False)
        else:
            members.to_parquet(buffer, index=False)
        headers = {"Content-Disposition": f'attachment; filename="{list_id}.{fmt}"'}
        return Response(buffer.getvalue(), media_type=FORMATS[fmt], headers=headers)

    async def customer(self, request: Request, session: Session) -> Response:
        customer_id = request.query_params.get("id", "").strip()

        def read(db: Any) -> dict[str, Any]:
            found = data.customer(db, customer_id) if customer_id else None
            return {"found": found, "examples": data.some_customers(db)}

        view, problem = await self._read(read)
        actions: list[dict[str, Any]] = []
        found = (view or {}).get("found") or {}
        if found.get("scores"):
            actions = action_rows(found["scores"], found["run"].catalog)
        live = await run_in_threadpool(self.live.score, customer_id) if found else None
        return self.page(
            request,
            "customer.html",
            session,
            customer_id=customer_id,
            view=view,
            problem=problem,
            actions=actions,
            live=live,
        )

    async def results(self, request: Request, session: Session) -> Response:
        def read(db: Any) -> dict[str, Any]:
            status, checks = data.model_health(db)
            return {"impact": data.impact(db), "monitor": status, "checks": checks}

        view, problem = await self._read(read)
        return self.page(request, "results.html", session, view=view, problem=problem)

    async def _read(self, fn: Callable[[Any], Any]) -> tuple[Any, str]:
        try:
            return await run_in_threadpool(self.read, fn), ""
        except WarehouseUnavailableError as exc:
            return None, str(exc)


def _token() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def _forbidden(message: str) -> Response:
    return Response(f"403 Forbidden: {message}", status_code=403, media_type="text/plain")


def _form_dict(form: Any) -> dict[str, str]:
    return {k: str(v) for k, v in form.items() if isinstance(v, str)}


def _actions(db: Any) -> list[str]:
    run = data.score_run(db)
    if run is None:
        return []
    return Catalog.model_validate(run.catalog).ids[1:]


def definition_of(form: Mapping[str, str], name: str | None = None) -> TargetDefinition:
    """The builder form as a list definition (TargetError naming a bad field)."""

    def number(field: str, kind: type) -> Any:
        text = form.get(field, "").strip().replace(",", "")
        if not text:
            return None
        try:
            return kind(text)
        except ValueError:
            label = {"budget": "Budget", "top": "Top N"}[field]
            raise TargetError(
                f"{label} must be a {'whole ' if kind is int else ''}number, not {text!r}"
            ) from None

    options = {
        "name": name,
        "filter": form.get("filter", "").strip() or None,
        "action": form.get("action", "").strip() or None,
        "budget": number("budget", float),
        "top": number("top", int),
        "profitable_only": form.get("profitable_only") in ("on", "true", "1") or None,
    }
    return definition_from(options)


def selection_view(target: Any) -> dict[str, Any]:
    """What the preview and the saved list show of a :class:`models.targeting.TargetList`."""
    selection = target.selection
    members = selection.members
    removed = {k: v for k, v in selection.removed.items() if v}
    before = ("duplicates", "suppressed", "control group", "filter")  # arbitration's input
    arbitrated = selection.considered - sum(selection.removed.get(k, 0) for k in before)
    return {
        "list_id": target.list_id,
        "count": selection.count,
        "considered": selection.considered,
        "value": selection.total_expected_value,
        "cost": selection.total_cost,
        "net": selection.total_expected_value - selection.total_cost,
        "basis": selection.basis,
        "budget_method": selection.budget_method,
        "removed": removed,
        "consent": selection.consent,
        "arbitrated": arbitrated,
        "reach": selection.reach,
        "action": selection.definition.action,
        "mixes": {
            "Action": selection.segment_mix("action"),
            "ABC tier": selection.segment_mix("abc_tier"),
            "RFM segment": selection.segment_mix("rfm_segment"),
        },
        "rows": members.head(PREVIEW_ROWS).to_dict(orient="records"),
        "run": target.run,
        "features_as_of": target.as_of,
    }


def action_rows(scores: Mapping[str, Any], catalog_json: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per catalog action, the stored uplift behind the customer's scores."""
    catalog = Catalog.model_validate(catalog_json)
    rows = []
    for action in catalog.actions[1:]:
        conversion = scores.get(f"uplift_conversion_{action.id}")
        revenue = scores.get(f"uplift_revenue_{action.id}")
        rows.append(
            {
                "id": action.id,
                "channel": action.channel,
                "cost": action.cost,
                "uplift_conversion": conversion,
                "uplift_revenue": revenue,
                "best": action.id == scores.get("best_action"),
            }
        )
    return rows


def segment_chart(points: pd.DataFrame, width: int = 640, height: int = 360) -> str:
    """The segment map as SVG: loyalty (x) against value per customer (y), the point's
    area the segment's size, its colour the churn risk; each point links to its profile."""
    if points is None or not len(points):
        return ""
    pad = 48
    y = points["value"].astype(float)
    x_low, x_high = 0.0, 100.0  # the loyalty index's range
    y_low, y_high = 0.0, float(y.max()) * 1.1 or 1.0
    biggest = float(points["customers"].max()) or 1.0
    parts = [
        f'<svg class="map" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Segment map: loyalty against value per customer">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - 10}" y2="{height - pad}" '
        'class="axis"/>',
        f'<line x1="{pad}" y1="10" x2="{pad}" y2="{height - pad}" class="axis"/>',
        f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">'
        "loyalty index (0–100)</text>",
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" '
        f'text-anchor="middle">value per customer</text>',
    ]
    from html import escape

    for _, p in points.iterrows():
        cx = pad + (float(p["loyalty"]) - x_low) / (x_high - x_low) * (width - pad - 20)
        # the biggest point's radius above the axis: a segment worth nothing stays visible
        share = (float(p["value"]) - y_low) / (y_high - y_low)
        cy = height - pad - 32 - share * (height - pad - 60)
        r = 6 + 26 * math.sqrt(float(p["customers"]) / biggest)
        risk = min(max(float(p["churn_risk"] or 0.0), 0.0), 1.0)
        hue = int(120 * (1 - risk))  # green (safe) to red (at risk)
        name = escape(str(p["segment"]))
        parts.append(
            f'<a href="/segments?segment={name}"><circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" '
            f'fill="hsl({hue} 65% 45% / 0.75)" stroke="#222"><title>{name}: '
            f"{int(p['customers']):,} customers, churn risk {risk:.0%}</title></circle>"
            f'<text x="{cx:.1f}" y="{cy - r - 4:.1f}" text-anchor="middle">{name}</text></a>'
        )
    parts.append("</svg>")
    return "".join(parts)


class Exports:
    """Where a saved list goes (:class:`models.targeting.ListSink`): CSV and Parquet files
    in ``folder`` named after the list id (for download), and the audit tables."""

    def __init__(self, con: Any, folder: Path) -> None:
        self.audit = AuditTables(con)
        self.folder = folder

    def export(self, members: pd.DataFrame, list_id: str) -> Path:
        write_members(members, self.folder / f"{list_id}.parquet")
        return write_members(members, self.folder / f"{list_id}.csv")

    def record(self, row: Mapping[str, Any], members: pd.DataFrame) -> None:
        self.audit.record(row, members)


# --------------------------------------------------------------------------- routing
Handler = Callable[[Request, Session], Awaitable[Response]]


def guarded(ui: UiApp, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page for signed-in users only (else to the sign-in form); POSTs need the CSRF
    token of the session (form field or ``X-CSRF-Token`` header), else 403."""

    async def endpoint(request: Request) -> Response:
        session = ui.session(request)
        if session is None:
            if request.headers.get("hx-request"):
                return Response(status_code=401, headers={"HX-Redirect": "/signin"})
            return RedirectResponse("/signin", status_code=303)
        if request.method == "POST":
            given = request.headers.get(CSRF_HEADER)
            if not given:
                given = str((await request.form()).get(CSRF_FIELD) or "")
            if not same_token(session.csrf, given):
                return _forbidden("the form's CSRF token is missing or wrong: reload the page")
        return await handler(request, session)

    return endpoint


#: on every answer: no framing by other sites (clickjacking), no type sniffing, no
#: referrer beyond this site, and pages (which show customers) kept out of caches
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response


def create_app(settings: Settings | None = None) -> Starlette:
    """The page as an ASGI app (``rapport ui`` serves it with uvicorn)."""
    ui = UiApp(settings)
    pages: list[tuple[str, Handler, list[str]]] = [
        ("/", ui.overview, ["GET"]),
        ("/segments", ui.segments, ["GET"]),
        ("/builder", ui.builder, ["GET"]),
        ("/builder/preview", ui.preview, ["POST"]),
        ("/builder/save", ui.save, ["POST"]),
        ("/lists", ui.lists, ["GET"]),
        ("/lists/{list_id}/download", ui.download, ["GET"]),
        ("/customer", ui.customer, ["GET"]),
        ("/results", ui.results, ["GET"]),
        ("/signout", ui.signout, ["POST"]),
    ]
    routes: list[BaseRoute] = [
        Route(path, guarded(ui, fn), methods=methods) for path, fn, methods in pages
    ]
    routes += [
        Route("/signin", ui.signin_form, methods=["GET"]),
        Route("/signin", ui.signin, methods=["POST"]),
        Route("/healthz", lambda request: Response("ok"), methods=["GET"]),
        Route("/readyz", ui.readiness, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SecurityHeaders)
    app.state.ui = ui
    ui.warm()  # then the live scorer's models (ui.live.start)
    return app
