"""Attack suite, CLI: hostile --config files exit 2 with one line naming the file in under 2 s, and no
planted secret reaches any output (dry-run JSON, notes, errors)."""

import os

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV, cli_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openrlhf_offpolicy.cli.checks import UsageError
from openrlhf_offpolicy.cli.train_ppo_ray import config_tokens, main

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def alias_bomb() -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join(['*l%d' % (i - 1)] * 9)}]" for i in range(1, 9)]
    return "rejection: [&l8 " + "\n".join(lines)  # the bomb inside a known key's value


def files(tmp_path):
    """name -> (path, expected message fragment)."""
    made = {}
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    made["fifo"] = (fifo, "not a regular file")
    made["directory"] = (tmp_path, "not a regular file")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text('a: &a ["x", "x"]\nb: &b [*a, *a]\nrejection: [*b, *b]\n')
    made["alias bomb under a known key"] = (bomb, "aliases")
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:  # 100 MB, sparse: refused from its size without reading
        f.truncate(100 << 20)
    made["100 MB"] = (huge, "byte limit")
    deep = tmp_path / "deep.yaml"
    deep.write_text("".join(" " * i + f"k{i}:\n" for i in range(40)))
    made["40 deep"] = (deep, "nested deeper than")
    flow = tmp_path / "flow.yaml"
    flow.write_text("rejection: " + "[" * 20_000 + "]" * 20_000 + "\n")
    made["20,000 deep flow"] = (flow, "flow.yaml")
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"policy_loss_type: sapo\n# caf\xe9\n")
    made["not UTF-8"] = (latin, "not UTF-8")
    dup = tmp_path / "dup.yaml"
    dup.write_text("policy_loss_type: sapo\nsapo_tau_pos: 0.5\npolicy_loss_type: ppo\n")
    made["duplicate key"] = (dup, "key 'policy_loss_type' is given twice, on lines 1 and 3")
    inner = tmp_path / "inner.yaml"
    inner.write_text("config: other.yaml\n")
    made["config key"] = (inner, "cannot name another preset")
    tag = tmp_path / "tag.yaml"
    tag.write_text("policy_loss_type: !!python/object/apply:os.system ['echo pwned']\n")
    made["python tag"] = (tag, "not valid YAML")
    merge = tmp_path / "merge.yaml"
    merge.write_text("<<: {policy_loss_type: sapo}\n")
    made["merge key"] = (merge, "merge keys")
    nested_list = tmp_path / "nested_list.yaml"
    nested_list.write_text("rejection: [[seq_max_k2:0.05]]\n")
    made["nested list"] = (nested_list, "nested list")
    non_string = tmp_path / "non_string.yaml"
    non_string.write_text("1: 2\n")
    made["non-string key"] = (non_string, "must be a flag name")
    return made


CASES = ["fifo", "directory", "alias bomb under a known key", "100 MB", "40 deep", "20,000 deep flow",
         "not UTF-8", "duplicate key", "config key", "python tag", "merge key", "nested list", "non-string key"]


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_config_file_exits_2_with_one_line_naming_the_file_before_anything_heavy(case, tmp_path):
    path, message = files(tmp_path)[case]
    result, heavy = cli_process(["--config", str(path), *MINIMAL_UPSTREAM_ARGV, "--dry_run"], tmp_path, cwd=REPO,
                                timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and result.stdout == "" and len(lines) == 1, result.stderr[-1500:]
    assert lines[0].startswith(f"train_ppo_ray: error: --config {path}") and message in lines[0], lines
    assert heavy == [], f"imported {heavy} before refusing"


def test_the_alias_bomb_of_the_report_is_refused_before_expanding(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    with pytest.raises(UsageError, match="aliases|not valid YAML"):
        config_tokens(str(path))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(alphabet=st.sampled_from(list("{}[]&*!:-,'\" \n\tab1.<|>%@#?")), max_size=300))
def test_any_bytes_as_a_config_file_give_tokens_or_one_usage_error_naming_the_file(tmp_path, payload):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(payload if isinstance(payload, bytes) else payload.encode())
    try:
        tokens = config_tokens(str(path))
    except UsageError as e:
        assert str(e).startswith(f"--config {path}") and "\n" not in str(e)
        return
    assert all(isinstance(t, str) for t in tokens)


# ----------------------------------------------------------------------------- secrets
SECRETS = ["S3CRETPW", "QTOKEN9876", "FIRSTHALFkey", "SECONDHALFkey", "YAMLHALF1234", "YAMLHALF5678", "LEGACYKEY42",
           "LEGACYEXTRA42"]


def _base(argv):
    return [a for a in MINIMAL_UPSTREAM_ARGV if a != "examples/scripts/reward_math.py"
            and a != "--reward.remote_url"] + argv


def output_paths(tmp_path):
    key_list = tmp_path / "key_list.yaml"
    key_list.write_text("logger.wandb.key: [YAMLHALF1234, YAMLHALF5678]\n")
    url = "https://user:S3CRETPW@host.example/reward?api_key=QTOKEN9876&x=1"
    return {
        "dry-run JSON with a URL credential": ["--reward.remote_url", url, "--dry_run"],
        "error echoing a URL": ["--reward.remote_url", url, "--rollout.batch_size", url],
        "extra value after the wandb key": ["--reward.remote_url", "r.py", "--logger.wandb.key", "FIRSTHALFkey",
                                            "SECONDHALFkey"],
        "YAML list as the wandb key": ["--reward.remote_url", "r.py", "--config", str(key_list)],
        "0.9.x flag note and its extra value": ["--reward.remote_url", "r.py", "--use_wandb", "LEGACYKEY42",
                                                "LEGACYEXTRA42"],
        "dry run with the wandb key": ["--reward.remote_url", "r.py", "--logger.wandb.key=FIRSTHALFkey", "--dry_run"],
    }


@pytest.mark.parametrize("case", ["dry-run JSON with a URL credential", "error echoing a URL",
                                  "extra value after the wandb key", "YAML list as the wandb key",
                                  "0.9.x flag note and its extra value", "dry run with the wandb key"])
def test_no_planted_secret_reaches_any_output(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    status = main(_base(output_paths(tmp_path)[case]))
    out, err = capsys.readouterr()
    assert status in (0, 2) and (out or err)
    for secret in SECRETS:
        assert secret not in out and secret not in err, (secret, out[-800:], err)
    assert "<redacted>" in out + err


def test_a_secret_in_the_url_is_redacted_but_the_host_is_kept():
    from openrlhf_offpolicy.integration.runtime.redaction import redact_text

    text = redact_text("https://u:p4ss@h.io/a?token=abc&b=2 and http://plain.io/x?q=1")
    assert text == "https://<redacted>@h.io/a?token=<redacted>&b=2 and http://plain.io/x?q=1"
