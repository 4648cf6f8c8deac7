"""FIM families on tiny tokenizers: sentinels are single tokens and are detected."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from ds_engine.loader import load_model
from ds_engine.templates import (
    FIM_FORMATS,
    configured_template,
    detect_template,
    fim_format,
)
from ds_engine.testing import BASE_SPECIAL_TOKENS, make_tiny_model, make_tiny_tokenizer

DETECTABLE = sorted(name for name, f in FIM_FORMATS.items() if f.detectable)
ADAPTER_ONLY = sorted(name for name, f in FIM_FORMATS.items() if not f.detectable)


def test_adapter_formats_are_never_detected_from_a_vocabulary() -> None:
    # SmolLM2's vocabulary holds <reponame>, <gh_stars> and <issue_closed>: the raw model
    # must stay prefix-only, only an adapter's metadata turns its FIM format on.
    assert ADAPTER_ONLY == ["jupyter-ds-psm", "jupyter-ds-spm"]
    for family in ADAPTER_ONLY:
        tok = make_tiny_tokenizer(family)
        assert detect_template(tok.get_vocab(), tok.chat_template).fim is None


def test_spm_puts_the_prefix_right_before_the_middle() -> None:
    spm = fim_format("jupyter-ds-spm")
    assert spm.order == "spm"
    assert spm.format("PRE", "SUF") == "<reponame><gh_stars>SUF<issue_closed>PRE"
    assert fim_format("jupyter-ds-psm").format("PRE", "SUF") == (
        "<reponame>PRE<gh_stars>SUF<issue_closed>")


@pytest.mark.parametrize("family", sorted(FIM_FORMATS))
def test_placeholders_in_user_text_stay_text(family: str) -> None:
    fmt = FIM_FORMATS[family]
    prompt = fmt.format("s = '{suffix}'", "t = '{prefix}'")
    assert "s = '{suffix}'" in prompt and "t = '{prefix}'" in prompt


@pytest.mark.parametrize("family", DETECTABLE)
def test_each_fim_sentinel_is_one_token_and_family_is_detected(family: str) -> None:
    tok = make_tiny_tokenizer(family)
    fmt = FIM_FORMATS[family]
    for sentinel in fmt.sentinels:
        ids = tok.encode(sentinel, add_special_tokens=False)
        assert len(ids) == 1, (sentinel, ids)
        assert tok.convert_ids_to_tokens(ids[0]) == sentinel
    template = detect_template(tok.get_vocab(), tok.chat_template)
    assert template.name == family
    assert template.supports_fim
    prompt = template.completion_prompt("def f(x):\n    return ", "\n\nprint(f(2))")
    ids = tok.encode(prompt, add_special_tokens=False)
    sentinel_ids = [tok.convert_tokens_to_ids(s) for s in fmt.sentinels]
    # Every sentinel appears as its own token inside the encoded prompt, in order.
    positions = [ids.index(i) for i in sentinel_ids]
    assert positions == sorted(positions)


def test_no_fim_tokens_gives_prefix_only() -> None:
    tok = make_tiny_tokenizer(None)
    template = detect_template(tok.get_vocab(), tok.chat_template)
    assert template.name == "prefix-only"
    assert not template.supports_fim
    assert template.completion_prompt("a = ", "\nb = 2") == "a = "
    assert template.filename_token == "<filename>"
    assert template.file_separator == "<file_sep>"
    assert set(template.notebook_tokens) == {"code", "output", "text"}
    for special in BASE_SPECIAL_TOKENS:
        assert len(tok.encode(special, add_special_tokens=False)) == 1


def test_aliases_resolve_to_families() -> None:
    assert fim_format("codegemma") is FIM_FORMATS["qwen2.5-coder"]
    assert fim_format("StarCoder2") is FIM_FORMATS["starcoder"]
    with pytest.raises(KeyError):
        fim_format("no-such-family")


def test_chat_template_is_chatml(tiny_loaded) -> None:
    prompt = tiny_loaded.template.chat_prompt([{"role": "user", "content": "hi"}], system="S")
    assert prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n" + (
        "<|im_start|>assistant\n"
    )


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_tiny_model_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = _digest(make_tiny_model(tmp_path / "a", seed=3))
    b = _digest(make_tiny_model(tmp_path / "b", seed=3))
    c = _digest(make_tiny_model(tmp_path / "c", seed=4))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]
    assert a["tokenizer.json"] == c["tokenizer.json"]


def test_tiny_model_with_fim_loads_with_that_template(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "fim", fim_family="starcoder")
    loaded = load_model(path, device="cpu", warm_up=False)
    assert loaded.template.name == "starcoder"
    config = loaded.model.config
    assert config.num_hidden_layers == 2 and config.tie_word_embeddings is False
    eos = loaded.tokenizer.eos_token_id
    assert float(loaded.model.lm_head.weight[eos].abs().sum()) == 0.0


@pytest.mark.parametrize("family", ["deepseek-coder", "qwen2.5-coder", "starcoder", "codellama"])
def test_a_configured_template_renders_as_the_detected_one(family):
    """A remote engine, with no vocabulary at hand, renders the prompts the local one would."""
    fmt = fim_format(family)
    tokens = ("<file_sep>", "<filename>", "<|endoftext|>", "<jupyter_code>")
    detected = detect_template([*fmt.sentinels, *tokens, "def", "return"])
    configured = configured_template(family, tokens)
    assert configured == detected
    assert configured.completion_prompt("a = ", "\nb", "x.py") == detected.completion_prompt(
        "a = ", "\nb", "x.py")


def test_a_configured_template_without_fim_or_unknown():
    plain = configured_template(None, ("<|im_end|>",), "{{ messages }}")
    assert not plain.supports_fim and plain.stop == ("<|im_end|>",)
    spm = configured_template("jupyter-ds-spm")  # not detectable: named only
    assert spm.fim is not None and spm.fim.order == "spm"
    with pytest.raises(KeyError):
        configured_template("no-such-family")
