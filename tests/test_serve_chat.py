"""Chat templates of ``hwlm serve``: the documented default, and a run's own Jinja template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwlm.errors import ConfigError
from hwlm.serve.chat import DEFAULT_STOP, load_chat_template

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]


def test_default_template_and_its_stop_string(tmp_path: Path) -> None:
    t = load_chat_template([tmp_path])
    assert t.render(MESSAGES) == "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:"
    assert t.default_stop == (DEFAULT_STOP,) and t.origin == "default"


def test_a_runs_jinja_template_wins_and_gets_no_implicit_stop(tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
    t = load_chat_template([tmp_path], eos_token="<|endoftext|>")
    assert t.render(MESSAGES[1:2]) == "<user>Hi<|endoftext|><assistant>"
    assert t.default_stop == ()


def test_tokenizer_config_template_and_bad_templates(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[-1].content }}!"}))
    assert load_chat_template([tmp_path]).render(MESSAGES) == "Bye!"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(ConfigError, match="does not parse"):
        load_chat_template([bad])
    sandboxed = tmp_path / "sandboxed"
    sandboxed.mkdir()
    (sandboxed / "chat_template.jinja").write_text("{{ ''.__class__.__mro__ }}")
    with pytest.raises(ConfigError, match="failed on these messages"):
        load_chat_template([sandboxed]).render(MESSAGES)
