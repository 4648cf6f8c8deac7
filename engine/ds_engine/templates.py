"""Prompt templates as data: fill-in-the-middle formats per model family, and chat.

A template is chosen from the tokenizer's vocabulary (the FIM sentinels a tokenizer has
tell the family) or by name. Models with no FIM tokens get the prefix-only template; the
suffix then only serves post-processing. Context from other files or notebook cells uses
the file-separator tokens of the model where it has them (StarCoder/SmolLM style).

User text never becomes a control token. The engine tokenizes the whole prompt string,
and a tokenizer turns every occurrence of an added token's text (``<fim_middle>``,
``<|im_end|>``, ``<file_sep>``...) into that token wherever it appears, so a prefix that
contains such a string would otherwise steer the model (end the turn, open a new file,
move the cursor of a FIM prompt). Every prompt builder passes each user-supplied part
through :meth:`PromptTemplate.escape`, which inserts a zero-width space after the first
character of each special string; the tokenizer then reads the text as ordinary
characters. The template learns the special strings when it is detected
(:func:`special_strings` of the tokenizer, plus its own sentinels). What the model writes
goes through :meth:`PromptTemplate.strip_special` or :meth:`PromptTemplate.cut_special`,
so control tokens never reach a user either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

# Inserted after the first character of a special string found in user text.
ZERO_WIDTH_SPACE = "\u200b"
# The shape of a control marker: ``<...>``, ``<|...|>``, ``[INST]``-like. An added token
# that is not flagged special is only treated as a control token when it has this shape
# (some tokenizers add ordinary text, such as runs of spaces, as added tokens).
_CONTROL_SHAPE = re.compile(r"<[^<>\s]{1,60}>|\[/?[A-Z][A-Z_]{1,30}\]")
# Control tokens of common code-model families, used when a template is detected from a
# vocabulary alone (no tokenizer at hand): only those present in the vocabulary count.
KNOWN_CONTROL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_pad|>", "<|file_sep|>",
    "<|repo_name|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
    "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
    "<|end_header_id|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
    "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>",
    "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>",
    "<empty_output>", "<commit_before>", "<commit_msg>", "<commit_after>", "<fim_prefix>",
    "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<s>", "</s>", "<unk>", "<pad>", "<EOT>",
    "<PRE>", "<SUF>", "<MID>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
    "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<start_of_turn>", "<end_of_turn>",
)


_FIELD = re.compile(r"\{(prefix|suffix)\}")


@dataclass(frozen=True)
class FimFormat:
    """A fill-in-the-middle layout; ``{prefix}`` and ``{suffix}`` are filled in.

    ``order`` says where the prefix sits: ``psm`` (prefix, suffix, middle) or ``spm``
    (suffix first, the prefix right before the middle, so the model only has to continue
    the prefix, and a prompt grows at its end while the user types). ``detectable`` formats
    are picked from a vocabulary alone; the others reuse ordinary control tokens of a model
    that has no FIM tokens, and only a fine-tuned adapter's metadata selects them.
    """

    family: str
    template: str
    sentinels: tuple[str, ...]
    order: str = "psm"
    detectable: bool = True

    def format(self, prefix: str, suffix: str) -> str:
        # One pass: a "{suffix}" inside the user's prefix stays text.
        parts = {"prefix": prefix, "suffix": suffix}
        return _FIELD.sub(lambda m: parts[m[1]], self.template)


def configured_template(
    fim: str | None, tokens: Iterable[str] = (), chat_template: str | None = None
) -> PromptTemplate:
    """The template of a model whose tokenizer is not at hand (a remote model server),
    from configuration: its FIM family by name (None: prefix only; unknown: KeyError), the
    control tokens its vocabulary has (``<file_sep>``, ``<filename>``, notebook and
    end-of-turn tokens), and its chat template. The same template ``detect_template``
    would pick from the full vocabulary, so prompts are rendered identically.
    """
    fmt = fim_format(fim) if fim else None
    template = detect_template([*tokens, *(fmt.sentinels if fmt else ())], chat_template)
    return template.with_fim(fmt) if fmt is not None else template


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
    # For models without FIM tokens (the embedded SmolLM2): three control tokens of its
    # StarCoder-style vocabulary that code never contains, taught by `jupyter-ds finetune`.
    # The middle ends with the end-of-text token.
    "jupyter-ds-spm": FimFormat(
        "jupyter-ds-spm",
        "<reponame><gh_stars>{suffix}<issue_closed>{prefix}",
        ("<reponame>", "<gh_stars>", "<issue_closed>"),
        order="spm",
        detectable=False,
    ),
    "jupyter-ds-psm": FimFormat(
        "jupyter-ds-psm",
        "<reponame>{prefix}<gh_stars>{suffix}<issue_closed>",
        ("<reponame>", "<gh_stars>", "<issue_closed>"),
        detectable=False,
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
    # Every string the tokenizer reads as one control token (see the module docstring).
    special_tokens: tuple[str, ...] = ()

    @property
    def supports_fim(self) -> bool:
        return self.fim is not None

    def with_fim(self, fim: FimFormat | None) -> PromptTemplate:
        """This template with another FIM layout (the one an adapter was trained on)."""
        return replace(self, fim=fim, name=fim.family if fim else self.name)

    @property
    def control_strings(self) -> tuple[str, ...]:
        """The special tokens and the template's own sentinels, longest first."""
        own = [*(self.fim.sentinels if self.fim else ()), self.filename_token,
               self.file_separator, *self.notebook_tokens.values(), *self.stop]
        return _control_strings(tuple(self.special_tokens), tuple(t for t in own if t))

    def escape(self, text: str) -> str:
        """``text`` with every control string neutralized: it tokenizes as plain text.

        A zero-width space goes after the first character of each occurrence, so the
        tokenizer's added-token matcher no longer sees it; the text still reads the same
        to a person and to the model. Idempotent, and a no-op on text without them.
        """
        return neutralize(text, self.control_strings)

    def strip_special(self, text: str) -> str:
        """What the model wrote, without any control string (for prose answers)."""
        pattern = _pattern(self.control_strings)
        return pattern.sub("", text) if pattern is not None and text else text

    def cut_special(self, text: str) -> str:
        """What the model wrote, up to its first control string (for code answers).

        A control token in generated code starts another file, cell or turn: what
        follows it does not belong to the completion.
        """
        pattern = _pattern(self.control_strings)
        match = pattern.search(text) if pattern is not None and text else None
        return text[: match.start()] if match else text

    @property
    def chat_stop(self) -> tuple[str, ...]:
        """Stop strings for a prose (chat) answer: all but the file separator, which a
        markdown answer about code may legitimately mention."""
        return tuple(s for s in self.stop if s != self.file_separator)

    def files_prompt(self, files: Sequence[tuple[str, str]]) -> str:
        """Several files as one prompt, in the model's multi-file format.

        Each ``(path, text)`` is user text and is escaped here. With filename and file
        separator tokens: ``<filename>path\ntext`` joined by the separator; without them,
        ``# path`` comment headers. The last file's text is where the model writes on.
        """
        esc = self.escape
        if self.filename_token and self.file_separator:
            return self.file_separator.join(
                f"{self.filename_token}{esc(path)}\n{esc(text)}" for path, text in files
            )
        return "\n\n".join(f"# {esc(path)}\n{esc(text)}" for path, text in files)

    def completion_prompt(
        self, prefix: str, suffix: str = "", path: str | None = None, context: str = ""
    ) -> str:
        """The prompt for an inline completion at the cursor between prefix and suffix.

        ``prefix``, ``suffix`` and ``path`` are user text and are escaped here.
        ``context`` goes right before the prefix as it is: it is built by the caller
        (notebook cells in the model's notebook format) with its user parts escaped.
        """
        header = ""
        if path and self.filename_token:
            header = f"{self.filename_token}{self.escape(path)}\n"
        prefix, suffix = self.escape(prefix), self.escape(suffix)
        if self.fim is not None:
            return self.fim.format(header + context + prefix, suffix)
        return header + context + prefix

    def chat_prompt(self, messages: list[dict[str, str]], system: str | None = None) -> str:
        """Render a chat conversation with the model's own chat template.

        Falls back to a plain ``role: content`` layout for models without a template,
        so that explain works (less well) on any causal LM.
        """
        msgs = [{**m, "content": self.escape(m["content"])} for m in messages]
        if system is not None and not (msgs and msgs[0].get("role") == "system"):
            msgs.insert(0, {"role": "system", "content": system})
        if self.chat_template:
            return _render_chat(self.chat_template, msgs)
        lines = [f"{m['role']}: {m['content']}" for m in msgs]
        return "\n\n".join(lines) + "\n\nassistant: "


def neutralize(text: str, specials: Iterable[str]) -> str:
    """``text`` with a zero-width space after the first character of each of ``specials``.

    Repeated until none is left: breaking one occurrence can uncover another that
    overlapped it (``<a>`` and ``a>``), and an insertion never creates one.
    """
    pattern = _pattern(tuple(specials))
    if pattern is None or not text:
        return text
    while True:
        escaped = pattern.sub(lambda m: m[0][0] + ZERO_WIDTH_SPACE + m[0][1:], text)
        if escaped == text:
            return text
        text = escaped


@lru_cache(maxsize=64)
def _control_strings(specials: tuple[str, ...], own: tuple[str, ...]) -> tuple[str, ...]:
    # A single character cannot be split (and is never a control marker in practice).
    found = {t for t in (*specials, *own) if len(t) >= 2 and ZERO_WIDTH_SPACE not in t}
    return tuple(sorted(found, key=lambda t: (-len(t), t)))


@lru_cache(maxsize=64)
def _pattern(strings: tuple[str, ...]) -> re.Pattern[str] | None:
    strings = tuple(t for t in strings if len(t) >= 2 and ZERO_WIDTH_SPACE not in t)
    if not strings:
        return None
    # Longest first, so that the alternation prefers ``<|im_start|>`` over ``<|im``.
    ordered = sorted(set(strings), key=lambda t: (-len(t), t))
    return re.compile("|".join(re.escape(t) for t in ordered))


def special_strings(tokenizer: Any) -> tuple[str, ...]:
    """The strings a (Hugging Face) tokenizer turns into one special or added token.

    Its special tokens, the added tokens flagged special, and the other added tokens
    that look like control markers (``<...>``); SentencePiece's leading ``▁`` is also
    dropped so that ``▁<PRE>`` covers ``<PRE>``. Works on anything that has some of
    ``all_special_tokens``, ``added_tokens_decoder`` and ``get_added_vocab``.
    """
    found: set[str] = set()
    for token in getattr(tokenizer, "all_special_tokens", None) or ():
        if isinstance(token, str):
            found.add(token)
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for added in dict(decoder).values():
        content = getattr(added, "content", added)
        if isinstance(content, str) and (
            getattr(added, "special", False) or _CONTROL_SHAPE.fullmatch(content.lstrip("▁"))
        ):
            found.add(content)
    get_added = getattr(tokenizer, "get_added_vocab", None)
    if callable(get_added):
        for content in get_added():
            if isinstance(content, str) and _CONTROL_SHAPE.fullmatch(content.lstrip("▁")):
                found.add(content)
    found |= {t.lstrip("▁") for t in found if t.startswith("▁")}
    return tuple(sorted(t for t in found if len(t) >= 2 and not t.isspace()))


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


def detect_template(
    vocab: Iterable[str],
    chat_template: str | None = None,
    special_tokens: Iterable[str] | None = None,
) -> PromptTemplate:
    """Pick the template whose sentinels all exist as tokens in ``vocab``.

    ``special_tokens`` are the strings the tokenizer reads as control tokens
    (:func:`special_strings`); without them, the well-known control tokens present in
    ``vocab`` stand in.
    """
    vocab_set = set(vocab)
    if special_tokens is None:
        special_tokens = [t for t in KNOWN_CONTROL_TOKENS if t in vocab_set]
    fim = next(
        (f for f in FIM_FORMATS.values() if f.detectable and _present(vocab_set, f.sentinels)),
        None,
    )
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
        special_tokens=tuple(sorted(set(special_tokens))),
    )
