"""AppTest: hostile or careless visitors get messages, never tracebacks, and load only what the operator allows.

Table-driven over shared links, uploaded prompt files, uploaded datasets and the sidebar, on the tiny
test model (ICLVIZ_TEST_MODEL=tiny-llama).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

os.environ["ICLVIZ_TEST_MODEL"] = "tiny-llama"

from streamlit.testing.v1 import AppTest  # noqa: E402

from iclviz.sharing import LabState  # noqa: E402
from iclviz.validation import escape_markdown  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")
DEMOS = [{"text": "a lovely film", "label": "foo"}, {"text": "a dull film", "label": "bar"}]
PIXEL = "![t](https://evil.example/pixel.png)"


def link(obj) -> str:
    raw = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def shown(at) -> str:
    """Every message and markdown text on the page."""
    parts = [e.value for e in at.error] + [w.value for w in at.warning] + [m.value for m in at.markdown]
    parts += [c.value for c in at.caption] + [s.value for s in at.success]
    return " | ".join(map(str, parts))


def errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def open_with_link(value: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["s"] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def predictions(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("`Prediction:")]


LINK_CASES = [
    ("heads as integers", {"demonstrations": DEMOS, "query": "q", "heads": [1, 2]}, "head 1"),
    ("heads as a short list", {"demonstrations": DEMOS, "query": "q", "heads": [[1]]}, "write heads like"),
    ("negative head", {"demonstrations": DEMOS, "query": "q", "heads": [[1, -1]]}, "not in this model"),
    ("negative head name", {"demonstrations": DEMOS, "query": "q", "heads": ["L1H-1"]}, "not a head"),
    ("template as a list", {"demonstrations": DEMOS, "query": "q", "template": ["review"]}, "must be a name"),
    ("query as a number", {"demonstrations": DEMOS, "query": 3}, "must be a string"),
    ("too many demonstrations", {"demonstrations": DEMOS * 40, "query": "q"}, "at most 64"),
    ("deeply nested", "[" * 5000 + "]" * 5000, "nested more than"),
    ("not base64", "%%%", "not valid JSON"),
    ("markdown in a head", {"demonstrations": DEMOS, "query": "q", "heads": [PIXEL]}, "not a head"),
]


@pytest.mark.parametrize("case", LINK_CASES, ids=[c[0] for c in LINK_CASES])
def test_bad_shared_link_is_a_message_and_keeps_the_start_prompt(case):
    _, payload, message = case
    at = open_with_link(payload if payload == "%%%" else link(payload))
    assert "could not be read" in errors(at) and message in errors(at), errors(at)
    assert at.session_state["query"] == LabState().query  # the previous (start) state is kept
    assert predictions(at)
    assert "![" not in shown(at)


def test_markdown_label_word_in_a_link_is_escaped_everywhere():
    demos = [{"text": "a lovely film", "label": PIXEL}, {"text": "a dull film", "label": "bar"}]
    at = open_with_link(link({"demonstrations": demos, "query": "q", "label_words": [PIXEL, "bar"]}))
    text = shown(at)
    assert "![t](" not in text and "](https://evil" not in text  # no image or link is rendered
    assert escape_markdown(PIXEL) in errors(at)  # the word is shown, inert


def test_heads_out_of_range_in_a_link_are_left_out_with_a_warning():
    at = open_with_link(link({"demonstrations": DEMOS, "query": "q", "heads": ["L99H0", "L1H1"]}))
    assert "L99H0 are not in this model" in " ".join(w.value for w in at.warning)
    assert at.session_state["heads"] == [(1, 1)]


UPLOAD_CASES = [
    ("heads as integers", json.dumps({"demonstrations": DEMOS, "heads": [3]}).encode(), "head 3"),
    ("template as a list", json.dumps({"demonstrations": DEMOS, "template": []}).encode(), "must be a name"),
    ("deeply nested", b"{\"a\": " + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested more than"),
    ("not UTF-8", b"\xff\xfe\x00", "not UTF-8"),
    ("too large", b" " * 1_100_000, "larger than 1 MB"),
]


@pytest.mark.parametrize("case", UPLOAD_CASES, ids=[c[0] for c in UPLOAD_CASES])
def test_bad_prompt_upload_is_a_message(case):
    _, content, message = case
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    first = predictions(at)
    up = [u for u in at.file_uploader if u.key and u.key.startswith("w_upload_")][0]
    up.set_value(("x.json", content, "application/json")).run()
    assert not at.exception
    assert "Could not load x" in errors(at) and message in errors(at), errors(at)
    assert predictions(at) == first  # the previous state is kept


def _upload_dataset(at, csv: bytes):
    at.selectbox(key="w_lab_dataset").set_value("your own file (CSV/JSONL)").run()
    at.file_uploader(key="w_lab_dataset_upload").set_value(("d.csv", csv, "text/csv")).run()
    assert not at.exception and not at.error, errors(at)


def test_sampling_more_demonstrations_than_a_class_has_is_a_message():
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    before = [d["text"] for d in at.session_state["demos"]]
    rows = b"".join(f"sentence number {i},{i % 2}\n".encode() for i in range(12))  # 3 train rows per class
    _upload_dataset(at, b"text,label\n" + rows)
    at.number_input(key="w_lab_k").set_value(8).run()
    at.button(key="w_sample").click().run()
    assert not at.exception
    assert "Could not sample" in errors(at) and "only" in errors(at)
    assert [d["text"] for d in at.session_state["demos"]] == before


def test_sampling_more_labels_than_label_words_is_a_message():
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    rows = b"".join(f"sentence number {i},c{i % 9}\n".encode() for i in range(90))  # 9 classes, 6 words
    _upload_dataset(at, b"text,label\n" + rows)
    at.button(key="w_sample").click().run()
    assert not at.exception
    assert "Could not sample" in errors(at) and "label words" in errors(at)


# ---------------------------------------------------------------- operator settings

def sources(at) -> list[str]:
    return list(at.radio(key="w_model_source").options)


def test_default_settings_offer_only_the_offline_models(monkeypatch):
    for var in ("ICLVIZ_ALLOW_HUB", "ICLVIZ_ALLOW_LOCAL", "ICLVIZ_ALLOW_REMOTE_CODE", "ICLVIZ_ALLOWED_MODELS"):
        monkeypatch.delenv(var, raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert sources(at) == ["Offline model", "Tiny test model"]
    assert not [c for c in at.checkbox if c.key == "w_trust"]  # no trust_remote_code for visitors
    assert not [t for t in at.text_input if t.key in ("w_model_dir", "w_model_hub")]  # no paths typed


def test_allow_list_offers_only_its_models_and_never_remote_code(monkeypatch, tmp_path):
    monkeypatch.setenv("ICLVIZ_ALLOWED_MODELS", f"gpt2,{tmp_path}")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert sources(at) == ["Offline model", "Hugging Face Hub name", "Local folder", "Tiny test model"]
    at.radio(key="w_model_source").set_value("Local folder").run()
    assert list(at.selectbox(key="w_model_dir_pick").options) == [str(tmp_path)]
    assert not [t for t in at.text_input if t.key == "w_model_dir"]
    assert not [c for c in at.checkbox if c.key == "w_trust"]


def test_settings_refuse_what_the_operator_did_not_allow():
    from iclviz.engine.settings import load_settings

    s = load_settings({})
    for name, trust, msg in [("/etc", False, "model folders is turned off"), ("./m", False, "folders"),
                             ("gpt2", False, "Hub models is turned off"), ("default", True, "trust_remote_code")]:
        with pytest.raises(ValueError, match=msg):
            s.check_model(name, trust)
    s.check_model("default")
    allowed = load_settings({"ICLVIZ_ALLOWED_MODELS": "gpt2, /srv/models/m", "ICLVIZ_MAX_TOKENS": "100"})
    allowed.check_model("gpt2")
    allowed.check_model("/srv/models/m/")
    with pytest.raises(ValueError):
        allowed.check_model("/srv/models/other")
    with pytest.raises(ValueError, match="trust_remote_code"):
        allowed.check_model("gpt2", True)
    assert allowed.max_tokens == 100
    load_settings({"ICLVIZ_ALLOW_HUB": "1", "ICLVIZ_ALLOW_REMOTE_CODE": "yes"}).check_model("org/m", True)
    with pytest.raises(ValueError, match="ICLVIZ_MAX_TOKENS"):
        load_settings({"ICLVIZ_MAX_TOKENS": "lots"})


def test_a_tampered_session_cannot_load_a_folder(monkeypatch, tmp_path):
    """Even with the spec forced into the session, the loader refuses what the operator did not allow."""
    marker = tmp_path / "code-ran"
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    (tmp_path / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nfrom transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_spec"] = (str(tmp_path), "auto", "auto", True)
    at.run()
    assert not at.exception
    assert "turned off on this server" in errors(at)
    assert not marker.exists()  # the folder's code never ran
    # and a visitor cannot even learn whether the folder exists: same message for a path that does not
    at2 = AppTest.from_file(APP, default_timeout=120)
    at2.session_state["model_spec"] = (str(tmp_path / "nope"), "auto", "auto", False)
    at2.run()
    assert "model folders is turned off" in errors(at2) and "not a folder" not in errors(at2)


def test_token_and_demonstration_limits_are_the_operators(monkeypatch):
    monkeypatch.setenv("ICLVIZ_MAX_TOKENS", "40")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert "this server's limit is 40" in errors(at) and not predictions(at)
    monkeypatch.setenv("ICLVIZ_MAX_TOKENS", "1024")
    monkeypatch.setenv("ICLVIZ_MAX_DEMOS", "3")
    at.run()
    assert "4 demonstrations; at most 3" in errors(at)
    assert at.button(key="w_add_demo").disabled


def test_attention_page_refuses_long_prompts(monkeypatch):
    monkeypatch.setenv("ICLVIZ_MAX_ATTENTION_TOKENS", "20")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/attention.py")
    at.run()
    assert not at.exception and "at most 20 tokens" in errors(at)
    assert not at.get("iframe")


def test_full_attention_keeps_only_the_chosen_layers_and_heads(tiny_llama):
    import torch
    from test_capture import reference_forward

    from iclviz.engine.attention_matrix import full_attention
    from iclviz.prompt import build_prompt

    p = build_prompt(tiny_llama.tokenizer, [("a good film", "foo"), ("a bad film", "bar")], "fine")
    got = full_attention(tiny_llama, p, [0, 2], heads=[1, 3])
    ref = reference_forward(tiny_llama.model, [p.input_ids], output_attentions=True).attentions
    assert sorted(got) == [0, 2]
    for layer in (0, 2):
        assert got[layer].shape == (2, p.n_tokens, p.n_tokens)
        assert torch.allclose(got[layer], ref[layer][0, [1, 3]], atol=1e-6)
    with pytest.raises(ValueError, match="the attention view's limit is 5"):
        full_attention(tiny_llama, p, [0], max_tokens=5)
    with pytest.raises(ValueError, match="layer 7"):
        full_attention(tiny_llama, p, [7])
