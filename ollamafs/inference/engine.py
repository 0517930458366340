"""llama-cpp-python behind trio: loaded-model cache, keep_alive, one generation per model.

* A model is loaded from its blob's path in the store (never through the mount), in a worker
  thread, with every layer offloaded to the GPU when llama-cpp-python was built with GPU
  support.  It stays loaded for ``keep_alive`` after its last use (Ollama's default, 5 minutes;
  0 unloads at once, a negative value keeps it loaded), then :meth:`Engine.reap` frees it.
* One generation per model at a time; later ones wait their turn in arrival order (trio's
  Lock is fair).
* Tokens are produced in a worker thread and handed to the trio side through a bounded memory
  channel, so a slow reader slows the generation instead of buffering without bound; a
  cancelled generation stops at the next token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ..errors import OllamaFSError
from .options import Mapped

log = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE = 300.0


class InferenceError(OllamaFSError):
    """llama-cpp-python failed to load a model or to generate (EIO)."""


@dataclass
class Stats:
    """Ollama's final-response counters, durations in nanoseconds."""

    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    total_duration: int = 0
    done_reason: str = "stop"


@dataclass
class _Loaded:
    path: str
    load_args: dict
    llm: object
    lock: trio.Lock = field(default_factory=trio.Lock)
    expires: float = 0.0  # monotonic; 0 = never
    users: int = 0


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


class Engine:
    """Loaded models and generations; see the module text."""

    def __init__(self, *, max_threads: int = 2) -> None:
        self._models: dict[str, _Loaded] = {}
        self._loading: dict[str, trio.Lock] = {}
        self._limiter = trio.CapacityLimiter(max_threads)
        self._gpu: bool | None = None

    @property
    def gpu_offload(self) -> bool:
        if self._gpu is None:
            self._gpu = gpu_offload_supported()
        return self._gpu

    def loaded(self) -> list[str]:
        return list(self._models)

    async def _load(self, path: str, load_args: dict) -> tuple[_Loaded, int]:
        """The loaded model for path with these load arguments; (model, load time ns)."""
        lock = self._loading.setdefault(path, trio.Lock())
        async with lock:
            current = self._models.get(path)
            if current is not None and current.load_args == load_args:
                return current, 0
            if current is not None:
                async with current.lock:  # let its running generation finish first
                    await self._unload(path)
            t0 = time.perf_counter_ns()
            try:
                llm = await trio.to_thread.run_sync(self._construct, path, load_args, limiter=self._limiter)
            except Exception as exc:  # llama-cpp raises ValueError/RuntimeError on bad files
                raise InferenceError(f"cannot load model {path}: {exc}") from None
            loaded = _Loaded(path, dict(load_args), llm)
            self._models[path] = loaded
            log.info("loaded %s (%s)", path, ", ".join(f"{k}={v}" for k, v in sorted(load_args.items())))
            return loaded, time.perf_counter_ns() - t0

    @staticmethod
    def _construct(path: str, load_args: dict):
        from llama_cpp import Llama

        return Llama(model_path=path, verbose=False, **load_args)

    async def _unload(self, path: str) -> None:
        loaded = self._models.pop(path, None)
        if loaded is not None:
            await trio.to_thread.run_sync(_close, loaded.llm, limiter=self._limiter)
            log.info("unloaded %s", path)

    async def reap(self) -> None:
        """Free models whose keep_alive ran out (call periodically; the mount does, every second)."""
        now = time.monotonic()
        for path, loaded in list(self._models.items()):
            if loaded.users == 0 and loaded.expires and loaded.expires <= now and not loaded.lock.locked():
                await self._unload(path)

    async def run_reaper(self, interval: float = 1.0) -> None:
        while True:
            await trio.sleep(interval)
            await self.reap()

    async def close(self) -> None:
        for path in list(self._models):
            await self._unload(path)

    @asynccontextmanager
    async def generate(
        self,
        path: str,
        prompt: str,
        mapped: Mapped,
        *,
        keep_alive: float = DEFAULT_KEEP_ALIVE,
        grammar: str | None = None,
        stats: Stats | None = None,
    ) -> AsyncIterator[trio.MemoryReceiveChannel]:
        """Yield a channel of text pieces; ``stats`` is filled in when the channel closes.

        Leaving the block early (a reader that went away) stops the generation at its next
        token.  The per-model lock is held for the whole generation.
        """
        stats = stats if stats is not None else Stats()
        t_start = time.perf_counter_ns()
        loaded, load_ns = await self._load(path, mapped.load)
        stats.load_duration = load_ns
        loaded.users += 1
        try:
            async with loaded.lock:
                send, receive = trio.open_memory_channel(64)
                stop = threading.Event()
                async with trio.open_nursery() as nursery:

                    async def produce() -> None:
                        async with send:
                            await trio.to_thread.run_sync(
                                self._produce, loaded.llm, prompt, mapped.sample, grammar, send, stop, stats,
                                limiter=self._limiter,
                            )

                    nursery.start_soon(produce)
                    try:
                        yield receive
                    finally:
                        stop.set()
                        with trio.CancelScope(shield=True):
                            async with receive:
                                async for _ in receive:  # unblock the producer, drop the rest
                                    pass
            stats.total_duration = time.perf_counter_ns() - t_start
        finally:
            loaded.users -= 1
            if keep_alive == 0:
                await self._unload(path)
            else:
                loaded.expires = 0.0 if keep_alive < 0 else time.monotonic() + keep_alive

    @staticmethod
    def _produce(llm, prompt: str, sample: dict, grammar: str | None, send, stop: threading.Event, stats: Stats) -> None:
        """Worker thread: run create_completion(stream=True), sending each piece to trio."""
        from llama_cpp import LlamaGrammar, StoppingCriteriaList

        counted = {"n": 0, "first": 0}
        t0 = time.perf_counter_ns()

        def count(_ids, _logits) -> bool:
            if counted["n"] == 0:
                counted["first"] = time.perf_counter_ns()
            counted["n"] += 1
            return stop.is_set()

        try:
            stats.prompt_eval_count = len(llm.tokenize(prompt.encode(), special=True)) if prompt else 0
            if not prompt:
                return
            kwargs = dict(sample)
            if grammar is not None:
                kwargs["grammar"] = LlamaGrammar.from_string(grammar, verbose=False)
            stream = llm.create_completion(prompt, stream=True, stopping_criteria=StoppingCriteriaList([count]), **kwargs)
            for chunk in stream:
                choice = chunk["choices"][0]
                text = choice.get("text") or ""
                if text:
                    trio.from_thread.run(send.send, text)
                if choice.get("finish_reason"):
                    stats.done_reason = "length" if choice["finish_reason"] == "length" else "stop"
                if stop.is_set():
                    break
        except (trio.Cancelled, trio.RunFinishedError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except Exception as exc:
            raise InferenceError(f"generation failed: {exc}") from None
        finally:
            end = time.perf_counter_ns()
            first = counted["first"] or end
            stats.prompt_eval_duration = first - t0
            # create_completion asks the stopping criteria once per sampled token and once more
            # after its loop; that last call is not a token.
            stats.eval_count = max(0, counted["n"] - 1)
            stats.eval_duration = end - first


def _close(llm) -> None:
    close = getattr(llm, "close", None)
    if close is not None:
        close()
