"""The token loop on the tiny model, and on a scripted model for exact text checks."""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import pytest
import torch
from ds_engine.generation import _held_back, fit_prompt, run_generation
from ds_engine.interface import FinishReason, GenerationRequest, StreamChunk
from ds_engine.scheduler import StopFlag

PROMPT = "def add(a, b):\n    return"


def generate(loaded, request: GenerationRequest, **kwargs):
    return run_generation(
        loaded.model,
        loaded.tokenizer,
        request,
        context_window=loaded.context_window,
        stop_token_ids={loaded.tokenizer.eos_token_id},
        model_name=loaded.name,
        **kwargs,
    )


def greedy_ids(loaded, prompt: str, n: int) -> list[int]:
    ids: list[int] = []
    generate(loaded, GenerationRequest(prompt, max_tokens=n), on_token=ids.append)
    return ids


@pytest.mark.parametrize("n", [1, 7, 50])
def test_max_tokens_is_honoured_exactly(tiny_loaded, n: int) -> None:
    result = generate(tiny_loaded, GenerationRequest(PROMPT, max_tokens=n))
    assert result.token_count == n
    assert result.finish_reason is FinishReason.LENGTH
    assert result.prompt_tokens == len(tiny_loaded.tokenizer.encode(PROMPT))
    assert result.model == tiny_loaded.name
    assert result.text


def test_zero_tokens_has_confidence_one(tiny_loaded) -> None:
    result = generate(tiny_loaded, GenerationRequest(PROMPT, max_tokens=0))
    assert (result.text, result.token_count, result.confidence) == ("", 0, 1.0)


def test_greedy_matches_transformers_generate(tiny_loaded) -> None:
    tok = tiny_loaded.tokenizer
    ids = tok(PROMPT, return_tensors="pt").input_ids
    ref = tiny_loaded.model.generate(ids, max_new_tokens=30, do_sample=False)[0, ids.shape[1] :]
    assert greedy_ids(tiny_loaded, PROMPT, 30) == ref.tolist()


def _token_texts(tok, ids: list[int]) -> list[str]:
    texts = [tok.decode(ids[:k], skip_special_tokens=False) for k in range(len(ids) + 1)]
    return [
        texts[k + 1][len(texts[k]) :] if texts[k + 1].startswith(texts[k]) else ""
        for k in range(len(ids))
    ]


def test_stop_sequence_spanning_tokens_cuts_before_it(tiny_loaded) -> None:
    tok = tiny_loaded.tokenizer
    ids = greedy_ids(tiny_loaded, PROMPT, 60)
    full = tok.decode(ids, skip_special_tokens=False)
    pieces = _token_texts(tok, ids)
    # A stop made of the end of one token and the start of the next, from the model's
    # own greedy output, so it can only be seen across a token boundary.
    i = next(
        k
        for k in range(5, len(pieces) - 1)
        if len(pieces[k]) >= 2
        and pieces[k + 1]
        and "\ufffd" not in pieces[k] + pieces[k + 1]
        and not tok.convert_ids_to_tokens(ids[k]).startswith("<")
    )
    stop = pieces[i][-2:] + pieces[i + 1][:1]
    expected = full[: full.index(stop)]
    chunks: list[StreamChunk] = []
    result = generate(
        tiny_loaded, GenerationRequest(PROMPT, max_tokens=60, stop=[stop]), on_chunk=chunks.append
    )
    assert result.finish_reason is FinishReason.STOP
    assert result.text == expected
    assert stop not in result.text
    assert result.token_count <= i + 2 < 60
    assert chunks[-1].done and chunks[-1].text == result.text
    for chunk in chunks:
        assert result.text.startswith(chunk.text)  # streamed text is never taken back


def test_confidence_is_exp_mean_logprob_of_a_full_forward(tiny_loaded) -> None:
    for request in (
        GenerationRequest(PROMPT, max_tokens=25),
        GenerationRequest(PROMPT, max_tokens=25, temperature=0.7, seed=5),
    ):
        out: list[int] = []
        result = generate(tiny_loaded, request, on_token=out.append)
        prompt_ids = tiny_loaded.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny_loaded.model(torch.tensor([prompt_ids + out])).logits[0].float()
        logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
        chosen = logprobs[torch.arange(len(out)), torch.tensor(out)]
        expected = math.exp(chosen.mean().item())
        assert 0.0 < result.confidence < 1.0
        assert result.confidence == pytest.approx(expected, rel=1e-4)


def test_sampling_is_reproducible_with_a_seed(tiny_loaded) -> None:
    def sample(seed: int, top_p: float = 1.0) -> str:
        req = GenerationRequest(PROMPT, max_tokens=30, temperature=1.0, top_p=top_p, seed=seed)
        return generate(tiny_loaded, req).text

    assert sample(123) == sample(123)
    assert sample(123) != sample(124)
    greedy = generate(tiny_loaded, GenerationRequest(PROMPT, max_tokens=30)).text
    assert sample(123) != greedy
    # A nucleus this small keeps only the most likely token: sampling becomes greedy.
    assert sample(9, top_p=1e-9) == greedy


@pytest.mark.parametrize("reason", [FinishReason.CANCELLED, FinishReason.STOP])
def test_stop_between_tokens_stops_at_once(tiny_loaded, reason: FinishReason) -> None:
    request = GenerationRequest(PROMPT, max_tokens=500)
    flag = StopFlag()
    seen: list[int] = []
    chunks: list[StreamChunk] = []

    def on_token(token: int) -> None:
        seen.append(token)
        if len(seen) == 5:
            flag.set(reason)

    result = generate(tiny_loaded, request, on_token=on_token, on_chunk=chunks.append, stop=flag)
    assert result.finish_reason is reason
    assert result.token_count == 5 == len(seen)
    # The text so far, as streamed: a caller's STOP keeps what was generated.
    assert result.text == tiny_loaded.tokenizer.decode(seen) and result.text
    assert chunks[-1].done and chunks[-1].text == result.text


def test_stop_reason_first_given_wins() -> None:
    flag = StopFlag()
    assert flag.reason is None
    flag.set(FinishReason.STOP)
    flag.set(FinishReason.CANCELLED)
    assert flag.reason is FinishReason.STOP


def test_cancelled_before_start_generates_nothing(tiny_loaded) -> None:
    request = GenerationRequest(PROMPT, max_tokens=50)
    flag = StopFlag()
    flag.set()
    result = generate(tiny_loaded, request, stop=flag)
    assert (result.token_count, result.finish_reason) == (0, FinishReason.CANCELLED)


def test_deadline_gives_timeout(tiny_loaded) -> None:
    result = generate(tiny_loaded, GenerationRequest(PROMPT, max_tokens=1500, timeout_s=0.2))
    assert result.finish_reason is FinishReason.TIMEOUT
    assert result.token_count < 1500
    assert result.latency_ms < 1000  # stopped soon after the deadline, not at the end
    expired = GenerationRequest(PROMPT, max_tokens=10, timeout_s=0.0)
    assert generate(tiny_loaded, expired).finish_reason is FinishReason.TIMEOUT


def test_streaming_chunks_are_cumulative(tiny_loaded) -> None:
    chunks: list[StreamChunk] = []
    result = generate(tiny_loaded, GenerationRequest(PROMPT, max_tokens=40), on_chunk=chunks.append)
    assert chunks[-1].done and chunks[-1].result is result
    assert sum(1 for c in chunks if c.done) == 1
    text = ""
    for chunk in chunks:
        assert chunk.text == text + chunk.delta
        text = chunk.text
    assert text == result.text
    counts = [c.token_count for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 40


def test_long_prompt_is_left_truncated(tiny_loaded) -> None:
    prompt = "x = 1\n" * 3000
    result = generate(tiny_loaded, GenerationRequest(prompt, max_tokens=5))
    assert result.prompt_tokens == tiny_loaded.context_window - 5
    assert result.token_count == 5
    assert fit_prompt(list(range(10)), 3, 8) == ([5, 6, 7, 8, 9], 3)
    assert fit_prompt(list(range(10)), 50, 8) == ([9], 7)


def test_runs_in_a_thread_without_sharing_state(tiny_loaded) -> None:
    results = []
    t = threading.Thread(
        target=lambda: results.append(generate(tiny_loaded, GenerationRequest(PROMPT, 10)))
    )
    t.start()
    t.join(30)
    assert results and results[0].text == generate(tiny_loaded, GenerationRequest(PROMPT, 10)).text


# ----------------------------------------------------------- a scripted "model"


class Scripted(torch.nn.Module):
    """Emits a fixed token sequence (one per forward), through the real tokenizer."""

    def __init__(self, config, script: list[int]) -> None:
        super().__init__()
        self.config = config
        self.script = script
        self.step = 0
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=True, logits_to_keep=0, cache=None):
        logits = torch.zeros(1, 1, self.config.vocab_size)
        if self.step < len(self.script):
            logits[0, 0, self.script[self.step]] = 10.0
        else:
            logits[0, 0, self.config.eos_token_id] = 10.0
        self.step += 1
        return SimpleNamespace(logits=logits)


def char_ids(tok, text: str) -> list[int]:
    """One token per byte: the tiny tokenizer has every byte but no emoji merges."""
    ids = []
    for ch in text:
        ids.extend(tok.encode(ch, add_special_tokens=False))
    return ids


def scripted_run(tiny_loaded, text: str, **request_kwargs):
    tok = tiny_loaded.tokenizer
    model = Scripted(tiny_loaded.model.config, char_ids(tok, text))
    chunks: list[StreamChunk] = []
    request = GenerationRequest("x", max_tokens=100, **request_kwargs)
    result = run_generation(
        model,
        tok,
        request,
        context_window=64,
        stop_token_ids={tok.eos_token_id},
        on_chunk=chunks.append,
    )
    return result, chunks


def test_multibyte_characters_are_never_split(tiny_loaded) -> None:
    text = "a😀b€c"
    assert len(char_ids(tiny_loaded.tokenizer, "😀")) == 4  # really split into bytes
    result, chunks = scripted_run(tiny_loaded, text)
    assert result.text == text
    assert result.finish_reason is FinishReason.STOP  # ended on EOS
    assert result.token_count == len(char_ids(tiny_loaded.tokenizer, text))
    assert [c.text for c in chunks if c.delta] == ["a", "a😀", "a😀b", "a😀b€", "a😀b€c"]
    assert all("\ufffd" not in c.text for c in chunks)


def test_partial_stop_is_held_back_then_released(tiny_loaded) -> None:
    result, chunks = scripted_run(tiny_loaded, "xENDyEN", stop=["ENDS"])
    assert result.text == "xENDyEN"
    texts = [c.text for c in chunks]
    assert texts[:4] == ["x", "x", "x", "x"]  # "E", "EN", "END" may start "ENDS"
    assert "xENDy" in texts
    assert texts[-1] == "xENDyEN"


def test_stop_across_single_char_tokens(tiny_loaded) -> None:
    result, chunks = scripted_run(tiny_loaded, "foobar baz", stop=["zzz", "bar"])
    assert result.text == "foo"
    assert result.finish_reason is FinishReason.STOP
    assert result.token_count == 6
    assert all(c.text in ("f", "fo", "foo") for c in chunks)


def test_held_back_length() -> None:
    assert _held_back("abc\n", ["\n\n"]) == 1
    assert _held_back("abc", ["\n\n"]) == 0
    assert _held_back("a<fi", ["<file_sep>", "<|x"]) == 3


def test_min_tokens_masks_ending_tokens_at_the_start(tiny_loaded) -> None:
    """The end-of-sequence token and one-token stops cannot end an output too early."""
    from ds_engine.generation import SequenceState

    tok = tiny_loaded.tokenizer
    eos, marker = tok.eos_token_id, tok.convert_tokens_to_ids("<file_sep>")
    word = tok.encode("x", add_special_tokens=False)[0]

    def run(min_tokens: int, favourite: int) -> tuple[str, FinishReason | None]:
        seq = SequenceState(
            GenerationRequest(PROMPT, max_tokens=3, stop=["<file_sep>"], min_tokens=min_tokens),
            tok, context_window=2048, stop_token_ids={eos})
        for _ in range(3):
            logits = torch.zeros(len(tok))
            logits[favourite], logits[word] = 10.0, 5.0  # the ending token is the argmax
            if seq.accept(logits):
                break
        return seq.text, seq.finish

    x = tok.decode([word])
    assert run(0, eos) == ("", FinishReason.STOP)  # nothing offered
    assert run(0, marker) == ("", FinishReason.STOP)  # "<file_sep>" is cut at once
    assert run(1, eos) == (x, FinishReason.STOP)  # one token, then the end may come
    assert run(2, marker) == (x + x, FinishReason.STOP)


def test_first_token_bias_moves_the_first_token_only(tiny_loaded) -> None:
    """The bias lifts the first token of each text at the first step, and no later."""
    from ds_engine.generation import SequenceState

    tok = tiny_loaded.tokenizer
    word = tok.encode("x", add_special_tokens=False)[0]
    name = tok.encode("Request", add_special_tokens=False)[0]

    def run(bias: dict[str, float]) -> list[int]:
        seq = SequenceState(GenerationRequest(PROMPT, max_tokens=3, first_token_bias=bias),
                            tok, context_window=2048, stop_token_ids={tok.eos_token_id})
        for _ in range(3):
            logits = torch.zeros(len(tok))
            logits[word], logits[name] = 3.0, 1.0  # "x" wins unless "Request" is lifted
            if seq.accept(logits):
                break
        return seq.output_ids

    assert run({}) == [word, word, word]
    assert run({"Request": 1.5}) == [word, word, word]  # 2.5 < 3: not enough
    assert run({"Request": 2.5}) == [name, word, word]  # the first step only
    assert run({"Request": 2.5, "": 9.0}) == [name, word, word]  # an empty text is no token


def test_first_token_bias_changes_a_real_greedy_start(tiny_loaded) -> None:
    """On the tiny model the biased first token is the named text's, and the rest of the
    sequence is decoded as usual from there."""
    tok = tiny_loaded.tokenizer
    plain = greedy_ids(tiny_loaded, PROMPT, 4)
    target = tok.encode("zebra", add_special_tokens=False)[0]
    assert plain[0] != target
    ids: list[int] = []
    generate(tiny_loaded, GenerationRequest(PROMPT, max_tokens=4,
                                            first_token_bias={"zebra": 100.0}),
             on_token=ids.append)
    assert ids[0] == target
    assert len(ids) == 4
