"""The thin runtime: TVM runtime only (no torch, transformers or compiler), manifest checks, sampling, streaming."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from sqcompile.runtime import ArtifactError, Engine, Sampler, SamplingParams  # noqa: E402
from test_build import tiny_artifact  # noqa: E402,F401 - module-scoped fixture

REPO = Path(__file__).resolve().parents[1]


def test_runtime_loads_without_torch_transformers_or_compiler(tiny_artifact):  # noqa: F811
    _, art = tiny_artifact
    script = (
        "import sys, json\n"
        "from sqcompile.runtime import Engine\n"
        f"e = Engine({str(art)!r})\n"
        "ids = list(e.generate_ids([5, 6, 7], 8, stop_token_ids=set()))\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(json.dumps({'ids': ids, 'torch': 'torch' in sys.modules, 'transformers': 'transformers' in "
        "sys.modules, 'compiler': 'libtvm_compiler' in maps, 'runtime': 'libtvm_runtime' in maps}))\n")
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"ids": result["ids"], "torch": False, "transformers": False, "compiler": False, "runtime": True}
    assert result["ids"] == list(Engine(art).generate_ids([5, 6, 7], 8, stop_token_ids=set()))


def _copy(art: Path, tmp: Path) -> Path:
    dst = tmp / "copy"
    shutil.copytree(art, dst)
    return dst


def test_corrupt_file_is_refused(tiny_artifact, tmp_path):  # noqa: F811
    art = _copy(tiny_artifact[1], tmp_path)
    with open(art / "weights.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactError, match="sha256"):
        Engine(art)


@pytest.mark.parametrize("field,value,message", [
    ("format_version", 99, "format_version"),
    ("target", {"name": "cuda", "arch": "sm_90", "device": "cuda"}, "CUDA sm_90"),
])
def test_manifest_mismatch_is_refused(tiny_artifact, tmp_path, field, value, message):  # noqa: F811
    art = _copy(tiny_artifact[1], tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest[field] = value
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        Engine(art)


def test_missing_manifest_means_no_artifact(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        Engine(tmp_path / "half")


def test_sampling_rules():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(50)
    assert Sampler(SamplingParams())(logits) == int(np.argmax(logits))
    assert Sampler(SamplingParams(temperature=1.0, top_k=1, seed=1))(logits) == int(np.argmax(logits))
    assert Sampler(SamplingParams(temperature=1.0, top_p=1e-6, seed=1))(logits) == int(np.argmax(logits))
    top3 = set(np.argsort(-logits)[:3].tolist())
    s = Sampler(SamplingParams(temperature=1.0, top_k=3, seed=2))
    assert {s(logits) for _ in range(200)} == top3
    # temperature sampling follows softmax(logits / T): compare frequencies on 4 tokens
    small = np.array([0.0, 1.0, 2.0, 0.5])
    s = Sampler(SamplingParams(temperature=0.7, seed=3))
    counts = np.bincount([s(small) for _ in range(4000)], minlength=4) / 4000
    p = np.exp(small / 0.7) / np.exp(small / 0.7).sum()
    assert np.abs(counts - p).max() < 0.03
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0).validate()


def test_stream_matches_generate_and_reuses_the_cache(tiny_artifact):  # noqa: F811
    engine = Engine(tiny_artifact[1])
    text = engine.generate("Anne was", 12).text
    pieces = list(engine.stream("Anne was", 12))
    assert "".join(pieces) == text and len(pieces) > 1
    assert engine.last_stats.prefilled_tokens == 1  # the prompt was already in the KV cache
    assert engine.last_stats.prefill_tokens_per_s > 0 and engine.last_stats.decode_tokens_per_s > 0


def test_cli_run_streams_text(tiny_artifact):  # noqa: F811
    out = subprocess.run([sys.executable, "-m", "sqcompile", "run", str(tiny_artifact[1]), "--prompt", "Anne was",
                          "--max-new-tokens", "8"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "tok/s" in out.stderr and out.stdout.strip()


def test_non_finite_logits_raise(tiny_artifact):  # noqa: F811
    """A kernel fault that yields NaN must stop generation loudly, not decode token 0 forever."""
    engine = Engine(tiny_artifact[1])
    names = engine.manifest.entry_functions["prefill"]["params"]
    i = next(i for i, n in enumerate(names) if "norm" in n)
    engine.params[i] = engine.tvm.runtime.tensor(np.full(engine.params[i].shape, np.nan, "float32"), engine.device)
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        list(engine.generate_ids([5, 6, 7], 4, stop_token_ids=set()))


def test_prefill_reads_only_the_last_row(tiny_artifact):  # noqa: F811
    """Generation's prefill copies only the last position's logits off the device: they equal that row of the
    full logits, also when the prompt goes in several chunks."""
    engine = Engine(tiny_artifact[1], prefill_chunk=3)
    ids = np.arange(5, 13)
    full = engine.logits(ids)
    engine.reset()
    last = engine._run(ids, 0, last_only=True)
    assert last.shape == (1, full.shape[1])
    np.testing.assert_array_equal(last[0], full[-1])


def test_greedy_on_device_matches_host_sampling(tiny_artifact):  # noqa: F811
    """Tokens chosen and fed on the device (queued DEVICE_STEPS at a time) equal the host's argmax path,
    a stop token inside a chunk ends the output there, and the cache stays right for the next call."""
    from sqcompile.runtime.engine import DEVICE_STEPS

    host = Engine(tiny_artifact[1])
    host._history = None  # as an artifact without the `greedy` function
    n = 2 * DEVICE_STEPS + 5
    want = list(host.generate_ids([5, 6, 7], n, stop_token_ids=set()))
    stop = want[DEVICE_STEPS + 3]
    for lookahead in (0, 1):  # 1: the next batch queued before each read, as on CUDA
        device = Engine(tiny_artifact[1])
        device.lookahead_batches = lookahead
        assert list(device.generate_ids([5, 6, 7], n, stop_token_ids=set())) == want
        assert device.cached == [5, 6, 7] + want[:-1]
        got = list(device.generate_ids([5, 6, 7], n, stop_token_ids={stop}))
        assert got == want[:want.index(stop) + 1]
        prompt = [5, 6, 7] + got  # continues from a cache that holds rows past the stop token
        assert list(device.generate_ids(prompt, 8, stop_token_ids=set())) == list(
            host.generate_ids(prompt, 8, stop_token_ids=set()))
        left = device.generate_ids([5, 6, 7], n, stop_token_ids=set())
        assert [next(left) for _ in range(3)] == want[:3]  # left unfinished, batches in flight
        assert list(device.generate_ids([5, 6, 7], n, stop_token_ids=set())) == want
        assert list(left) == []  # the later request took over the cache: the old generator just ends
