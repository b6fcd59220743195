"""What upstream's WandbLogger receives as the run config: nested sections, no credentials."""

from types import SimpleNamespace as NS

from openrlhf_offpolicy.integration.wandb_config import config_view


def args():
    return NS(
        logger=NS(wandb=NS(key="wandb-SECRET-1", project="p", run_name="r")),
        reward=NS(remote_url=["https://user:pw-SECRET-2@rm.example/score?token=SECRET-3&x=1"]),
        data=NS(input_key="prompt", label_key="label"),
        actor=NS(adam=NS(lr=1e-6)),
    )


def test_the_wandb_config_hides_secret_flags_url_userinfo_and_credential_query_values():
    text = repr(config_view(args()).__dict__)
    assert "SECRET" not in text
    assert "rm.example/score" in text and "x=1" in text  # only the credentials go


def test_the_wandb_config_keeps_sections_nested_and_ordinary_values_readable():
    view = config_view(args())
    assert view.data == {"input_key": "prompt", "label_key": "label"}
    assert view.actor["adam"]["lr"] == 1e-6 and view.actor.adam.lr == 1e-6  # dict for wandb, attributes for upstream
    assert view.logger.wandb.project == "p"
