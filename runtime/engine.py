"""Run an artifact with the TVM runtime alone: load, verify, prefill, decode, sample, stream.

The KV cache is one preallocated buffer ``[max_len, kv_heads, head_dim]`` per layer and K/V. Each call
passes zero-copy views of the first ``ctx`` rows; the compiled module writes the new rows in place
(``passes/kv_cache_inplace.py``), so a decode step touches ``O(ctx)`` memory, never ``O(max_len)``. The
engine remembers which tokens the cache holds and, on the next request, prefills only what differs (a chat
turn re-uses the conversation so far).
"""
from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .loader import import_tvm, load_cuda_runtime
from .manifest import LIBRARY_FILE, WEIGHTS_FILE, ArtifactError, Manifest
from .sampling import Sampler, SamplingParams

log = logging.getLogger(__name__)
DECODE_BUCKET = 64  # decode attends to the cache rounded up to this many rows
# Greedy decode steps queued on the device between two reads of their tokens: the host's launch of the next
# step overlaps the GPU's work on the previous ones. On CUDA the next batch is queued before the current one's
# tokens are read, so a stop token costs at most twice this many steps more.
DEVICE_STEPS = 16
PENDING = -2  # a token slot of the pinned landing rows that its copy has not reached yet
POLL_SECONDS = 1e-4
KDL_CUDA, KDL_CUDA_HOST = 2, 3  # DLPack device types


@dataclass
class _Batch:
    """Greedy steps queued on the device: positions ``start .. start + steps - 1`` are fed, and their argmaxes
    land in ``history[start + 1 ..]`` and, on CUDA, in ``landing`` (pinned host rows)."""
    start: int
    steps: int
    landing: np.ndarray | None


def _landed(rows: np.ndarray) -> np.ndarray:
    """``rows`` of the pinned landing memory once their copy has reached all of them."""
    while (rows == PENDING).any():
        time.sleep(POLL_SECONDS)
    return rows


def _logits(out):
    """The logits tensor of an entry function's result (a one-element tuple, or the tensor itself)."""
    return out if hasattr(out, "numpy") else out[0]


def _non_finite(where: str) -> FloatingPointError:
    return FloatingPointError(f"the model produced non-finite logits {where}: a kernel fault or an fp16 overflow; "
                              "the same QDIR built with --dtype float32 or for llvm tells")


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens of the request
    prefilled_tokens: int = 0  # of those, the ones not already in the KV cache
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefilled_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode steps per second (the first generated token comes from prefill)."""
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds else 0.0

    def summary(self) -> str:
        return (f"prefill {self.prefilled_tokens} tokens at {self.prefill_tokens_per_s:.1f} tok/s, "
                f"decode {self.generated_tokens} tokens at {self.decode_tokens_per_s:.1f} tok/s")


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (a stop token) or "length" (max_new_tokens or the context limit)
    stats: GenerationStats = field(default_factory=GenerationStats)


class Engine:
    """``Engine(artifact).generate(prompt)``; ``.stream(prompt)`` yields text pieces; ``.logits(ids)``."""

    def __init__(self, artifact: str | Path, *, max_len: int | None = None, prefill_chunk: int | None = None):
        self.path = Path(artifact).expanduser()
        self.manifest = Manifest.read(self.path)
        self.manifest.verify_files(self.path)
        spec = self.manifest.model
        self.max_len = int(spec["max_len"]) if max_len is None else int(max_len)
        if not 2 <= self.max_len <= int(spec["max_len"]):
            raise ValueError(f"max_len must be between 2 and the artifact's {spec['max_len']}, got {max_len}")
        self.tvm = tvm = import_tvm()
        self.device = self._open_device()
        self.vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(self.path / LIBRARY_FILE)), self.device)
        self.params = self._load_weights()
        kv_shape = (self.max_len, int(spec["num_kv_heads"]), int(spec["head_dim"]))
        # Zeroed: decode reads whole 64-row buckets, and masked rows must hold finite values (0 * NaN is NaN).
        zeros = np.zeros(kv_shape, spec["dtype"])
        self.kv = [tvm.runtime.tensor(zeros, self.device) for _ in range(2 * int(spec["num_layers"]))]
        self.cached: list[int] = []  # tokens whose K/V rows the cache holds, in order
        most = int(spec["max_prefill"])  # the compiled prefill's bound on tokens per call
        self.prefill_chunk = most if prefill_chunk is None else int(prefill_chunk)
        if not 1 <= self.prefill_chunk <= most:
            raise ValueError(f"prefill_chunk must be between 1 and the artifact's {most}, got {prefill_chunk}")
        self._decode_inputs = (tvm.runtime.empty((1, 1), "int64", self.device),
                               tvm.runtime.empty((1,), "int64", self.device))
        self._decode_fn = self.vm["decode"]
        self._decode_args: dict[int, tuple] = {}  # view length -> the decode call's arguments (host time per step)
        # Tokens chosen on the device, by position (artifacts built before the `greedy` function have none).
        self._history, self._greedy_fn = None, None
        if "greedy" in self.manifest.entry_functions:
            self._history = tvm.runtime.empty((int(spec["max_len"]) + 1,), "int64", self.device)
            self._greedy_fn = self.vm["greedy"]
        self._landing, self._landing_rows = self._open_landing()
        self._next_slot = 0
        self._in_flight: list[_Batch] = []  # queued greedy batches whose tokens are not read yet, oldest first
        # Batches queued ahead of the one being read: reading a token back with a copy + synchronize would wait
        # for everything queued, so only the pinned landing rows (CUDA) make a look-ahead pay.
        self.lookahead_batches = 1 if self._landing is not None else 0
        self._tokenizer = None
        gen = self.manifest.generation
        self.stop_token_ids = set(gen.get("stop_token_ids") or [])
        self.last_stats = GenerationStats()

    # -- loading ---------------------------------------------------------------------------------------------
    def _open_device(self):
        target = self.manifest.target
        if target["device"] == "cuda":
            try:
                load_cuda_runtime(self.tvm)
            except OSError as e:
                raise ArtifactError(f"the artifact was built for CUDA {target['arch']}, but the CUDA runtime "
                                    f"cannot load here: {e}") from e
            dev = self.tvm.cuda(0)
            if not dev.exist:
                raise ArtifactError(f"the artifact was built for CUDA {target['arch']}, but no CUDA GPU is present")
            self.manifest.verify_target("cuda", "sm_" + str(dev.compute_version).replace(".", ""))
            return dev
        self.manifest.verify_target("cpu", None)
        return self.tvm.cpu(0)

    def _load_weights(self) -> list:
        from safetensors.numpy import load_file

        tensors = load_file(str(self.path / WEIGHTS_FILE))
        names = self.manifest.entry_functions["prefill"]["params"]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ArtifactError(f"{self.path / WEIGHTS_FILE} lacks weights {missing[:5]}")
        for n in names:
            want = self.manifest.weights.get(n)
            if want and (list(tensors[n].shape) != want["shape"] or str(tensors[n].dtype) != want["dtype"]):
                raise ArtifactError(f"weight {n} is {tensors[n].dtype} {list(tensors[n].shape)}, the manifest "
                                    f"says {want['dtype']} {want['shape']}")
        return [self.tvm.runtime.tensor(tensors[n], self.device) for n in names]

    @property
    def tokenizer(self):
        """Loaded on first use: an artifact built from a config alone has none and runs on token ids."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            path = self.path / "tokenizer" / "tokenizer.json"
            if not path.is_file():
                raise ArtifactError(f"{self.path} has no tokenizer/tokenizer.json: pass token ids instead of text")
            self._tokenizer = Tokenizer.from_file(str(path))
        return self._tokenizer

    # -- model calls -----------------------------------------------------------------------------------------
    def _run(self, ids: np.ndarray, start: int, last_only: bool = False) -> np.ndarray:
        """Feed ``ids`` at positions ``start..``; the cache rows before ``start`` must be valid. -> logits [T, V].

        Long prompts go in chunks of ``prefill_chunk`` tokens: the same result, with activation memory (the
        attention scores above all) bounded by the chunk instead of the prompt.
        """
        ctx = start + len(ids)
        if ctx > self.max_len:
            raise ValueError(f"context of {ctx} tokens exceeds max_len {self.max_len}")
        chunks = [self._step(ids[i:i + self.prefill_chunk], start + i, last_only)
                  for i in range(0, len(ids), self.prefill_chunk)]
        return chunks[-1] if last_only else np.concatenate(chunks)

    def _step(self, ids: np.ndarray, start: int, last_only: bool = False) -> np.ndarray:
        """One call of the compiled prefill (or decode) -> float32 logits [T, V], or [1, V] of the last
        position with ``last_only``: that row alone leaves the device (a 512-token prompt's full fp16 logits
        are 33 MB at a 32k vocabulary, ~18 ms to copy to the host on an H100 server)."""
        t = len(ids)
        ctx = start + t
        if t == 1:  # decode: reuse two device scalars instead of allocating them every token
            ids_t, pos_t = self._decode_inputs
            ids_t.copyfrom(np.asarray(ids, np.int64).reshape(1, 1))
            pos_t.copyfrom(np.array([start], np.int64))
            out = self._decode(start)
        else:
            views = [buf._create_view((ctx, *buf.shape[1:])) for buf in self.kv]
            ids_t = self.tvm.runtime.tensor(np.asarray(ids, np.int64).reshape(1, t), self.device)
            pos_t = self.tvm.runtime.tensor(np.arange(start, ctx, dtype=np.int64), self.device)
            out = self.vm["prefill"](ids_t, pos_t, *views, *self.params)
        out = _logits(out)
        if last_only and t > 1:
            row = int(out.shape[-1])
            out = out._create_view((1, 1, row), relative_byte_offset=(t - 1) * row * np.dtype(str(out.dtype)).itemsize)
        logits = out.numpy()[0].astype(np.float32, copy=False)
        if not np.isfinite(logits).all():  # loud, not garbage tokens: argmax of NaN is token 0 every step
            rows = np.nonzero(~np.isfinite(logits).all(-1))[0]
            raise _non_finite(f"at position {start + t - 1}" if last_only and t > 1 else
                              f"at {len(rows)} of {t} positions (first: {start + rows[0]})")
        return logits

    def _decode(self, position: int):
        """One decode step on the token and position held by ``self._decode_inputs`` -> logits (on the device).

        Decode attends to a view rounded up to DECODE_BUCKET rows (rows past ``position`` are masked), so its
        shapes, and the CUDA graph captured for them, stay the same for DECODE_BUCKET steps.
        """
        ctx = min(self.max_len, -(-(position + 1) // DECODE_BUCKET) * DECODE_BUCKET)
        args = self._decode_args.get(ctx)
        if args is None:
            views = [buf._create_view((ctx, *buf.shape[1:])) for buf in self.kv]
            args = self._decode_args[ctx] = (*self._decode_inputs, *views, *self.params)
        return _logits(self._decode_fn(*args))

    def _open_landing(self):
        """Pinned host rows (two batches) that each batch's tokens are copied into, in stream order after its
        steps: the host polls them instead of synchronizing the device, so the steps queued after them keep
        the GPU busy while it reads. None off CUDA or where pinned memory is unavailable."""
        if self._history is None or self.device.dlpack_device_type() != KDL_CUDA:
            return None, None
        try:
            pinned = self.tvm.runtime.empty((2 * DEVICE_STEPS,), "int64", self.tvm.runtime.Device(KDL_CUDA_HOST, 0))
            rows = np.ctypeslib.as_array(ctypes.cast(pinned.data_ptr(), ctypes.POINTER(ctypes.c_int64)),
                                         shape=(2, DEVICE_STEPS))
            self._history._create_view((1,)).copyto(pinned._create_view((1,)))  # the copy path works here
            self.device.sync()
        except Exception as e:  # noqa: BLE001 - any failure leaves the synchronizing read, which always works
            log.info("no pinned landing rows for device tokens (%s): tokens are read with a synchronize", e)
            return None, None
        return pinned, rows

    def _queue_greedy(self, start: int, steps: int, token: int | None = None) -> _Batch:
        """Queue ``steps`` greedy decode steps from position ``start``: each step's argmax (``greedy`` function)
        becomes the next step's input on the device. ``token`` feeds the first step; without it the token and
        position the previous batch left on the device do."""
        ids_t, pos_t = self._decode_inputs
        if token is not None:
            ids_t.copyfrom(np.array([[token]], np.int64))
            pos_t.copyfrom(np.array([start], np.int64))
        landing = None
        if self._landing is not None:
            landing = self._landing_rows[self._next_slot, :steps]
            landing[:] = PENDING  # before the copy is queued: the copy lands after this write
        for i in range(steps):
            self._greedy_fn(self._decode(start + i), ids_t, pos_t, self._history)
        if landing is not None:
            self._history._create_view((steps,), relative_byte_offset=(start + 1) * 8).copyto(
                self._landing._create_view((steps,), relative_byte_offset=self._next_slot * DEVICE_STEPS * 8))
            self._next_slot ^= 1
        return _Batch(start, steps, landing)

    def _collect(self, batch: _Batch) -> list[int]:
        """The tokens of a queued batch, once they are on the host."""
        if batch.landing is None:
            tokens = self._history.numpy()[batch.start + 1:batch.start + batch.steps + 1].tolist()
        else:
            tokens = _landed(batch.landing).tolist()
        if min(tokens) < 0:
            raise _non_finite(f"within positions {batch.start}..{batch.start + batch.steps}")
        return tokens

    def _greedy_on_device(self, first: int, max_new_tokens: int, stops: set[int], stats: GenerationStats,
                          t0: float) -> Iterator[int]:
        """The tokens after ``first`` (the prompt's argmax, already yielded), DEVICE_STEPS per batch, with
        ``lookahead_batches`` more queued before each read."""
        start = len(self.cached)  # first's position
        budget = min(max_new_tokens - stats.generated_tokens, self.max_len - start)
        queued: list[_Batch] = []
        self._in_flight = queued
        fed, end = first, start
        try:
            while queued or end < start + budget:
                while end < start + budget and len(queued) <= self.lookahead_batches:
                    steps = min(start + budget - end, DEVICE_STEPS)
                    queued.append(self._queue_greedy(end, steps, first if end == start else None))
                    end += steps
                tokens = self._collect(queued.pop(0))
                self.cached += [fed] + tokens[:-1]  # the K/V rows written: the fed tokens
                fed = tokens[-1]
                stats.decode_seconds = time.perf_counter() - t0
                for token in tokens:
                    if self._in_flight is not queued:  # a later request took over the cache: stop here
                        return
                    stats.generated_tokens += 1
                    yield token
                    if token in stops or stats.generated_tokens >= max_new_tokens:
                        return
        finally:
            self._land(queued)

    @staticmethod
    def _land(batches: list[_Batch]) -> None:
        """Wait for (and drop) batches queued past a stop token: their copies write the landing rows that the
        next request's batches reuse. Their K/V rows past ``cached`` are ignored, as any past the cache's end."""
        while batches:
            batch = batches.pop(0)
            if batch.landing is not None:
                _landed(batch.landing)

    def reset(self) -> None:
        """Forget the cached prompt: the next request prefills all of its tokens."""
        self.cached = []

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """float32 ``[T, vocab]`` logits of every position of ``ids`` (int64 ``[T]``), from an empty cache."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("logits() needs at least one token")
        self.cached = []
        out = self._run(ids, 0)
        self.cached = ids.tolist()
        return out

    # -- generation ------------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render the model's chat template (Jinja, as transformers does) for ``messages``."""
        template = self.manifest.generation.get("chat_template")
        if not template:
            raise ValueError("this model has no chat template: use a plain prompt")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        bos, eos = self.manifest.generation.get("bos_token_id"), sorted(self.stop_token_ids)
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.tokenizer.id_to_token(bos) if bos is not None else "",
            eos_token=self.tokenizer.id_to_token(eos[0]) if eos else "")

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int = 128,
                     sampling: SamplingParams | None = None, stop_token_ids: set[int] | None = None
                     ) -> Iterator[int]:
        """Yield generated token ids one by one; ``self.last_stats`` is updated as they come."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if len(prompt_ids) >= self.max_len:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; max_len is {self.max_len}")
        sampler = Sampler(sampling or SamplingParams())
        stops = self.stop_token_ids if stop_token_ids is None else stop_token_ids
        self._land(self._in_flight)  # an earlier request's generator, left unfinished, stops at its next token
        self._in_flight = []
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids))
        # Re-use the cached prefix; always feed at least the last prompt token to get its logits.
        keep = 0
        while keep < min(len(self.cached), len(prompt_ids) - 1) and self.cached[keep] == prompt_ids[keep]:
            keep += 1
        self.cached = self.cached[:keep]
        t = time.perf_counter()
        logits = self._run(np.asarray(prompt_ids[keep:]), keep, last_only=True)[-1]
        self.cached = list(prompt_ids)
        stats.prefilled_tokens = len(prompt_ids) - keep
        stats.prefill_seconds = time.perf_counter() - t
        t = time.perf_counter()
        token = sampler(logits)
        stats.generated_tokens = 1
        yield token
        if token in stops:
            return
        if self._history is not None and sampler.params.greedy:
            yield from self._greedy_on_device(token, max_new_tokens, stops, stats, t)
            return
        while stats.generated_tokens < max_new_tokens and len(self.cached) < self.max_len:
            logits = self._run(np.asarray([token]), len(self.cached), last_only=True)[-1]
            self.cached.append(token)
            token = sampler(logits)
            stats.generated_tokens += 1
            stats.decode_seconds = time.perf_counter() - t
            yield token
            if token in stops:
                return

    def stream(self, prompt: str, max_new_tokens: int = 128, sampling: SamplingParams | None = None,
               *, chat: bool = False) -> Iterator[str]:
        """Yield the generated text piece by piece (whole characters; stop tokens are not shown)."""
        return self.stream_ids(self._prompt_ids(prompt, chat), max_new_tokens, sampling)

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int = 128,
                   sampling: SamplingParams | None = None) -> Iterator[str]:
        generated: list[int] = []
        shown = ""
        for token in self.generate_ids(prompt_ids, max_new_tokens, sampling):
            if token in self.stop_token_ids:
                break
            generated.append(token)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                continue
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text

    def generate(self, prompt: str, max_new_tokens: int = 128, sampling: SamplingParams | None = None,
                 *, chat: bool = False) -> Generation:
        ids = list(self.generate_ids(self._prompt_ids(prompt, chat), max_new_tokens, sampling))
        stopped = bool(ids) and ids[-1] in self.stop_token_ids
        text_ids = ids[:-1] if stopped else ids
        return Generation(self.tokenizer.decode(text_ids, skip_special_tokens=True), ids,
                          "stop" if stopped else "length", self.last_stats)

    def _prompt_ids(self, prompt: str, chat: bool) -> list[int]:
        if chat:
            return self.encode(self.apply_chat_template([{"role": "user", "content": prompt}]),
                               add_special_tokens=False)
        return self.encode(prompt)
