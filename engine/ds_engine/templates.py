"""Prompt templates as data: fill-in-the-middle formats per model family, and chat.

A template is chosen from the tokenizer's vocabulary (the FIM sentinels a tokenizer has
tell the family) or by name. Models with no FIM tokens get the prefix-only template; the
suffix then only serves post-processing. Context from other files or notebook cells uses
the file-separator tokens of the model where it has them (StarCoder/SmolLM style).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FimFormat:
    """A fill-in-the-middle layout; ``{prefix}`` and ``{suffix}`` are filled in."""

    family: str
    template: str
    sentinels: tuple[str, ...]

    def format(self, prefix: str, suffix: str) -> str:
        return self.template.replace("{prefix}", prefix).replace("{suffix}", suffix)


FIM_FORMATS: Mapping[str, FimFormat] = {
    "deepseek-coder": FimFormat(
        "deepseek-coder",
        "<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>",
        ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    ),
    "qwen2.5-coder": FimFormat(
        "qwen2.5-coder",
        "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
        ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ),
    "starcoder": FimFormat(
        "starcoder",
        "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",
        ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ),
    "codellama": FimFormat(
        "codellama",
        "<PRE> {prefix} <SUF>{suffix} <MID>",
        ("<PRE>", "<SUF>", "<MID>"),
    ),
}
# CodeGemma shares Qwen2.5-Coder's sentinels.
FIM_ALIASES: Mapping[str, str] = {"codegemma": "qwen2.5-coder", "starcoder2": "starcoder"}

DEFAULT_SYSTEM_PROMPT = (
    "You are jupyter-ds, a precise coding assistant. Answer in concise GitHub-flavoured "
    "markdown; put code in fenced blocks with the language named."
)


@dataclass(frozen=True)
class PromptTemplate:
    """How to turn editor context into a prompt for one model.

    ``fim`` is None for prefix-only models. ``file_separator`` and ``filename_token``
    are set when the vocabulary has them (used to prepend other files or cells).
    ``chat_template`` is the tokenizer's Jinja chat template, or None for a plain
    ``role: content`` fallback.
    """

    name: str
    fim: FimFormat | None = None
    filename_token: str | None = None
    file_separator: str | None = None
    notebook_tokens: Mapping[str, str] = field(default_factory=dict)
    chat_template: str | None = None
    stop: tuple[str, ...] = ()

    @property
    def supports_fim(self) -> bool:
        return self.fim is not None

    def completion_prompt(self, prefix: str, suffix: str = "", path: str | None = None) -> str:
        """The prompt for an inline completion at the cursor between prefix and suffix."""
        header = ""
        if path and self.filename_token:
            header = f"{self.filename_token}{path}\n"
        if self.fim is not None:
            return self.fim.format(header + prefix, suffix)
        return header + prefix

    def chat_prompt(self, messages: list[dict[str, str]], system: str | None = None) -> str:
        """Render a chat conversation with the model's own chat template.

        Falls back to a plain ``role: content`` layout for models without a template,
        so that explain works (less well) on any causal LM.
        """
        msgs = list(messages)
        if system is not None and not (msgs and msgs[0].get("role") == "system"):
            msgs.insert(0, {"role": "system", "content": system})
        if self.chat_template:
            return _render_chat(self.chat_template, msgs)
        lines = [f"{m['role']}: {m['content']}" for m in msgs]
        return "\n\n".join(lines) + "\n\nassistant: "


def _render_chat(template: str, messages: list[dict[str, str]]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token=""
    )


def _present(vocab: Iterable[str], tokens: Iterable[str]) -> bool:
    vocab_set = vocab if isinstance(vocab, (set, frozenset, dict)) else set(vocab)
    return all(t in vocab_set for t in tokens)


def fim_format(name: str) -> FimFormat:
    """The FIM format of a family by name (aliases accepted); KeyError if unknown."""
    key = FIM_ALIASES.get(name.lower(), name.lower())
    return FIM_FORMATS[key]


def detect_template(vocab: Iterable[str], chat_template: str | None = None) -> PromptTemplate:
    """Pick the template whose sentinels all exist as tokens in ``vocab``."""
    vocab_set = set(vocab)
    fim = next((f for f in FIM_FORMATS.values() if _present(vocab_set, f.sentinels)), None)
    notebook = {
        kind: tok
        for kind, tok in (
            ("code", "<jupyter_code>"),
            ("output", "<jupyter_output>"),
            ("text", "<jupyter_text>"),
            ("start", "<jupyter_start>"),
        )
        if tok in vocab_set
    }
    stops = tuple(
        t for t in ("<file_sep>", "<|endoftext|>", "<|im_end|>", "<EOT>") if t in vocab_set
    )
    return PromptTemplate(
        name=fim.family if fim else "prefix-only",
        fim=fim,
        filename_token="<filename>" if "<filename>" in vocab_set else None,
        file_separator="<file_sep>" if "<file_sep>" in vocab_set else None,
        notebook_tokens=notebook,
        chat_template=chat_template,
        stop=stops,
    )
