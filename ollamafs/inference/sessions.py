"""The ``generate`` file: prompts written in, answers read out (docs/SEMANTICS.md §generate).

Pairing.  A handle opened for reading *and* writing is its own exchange: what it writes is the
prompt, its first read (or a close of a duplicate, which the kernel reports as a flush) submits
it, and its reads stream the answer.  A write-only handle submits its prompt when it is closed;
the answer then waits on a board under the writer's key (uid, session id, model), and the next
read-only open of that model's ``generate`` by a process with the same key takes it (oldest
first).  Two users, or two terminals, never see each other's answers; two scripts sharing one
session and one model take answers in the order their prompts were submitted.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import trio

from ..errors import NotSupported, OllamaFSError
from ..store import ModelRecord, Store
from ..store.describe import describe
from ..template import Template
from .engine import Engine, Stats
from .options import merge, to_llama
from .request import GenerateRequest, chunk_line, error_line, final_line, parse_request

log = logging.getLogger(__name__)

MAX_PROMPT = 4 * 1024 * 1024
UNREAD_TTL = 600.0  # seconds an answer nobody reads is kept


def session_of(pid: int) -> int:
    """The session id of a process (field 6 of /proc/PID/stat), or the pid itself if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return int(stat[stat.rindex(")") + 2 :].split()[3])
    except (OSError, ValueError, IndexError):
        return pid


@dataclass(eq=False)
class Exchange:
    """One prompt and its answer as a byte stream."""

    key: tuple
    model: str
    request: GenerateRequest
    buffer: bytearray = field(default_factory=bytearray)
    done: bool = False
    error: OllamaFSError | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    created: float = field(default_factory=time.monotonic)
    first_byte: float | None = None

    def feed(self, data: bytes) -> None:
        if data:
            if self.first_byte is None:
                self.first_byte = time.perf_counter()
            self.buffer += data
            self._wake()

    def finish(self, error: OllamaFSError | None = None) -> None:
        self.error = error
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the answer; waits for more; b"" at the end."""
        while not self.buffer and not self.done:
            await self.changed.wait()
        if self.buffer:
            out = bytes(self.buffer[:size])
            del self.buffer[:size]
            return out
        if self.error is not None:
            raise self.error
        return b""

    def cancel(self) -> None:
        if not self.done:
            log.info("answer to %s abandoned by its reader; stopping the generation", self.model)
            self.scope.cancel()


class Generator:
    """Runs exchanges against the engine; answers wait on the board until read."""

    def __init__(self, store: Store, engine: Engine, pulls=None) -> None:
        self.store = store
        self.engine = engine
        self.pulls = pulls
        self._nursery: trio.Nursery | None = None
        self._board: dict[tuple, deque[Exchange]] = {}

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def submit(self, key: tuple, record: ModelRecord, data: bytes, *, board: bool) -> Exchange:
        """Parse the prompt (EINVAL at once for a bad request) and start its generation."""
        if len(data) > MAX_PROMPT:
            raise OllamaFSError(f"prompt of {len(data)} bytes is over {MAX_PROMPT}", err=27)  # EFBIG
        request = parse_request(data)
        merge(request.options)  # unknown options fail the write's close, not the read
        exchange = Exchange(key, str(record.name), request)
        if board:
            self._purge()
            self._board.setdefault(key, deque()).append(exchange)
        if self._nursery is None:
            raise OllamaFSError("generation needs the mount's nursery")
        self._nursery.start_soon(self._run, exchange, record)
        return exchange

    def take(self, key: tuple) -> Exchange | None:
        queue = self._board.get(key)
        if not queue:
            return None
        exchange = queue.popleft()
        if not queue:
            del self._board[key]
        return exchange

    def _purge(self) -> None:
        now = time.monotonic()
        for key, queue in list(self._board.items()):
            while queue and now - queue[0].created > UNREAD_TTL and queue[0].done:
                queue.popleft()
            if not queue:
                del self._board[key]

    async def _run(self, exchange: Exchange, record: ModelRecord) -> None:
        req = exchange.request
        try:
            with exchange.scope:
                await self._generate(exchange, record, req)
        except OllamaFSError as exc:
            log.log(exc.level, "generate for %s failed: %s", record.name, exc)
            if req.json:
                exchange.feed(error_line(str(exc)))
                exchange.finish()
            else:
                exchange.finish(exc)
            return
        except Exception as exc:  # a bug: keep the mount alive, tell the reader
            log.exception("generate for %s failed unexpectedly", record.name)
            exchange.finish(OllamaFSError(f"generation failed: {exc}"))
            return
        exchange.finish()

    async def render_prompt(self, record: ModelRecord, req: GenerateRequest) -> tuple[str, dict]:
        """The prompt as Ollama renders it, and the model's params (default options)."""
        description = await trio.to_thread.run_sync(describe, self.store, record)
        if req.raw:
            return req.prompt, description.options
        template = Template.parse(req.template if req.template else description.template)
        system = req.system if req.system is not None else description.system
        if req.suffix:
            from ..template import capabilities

            if "insert" not in capabilities(template):
                raise NotSupported(f"{record.name} does not support insert (its template has no .Suffix)")
            text = template.render([], system=system or None, prompt=req.prompt, suffix=req.suffix)
        else:
            messages = [{"role": "user", "content": req.prompt}] if req.prompt else []
            text = template.render(messages, system=system or None)
        return text, description.options

    async def _generate(self, exchange: Exchange, record: ModelRecord, req: GenerateRequest) -> None:
        if record.remote is not None and self.pulls is not None:
            await self.pulls.pull_model(record.name)
            record = self.store.get(record.name)
        model_layers = [layer for layer in record.manifest.layers if layer.kind == "model"]
        if not model_layers:
            raise NotSupported(f"{record.name} has no model layer")
        prompt, params = await self.render_prompt(record, req)
        options = merge(params, req.options)
        mapped = to_llama(options, gpu_offload=self.engine.gpu_offload)
        if mapped.ignored:
            log.info("options %s have no llama-cpp-python equivalent; ignored", ", ".join(mapped.ignored))
        grammar = None
        if req.format == "json":
            from llama_cpp.llama_grammar import JSON_GBNF

            grammar = JSON_GBNF
        stats = Stats()
        path = str(self.store.blob_path(model_layers[-1].digest))
        pieces: list[str] = []
        async with self.engine.generate(path, prompt if req.prompt or req.raw else "", mapped,
                                        keep_alive=req.keep_alive, grammar=grammar, stats=stats) as chunks:
            async for piece in chunks:
                pieces.append(piece)
                if req.json and req.stream:
                    exchange.feed(chunk_line(exchange.model, piece))
                elif not req.json:
                    exchange.feed(piece.encode())
        if req.json:
            exchange.feed(final_line(exchange.model, stats, "" if req.stream else "".join(pieces)))
        elif pieces and not pieces[-1].endswith("\n"):
            exchange.feed(b"\n")  # a shell's prompt starts on its own line
