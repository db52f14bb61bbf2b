"""The reward server's FastAPI application.

    POST /reward       items of prompt + media (+ response) -> rewards per dimension (schema: `mmreward.serve.schema`)
    POST /get_reward   OpenRLHF's remote reward model request and response shapes
    GET  /health       200 once the model is loaded (503 while loading or after a failed load); no token needed
    GET  /metrics      queue depth, batch sizes, latency percentiles, response counts

Responses are JSON. A request with bad items answers 400 with every good item's rewards and one
`{"index", "field", "message"}` per bad item; a full queue or a model still loading answers 503 with
Retry-After; a missing or wrong bearer token 401. The model loads in the background after the server
starts listening, so /health can say when it is ready.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mmreward.collate import processor_image_size
from mmreward.model import RewardModel
from mmreward.serve.answers import Answer, AnswerBook, KeyConflict, check_key, request_digest
from mmreward.serve.batcher import DynamicBatcher, Job, ModelScorer, QueueFull
from mmreward.serve.config import ServerConfig
from mmreward.serve.media import ItemFailure, MediaReader
from mmreward.serve.metrics import ServerMetrics
from mmreward.serve.schema import (
    ItemError, RequestError, RewardItem, openrlhf_items, parse_json_object, parse_reward_request,
)

log = logging.getLogger("mmreward.serve")
SHOWN_ERRORS = 5  # item errors spelled out in a 400's one-line "error" (all are in "errors")


def load_reward_model(config: ServerConfig) -> RewardModel:
    """The checkpoint `config.model` on `config.device` (default: cuda if available, else cpu)."""
    import torch

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return RewardModel.from_pretrained(config.model, backbone_path=config.backbone, dtype=config.dtype).to(device)


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused beyond `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def error_answer(status: int, errors: Sequence[ItemError], total: int | None = None,
                 headers: dict[str, str] | None = None, **body: Any) -> Answer:
    """A non-200 answer: a one-line "error" naming the first few bad fields, and every error in "errors"."""
    shown = "; ".join((f"item {e.index} ({e.field})" if e.index is not None else e.field) + f": {e.message}"
                      for e in errors[:SHOWN_ERRORS])
    more = f"; and {len(errors) - SHOWN_ERRORS} more" if len(errors) > SHOWN_ERRORS else ""
    lead = f"{len(errors)} of {total} items could not be scored: " if total is not None else ""
    return Answer(status, {"error": lead + shown + more, "errors": [e.as_json() for e in errors], **body},
                  headers or {})


class ServerState:
    """Everything the endpoints share: the model once loaded, the batcher, the answer book, metrics."""

    def __init__(self, config: ServerConfig, load_model: Callable[[], RewardModel]):
        self.config = config
        self.load_model = load_model
        self.status, self.error = "loading", ""
        self.metrics = ServerMetrics()
        self.book = AnswerBook(config.remembered_answers, config.journal)
        self.in_flight = 0
        self.on_load_failure: Callable[[], None] | None = None
        self.model: RewardModel | None = None
        self.reader: MediaReader | None = None
        self.batcher: DynamicBatcher | None = None
        self.dimension = ""
        self.normalize = False
        self.special_tokens: list[str] = []

    # --------------------------------------------------------------------------------- lifecycle

    async def load(self) -> None:
        try:
            model = await asyncio.to_thread(self.load_model)
            self._serve(model)
        except Exception as err:  # noqa: BLE001 - reported by /health and the exit code
            self.status, self.error = "failed", f"{type(err).__name__}: {err}"
            log.error("mmreward.serve: the model could not be loaded: %s", self.error)
            if self.on_load_failure is not None:
                self.on_load_failure()

    def _serve(self, model: RewardModel) -> None:
        config = self.config
        names = model.output_dimensions
        self.dimension = config.dimension or ("overall" if "overall" in names else names[0])
        if self.dimension not in names:
            raise ValueError(f"dimension {self.dimension!r} is not among the model's {names}")
        self.normalize = model.settings.normalize if config.normalize is None else config.normalize
        if self.normalize and model.reward_stats is None:
            raise ValueError("normalize: the model has no reward statistics (serve it with --raw)")
        self.reader = MediaReader(config.media_root, model.settings.media, processor_image_size(model.processor))
        self.batcher = DynamicBatcher(ModelScorer(model), config.max_batch, config.max_wait_ms / 1000.0,
                                      config.max_queue, self.metrics)
        self.batcher.start()
        self.special_tokens = list(model.processor.tokenizer.all_special_tokens)
        self.model = model
        self.status = "ready"
        log.info("mmreward.serve: %s ready (dimensions %s)", config.model, names)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.book.close()

    # --------------------------------------------------------------------------------- requests

    def denied(self, request: Request) -> JSONResponse | None:
        """401 unless the request carries the bearer token (when one is set)."""
        if self.config.token is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.config.token.encode()):
            return None
        return JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer <token>)"}, 401,
                            headers={"WWW-Authenticate": "Bearer"})

    def unavailable(self) -> Answer:
        message = ("the model is still loading" if self.status == "loading"
                   else f"the model failed to load: {self.error}")
        return Answer(503, {"error": message}, {"Retry-After": str(self.config.retry_after_s)})

    async def respond(self, request: Request, route: str,
                      compute: Callable[[bytes], Awaitable[Answer]]) -> JSONResponse:
        """Authenticate, read the body, answer once per Idempotency-Key, count and time it."""
        started = time.perf_counter()
        denied = self.denied(request)
        if denied is not None:
            return denied
        self.in_flight += 1
        try:
            answer = await self._answer(request, route, compute)
        finally:
            self.in_flight -= 1
        self.metrics.request_done(route, answer.status, time.perf_counter() - started)
        return JSONResponse(answer.body, answer.status, headers=answer.headers)

    async def _answer(self, request: Request, route: str, compute: Callable[[bytes], Awaitable[Answer]]) -> Answer:
        if self.status != "ready":
            return self.unavailable()
        try:
            body = await read_body(request, self.config.max_body_bytes)
        except BodyTooLarge:
            return Answer(413, {"error": f"request body larger than {self.config.max_body_mb} MB (--max_body_mb)"})
        key = request.headers.get("idempotency-key")
        if key is None:
            return await compute(body)
        try:
            check_key(key)
            digest = request_digest(route, body)
            found = self.book.lookup(key, digest)
        except ValueError as err:
            return Answer(409 if isinstance(err, KeyConflict) else 400, {"error": str(err)})
        if found is not None:
            answer = found if isinstance(found, Answer) else await asyncio.shield(found)
            self.metrics.replayed += 1
            return Answer(answer.status, answer.body, {**answer.headers, "Idempotency-Replayed": "true"})
        self.book.begin(key, digest)
        try:
            answer = await compute(body)
        except BaseException as err:
            self.book.abandon(key, err)
            raise
        self.book.finish(key, answer)
        return answer

    async def score(self, items: Sequence[RewardItem | ItemError], normalize: bool
                    ) -> tuple[list[dict[str, float] | None], list[ItemError]]:
        """Rewards of the parsed items (None where an item failed) and every item's error."""
        assert self.batcher is not None and self.reader is not None
        errors = [item for item in items if isinstance(item, ItemError)]
        good = [(i, item) for i, item in enumerate(items) if isinstance(item, RewardItem)]
        self.batcher.reserve(len(good))  # QueueFull before any decoding
        submitted = 0
        try:
            sides = await asyncio.gather(*(asyncio.to_thread(self.reader.side, item) for _, item in good),
                                         return_exceptions=True)
            jobs: list[tuple[int, Job]] = []
            for (i, item), side in zip(good, sides):
                if isinstance(side, ItemFailure):
                    errors.append(ItemError(i, side.field, side.message))
                elif isinstance(side, BaseException):
                    errors.append(ItemError(i, "item", f"{type(side).__name__}: {side}", server_fault=True))
                else:
                    jobs.append((i, Job(item.prompt, side, normalize)))
            submitted = len(jobs)
            outcomes = await self.batcher.submit([job for _, job in jobs])
        finally:
            self.batcher.release(len(good) - submitted)
        results: list[dict[str, float] | None] = [None] * len(items)
        for (i, _), outcome in zip(jobs, outcomes):
            if isinstance(outcome, Exception):
                input_fault = isinstance(outcome, (ValueError, TypeError))
                errors.append(ItemError(i, "item", f"{type(outcome).__name__}: {outcome}",
                                        server_fault=not input_fault))
            else:
                results[i] = outcome
        self.metrics.items_done(sum(r is not None for r in results), len(errors))
        return results, sorted(errors, key=lambda e: e.index if e.index is not None else -1)

    async def scored_answer(self, items: Sequence[RewardItem | ItemError], normalize: bool,
                            shape: Callable[[list[dict[str, float] | None]], dict[str, Any]]) -> Answer:
        """Score the items and answer 200, or 400 / 500 naming the failed items (the others' rewards kept);
        503 with Retry-After when the queue is full."""
        try:
            results, errors = await self.score(items, normalize)
        except QueueFull as err:
            self.metrics.rejected_queue_full += 1
            return Answer(503, {"error": f"queue full: {err}"}, {"Retry-After": str(self.config.retry_after_s)})
        body = shape(results)
        if not errors:
            return Answer(200, body)
        status = 500 if any(e.server_fault for e in errors) else 400
        return error_answer(status, errors, len(items), **body)

    # --------------------------------------------------------------------------------- endpoints

    async def reward(self, body: bytes) -> Answer:
        assert self.model is not None
        try:
            items, normalize = parse_reward_request(parse_json_object(body))
            normalize = self.normalize if normalize is None else normalize
            if normalize and self.model.reward_stats is None:
                raise RequestError("normalize", "this model has no reward statistics to normalise with")
            if len(items) > self.config.max_queue:
                raise RequestError("items", f"{len(items)} items; this server takes at most {self.config.max_queue}")
        except RequestError as err:
            return error_answer(400, [err.error])
        names = self.model.output_dimensions
        return await self.scored_answer(items, normalize, lambda results: {
            "dimensions": names, "normalized": normalize, "rewards": results})

    async def get_reward(self, body: bytes) -> Answer:
        assert self.model is not None
        try:
            items = openrlhf_items(parse_json_object(body), self.special_tokens)
            if len(items) > self.config.max_queue:
                raise RequestError("query", f"{len(items)} queries; this server takes at most {self.config.max_queue}")
        except RequestError as err:
            return error_answer(400, [err.error])
        names = self.model.output_dimensions

        def shape(results: list[dict[str, float] | None]) -> dict[str, Any]:
            rewards = [r[self.dimension] if r is not None else None for r in results]
            logs = {name: [r[name] if r is not None else None for r in results] for name in names}
            return {"rewards": rewards, "scores": rewards, "extra_logs": logs}

        return await self.scored_answer(items, self.normalize, shape)

    def health(self) -> JSONResponse:
        if self.status != "ready":
            answer = self.unavailable()
            return JSONResponse({"status": self.status, **answer.body}, 503, headers=answer.headers)
        assert self.model is not None
        return JSONResponse({"status": "ready", "model": Path(self.config.model).name,
                             "dimensions": self.model.output_dimensions,
                             "dimension": self.dimension, "normalized": self.normalize})

    def metrics_report(self) -> dict[str, Any]:
        depth = self.batcher.depth if self.batcher is not None else 0
        return {"status": self.status, **self.metrics.snapshot(depth, self.in_flight)}


def create_app(config: ServerConfig, load_model: Callable[[], RewardModel] | None = None) -> FastAPI:
    """The server's app. load_model: returns the reward model (default: `load_reward_model(config)`); it
    runs in a thread once the app starts, and /health answers 503 until it has returned."""
    state = ServerState(config, load_model or (lambda: load_reward_model(config)))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.load())
        yield
        loading.cancel()
        await state.close()

    app = FastAPI(title="mmreward reward server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state

    @app.get("/health")
    async def health() -> JSONResponse:
        return state.health()

    @app.get("/metrics")
    async def metrics(request: Request) -> JSONResponse:
        return state.denied(request) or JSONResponse(state.metrics_report())

    @app.post("/reward")
    async def reward(request: Request) -> JSONResponse:
        return await state.respond(request, "/reward", state.reward)

    @app.post("/get_reward")
    async def get_reward(request: Request) -> JSONResponse:
        return await state.respond(request, "/get_reward", state.get_reward)

    return app
