"""A real LiteLLM proxy (the `litellm` package) on 127.0.0.1, with textguard guardrails, for the
tests and the LiteLLM benchmark: its config.yaml, and the process."""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support.servers import program

MASTER_KEY = "sk-litellm-master-key-for-tests"
MODEL = """\
model_list:
  - model_name: demo
    litellm_params: {{model: openai/demo, api_base: "{upstream}/v1", api_key: "sk-upstream"}}
general_settings:
  master_key: "{master_key}"
guardrails:
"""
GUARDRAIL = """\
  - guardrail_name: {name}
    litellm_params:
      guardrail: generic_guardrail_api
      mode: post_call
      api_base: "{api_base}"
      api_key: "{token}"
      default_on: {default_on}
      streaming_transform_mode: incremental_diff
      streaming_sampling_rate: {sampling_rate}
"""


def guardrail(name: str, api_base: str, *, token: str = "", default_on: bool = True, sampling_rate: int = 5,
              rewrite_style: str | None = None) -> str:
    """One textguard guardrail's entry, as the README gives it (with `rewrite_style`, in the
    guardrail's `additional_provider_specific_params`)."""
    entry = GUARDRAIL.format(name=name, api_base=api_base, token=token, default_on=str(default_on).lower(),
                             sampling_rate=sampling_rate)
    if rewrite_style is not None:
        entry += f"      additional_provider_specific_params: {{rewrite_style: {rewrite_style}}}\n"
    return entry


@contextlib.contextmanager
def litellm_proxy(upstream: str, guardrails: list[str], directory: Path) -> Iterator[str]:
    """`litellm --config` in front of the model at `upstream`, until LiteLLM says it is alive;
    yields its URL. LITELLM_LOCAL_MODEL_COST_MAP keeps it from fetching its cost map at start-up."""
    config = directory / "litellm.yaml"
    config.write_text(MODEL.format(upstream=upstream, master_key=MASTER_KEY) + "".join(guardrails))
    executable = shutil.which("litellm") or str(Path(sys.executable).parent / "litellm")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with program([executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                 {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, url + "/health/liveliness"):
        yield url
