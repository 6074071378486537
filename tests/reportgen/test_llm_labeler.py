"""LLM labeler against a tiny local OpenAI-compatible fake (http.server on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from voxelfm.reportgen.labeler import ABNORMALITIES
from voxelfm.reportgen.llm_labeler import SYSTEM_PROMPT, LLMLabeler, LLMLabelerError, abnormality_schema


class _Fake:
    """Answers chat completions with a canned content; records every request."""

    def __init__(self):
        self.requests: list[dict] = []
        self.content = "{}"
        self.status = 200

        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if fake.status != 200:
                    self.send_response(fake.status)
                    self.end_headers()
                    self.wfile.write(b"bad request")
                    return
                payload = {"choices": [{"message": {"role": "assistant", "content": fake.content}}]}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def fake():
    f = _Fake()
    yield f
    f.close()


def test_request_schema_and_parsing(fake):
    fake.content = json.dumps({"Cardiomegaly": True, "Pleural effusion": False, "Lung nodule": "yes"})
    lab = LLMLabeler(fake.url, "gpt-oss:120b", api_key="k")
    out = lab("Mild cardiomegaly. A small nodule. No effusion.")
    assert list(out) == list(ABNORMALITIES)
    assert out["Cardiomegaly"] and out["Lung nodule"] and not out["Pleural effusion"]
    assert sum(out.values()) == 2  # missing keys are false
    (req,) = fake.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer k"
    body = req["body"]
    assert body["model"] == "gpt-oss:120b" and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert "Mild cardiomegaly" in body["messages"][1]["content"]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema == abnormality_schema() and len(schema["required"]) == 18
    assert all(v == {"type": "boolean"} for v in schema["properties"].values())


def test_cache_lenient_parse_and_snake_keys(fake):
    fake.content = "Sure! ```json\n{\"pleural_effusion\": true, \"emphysema\": 1, \"unknown\": true}\n```"
    lab = LLMLabeler(fake.url, "m", response_format="json_object")
    a = lab("Right pleural effusion.  Emphysema.")
    b = lab("right pleural effusion. emphysema.")  # same text after normalisation → cached
    assert a == b and a["Pleural effusion"] and a["Emphysema"] and sum(a.values()) == 2
    assert len(fake.requests) == 1
    assert fake.requests[0]["body"]["response_format"] == {"type": "json_object"}
    assert lab("") == {n: False for n in ABNORMALITIES} and len(fake.requests) == 1
    fake.content = "I cannot answer that."
    assert not any(lab("Something else.").values())


def test_errors(fake):
    fake.status = 400
    with pytest.raises(LLMLabelerError, match="HTTP 400"):
        LLMLabeler(fake.url, "m")("Cardiomegaly.")
    with pytest.raises(LLMLabelerError, match="cannot reach"):
        LLMLabeler("http://127.0.0.1:9/v1", "m", max_retries=0, timeout=2)("Cardiomegaly.")
    with pytest.raises(ValueError, match="http"):
        LLMLabeler("localhost:11434", "m")
    with pytest.raises(ValueError, match="model"):
        LLMLabeler("http://localhost:1/v1", "")


def test_usable_as_labeler_in_tables(fake):
    from voxelfm.reportgen.labeler import label_reports

    fake.content = json.dumps({n: n == "Atelectasis" for n in ABNORMALITIES})
    df = label_reports(["a", "b"], labeler=LLMLabeler(fake.url, "m"))
    assert df["atelectasis"].tolist() == [1, 1] and int(df.values.sum()) == 2
