"""Optional LLM labeler: ask an OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp server,
LM Studio, a hosted API) which of the 18 CT-RATE abnormalities a report mentions.

This is how the reference scored reports (``mllm/evaluation/test.py``: ``gpt-oss:120b`` through
Ollama, a system prompt defining the abnormalities, a JSON answer of 18 booleans, missing keys read
as false). The rule-based :func:`~voxelfm.reportgen.labeler.label_report` stays the default; use
this one when you have a capable model served locally::

    labeler = LLMLabeler("http://localhost:11434/v1", model="gpt-oss:120b")   # Ollama
    labeler("Mild cardiomegaly. No pleural effusion.")["Cardiomegaly"]          # True

The request asks for structured output (``response_format`` with a JSON schema of 18 required
booleans; servers without schema support can use ``response_format="json_object"`` or ``None``).
Answers are parsed leniently (the first JSON object in the text; ``"true"``/``"yes"``/``1`` count
as true); keys that are missing or unknown are false. Identical reports (after whitespace and case
normalisation) are sent once. Only the standard library is used (``urllib``).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Literal

from voxelfm.errors import VoxelFMError
from voxelfm.reportgen.labeler import ABNORMALITIES, FINDING_COLUMNS

__all__ = ["LLMLabeler", "LLMLabelerError", "SYSTEM_PROMPT", "abnormality_schema"]

_DEFINITIONS = {
    "Medical material": "any medical device or surgical material: catheters, ports, stents, pacemakers or "
                        "defibrillators, sternotomy wires, surgical clips or sutures, prostheses, tubes, drains",
    "Arterial wall calcification": "calcification or calcified atherosclerotic plaque in the aorta or other "
                                   "non-coronary arteries",
    "Cardiomegaly": "an enlarged heart",
    "Pericardial effusion": "fluid in the pericardium (pericardial effusion or pericardial thickening-effusion)",
    "Coronary artery wall calcification": "calcification or calcified plaque in the coronary arteries",
    "Hiatal hernia": "a hiatal (hiatus) hernia",
    "Lymphadenopathy": "enlarged or pathological lymph nodes (short axis of 10 mm or more)",
    "Emphysema": "pulmonary emphysema or bullae (not subcutaneous or mediastinal emphysema)",
    "Atelectasis": "atelectasis or collapse of lung, lobe or segment (including subsegmental/linear atelectasis)",
    "Lung nodule": "one or more pulmonary nodules or micronodules (not thyroid, adrenal or other organ nodules)",
    "Lung opacity": "any pulmonary opacity: ground-glass opacity, infiltrate, increased density",
    "Pulmonary fibrotic sequela": "fibrosis, fibrotic sequelae, scarring, fibrotic bands, reticulation or honeycombing",
    "Pleural effusion": "fluid in the pleural space (pleural effusion, pleural thickening-effusion)",
    "Mosaic attenuation pattern": "mosaic attenuation, mosaic perfusion or air trapping",
    "Peribronchial thickening": "peribronchial or bronchial wall thickening",
    "Consolidation": "consolidation or air-space disease",
    "Bronchiectasis": "bronchiectasis or dilated bronchi",
    "Interlobular septal thickening": "thickening of the interlobular septa",
}

#: System prompt: defines the 18 abnormalities and the JSON answer (the reference's idea, our words).
SYSTEM_PROMPT = (
    "You are an expert radiologist extracting structured labels from chest CT reports.\n"
    "For each of the following 18 abnormalities, answer true if the report states that it is present "
    "(including when it is described as possible, probable or suspected) and false if the report does "
    "not mention it or states that it is absent (for example \"no pleural effusion\").\n"
    + "".join(f"- {name}: {desc}\n" for name, desc in _DEFINITIONS.items())
    + "Answer with one JSON object whose keys are exactly these 18 names and whose values are true or "
      "false. Do not add any other text."
)


def abnormality_schema() -> dict[str, Any]:
    """The JSON schema of an answer: an object of 18 required booleans, no other keys."""
    return {
        "type": "object",
        "properties": {name: {"type": "boolean"} for name in ABNORMALITIES},
        "required": list(ABNORMALITIES),
        "additionalProperties": False,
    }


class LLMLabelerError(VoxelFMError):
    """The endpoint could not be reached or gave an answer that is not a chat completion."""


_TRUE = {"true", "yes", "y", "1", "present", "positive"}
_BY_KEY = {re.sub(r"[^a-z]", "", n.lower()): n for n in ABNORMALITIES}
_BY_KEY.update({re.sub(r"[^a-z]", "", c): n for n, c in FINDING_COLUMNS.items()})


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    return str(v).strip().lower() in _TRUE


def _parse_answer(content: str) -> dict[str, bool]:
    """First JSON object in ``content`` → ``{abnormality: bool}``; missing keys are false."""
    result = {n: False for n in ABNORMALITIES}
    obj: Any = None
    text = content.strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        start = text.find("{")
        while start >= 0 and obj is None:
            depth = 0
            for i in range(start, len(text)):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        try:
                            obj = json.loads(text[start:i + 1])
                        except json.JSONDecodeError:
                            pass
                        break
            start = text.find("{", start + 1) if obj is None else -1
    if not isinstance(obj, Mapping):
        return result
    for k, v in obj.items():
        name = _BY_KEY.get(re.sub(r"[^a-z]", "", str(k).lower()))
        if name is not None:
            result[name] = _as_bool(v)
    return result


class LLMLabeler:
    """Label reports with an LLM behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: API root including the version, e.g. ``http://localhost:11434/v1`` (Ollama),
            ``http://localhost:8000/v1`` (vLLM).
        model: the served model name.
        api_key: sent as ``Authorization: Bearer``; most local servers ignore it.
        response_format: ``"json_schema"`` (default, structured output), ``"json_object"`` or
            ``None`` (plain prompt; the answer is parsed leniently).
        system_prompt: override :data:`SYSTEM_PROMPT`.
        temperature: sampling temperature (0 → deterministic on most servers).
        timeout: seconds per request; ``max_retries`` extra attempts with exponential back-off on
            network errors and 5xx answers.

    Calling the labeler returns ``{abnormality: bool}`` over the 18 names, like
    :func:`~voxelfm.reportgen.labeler.label_report`, so it can be passed as ``labeler=`` to
    :func:`~voxelfm.reportgen.evaluate.evaluate_reports`.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 response_format: Literal["json_schema", "json_object"] | None = "json_schema",
                 system_prompt: str = SYSTEM_PROMPT, temperature: float = 0.0, timeout: float = 120.0,
                 max_retries: int = 2) -> None:
        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://localhost:11434/v1, got {base_url!r}")
        if not model:
            raise ValueError("model must name the served model (e.g. 'gpt-oss:120b')")
        if response_format not in ("json_schema", "json_object", None):
            raise ValueError("response_format must be 'json_schema', 'json_object' or None")
        self.url = str(base_url).rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.response_format = response_format
        self.system_prompt = system_prompt
        self.temperature = float(temperature)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self._cache: dict[str, dict[str, bool]] = {}

    def _payload(self, report: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": self.system_prompt},
                         {"role": "user", "content": f"Report:\n{report}"}],
            "temperature": self.temperature,
            "stream": False,
        }
        if self.response_format == "json_schema":
            payload["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "ct_rate_abnormalities", "strict": True, "schema": abnormality_schema()}}
        elif self.response_format == "json_object":
            payload["response_format"] = {"type": "json_object"}
        return payload

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                body = exc.read().decode("utf-8", "replace")[:300]
                if exc.code < 500:
                    raise LLMLabelerError(f"{self.url} answered HTTP {exc.code}: {body}") from exc
                last = exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = exc
            except json.JSONDecodeError as exc:
                raise LLMLabelerError(f"{self.url} did not answer with JSON") from exc
            if attempt < self.max_retries:
                time.sleep(min(2.0 ** attempt, 10.0))
        raise LLMLabelerError(f"cannot reach the labeling endpoint {self.url} ({last}); "
                              "start the server (e.g. `ollama serve`) or use the rule-based labeler")

    def __call__(self, report: str) -> dict[str, bool]:
        """``{abnormality: present}`` over the 18 CT-RATE abnormalities for one report."""
        text = "" if report is None or (isinstance(report, float) and report != report) else str(report)
        key = " ".join(text.lower().split())
        if key in self._cache:
            return dict(self._cache[key])
        if not key:
            result = {n: False for n in ABNORMALITIES}
        else:
            answer = self._post(self._payload(text))
            try:
                content = answer["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError) as exc:
                raise LLMLabelerError(f"{self.url} did not return a chat completion: {str(answer)[:200]}") from exc
            result = _parse_answer(content)
        self._cache[key] = result
        return dict(result)
