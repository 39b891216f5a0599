"""Model cards written by ``push_to_hub``, read back with huggingface_hub's own ``ModelCard`` (and PyYAML).

The card is what the Hub parses for the model page (library widget, tags, base model): its front matter must be
valid YAML whatever the model and hook are called, and the usual many-SAEs-per-repo layout (``path_in_repo``)
must get a root card that lists every SAE pushed there without losing what the repo owner wrote.
"""

from __future__ import annotations

import ast
import re

import pytest
import yaml
from huggingface_hub import ModelCard

from sae_hub import SAE, SAEConfig
from sae_hub.errors import CorruptFileError, DownloadError
from sae_hub.hub import model_card

AWKWARD = [
    "my-org/model: v2",
    'a "quoted" \'name\' # not a comment',
    "multi\nline\r\nname",
    "ünïcødé/模型-🙂",
    "- starts like a list item",
    "`back`ticks`` and | pipes",
    "org/gpt2",  # a Hub id: becomes base_model
]


def _sae(**over: object) -> SAE:
    cfg = {"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 2, "model_name": "gpt2",
           "hook_name": "blocks.2.hook_resid_post", **over}
    return SAE(SAEConfig(**cfg))  # type: ignore[arg-type]


def _front_matter(card: str) -> dict[str, object]:
    """The YAML block parsed by PyYAML alone (independent of huggingface_hub's own parser)."""
    match = re.match(r"---\r?\n(.*?)\r?\n---\r?\n", card, re.S)
    assert match is not None, card[:200]
    data = yaml.safe_load(match.group(1))
    assert isinstance(data, dict)
    return data


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _table_rows(card: str) -> list[str]:
    return [line for line in card.splitlines() if line.startswith("|")]


def _usage_calls(card: str) -> list[tuple[str, str]]:
    """(repo_id, path) of every ``SAE.from_pretrained(...)`` call in the card's python blocks, as Python reads them."""
    calls = []
    for block in re.findall(r"^(`{3,})python\n(.*?)^\1$", card, re.S | re.M):
        for node in ast.walk(ast.parse(block[1])):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                calls.append(tuple(ast.literal_eval(a) for a in node.args))
    return calls  # type: ignore[return-value]


@pytest.mark.parametrize("name", AWKWARD)
def test_front_matter_round_trips_whatever_the_model_is_called(name: str) -> None:
    sae = _sae(model_name=name, license="apache-2.0")
    card = model_card(sae, "me/my-sae")
    data = _front_matter(card)
    expected = {"library_name": "sae-hub", "license": "apache-2.0",
                "tags": ["sae-hub", "sparse-autoencoder", "sae-topk"]}
    if name == "org/gpt2":
        expected["base_model"] = "org/gpt2"
    assert data == expected
    parsed = ModelCard(card)  # the client's own parser accepts it and reads the same metadata
    assert parsed.data.to_dict() == expected
    model_rows = [row for row in _table_rows(card) if row.startswith("| model |")]
    assert len(model_rows) == 1 and all(part in model_rows[0] for part in _one_line(name).replace("|", "").split())


@pytest.mark.parametrize("hook", AWKWARD)
def test_awkward_hook_names_keep_the_card_and_its_table_whole(hook: str) -> None:
    sae = _sae(hook_name=hook, model_name="org/gpt2")
    card = model_card(sae, "me/my-sae")
    assert ModelCard(card).data.to_dict() == _front_matter(card)
    rows = _table_rows(card)
    hook_rows = [row for row in rows if row.startswith("| hook |")]
    assert len(hook_rows) == 1 and all(part in hook_rows[0] for part in _one_line(hook).replace("|", "").split())
    # Every table row has the header's two cells (a raw "|" or newline in a value would change that).
    assert rows and all(len(re.split(r"(?<!\\)\|", row)) == 4 for row in rows)
    (heading,) = [line for line in card.splitlines() if line.startswith("# ")]
    if "`" not in hook and "|" not in hook:
        assert _one_line(hook) in heading


def test_card_usage_loads_the_path_it_was_pushed_to() -> None:
    sae = _sae()
    assert _usage_calls(model_card(sae, "me/my-sae")) == [("me/my-sae", ".")]
    assert _usage_calls(model_card(sae, "me/my-sae", path_in_repo="layer 2/it's")) == [("me/my-sae", "layer 2/it's")]


def test_training_metrics_table() -> None:
    card = model_card(_sae(extra={"metrics": {"fvu": 0.123456, "l0": 7, "odd|key": 1.0}}), "me/x")
    assert "## Training metrics" in card and "| fvu | 0.1235 |" in card and "| l0 | 7 |" in card
    assert "| odd\\|key | 1 |" in card


# ----------------------------------------------------------------------------------- path_in_repo uploads


def _root_card(hub: object, repo: str) -> ModelCard:
    """The repo's README.md read back through the client from the test Hub (``ModelCard.load(repo_id)``)."""
    card = ModelCard.load(repo)
    assert card.text in hub.files(repo)["README.md"].decode()  # type: ignore[attr-defined]
    return card


def test_path_in_repo_upload_writes_a_root_card(hub, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # ModelCard.load takes a local file of the same name first
    _sae(model_name="org/gpt2").push_to_hub("me/many", "layer2/topk")
    assert set(hub.files("me/many")) >= {"README.md", "layer2/topk/cfg.json", "layer2/topk/sae_weights.safetensors"}
    card = _root_card(hub, "me/many")
    assert card.data.library_name == "sae-hub" and card.data.base_model == "org/gpt2"
    assert {"sae-hub", "sparse-autoencoder", "sae-topk"} <= set(card.data.tags)
    assert "`layer2/topk`" in card.text and "blocks.2.hook_resid_post" in card.text
    assert _usage_calls(card.text) == [("me/many", "layer2/topk")]
    assert SAE.from_pretrained("me/many", "layer2/topk").cfg.k == 2
    assert len(hub.find("POST", "/commit/")) == 1  # weights and card in one commit


def test_second_upload_merges_the_root_card_and_keeps_the_owners_text(hub, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    owner = ("---\nlicense: apache-2.0\ntags:\n- my-tag\n- sae-hub\ndatasets:\n- org/pile\n---\n\n# My SAEs\n\n"
             "Hand-written notes: trained on *everything*.\n")
    hub.add_file("me/many", "README.md", owner.encode())
    _sae().push_to_hub("me/many", "a/topk")
    jr = SAE(SAEConfig(architecture="jumprelu", d_in=8, d_sae=32, model_name="gpt2", hook_name='odd "hook" #1\nx'))
    jr.push_to_hub("me/many", "b/jumprelu")
    _sae(d_sae=64).push_to_hub("me/many", "a/topk")  # the same path again: its row is replaced, not repeated

    card = _root_card(hub, "me/many")
    assert card.text.startswith("\n# My SAEs\n\nHand-written notes: trained on *everything*.\n")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["datasets"] == ["org/pile"]
    assert data["tags"] == ["my-tag", "sae-hub", "sparse-autoencoder", "sae-topk", "sae-jumprelu"]
    assert data["library_name"] == "sae-hub"
    rows = [row for row in _table_rows(card.text) if row.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows] == ["`a/topk`", "`b/jumprelu`"]
    assert "64" in rows[0] and "16" not in rows[0].split("|")[3]
    assert "jumprelu" in rows[1] and 'odd "hook" #1 x' in rows[1]
    assert SAE.from_pretrained("me/many", "a/topk").cfg.d_sae == 64
    assert SAE.from_pretrained("me/many", "b/jumprelu").cfg.d_sae == 32


def test_upload_without_a_root_card_then_another_lists_both(hub, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _sae().push_to_hub("me/many", "x")
    _sae().push_to_hub("me/many", "y")
    card = _root_card(hub, "me/many")
    assert [row.split("|")[1].strip() for row in _table_rows(card.text) if row.startswith("| `")] == ["`x`", "`y`"]
    assert card.text.count("## SAEs in this repository") == 1


def test_unparseable_root_card_is_refused_before_anything_is_uploaded(hub) -> None:
    hub.add_file("me/many", "README.md", b"---\nbase_model: my-org/model: v2\n---\n# hi\n")
    head = hub.head("me/many")
    with pytest.raises(CorruptFileError) as e:
        _sae().push_to_hub("me/many", "layer2/topk")
    assert e.value.path == "hf://me/many/README.md" and e.value.field == "front matter"
    assert hub.head("me/many") == head and hub.count("POST", "/commit/") == 0



def test_an_upload_landing_during_the_merge_is_never_overwritten(hub) -> None:
    """The card is read at the branch head and the commit is made on top of exactly that commit: another upload
    in between makes this one fail (nothing written), instead of dropping the other SAE from the card."""
    import threading
    import time

    _sae().push_to_hub("me/many", "a")
    hub.reset_log()
    hub.slow("/resolve/", 1.0, method="HEAD")  # hold our read of the card while another commit lands

    def other_upload() -> None:
        deadline = time.monotonic() + 30
        while not hub.find("HEAD", "/me/many/resolve/") and time.monotonic() < deadline:
            time.sleep(0.01)
        hub.add_file("me/many", "other/cfg.json", b"{}")

    thread = threading.Thread(target=other_upload)
    thread.start()
    try:
        with pytest.raises(DownloadError, match="push again") as e:
            _sae().push_to_hub("me/many", "b")
    finally:
        thread.join()
    assert e.value.path == "hf://me/many"
    files = hub.files("me/many")
    assert "other/cfg.json" in files and not any(p.startswith("b/") for p in files)
    _sae().push_to_hub("me/many", "b")  # repeated: merged on top of the other upload
    assert "`b`" in hub.files("me/many")["README.md"].decode()


def test_path_in_repo_dot_is_the_repo_root(hub) -> None:
    """``"."`` (what the usage line of a root SAE says) uploads to the root with the SAE's own card, not a listing."""
    _sae().push_to_hub("me/dot", "./")
    files = hub.files("me/dot")
    assert {"cfg.json", "sae_weights.safetensors", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert "| field | value |" in card and "SAEs in this repository" not in card
    assert _usage_calls(card) == [("me/dot", ".")]
