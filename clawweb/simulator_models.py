"""What the simulator's models are: their capabilities, ``/api/tags`` and ``/api/show`` entries, and what they compute.

Shapes follow Ollama's ``api/types.go`` (``ShowResponse``, ``ModelDetails``, ``ListModelResponse``) and the numbers
follow ``ollama show`` for the real models (qwen3:32b, nomic-embed-text); any other name gets plausible ones. Every chat
model here is a thinking, tool-calling model like qwen3, except a code model (a name with ``code`` in it, such as
``qwen2.5-coder:7b``): it fills in the middle (``insert``) and does not think, as Ollama's coder models do.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

MODIFIED_AT = "2026-01-02T03:04:05.678Z"
APACHE = "Apache License\nVersion 2.0, January 2004\nhttp://www.apache.org/licenses/\n"
QWEN3_TEMPLATE = (
    "{{- if .Messages }}{{- if or .System .Tools }}<|im_start|>system\n{{- if .System }}\n{{ .System }}{{- end }}"
    '{{- if .Tools }}\n\n# Tools\n\n<tools>{{- range .Tools }}\n{"type": "function", "function": {{ .Function }}}'
    "{{- end }}\n</tools>{{- end }}<|im_end|>\n{{ end }}{{- range $i, $_ := .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ if .Think }}<think>\n{{ end }}"
    "{{- else }}{{ .Prompt }}{{ end }}"
)
FIM_TEMPLATE = (
    "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
    "{{- else }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ end }}"
)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    parameter_size: str
    parameter_count: int
    quantization: str
    size: int
    context_length: int
    embedding_length: int
    capabilities: tuple[str, ...]
    template: str
    parameters: tuple[tuple[str, Any], ...]

    @property
    def embeds(self) -> bool:
        return "embedding" in self.capabilities

    @property
    def full_name(self) -> str:
        """Ollama's ``Model.Name``, which its capability errors quote: ``registry.ollama.ai/library/qwen3:32b``."""
        return "registry.ollama.ai/" + (self.name if "/" in self.name else "library/" + self.name)


def canonical(name: str) -> str:
    """A model name with its tag, as Ollama resolves it (``nomic-embed-text`` is ``nomic-embed-text:latest``)."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _size_label(name: str, default: float) -> tuple[str, int]:
    """("32.8B", 32762123264) from a tag such as ``32b`` (qwen3:32b has 32.8B parameters, as Ollama lists it)."""
    if name.startswith("qwen3:32b"):
        return "32.8B", 32_762_123_264
    found = re.search(r":(\d+(?:\.\d+)?)b", name)
    billions = float(found.group(1)) if found else default
    return f"{billions:.1f}B", int(billions * 1e9)


def chat_spec(name: str) -> ModelSpec:
    base = name.split(":")[0].rsplit("/", 1)[-1]
    coder = "code" in base
    arch = "qwen3" if base.startswith("qwen3") else "qwen2" if base.startswith("qwen2") else "llama"
    label, count = _size_label(name, 8.0)
    return ModelSpec(
        name=name,
        arch=arch,
        parameter_size=label,
        parameter_count=count,
        quantization="Q4_K_M",
        size=20_201_253_788 if name == "qwen3:32b" else count * 5 // 8,
        context_length=40960 if arch == "qwen3" else 32768,
        embedding_length=5120 if name == "qwen3:32b" else 4096,
        capabilities=("completion", "tools", "insert") if coder else ("completion", "tools", "thinking"),
        template=FIM_TEMPLATE if coder else QWEN3_TEMPLATE,
        parameters=(
            ("repeat_penalty", 1),
            ("stop", "<|im_start|>"),
            ("stop", "<|im_end|>"),
            ("temperature", 0.6),
            ("top_k", 20),
            ("top_p", 0.95),
        ),
    )


def embed_spec(name: str, dimension: int) -> ModelSpec:
    """An embedding model of ``dimension``; nomic-embed-text's numbers for the default one."""
    nomic = name.startswith("nomic-embed-text")
    return ModelSpec(
        name=name,
        arch="nomic-bert" if nomic else "bert",
        parameter_size="137M" if nomic else "335M",
        parameter_count=136_727_040 if nomic else 334_094_336,
        quantization="F16",
        size=274_302_450 if nomic else 669_615_493,
        context_length=2048 if nomic else 512,
        embedding_length=dimension,
        capabilities=("embedding",),
        template="",
        parameters=(("num_ctx", 8192),) if nomic else (),
    )


def details(spec: ModelSpec) -> dict[str, Any]:
    """Ollama's ``ModelDetails``, every field present (none is ``omitempty`` but the two lengths)."""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": spec.arch,
        "families": [spec.arch],
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization,
    }


def tags_entry(spec: ModelSpec) -> dict[str, Any]:
    """One model of ``GET /api/tags`` (``ListModelResponse``'s field order)."""
    return {
        "name": spec.name,
        "model": spec.name,
        "modified_at": MODIFIED_AT,
        "size": spec.size,
        "digest": hashlib.sha256(spec.name.encode()).hexdigest(),
        "details": details(spec),
    }


def _go_value(value: Any) -> str:
    """A Modelfile parameter as Go's ``%#v`` prints it: strings quoted, numbers bare."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if isinstance(value, str) else f"{value:g}"


def model_info(spec: ModelSpec, verbose: bool) -> dict[str, Any]:
    """The GGUF key/values ``/api/show`` returns, sorted as Go's encoder writes a map; the tokenizer's arrays are
    empty unless ``verbose`` (Ollama's docs/api.md: they "populate if verbose=true")."""
    arch = spec.arch
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.file_type": 1 if spec.quantization == "F16" else 15,
        "general.parameter_count": spec.parameter_count,
        "general.quantization_version": 2,
        f"{arch}.attention.head_count": 12 if spec.embeds else 64,
        f"{arch}.block_count": 12 if spec.embeds else 64,
        f"{arch}.context_length": spec.context_length,
        f"{arch}.embedding_length": spec.embedding_length,
        "tokenizer.ggml.model": "bert" if spec.embeds else "gpt2",
        "tokenizer.ggml.tokens": ["[PAD]", "[UNK]", "[CLS]"] if verbose else [],
        "tokenizer.ggml.token_type": [3, 2, 3] if verbose else [],
    }
    if spec.embeds:
        info[f"{arch}.pooling_type"] = 1
    else:
        info[f"{arch}.attention.head_count_kv"] = 8
        info["tokenizer.ggml.merges"] = ["Ġ Ġ", "ĠĠ ĠĠ"] if verbose else []
    return dict(sorted(info.items()))


def show(spec: ModelSpec, verbose: bool) -> dict[str, Any]:
    """``POST /api/show``: Ollama's ``ShowResponse`` in its field order, empty strings left out (``omitempty``)."""
    parameters = "\n".join(f"{key:<30} {_go_value(value)}" for key, value in spec.parameters)
    modelfile = (
        '# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this, replace FROM with:\n'
        f"# FROM {spec.name}\n\nFROM /usr/share/ollama/.ollama/models/blobs/sha256-"
        f"{hashlib.sha256(spec.name.encode()).hexdigest()}\n"
        + (f'TEMPLATE """{spec.template}"""\n' if spec.template else "")
        + "".join(f"PARAMETER {key} {_go_value(value)}\n" for key, value in spec.parameters)
        + f'LICENSE """{APACHE}"""\n'
    )
    answer: dict[str, Any] = {"license": APACHE, "modelfile": modelfile}
    if parameters:
        answer["parameters"] = parameters
    if spec.template:
        answer["template"] = spec.template
    answer["details"] = details(spec)
    answer["model_info"] = model_info(spec, verbose)
    if verbose:
        answer["tensors"] = [{"name": "token_embd.weight", "type": "F16", "shape": [spec.embedding_length, 151936]}]
    answer["capabilities"] = list(spec.capabilities)
    answer["modified_at"] = MODIFIED_AT
    return answer


# --- what the models write -------------------------------------------------------------------------------------------


def schema_instance(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A small value that a JSON schema accepts (the first choice of each ``enum``/``anyOf``), for ``format``. Any
    JSON at all may come as a schema: what is not understood gives ``{}``, and ``$ref`` loops end at depth 8."""
    if not isinstance(schema, dict) or depth > 8:
        return {}
    if defs is None:
        found = schema.get("$defs", schema.get("definitions"))
        defs = found if isinstance(found, dict) else {}
    deeper = depth + 1
    if isinstance(schema.get("$ref"), str):
        return schema_instance(defs.get(schema["$ref"].rsplit("/", 1)[-1]), defs, deeper)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema_instance(schema[key][0], defs, deeper)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    properties = schema.get("properties")
    if kind == "object":
        items = properties.items() if isinstance(properties, dict) else ()
        return {str(key): schema_instance(value, defs, deeper) for key, value in items}
    if kind == "array":
        least = schema.get("minItems")
        return [schema_instance(schema.get("items"), defs, deeper)] * (
            min(least, 3) if isinstance(least, int) and least > 1 else 1
        )
    return (
        {"integer": 42, "number": 4.2, "boolean": True, "null": None}.get(kind, "text") if isinstance(kind, str) else {}
    )


# --- embeddings ------------------------------------------------------------------------------------------------------


def raw_vector(model: str, text: str, dimension: int) -> list[float]:
    """The model's output for ``text``: deterministic (a hash of model and text), not normalized, in (-1, 1)."""
    digest = hashlib.shake_256(f"{model}\0{text}".encode()).digest(2 * dimension)
    return [(value - 32767.5) / 32768 for value in struct.unpack(f"<{dimension}H", digest)]


def normalize(vector: Sequence[float]) -> list[float]:
    """Ollama's ``normalize`` (server/routes.go): divided by the L2 norm (at least 1e-12)."""
    scale = 1.0 / max(math.sqrt(sum(v * v for v in vector)), 1e-12)
    return [v * scale for v in vector]


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _es6(mantissa: str, exponent: int) -> str:
    """A number as Go's encoding/json writes floats: decimal for exponents in [-6, 21), else ``1.5e-7``."""
    sign, digits = ("-", mantissa[1:]) if mantissa.startswith("-") else ("", mantissa)
    digits = digits.replace(".", "").rstrip("0") or "0"
    if digits == "0":
        return "0"
    if 0 <= exponent < 21:
        whole, fraction = digits[: exponent + 1].ljust(exponent + 1, "0"), digits[exponent + 1 :]
        return sign + whole + ("." + fraction if fraction else "")
    if -6 <= exponent < 0:
        return sign + "0." + "0" * (-exponent - 1) + digits
    return (
        f"{sign}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}e{'-' if exponent < 0 else '+'}{abs(exponent)}"
    )


def go_float32(value: float) -> str:
    """A ``float32`` as Go writes it in JSON: the shortest digits that read back as the same float32."""
    single = _float32(value)
    for precision in range(9):
        text = f"{single:.{precision}e}"
        if _float32(float(text)) == single:
            break
    mantissa, exponent = text.split("e")
    return _es6(mantissa, int(exponent))


def go_float64(value: float) -> str:
    """A ``float64`` as Go writes it in JSON (Python's repr has the same shortest digits)."""
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits))
    return _es6(("-" if sign else "") + text[0] + "." + text[1:], len(digits) + int(exponent) - 1)


@lru_cache(maxsize=4096)
def embed_json(model: str, text: str, dimension: int, dimensions: int) -> bytes:
    """One vector of ``/api/embed``: normalized, cut to ``dimensions`` and normalized again when that is smaller (as
    Ollama does), written as Go writes ``[]float32``. Cached: a benchmark embeds the same few texts many times."""
    vector = normalize(raw_vector(model, text, dimension))
    if 0 < dimensions < len(vector):
        vector = normalize(vector[:dimensions])
    return ("[" + ",".join(go_float32(v) for v in vector) + "]").encode()


def embedding_json(model: str, text: str, dimension: int) -> bytes:
    """The vector of the older ``/api/embeddings``: the model's raw output, not normalized (Ollama's docs example
    has values near 0.9 in it, and Ollama leaves nomic-bert's vectors raw there), as ``[]float64`` of float32s."""
    return ("[" + ",".join(go_float64(_float32(v)) for v in raw_vector(model, text, dimension)) + "]").encode()
