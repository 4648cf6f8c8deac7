"""Tiny random-weight models for tests: built offline in about a second.

No model hub is reachable in CI, and the real embedded model takes tens of seconds to
load, so most tests run on a Llama of a few hundred thousand parameters whose tokenizer
is trained here on an embedded Python corpus. Its output is gibberish, but it has every
property the engine relies on: a byte-level BPE tokenizer with the SmolLM/StarCoder
file and notebook tokens, optional FIM sentinels of any family, a ChatML chat template,
a KV cache, and deterministic weights for a seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ds_engine.interface import FinishReason
from ds_engine.templates import fim_format

EOS_TOKEN = "<|endoftext|>"
BASE_SPECIAL_TOKENS: tuple[str, ...] = (
    EOS_TOKEN,
    "<filename>",
    "<file_sep>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_text>",
    "<|im_start|>",
    "<|im_end|>",
)
TINY_VOCAB_SIZE = 600

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A small, varied Python corpus so the BPE merges look like code (indentation, keywords,
# common identifiers) and prompts in tests tokenize into realistic pieces.
CORPUS: tuple[str, ...] = (
    "def add(a, b):\n    return a + b\n",
    "def subtract(a, b):\n    return a - b\n",
    'def multiply(x, y):\n    """Multiply two numbers."""\n    return x * y\n',
    "import numpy as np\nimport pandas as pd\n\ndf = pd.read_csv('data.csv')\n",
    "df.head()\ndf.describe()\nprint(df.shape)\n",
    "for i in range(10):\n    print(i)\n",
    "while True:\n    line = f.readline()\n    if not line:\n        break\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "    def __repr__(self):\n        return f'Point({self.x}, {self.y})'\n",
    "with open(path, 'r', encoding='utf-8') as f:\n    text = f.read()\n",
    "try:\n    value = int(s)\nexcept ValueError:\n    value = None\n",
    "result = [x ** 2 for x in numbers if x % 2 == 0]\n",
    "counts = {}\nfor word in words:\n    counts[word] = counts.get(word, 0) + 1\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n"
    "    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "import matplotlib.pyplot as plt\nplt.plot(x, y)\nplt.show()\n",
    "from sklearn.model_selection import train_test_split\n",
    "X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2)\n",
    "def test_add():\n    assert add(1, 2) == 3\n    assert add(-1, 1) == 0\n",
    "import pytest\n\n@pytest.fixture\ndef client():\n    return Client()\n",
    "async def fetch(session, url):\n    async with session.get(url) as response:\n"
    "        return await response.json()\n",
    "if __name__ == '__main__':\n    main()\n",
    "def mean(values: list[float]) -> float:\n    return sum(values) / len(values)\n",
    "lambda item: item[1]\nsorted(pairs, key=lambda p: p[0], reverse=True)\n",
    "# Compute the total\ntotal = 0\nfor value in values:\n    total += value\n",
    "raise NotImplementedError('not yet')\n",
    "return None\nreturn True\nreturn False\nreturn self\n",
    "Hello, world! This notebook explains the data and the model.\n",
)


def _train_tokenizer(special_tokens: list[str]) -> Tokenizer:
    """Byte-level BPE, like GPT-2/StarCoder/SmolLM: any text round-trips exactly."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so merge counts are stable; training is deterministic.
    tok.train_from_iterator(list(CORPUS) * 4, trainer=trainer)
    return tok


def make_tiny_tokenizer(fim_family: str | None = None) -> PreTrainedTokenizerFast:
    """The tiny model's tokenizer alone (useful for template tests without weights)."""
    specials = list(BASE_SPECIAL_TOKENS)
    if fim_family is not None:
        specials += [s for s in fim_format(fim_family).sentinels if s not in specials]
    backend = _train_tokenizer(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        extra_special_tokens=specials[1:],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = 2048
    return tokenizer


def make_tiny_model(
    path: str | Path, fim_family: str | None = None, seed: int = 0, hidden_size: int = 64
) -> Path:
    """Write a tiny random Llama + tokenizer as an HF directory at ``path``; return it.

    ``fim_family`` (a key of ``templates.FIM_FORMATS`` or an alias) adds that family's
    sentinels as special tokens, so :func:`detect_template` picks the family. The lm_head
    row of EOS is zeroed: random logits are spread around 0 with hundreds of candidates,
    so EOS is practically never the argmax and greedy generations run to ``max_tokens``
    (tests need long generations to observe cancellation and timeouts).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(fim_family)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        # A wider init than the default 0.02 makes greedy output less repetitive.
        initializer_range=0.1,
    )
    # Seed a forked RNG so building a model never disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight[eos_id].zero_()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_adapter(
    model_path: str | Path,
    out: str | Path,
    seed: int = 1,
    rank: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    fim_family: str | None = "jupyter-ds-spm",
    base_model: str | None = None,
) -> Path:
    """A random (non-zero) peft LoRA adapter for the tiny model at ``model_path``.

    Written by peft itself, as ``jupyter-ds finetune`` writes one, with a metadata file
    naming ``fim_family`` and ``base_model`` (the folder's name by default).
    """
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ds_engine.adapters import METADATA_FILE

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                        init_lora_weights=False, task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, config)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    meta: dict = {"base_model": base_model or Path(model_path).name}
    if fim_family is not None:
        fmt = fim_format(fim_family)
        meta["fim"] = {"family": fmt.family, "template": fmt.template,
                       "sentinels": list(fmt.sentinels), "order": fmt.order}
    (out / METADATA_FILE).write_text(json.dumps(meta))
    return out


class NoAdapters:
    """The adapter and admission parts of the Engine interface, for test engines that
    serve no adapters and shed nothing."""

    template = None

    def template_for(self, adapter):
        from ds_engine.adapters import AdapterError

        if adapter is not None:
            raise AdapterError(404, f"unknown adapter {adapter!r}")
        return self.template

    def adapters(self) -> list:
        return []

    def load_adapter(self, name: str, path: str) -> dict:
        from ds_engine.adapters import AdapterError

        raise AdapterError(422, f"this engine serves no adapters ({name!r})")

    def unload_adapter(self, name: str) -> dict:
        from ds_engine.adapters import AdapterError

        raise AdapterError(404, f"unknown adapter {name!r}")

    def check_admission(self, request) -> None:
        """Test engines shed nothing."""


class ScriptedEngine(NoAdapters):
    """An :class:`~ds_engine.interface.Engine` whose "model" answers from a script.

    For tests of the loops above the model (test generation, post-processing): the real
    pipeline runs, only the text the model would write is fixed. Each generate/stream
    call takes the next answer (the last one repeats) and records the prompt it got.
    """

    @classmethod
    def from_config(cls, config) -> ScriptedEngine:
        """Built by the server from its ``engine_class`` setting (``ds_engine.factory``):
        the answers come from ``config.options["answers"]`` (default ``["pass"]``), and
        ``name`` and ``vocab`` may be given there too."""
        options = dict(config.options)
        answers = options.pop("answers", ["pass"])
        unknown = sorted(set(options) - {"name", "vocab"})
        if unknown:
            raise ValueError(f"unknown ScriptedEngine option(s): {', '.join(unknown)}")
        if "vocab" in options:
            options["vocab"] = tuple(options["vocab"])
        return cls(list(answers), **options)

    def __init__(self, answers: list[str], name: str = "scripted", vocab: tuple[str, ...] = ()):
        from ds_engine.interface import EngineState
        from ds_engine.templates import detect_template

        self.answers = list(answers)
        self.prompts: list[str] = []
        self.requests: list = []  # the GenerationRequests, as the engine got them
        self.name = name
        self._template = detect_template(vocab or BASE_SPECIAL_TOKENS, CHATML_TEMPLATE)
        self._state = EngineState.READY

    @property
    def state(self):
        return self._state

    @property
    def template(self):
        return self._template

    def start_loading(self) -> None:
        return None

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def context_window(self) -> int:
        return 8192

    def _answer(self, request):
        from ds_engine.interface import FinishReason, GenerationResult

        self.prompts.append(request.prompt)
        self.requests.append(request)
        text = self.answers[min(len(self.prompts), len(self.answers)) - 1]
        return GenerationResult(
            text=text,
            token_count=max(1, len(text.split())),
            prompt_tokens=self.count_tokens(request.prompt),
            confidence=1.0,
            finish_reason=FinishReason.STOP,
            model=self.name,
            latency_ms=0.0,
            request_id=request.request_id,
        )

    async def generate(self, request):
        return self._answer(request)

    async def stream(self, request):
        from ds_engine.interface import StreamChunk

        result = self._answer(request)
        yield StreamChunk(result.text, result.text, result.token_count, True, result)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True

    def cancel(self, request_id: str, *, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        """Answers are immediate: nothing is ever running to stop."""
        return False

    def info(self):
        from ds_engine.interface import EngineInfo

        return EngineInfo(name=self.name, state=self._state, template=self._template.name)
