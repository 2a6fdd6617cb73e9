"""The HTTP application: OpenAI-compatible endpoints, LitGPT's `/predict`, health and metrics.

    from lmforge import LLM
    from lmforge.serve import create_app
    app = create_app(LLM.load("ckpt/"), api_key="secret", max_batch_size=8)   # any ASGI server runs it

Every error is OpenAI-shaped JSON, `{"error": {"message", "type", "param", "code"}}`, and bad input
is always a 4xx: the server keeps serving whatever a client sends. GET /openapi.json documents each
status code the server answers.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import LmforgeError
from lmforge.prompts import encode_chat, stop_strings, stop_tokens
from lmforge.sampling import SamplingParams
from lmforge.serve.metrics import CONTENT_TYPE, ServerMetrics
from lmforge.serve.schemas import (
    PREDICT_MAX_NEW_TOKENS,
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
    ErrorResponse,
    PredictRequest,
)
from lmforge.serve.settings import ServeSettings
from lmforge.serve.worker import Draining, EngineWorker, Failure, Handle, QueueFull

if TYPE_CHECKING:
    from lmforge.api import LLM

log = logging.getLogger("lmforge.serve")

# paths that need no API key (probes, the schema, and the chat page, which asks for the key itself)
PUBLIC_PATHS = frozenset({"/", "/health", "/openapi.json", "/docs", "/redoc"})
# the chat page's own inline script and style, and nothing from elsewhere (it works offline)
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# torch.Generator.manual_seed takes [-2**63, 2**64): any JSON integer seed is reduced modulo 2**64
SEED_MODULUS = 2**64


class APIError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# -----------------------------------------------------------------------------------------------
# ASGI middleware (outside FastAPI's exception handling, so each answers errors itself)
# -----------------------------------------------------------------------------------------------
class RequestLimits:
    """Count every request in /metrics, enforce the body size limit and the API key.

    The body is read here (at most `max_body_bytes`, the rest drained and dropped so the
    connection stays usable) and replayed to the app.
    """

    # drain up to this much of an oversized body before answering 413; beyond it, just answer
    DRAIN_LIMIT = 64 * 1024 * 1024

    def __init__(self, app, metrics: ServerMetrics, settings: ServeSettings, endpoints: frozenset[str]) -> None:
        self.app, self.metrics, self.settings, self.endpoints = app, metrics, settings, endpoints

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = 500

        async def counting_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            error, receive = await self._check(scope, receive)
            if error is not None:
                await error.response()(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            endpoint = path if path in self.endpoints else "other"
            self.metrics.requests.inc(endpoint=endpoint, status=str(status))

    async def _check(self, scope, receive):
        headers = dict(scope["headers"])
        host = headers.get(b"host")
        if not self.settings.host_allowed(None if host is None else host.decode("latin-1")):
            return APIError(400, f"Host header {host.decode('latin-1')!r} is not served here: use localhost or "
                                 "127.0.0.1, or start the server with --allowed-hosts"
                                 if host is not None else "no Host header: send one", param="Host",
                            code="invalid_host"), receive
        key = self.settings.api_key
        # a CORS preflight (OPTIONS) carries no credentials; it reveals nothing
        if key and scope["path"] not in PUBLIC_PATHS and scope["method"] != "OPTIONS":
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not _key_matches(token.strip(), key):
                what = "no API key provided" if not auth else "incorrect API key provided"
                return APIError(401, f"{what}: send the header 'Authorization: Bearer <key>'",
                                "authentication_error", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"}), receive
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return None, receive
        limit = self.settings.max_body_bytes
        too_big = APIError(413, f"request body is larger than {limit} bytes", code="request_too_large")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.DRAIN_LIMIT:
            return too_big, receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return None, receive
            body = message.get("body", b"")
            size += len(body)
            if size <= limit:
                chunks.append(body)
            elif size > self.DRAIN_LIMIT:
                break
            more = message.get("more_body", False)
        if size > limit:
            return too_big, receive
        return None, _replay(b"".join(chunks), receive)


def _key_matches(token: bytes, key: str) -> bool:
    """Compare the header's raw bytes with the key as UTF-8 (httpx, curl) or Latin-1 (requests, http.client)."""
    encodings = [key.encode()]
    try:
        encodings.append(key.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    # compare against every encoding (no early exit): the time taken does not depend on which matched
    return sum(hmac.compare_digest(token, k) for k in encodings) > 0


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -----------------------------------------------------------------------------------------------
# the app
# -----------------------------------------------------------------------------------------------
def create_app(llm: LLM, engine: Any = None, **settings: Any) -> FastAPI:
    """Build the FastAPI app serving `llm`.

    Args:
        llm: a loaded `lmforge.api.LLM` (model, tokenizer, config); it must have a tokenizer.
        engine: a ready `lmforge.generate.Engine` (default: one is built when the app starts).
        **settings: `ServeSettings` fields (api_key, max_batch_size, max_queue, request_timeout, …).

    Returns:
        The app; its engine thread starts and stops with the app's lifespan.
    """
    opts = ServeSettings(**settings)
    if llm.tokenizer is None:
        raise LmforgeError(f"{llm.source or llm.config.name}: the model has no tokenizer; serving needs one "
                           "(save the checkpoint with its tokenizer files)")
    # the engine clips the same way: a slot never holds more than the model's context
    context = min(opts.max_seq_length or 4096, llm.config.block_size)
    if engine is not None:
        context = engine.max_seq_length
    model_name = opts.model_name or llm.config.name
    metrics = ServerMetrics()
    metrics.max_slots.set(opts.max_batch_size)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        eng = engine
        if eng is None:
            from lmforge.generate import Engine

            eng = Engine(llm.model, llm.tokenizer, max_batch_size=opts.max_batch_size, max_seq_length=context)
        worker = EngineWorker(eng, metrics, max_queue=opts.max_queue, request_timeout=opts.request_timeout)
        worker.start()
        state["worker"] = worker
        try:
            yield
        finally:
            # uvicorn already waited for open responses (its graceful-shutdown timeout); cancel the rest
            await asyncio.get_running_loop().run_in_executor(None, worker.close)

    app = FastAPI(title="lmforge", version=_version(), lifespan=lifespan,
                  description=f"OpenAI-compatible API serving {model_name}")
    app.state.metrics = metrics
    app.state.settings = opts
    app.state.model_name = model_name
    app.state.context = context
    _install_error_handlers(app)
    _document(app, protected=bool(opts.api_key), maxima={
        "max_tokens": opts.max_tokens_limit, "max_completion_tokens": opts.max_tokens_limit,
        "max_new_tokens": opts.max_tokens_limit, "prompt": llm.config.vocab_size - 1})
    tok, config = llm.tokenizer, llm.config
    # a chat reply ends at the chat format's end of turn (e.g. <|im_end|>) as well as at EOS
    chat_stop_ids, chat_stop_strings = stop_tokens(tok, config), stop_strings(tok, config)

    def worker() -> EngineWorker:
        w = state.get("worker")
        if w is None:
            raise APIError(503, "the engine is not running (the server is starting or stopping)", "server_error")
        return w

    # -- prompt and sampling helpers -------------------------------------------------------------
    def check_prompt(ids: list[int], param: str) -> None:
        if not ids:
            raise APIError(400, "the prompt is empty", param=param)
        if len(ids) >= context:
            raise APIError(400, f"the prompt has {len(ids)} tokens but the context is {context} tokens "
                                f"(the prompt and at least one new token must fit)", param=param,
                           code="context_length_exceeded")
        bad = next((i for i in ids if not 0 <= i < config.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary (0..{config.vocab_size - 1})", param=param)

    def check_limit(requested: int | None, param: str) -> None:
        if requested is not None and requested > opts.max_tokens_limit:
            raise APIError(400, f"{param} is {requested}; this server allows at most {opts.max_tokens_limit} "
                                "(--max-tokens-limit)", param=param)

    def max_new_tokens(requested: int | None, n_prompt: int, param: str) -> int:
        room = context - n_prompt
        if requested is None:
            return min(opts.default_max_tokens, room)
        check_limit(requested, param)
        if requested > room:
            raise APIError(400, f"the prompt ({n_prompt} tokens) plus {param} ({requested}) exceeds the context "
                                f"of {context} tokens; lower {param}", param=param, code="context_length_exceeded")
        return requested

    def sampling(body, n_prompt: int, max_tokens: int | None, max_param: str = "max_tokens",
                 chat: bool = False) -> SamplingParams:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if chat:
            stop += chat_stop_strings
        return make_params(
            max_new_tokens=max_new_tokens(max_tokens, n_prompt, max_param),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_k=body.top_k, top_p=1.0 if body.top_p is None else body.top_p,
            min_p=body.min_p or 0.0, repetition_penalty=body.repetition_penalty or 1.0,
            seed=None if body.seed is None else body.seed % SEED_MODULUS, stop=stop, ignore_eos=body.ignore_eos, stop_token_ids=chat_stop_ids if chat else [])

    # -- running a request -------------------------------------------------------------------------
    def submit(ids: list[int], params: SamplingParams) -> Handle:
        """Queue a request now, so a full queue is a 429 (not an error inside a 200 stream)."""
        try:
            return worker().submit(ids, params, asyncio.get_running_loop())
        except QueueFull:
            raise APIError(429, f"the server is busy: {opts.max_queue} requests are already waiting; retry later",
                           "rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(opts.retry_after)}) from None
        except Draining:
            raise APIError(503, "the server is shutting down", "server_error", code="shutting_down") from None

    async def events(handle: Handle, request: Request | None) -> AsyncIterator[Any]:
        """Yield the engine events of `handle`; cancel it if the consumer stops early.

        With `request`, a disconnected client is noticed while waiting (non-streaming requests:
        for streams, Starlette cancels the response task itself).
        """
        done = False
        try:
            while True:
                item = await _next_item(handle, request)
                if item is None:  # the client disconnected
                    return
                if isinstance(item, Failure):
                    done = True
                    raise APIError(item.status, item.message, item.type, code=item.code)
                yield item
                if item.finished:
                    done = True
                    return
        finally:
            if not done and state.get("worker") is not None:
                state["worker"].cancel(handle.request_id, "cancelled")

    async def complete(request: Request, ids: list[int], params: SamplingParams) -> tuple[str, Any]:
        handle = submit(ids, params)
        parts, last = [], None
        async for ev in events(handle, request):
            parts.append(ev.text or "")
            last = ev
        if last is None or not last.finished:  # the client left; nobody reads this answer
            raise APIError(499, "client closed the request", code="client_closed")
        return "".join(parts), last

    async def drain(grace: float) -> None:
        """Shutdown: take no new requests, let open ones run for `grace` seconds, then end them with a 503
        (a stream gets an error event and `data: [DONE]`), so every response still ends properly."""
        if state.get("worker") is not None:
            await asyncio.to_thread(state["worker"].close, grace)

    app.state.drain = drain

    # -- endpoints ---------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        """The chat page: streams from /v1/chat/completions; with an API key set, it asks for it."""
        return HTMLResponse(_chat_page(), headers={"Content-Security-Policy": PAGE_CSP,
                                                   "X-Content-Type-Options": "nosniff"})

    @app.get("/health", responses=_errors(503))
    async def health() -> dict[str, Any]:
        """Liveness: 200 while the engine thread runs."""
        w = state.get("worker")
        if w is None or not w.alive:
            raise APIError(503, "the engine is not running", "server_error")
        return {"status": "ok", "model": model_name}

    @app.get("/metrics", response_class=PlainTextResponse, responses=_errors())
    async def prometheus() -> PlainTextResponse:
        """Prometheus text exposition of the server's counters, gauges and histograms."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", responses=_errors())
    async def models() -> dict[str, Any]:
        """The one model this server serves (OpenAI schema)."""
        return {"object": "list", "data": [
            {"id": model_name, "object": "model", "created": started, "owned_by": "lmforge",
             "max_model_len": context}]}

    @app.post("/predict", responses=_errors(*GENERATION_ERRORS))
    async def predict(body: PredictRequest, request: Request) -> dict[str, str]:
        """LitGPT-compatible: `{"prompt": …}` -> `{"output": …}`.

        As LitGPT does, the prompt is wrapped in the model's chat template (one user turn) when it
        has one, and used as-is otherwise.
        """
        if tok.chat_template:
            ids = await chat_ids([{"role": "user", "content": body.prompt}])
            stops, stop_ids = chat_stop_strings, chat_stop_ids
        else:
            ids, stops, stop_ids = await encode(body.prompt), [], []
        check_prompt(ids, "prompt")
        requested = body.max_new_tokens if "max_new_tokens" in body.model_fields_set else \
            min(PREDICT_MAX_NEW_TOKENS, opts.max_tokens_limit, context - len(ids))
        params = make_params(max_new_tokens=max_new_tokens(requested, len(ids), "max_new_tokens"),
                             temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, stop=stops,
                             stop_token_ids=stop_ids)
        text, _ = await complete(request, ids, params)
        return {"output": text}

    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        """A classifier checkpoint's class of each text (`lmforge finetune classify`):
        `{"input": "…" | ["…", …]}` -> `{"data": [{"index", "label", "probability", "scores"}, …]}`."""
        texts = [body.input] if isinstance(body.input, str) else body.input
        try:
            results = await asyncio.to_thread(llm.classify, texts)
        except LmforgeError as e:
            raise APIError(400, str(e), param="input") from None
        return {"object": "list", "model": model_name,
                "data": [{"object": "classification", "index": i, **r} for i, r in enumerate(results)]}

    if llm.classes is not None:  # only a classifier checkpoint serves /v1/classify
        app.post("/v1/classify", responses=_errors(400))(classify)

    @app.post("/v1/completions", responses={**_errors(*GENERATION_ERRORS), **STREAM_RESPONSE})
    async def completions(body: CompletionRequest, request: Request):
        """OpenAI text completion (one prompt, n=1), streamed as server-sent events when `stream`."""
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, f"a batch of {len(prompt)} prompts is not supported; send one per request",
                               param="prompt")
            prompt = prompt[0]
        ids = await encode(prompt) if isinstance(prompt, str) else list(prompt)
        check_prompt(ids, "prompt")
        params = sampling(body, len(ids), body.max_tokens)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            return sse(ids, params, body, lambda ev: chunk(ev.text or "", ev.finish_reason if ev.finished else None),
                       first=None, usage_chunk=lambda u: {**chunk("", None), "choices": [], "usage": u})
        text, last = await complete(request, ids, params)
        return {**chunk(text, last.finish_reason), "usage": usage(last)}

    @app.post("/v1/chat/completions", responses={**_errors(*GENERATION_ERRORS), **STREAM_RESPONSE})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """OpenAI chat completion (n=1), streamed as server-sent events when `stream`."""
        ids = await chat_ids([{"role": m.role, "content": m.text()} for m in body.messages])
        check_prompt(ids, "messages")
        check_limit(body.max_tokens, "max_tokens")  # the schema's bound, even when max_completion_tokens wins
        max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        params = sampling(body, len(ids), body.max_completion_tokens or body.max_tokens, max_param, chat=True)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            def on_event(ev) -> dict[str, Any]:
                return chunk({"content": ev.text} if ev.text else {}, ev.finish_reason if ev.finished else None)

            return sse(ids, params, body, on_event, first=chunk({"role": "assistant", "content": ""}, None),
                       usage_chunk=lambda u: {**chunk({}, None), "choices": [], "usage": u})
        text, last = await complete(request, ids, params)
        return {"id": rid, "object": "chat.completion", "created": created, "model": model_name,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": last.finish_reason}],
                "usage": usage(last)}

    # tokenizing a long prompt takes a while (~0.5 s per MB): it runs on a thread, so the event loop
    # keeps answering other requests (/health, streams) meanwhile. `encode_batch` because HF tokenizers'
    # `encode` holds the GIL throughout (the loop would still stall) and its `encode_batch` releases it.
    async def encode(text: str) -> list[int]:
        return (await asyncio.to_thread(tok.encode_batch, [text]))[0]

    async def chat_ids(messages: list[dict[str, str]]) -> list[int]:
        # OpenAI's "developer" role is the newer name of "system"
        messages = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages]
        try:
            return await asyncio.to_thread(encode_chat, messages, tok, config)
        except LmforgeError as e:
            raise APIError(400, f"cannot format the messages: {e}", param="messages") from None

    def sse(ids: list[int], params: SamplingParams, body, on_event, first, usage_chunk) -> StreamingResponse:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        handle = submit(ids, params)

        async def body_iter() -> AsyncIterator[bytes]:
            stream = events(handle, None)
            try:
                if first is not None:
                    yield _sse(first)
                async for ev in stream:
                    if not ev.text and not ev.finished:
                        continue  # bytes of a split character or a possible stop string, held back
                    yield _sse(on_event(ev))
                    if ev.finished and include_usage:
                        yield _sse(usage_chunk(usage(ev)))
            except APIError as e:
                yield _sse(e.body())
            finally:
                # a client that disconnects mid-stream lands here (cancelled, or closed by the loop): free the slot
                await stream.aclose()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body_iter(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def make_params(**kw: Any) -> SamplingParams:
        try:
            return SamplingParams(**kw)
        except LmforgeError as e:
            raise APIError(400, str(e)) from None

    started = int(time.time())
    endpoints = frozenset(r.path for r in app.routes if hasattr(r, "path"))
    if opts.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        # inside RequestLimits: the Host check and the body limit apply to browsers too
        app.add_middleware(CORSMiddleware, allow_origins=opts.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(RequestLimits, metrics=metrics, settings=opts, endpoints=endpoints)
    return app


# -----------------------------------------------------------------------------------------------
# the OpenAPI document: what the server really answers
# -----------------------------------------------------------------------------------------------
ERROR_DOCS = {
    400: "Invalid request: a field out of range or of the wrong type, a prompt longer than the context, "
         "an unsupported option, or a Host header this server does not answer",
    401: "No API key, or a wrong one (send `Authorization: Bearer <key>`)",
    413: "The request body is larger than --max-body-bytes",
    429: "The waiting queue is full; retry after the Retry-After header's seconds",
    500: "The engine failed on this request",
    503: "The server is starting or shutting down",
    504: "The request ran longer than --request-timeout",
}
GENERATION_ERRORS = (413, 429, 500, 503, 504)
STREAM_RESPONSE = {200: {"description": "The completion; with `stream: true`, server-sent events, each "
                                        "`data: <chunk JSON>` and last `data: [DONE]`",
                         # before OpenAPI 3.2 (itemSchema), `schema` of an event stream describes one event
                         "content": {"text/event-stream": {"schema": {
                             "type": "object", "required": ["data"], "properties": {"data": {
                                 "type": "string",
                                 "description": "a chunk as JSON, an error as JSON, or [DONE] (the last event)"}}}}}}}


def _set_maximum(prop: dict[str, Any], maximum: int) -> None:
    """Bound the integers of a JSON Schema property (itself, a union member or array items)."""
    if prop.get("type") == "integer":
        prop["maximum"] = maximum
    for sub in prop.get("anyOf", []):
        _set_maximum(sub, maximum)
    if prop.get("type") == "array":
        _set_maximum(prop.get("items", {}), maximum)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses of these error codes; 400 (the Host check) applies to every endpoint."""
    return {code: {"model": ErrorResponse, "description": ERROR_DOCS[code]} for code in sorted({400, *codes})}


def _document(app: FastAPI, protected: bool, maxima: dict[str, int]) -> None:
    """Fix up FastAPI's generated schema: no 422 (invalid bodies get a 400); with an API key, the
    bearer security scheme and a 401 on every endpoint outside PUBLIC_PATHS; this server's limits
    (`maxima`: the largest integer each request field takes, token ids included)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            for model in components.get("schemas", {}).values():
                for name, prop in model.get("properties", {}).items():
                    if name in maxima:
                        _set_maximum(prop, maxima[name])
            if protected:
                components["securitySchemes"] = {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
            error = {"description": ERROR_DOCS[401],
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
                    if protected and path not in PUBLIC_PATHS:
                        operation["security"] = [{"HTTPBearer": []}]
                        operation["responses"]["401"] = error
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


async def _next_item(handle: Handle, request: Request | None, poll: float = 0.5) -> Any:
    """The next event of `handle`; None once `request`'s client has disconnected (when given)."""
    if request is None:
        return await handle.queue.get()
    getter = asyncio.ensure_future(handle.queue.get())
    try:
        while True:
            done, _ = await asyncio.wait({getter}, timeout=poll)
            if done:
                return getter.result()
            if await request.is_disconnected():
                return None
    finally:
        if not getter.done():
            getter.cancel()


def usage(ev: Any) -> dict[str, int]:
    return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
            "total_tokens": ev.prompt_tokens + ev.completion_tokens}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


@functools.cache
def _chat_page() -> str:
    """The chat page's HTML, shipped as package data (lmforge/serve/static/chat.html)."""
    from importlib.resources import files

    return files("lmforge.serve").joinpath("static/chat.html").read_text(encoding="utf-8")


def _version() -> str:
    from lmforge import __version__

    return __version__


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|[A-Z]\w*|.*[\[\]-].*)$")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # a union (`prompt`: str | list[str] | list[int]) fails once per member: report the member whose
        # type matched and whose value did not, when there is one
        first = next((e for e in errors if not e.get("type", "").endswith("_type")), errors[0] if errors else {})
        # pydantic names union members in the location (`prompt.str`): keep field names and indices only
        loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _TYPE_TAG.match(str(p))]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            message = f"malformed JSON body: {first.get('ctx', {}).get('error', 'cannot parse it')}"
            param = None
        elif first.get("type") == "missing":
            message = f"missing required field {param!r}"
        else:
            message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
            if "input" in first and not isinstance(first["input"], dict | list):
                message += f" (got {first['input']!r:.60})"
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        return APIError(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return APIError(500, f"internal server error ({type(exc).__name__})", "server_error").response()
