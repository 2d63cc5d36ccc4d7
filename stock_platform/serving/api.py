"""The prediction API (`stock-platform serve`): prices, forecasts beside the naive forecast, evaluation
metrics, a WebSocket feed of new snapshot rows and forecasts from the lake's change data feed, and the dashboard
(`/dashboard`, an HTML page: `dashboard.py`).

Read-only, over the lake (`stock_platform.lake.Lake`); nothing is recomputed here but the evaluation's aggregates. Requests are
answered from the read model (`read_model.py`: the served tables in memory at pinned versions, followed in the
background): every answer carries the versions it shows (`X-Table-Version`, and an `ETag` that `If-None-Match`
turns into a 304 while no served table has a new version).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel

from stock_platform.lake import Lake, LakeError
from stock_platform.serving import dashboard
from stock_platform.serving import queries as q
from stock_platform.serving.auth import BearerAuth
from stock_platform.serving.read_model import DEFAULT_MAX_ROWS, ReadModel, View, json_rows
from stock_platform.settings import TICKER_PATTERN, Settings

MAX_LIMIT = 5000
MAX_FEED_ROWS = 1000  # rows per WebSocket message; a bigger change arrives in several
Ticker = Annotated[str, Path(pattern=TICKER_PATTERN, max_length=15, description="e.g. AAPL",
                             examples=["AAPL"])]
Start = Annotated[dt.date | None, Query(description="first date, YYYY-MM-DD (inclusive)")]
End = Annotated[dt.date | None, Query(description="last date, YYYY-MM-DD (inclusive)")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"rows per page (at most {MAX_LIMIT})")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="rows to skip")]


class TickerInfo(BaseModel):
    ticker: str
    first_date: dt.date
    last_date: dt.date
    sessions: int


class Bar(BaseModel):
    date: dt.date
    open: float
    high: float
    low: float
    close: float
    adj_close: float
    volume: int
    source: str
    ingested_at: dt.datetime


class Prediction(BaseModel):
    date: dt.date
    target_date: dt.date
    pred_return: float
    pred_close: float
    naive_close: float | None  # the naive random walk's forecast: the close of `date`
    actual_close: float | None  # the target day's close, once known
    model_name: str
    model_version: int
    created_at: dt.datetime


class Page(BaseModel):
    ticker: str
    start: dt.date | None
    end: dt.date | None
    total: int
    offset: int
    limit: int
    next_offset: int | None


class BarPage(Page):
    items: list[Bar]


class PredictionPage(Page):
    items: list[Prediction]


class Evaluation(BaseModel):
    window_days: int
    first_target_date: dt.date | None
    last_target_date: dt.date | None
    metrics: dict[str, float | None]


class Health(BaseModel):
    status: str
    lake: str
    versions: dict[str, int]


CURSOR_GONE = 4410  # an application close code (4000-4999): the cursor's history is no longer kept


def close_reason(text: str) -> str:
    """A WebSocket close reason: at most 123 bytes of UTF-8."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


def cursor_problem(table: str, value: str, latest: int) -> str | None:
    """Why a resume cursor cannot be used (None when it can): an integer from -1 (the table's first commit on)
    up to the table's latest version."""
    if not value.strip().lstrip("-").isdigit():
        return close_reason(f"{table}: version cursor {value!r} is not an integer")
    version = int(value)
    if version < -1:
        return close_reason(f"{table}: version cursor {version} is below -1 (-1 resumes from the first commit)")
    if version > latest:
        return close_reason(f"{table}: version cursor {version} is ahead of the table (latest version {latest})")
    return None


def unavailable(lake: Lake, exc: Exception) -> str:
    """Why the lake cannot be read, on one line (delta-rs and object_store errors span many, with colours)."""
    import re

    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    first = re.sub(r"\x1b\[[0-9;]*m", "", first).strip()
    return f"the lake at {lake.uri} cannot be read: {first}"


NOT_MODIFIED = {304: {"description": "not modified: no served table has a new version since the ETag"}}


def not_modified(request: Request, etag: str) -> bool:
    """Whether the request's If-None-Match names `etag` (or `*`)."""
    tags = {t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")}
    return etag in tags or "*" in tags


def create_app(lake: Lake, *, poll_seconds: float = 1.0, refresh_seconds: float = 0.25,
               max_rows: int = DEFAULT_MAX_ROWS, token_hashes: tuple[str, ...] = ()) -> FastAPI:
    """The API over `lake`: requests read the read model (refreshed every `refresh_seconds`, in memory up to
    `max_rows` served rows); the WebSocket feed polls the change data feed every `poll_seconds`. With
    `token_hashes`, every request but /health needs one of those bearer tokens (`auth.py`)."""
    from deltalake.exceptions import DeltaError

    model = ReadModel(lake, poll_seconds=refresh_seconds, max_rows=max_rows)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        model.close()

    app = FastAPI(title="stock_platform API", version="1.0", lifespan=lifespan,
                  description="Daily prices, next-day forecasts beside the naive random walk, and their evaluation.")
    app.state.read_model = model
    if token_hashes:
        app.add_middleware(BearerAuth, hashes=token_hashes)

    @app.exception_handler(OSError)  # storage unreachable (S3 down, a dropped mount): the service, not the request
    @app.exception_handler(DeltaError)
    async def lake_unavailable(_request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": unavailable(lake, exc)}, status_code=503, headers={"Retry-After": "5"})

    def dates(start: dt.date | None, end: dt.date | None) -> None:
        if start and end and start > end:  # reported in FastAPI's validation-error shape, as the schema says
            raise RequestValidationError([{"type": "value_error", "loc": ["query", "end"], "input": str(end),
                                           "msg": f"end {end} is before start {start}"}])

    def known(view: View, ticker: str) -> None:
        if not view.knows(ticker):
            raise HTTPException(404, f"ticker {ticker!r} is not in the lake (GET /tickers lists them)")

    def answer(request: Request, view: View, body) -> Response:
        """`body()` (JSON bytes, or a dict) with the view's version headers, or 304 if the client has it."""
        headers = {"ETag": view.etag, "X-Table-Version": view.header, "Cache-Control": "no-cache"}
        if not_modified(request, view.etag):
            return Response(status_code=304, headers=headers)
        content = body()
        if isinstance(content, bytes):
            return Response(content, media_type="application/json", headers=headers)
        return JSONResponse(content, headers=headers)

    def page(df, ticker, start, end, offset, limit) -> bytes:
        nxt = offset + limit
        meta = {"ticker": ticker, "start": q.clean(start), "end": q.clean(end), "total": df.height, "offset": offset,
                "limit": limit, "next_offset": nxt if nxt < df.height else None}
        return json.dumps(meta)[:-1].encode() + b', "items": ' + json_rows(df.slice(offset, limit)) + b"}"

    @app.get("/health", response_model=Health, responses={503: {"description": "the lake is unreachable or empty"}})
    def health() -> dict:
        versions = q.versions(lake)
        if versions[q.SNAPSHOTS] < 0:
            raise HTTPException(503, f"the lake at {lake.uri} has no {q.SNAPSHOTS} table yet: materialize the "
                                "daily assets (stock-platform demo, or the daily_close schedule)")
        return {"status": "ok", "lake": lake.uri, "versions": versions}

    @app.get("/tickers", response_model=list[TickerInfo], responses=NOT_MODIFIED)
    def tickers(request: Request) -> Response:
        view = model.view()
        return answer(request, view, lambda: view.tickers_json)

    @app.get("/prices/{ticker}", response_model=BarPage,
             responses={404: {"description": "unknown ticker"}, **NOT_MODIFIED})
    def prices(request: Request, ticker: Ticker, start: Start = None, end: End = None, limit: Limit = 500,
               offset: Offset = 0) -> Response:
        dates(start, end)
        view = model.view()
        known(view, ticker)
        return answer(request, view, lambda: page(view.prices_of(ticker, start, end), ticker, start, end, offset,
                                                  limit))

    @app.get("/predictions/{ticker}", response_model=PredictionPage,
             responses={404: {"description": "unknown ticker"}, **NOT_MODIFIED})
    def predictions(request: Request, ticker: Ticker, start: Start = None, end: End = None, limit: Limit = 500,
                    offset: Offset = 0) -> Response:
        dates(start, end)
        view = model.view()
        known(view, ticker)
        return answer(request, view, lambda: page(view.predictions_of(ticker, start, end), ticker, start, end,
                                                  offset, limit))

    @app.get("/evaluation", response_model=Evaluation, responses=NOT_MODIFIED)
    def evaluation(request: Request, window: Annotated[int, Query(ge=1, le=2520,
                                                                  description="the last N target days")] = 20):
        view = model.view()
        return answer(request, view, lambda: view.evaluation(window))

    @app.get("/dashboard", response_class=HTMLResponse, responses={404: {"description": "unknown ticker"}})
    def dashboard_page(ticker: Annotated[str | None, Query(pattern=TICKER_PATTERN, max_length=15,
                                                           description="default: the first ticker")] = None,
                       sessions: Annotated[int, Query(ge=20, le=2520, description="sessions charted")] = 250,
                       window: Annotated[int, Query(ge=1, le=2520, description="evaluation window, target days")]
                       = 20) -> HTMLResponse:
        """The dashboard (an HTML page, complete as it arrives: SVG charts, no script needed)."""
        view = model.view()
        if ticker is not None:
            known(view, ticker)
        return HTMLResponse(dashboard.render(view, ticker, sessions, window),
                            headers={"X-Table-Version": view.header, "Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("dashboard")

    @app.websocket("/ws/updates")
    async def updates(websocket: WebSocket) -> None:
        """Sends `{"type": "cursor", "versions": {...}}` first, then one `{"type": "changes", "table", "from_version",
        "to_version", "rows"}` message per table and batch as new versions land. Pass `price_snapshots=V` and/or
        `predictions=V` (query parameters) to resume after version V; by default only what lands after connecting."""
        await websocket.accept()
        try:
            await feed(websocket)
        except WebSocketDisconnect:
            return
        except (OSError, DeltaError) as exc:  # 1013: try again later
            await websocket.close(code=1013, reason=close_reason(unavailable(lake, exc)))

    async def feed(websocket: WebSocket) -> None:
        latest = await asyncio.to_thread(q.versions, lake)
        cursor = dict(latest)
        for table in q.FEED_TABLES:
            value = websocket.query_params.get(table)
            if value is None:
                continue
            problem = cursor_problem(table, value, latest[table])
            if problem:
                await websocket.close(code=1008, reason=problem)
                return
            cursor[table] = int(value)
        await websocket.send_json({"type": "cursor", "versions": cursor})
        while True:
            latest = await asyncio.to_thread(q.versions, lake)
            for table in q.FEED_TABLES:
                if latest[table] > cursor[table]:
                    try:
                        rows = await asyncio.to_thread(q.changes, lake, table, cursor[table], latest[table])
                    except LakeError:  # the history after the cursor was vacuumed
                        await websocket.close(code=CURSOR_GONE, reason=close_reason(
                            f"{table}: changes after version {cursor[table]} are gone (retention); re-read "
                            f"the table and resume from version {latest[table]}"))
                        return
                    for first in range(0, max(rows.height, 1), MAX_FEED_ROWS):
                        await websocket.send_json({
                            "type": "changes", "table": table, "from_version": cursor[table],
                            "to_version": latest[table], "rows": q.records(rows.slice(first, MAX_FEED_ROWS))})
                    cursor[table] = latest[table]
            await asyncio.sleep(poll_seconds)

    return app


def app_from_settings(settings: Settings | None = None, poll_seconds: float = 1.0) -> FastAPI:
    """The app on the lake of `settings` (default: the process's, from the environment)."""
    from stock_platform.settings import get_settings

    settings = settings or get_settings()
    return create_app(Lake.of(settings), poll_seconds=poll_seconds, max_rows=settings.api_max_rows,
                      token_hashes=settings.api_token_hashes)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(host: str, port: int, settings: Settings | None = None) -> None:
    import uvicorn

    from stock_platform.settings import get_settings

    settings = settings or get_settings()
    app = app_from_settings(settings)
    if settings.api_token_hashes:
        access = f"bearer tokens required ({len(settings.api_token_hashes)} accepted; /health is open)"
    else:
        access = "no STOCK_PLATFORM_API_TOKENS: open to anyone who reaches it"
        if host not in LOOPBACK:
            access += f", so on loopback only (not {host})"
            host = "127.0.0.1"
    print(f"stock_platform API on http://{host}:{port} (the dashboard at /dashboard, OpenAPI docs at /docs); "
          f"{access}", flush=True)
    # WebSocket clients hold their connections open: without a bound, SIGTERM waits for them forever
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
