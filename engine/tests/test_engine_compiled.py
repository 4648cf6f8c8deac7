"""The compiled decode step over a static KV cache (ds_engine/compiled.py, the decode
batch's static path): greedy outputs equal the eager engine's token for token, through
bucket changes, batches that grow and shrink, adapters and the eager fallback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ds_engine.compiled import StaticDecoder
from ds_engine.interface import EngineConfig, GenerationRequest
from ds_engine.local import LocalEngine
from ds_engine.prefix_cache import extract_layers
from ds_engine.testing import make_tiny_adapter
from transformers import DynamicCache

# Small buckets, so that the tests cross them: a prompt of ~30 tokens starts in the
# first, 40 more tokens take it into the second, longer prompts run eager.
BUCKETS = (48, 96)

PROMPTS = [
    "def add(a, b):\n    return",
    "values = [1, 2, 3]\ntotal = sum(values)\nvalues = [1, 2, 3]\ntotal = ",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
    # Longer than both buckets: eager all the way.
    "import os\n" * 40,
]


def _engine(path: Path, cache: Path, **kwargs) -> LocalEngine:
    options = dict(model_path=path, device="cpu", dtype="float32", result_cache_entries=0,
                   warmup=False, cache_dir=cache)
    engine = LocalEngine(**{**options, **kwargs})
    engine.load()
    return engine


@pytest.fixture(scope="module")
def engines(tiny_model_path: Path, tmp_path_factory) -> Iterator[tuple[LocalEngine, ...]]:
    """Eager and compiled, one request at a time; and compiled with batches of 4."""
    cache = tmp_path_factory.mktemp("compile-cache")
    made = (
        _engine(tiny_model_path, cache, max_batch_size=1, prefix_cache_entries=0),
        _engine(tiny_model_path, cache, max_batch_size=1, compile_decode=True,
                compile_buckets=BUCKETS),
        _engine(tiny_model_path, cache, max_batch_size=4, compile_decode=True,
                compile_buckets=BUCKETS),
    )
    yield made
    for engine in made:
        engine.close()


async def _same(engine: LocalEngine, eager: LocalEngine, request: GenerationRequest) -> None:
    got = await engine.generate(request)
    want = await eager.generate(request)
    assert (got.text, got.token_count, got.finish_reason) == (
        want.text, want.token_count, want.finish_reason), request.prompt
    assert got.confidence == pytest.approx(want.confidence, rel=1e-4)


async def test_greedy_outputs_equal_eager_token_for_token(engines) -> None:
    eager, compiled, _ = engines
    static = compiled._model.static
    assert static is not None and static.warm_buckets == set(BUCKETS)
    before = compiled.info().counters.compiled_steps_total
    for prompt in PROMPTS:
        for max_tokens in (1, 5, 60):  # 60: past the first bucket, into the second
            await _same(compiled, eager, GenerationRequest(prompt, max_tokens=max_tokens))
    counters = compiled.info().counters
    assert counters.compiled_steps_total > before + 100  # the compiled path ran
    assert eager.info().counters.compiled_steps_total == 0
    assert not static.active  # each request left it when it finished


def test_the_inductor_cache_lives_in_the_engine_cache(engines) -> None:
    """Compiled code persists across restarts in the engine's cache folder (unless the
    user named a folder). Runs before any other engine compiles: the folder is the
    process's, set by the last engine that compiled."""
    _, compiled, _ = engines
    folder = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    assert folder.name == "inductor" and folder.parent == Path(compiled.cache_dir)
    assert any(folder.rglob("*.py"))


async def test_a_request_that_joins_a_lone_one_takes_it_out_of_the_static_cache(
        engines) -> None:
    """The first request decodes alone (static cache) until the second joins: the batch
    then needs its KV back in an ordinary cache, and both must still be right."""
    eager, _, batched = engines
    static = batched._model.static
    first = GenerationRequest(PROMPTS[2], max_tokens=40)
    second = GenerationRequest(PROMPTS[0], max_tokens=30)
    seen: list[str] = []

    async def lone_then_joined() -> str:
        text = ""
        async for chunk in batched.stream(first):
            text = chunk.text
            seen.append(text)
        return text

    task = asyncio.create_task(lone_then_joined())
    while len(seen) < 5:  # some tokens decoded alone, through the compiled step
        await asyncio.sleep(0.005)
    steps = static.steps
    assert steps > 0
    joined = await batched.generate(second)
    text = await task
    assert text == (await eager.generate(first)).text
    assert joined.text == (await eager.generate(second)).text
    assert batched.info().counters.max_batch_size_seen >= 2


async def test_concurrent_requests_equal_eager(engines) -> None:
    eager, _, batched = engines
    requests = [GenerationRequest(p, max_tokens=n) for p, n in zip(PROMPTS, (24, 50, 9, 30),
                                                                    strict=True)]
    results = await asyncio.gather(*(batched.generate(r) for r in requests))
    for request, result in zip(requests, results, strict=True):
        want = await eager.generate(request)
        assert (result.text, result.token_count) == (want.text, want.token_count)


async def test_sampling_is_unchanged_by_the_compiled_step(engines) -> None:
    eager, compiled, _ = engines
    request = GenerationRequest(PROMPTS[0], max_tokens=20, temperature=0.8, seed=5)
    assert (await compiled.generate(request)).text == (await eager.generate(request)).text


async def test_an_attached_adapter_sends_the_batch_back_to_eager(
        tiny_model_path: Path, tmp_path: Path) -> None:
    """The graphs were traced without LoRA wrappers: once an adapter replaces layers,
    decoding runs eager, with the adapter's outputs, not the compiled base model's."""
    adapter = make_tiny_adapter(tiny_model_path, tmp_path / "a", seed=3)
    eager = _engine(tiny_model_path, tmp_path, max_batch_size=1)
    compiled = _engine(tiny_model_path, tmp_path, max_batch_size=1, compile_decode=True,
                       compile_buckets=BUCKETS[:1])
    try:
        for engine in (eager, compiled):
            engine.load_adapter("a", adapter)
        for name in ("a", None):
            request = GenerationRequest(PROMPTS[0], max_tokens=12, adapter=name)
            await _same(compiled, eager, request)
        assert compiled._runner.batch.static is None
    finally:
        eager.close()
        compiled.close()


def test_static_decoder_round_trip(tiny_loaded) -> None:
    """enter -> step -> leave: the KV that comes back is the eager cache's, position for
    position, and a sequence too long for every bucket is refused."""
    model = tiny_loaded.model
    static = StaticDecoder(model, tiny_loaded.context_window, (16,))
    static.warm()
    ids = torch.tensor([[5, 9, 14, 3, 7, 11]])
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, cache=cache, use_cache=True)
        layers = [(k.clone(), v.clone()) for k, v in extract_layers(cache, 6)]
        assert static.enter(layers, 6)
        logits = static.step(4)
        eager = model(input_ids=torch.tensor([[4]]), cache=cache,
                      use_cache=True).logits[:, -1]
        torch.testing.assert_close(logits, eager, rtol=1e-4, atol=1e-5)
        back = static.leave()
        for (k, v), (k2, v2) in zip(back, extract_layers(cache, 7), strict=True):
            torch.testing.assert_close(k, k2, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(v, v2, rtol=1e-4, atol=1e-5)
        assert not static.active
        long = [(k[:, :, :1].expand(1, -1, 16, -1).contiguous(),
                 v[:, :, :1].expand(1, -1, 16, -1).contiguous()) for k, v in layers]
        assert not static.enter(long, 16)  # no room for one more position
        assert static.bucket_for(15) == 16 and static.bucket_for(16) is None


def test_options_reach_the_engine_and_bad_buckets_are_refused(tiny_model_path: Path,
                                                              tmp_path: Path) -> None:
    engine = LocalEngine.from_config(EngineConfig(
        model_path=str(tiny_model_path),
        options={"compile_decode": True, "compile_buckets": [512, 256]}))
    assert engine.compile_buckets == (512, 256)
    assert LocalEngine(model_path=str(tiny_model_path)).compile_buckets == ()
    for bad in ([], [0], [-4], ["1024"], [True]):
        with pytest.raises(ValueError, match="compile_buckets"):
            LocalEngine(model_path=str(tiny_model_path), compile_decode=True,
                        compile_buckets=bad)
    with pytest.raises(ValueError, match="positive"):
        StaticDecoder(torch.nn.Linear(2, 2), 2048, [0])
