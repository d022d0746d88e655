"""``switchyard import-litellm``: what each part of a LiteLLM proxy config becomes, what is
reported, and that no secret of the LiteLLM file reaches the output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.litellm_import import import_litellm, render

FIXTURES = Path(__file__).parent.parent / "fixtures"


def imported(data: dict[str, Any]) -> tuple[dict[str, Any], list[str], str]:
    out = import_litellm(data)
    text = render(out, "test.yaml")
    return yaml.safe_load(text), out.report, text


def route(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in cfg["routes"] if r["name"] == name)


def backend(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    return next(b for b in cfg["backends"] if b["name"] == name)


def test_a_model_group_is_a_route_over_all_its_deployments() -> None:
    cfg, _, text = imported({
        "model_list": [
            {"model_name": "gpt-4o", "litellm_params": {"model": "azure/gpt-4o-eu",
                                                        "api_key": "os.environ/AZURE_EU"}},
            {"model_name": "gpt-4o", "litellm_params": {"model": "azure/gpt-4o-ca",
                                                        "api_key": "os.environ/AZURE_CA"}},
        ],
        "router_settings": {"routing_strategy": "cost-based-routing"},
    })
    r = route(cfg, "gpt-4o")
    assert [backend(cfg, b)["model"] for b in r["backends"]] == ["azure/gpt-4o-eu",
                                                                 "azure/gpt-4o-ca"]
    assert r["policy"] == "cost"
    assert "# gpt-4o: LiteLLM routing_strategy cost-based-routing -> policy cost" in text
    assert [backend(cfg, b)["api_key"] for b in r["backends"]] == ["${AZURE_EU}", "${AZURE_CA}"]


def test_simple_shuffle_is_latency_and_a_single_deployment_first_healthy() -> None:
    cfg, _, text = imported({"model_list": [
        {"model_name": "a", "litellm_params": {"model": "openai/gpt-4o-mini"}},
        {"model_name": "a", "litellm_params": {"model": "openai/gpt-4o-mini"}},
        {"model_name": "b", "litellm_params": {"model": "openai/gpt-4o"}},
    ]})
    assert route(cfg, "a")["policy"] == "latency"
    assert "simple-shuffle -> policy latency" in text
    assert route(cfg, "b")["policy"] == "first_healthy"


def test_inline_secrets_become_variables_and_never_reach_the_output() -> None:
    cfg, report, text = imported({
        "model_list": [{"model_name": "m", "litellm_params": {
            "model": "bedrock/anthropic.claude-instant-v1", "api_key": "sk-live-AAAA1111",
            "aws_secret_access_key": "wJalrXUtnFEMI", "aws_region_name": "us-east-1"}}],
        "general_settings": {"master_key": "sk-master-BBBB2222"},
        "router_settings": {"redis_host": "10.0.0.5", "redis_password": "hunter2-CCCC"},
    })
    for value in ("sk-live-AAAA1111", "wJalrXUtnFEMI", "sk-master-BBBB2222", "hunter2-CCCC"):
        assert value not in text
        assert not any(value in line for line in report)
    b = backend(cfg, "m@1")
    assert b["api_key"] == "${M_1_API_KEY}"
    assert b["extra"] == {"aws_secret_access_key": "${M_1_AWS_SECRET_ACCESS_KEY}",
                          "aws_region_name": "us-east-1"}
    assert cfg["admin_key"] == "${SWITCHYARD_ADMIN_KEY}"
    assert cfg["state"] == {"kind": "redis", "url": "redis://:${REDIS_PASSWORD}@10.0.0.5/0"}
    assert any(line.startswith("model_list[0].litellm_params.api_key: written as "
                               "${M_1_API_KEY}: set M_1_API_KEY") for line in report)
    assert any(line.startswith("general_settings.master_key: it is now the admin key")
               and "per-team keys" in line for line in report)


def test_openai_and_hosted_vllm_with_an_api_base_are_direct_backends() -> None:
    cfg, report, _ = imported({"model_list": [
        {"model_name": "local", "litellm_params": {
            "model": "openai/facebook/opt-125m", "api_base": "http://10.0.0.20:8000/v1",
            "organization": "org-1", "extra_headers": {"X-Team": "a"}, "temperature": 0.2,
            "timeout": 12, "stream_timeout": 3}, "model_info": {"max_input_tokens": 2048}},
        {"model_name": "vl", "litellm_params": {"model": "hosted_vllm/Qwen/Qwen3-8B",
                                                "api_base": "http://gpu-1:8000/v1/"}},
        {"model_name": "cloud", "litellm_params": {"model": "openai/gpt-4o"}},
    ]})
    assert backend(cfg, "local@1") == {
        "name": "local@1", "plugin": "openai_compatible", "model": "facebook/opt-125m",
        "base_url": "http://10.0.0.20:8000/v1", "timeouts": {"total_s": 12, "first_token_s": 3},
        "context_window": 2048, "headers": {"X-Team": "a", "OpenAI-Organization": "org-1"}}
    assert backend(cfg, "vl@1")["plugin"] == "vllm"
    assert backend(cfg, "vl@1")["model"] == "Qwen/Qwen3-8B"
    assert backend(cfg, "vl@1")["base_url"] == "http://gpu-1:8000/v1"
    assert backend(cfg, "cloud@1") == {"name": "cloud@1", "plugin": "litellm",
                                       "model": "openai/gpt-4o"}
    assert "model_list[0].litellm_params.temperature: not mapped (the openai_compatible " \
           "backend forwards the client's body as it is)" in report


def test_router_level_keys_are_reported_with_their_path() -> None:
    _, report, _ = imported({"model_list": [
        {"model_name": "m", "litellm_params": {"model": "gpt-4o", "rpm": 6, "tpm": 1000,
                                               "max_retries": 4}, "rpm": 3},
    ]})
    assert any(line.startswith("model_list[0].litellm_params.rpm: not mapped (") for line in report)
    assert any(line.startswith("model_list[0].litellm_params.tpm: not mapped (") for line in report)
    assert any(line.startswith("model_list[0].litellm_params.max_retries: not mapped (")
               for line in report)
    assert any(line.startswith("model_list[0].rpm: not mapped (") for line in report)


def test_unknown_keys_everywhere_are_reported_never_dropped() -> None:
    _, report, _ = imported({
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x",
                                                              "api_base": "http://h/v1",
                                                              "vertex_project": "p"},
                        "model_info": {"supports_vision": True}, "blocked": False}],
        "litellm_settings": {"json_logs": True, "cache": True,
                             "cache_params": {"type": "redis", "host": "r", "ssl": True}},
        "router_settings": {"enable_tag_filtering": True},
        "general_settings": {"database_url": "os.environ/DATABASE_URL"},
        "environment_variables": {"REDIS_PASSWORD": "s3cret-DDDD"},
        "guardrails": [],
    })
    paths = {line.split(": not mapped")[0] for line in report if ": not mapped" in line}
    assert paths >= {
        "model_list[0].litellm_params.vertex_project", "model_list[0].model_info.supports_vision",
        "model_list[0].blocked", "litellm_settings.json_logs", "litellm_settings.cache_params.ssl",
        "router_settings.enable_tag_filtering", "general_settings.database_url",
        "environment_variables.REDIS_PASSWORD", "guardrails"}
    assert not any("s3cret-DDDD" in line for line in report)


def test_fallbacks_follow_the_groups_own_deployments_in_order() -> None:
    cfg, report, text = imported({
        "model_list": [
            {"model_name": "small", "litellm_params": {"model": "gpt-4o-mini"}},
            {"model_name": "big", "litellm_params": {"model": "gpt-4o"}},
            {"model_name": "long", "litellm_params": {"model": "gpt-4.1"},
             "model_info": {"id": "long-id"}},
        ],
        "router_settings": {"fallbacks": [{"small": ["big", "ghost"]}],
                            "context_window_fallbacks": [{"small": ["long-id"]}],
                            "num_retries": 2},
    })
    assert route(cfg, "small")["backends"] == ["small@1", "big@1", "long@1"]
    assert route(cfg, "small")["policy"] == "first_healthy"
    assert "fallbacks big@1, long@1 come after the group's own deployments" in text
    assert any("ghost" in line and "not a model_name" in line for line in report)
    # every backend of the largest route can be tried: num_retries + 1, plus 2 fallbacks
    assert cfg["health"]["retry"]["max_attempts"] == 5


def test_model_group_alias_is_a_route_with_the_targets_backends() -> None:
    cfg, report, _ = imported({
        "model_list": [{"model_name": "gpt-4o", "litellm_params": {"model": "gpt-4o"}}],
        "router_settings": {"model_group_alias": {"gpt-4": "gpt-4o",
                                                  "hidden-one": {"model": "gpt-4o",
                                                                 "hidden": True},
                                                  "nowhere": "missing"}},
    })
    assert route(cfg, "gpt-4")["backends"] == ["gpt-4o@1"]
    assert route(cfg, "hidden-one")["backends"] == ["gpt-4o@1"]
    assert any(line.startswith("router_settings.model_group_alias.hidden-one.hidden: not mapped")
               for line in report)
    assert any(line.startswith("router_settings.model_group_alias.nowhere: not mapped")
               for line in report)


def test_wildcards_are_warned_not_served() -> None:
    cfg, report, _ = imported({"model_list": [
        {"model_name": "*", "litellm_params": {"model": "openai/*"}},
        {"model_name": "gpt-4o", "litellm_params": {"model": "gpt-4o"}},
    ]})
    assert [r["name"] for r in cfg["routes"]] == ["gpt-4o"]
    assert any(line.startswith("model_list[0]: not mapped (wildcard") for line in report)


def test_embedding_deployments_serve_embeddings_and_cache_follows_call_types() -> None:
    cfg, _, _ = imported({
        "model_list": [
            {"model_name": "emb", "litellm_params": {"model": "text-embedding-3-small"}},
            {"model_name": "emb2", "litellm_params": {"model": "openai/bge",
                                                      "api_base": "http://h:9997/v1"},
             "model_info": {"mode": "embedding"}},
            {"model_name": "chat", "litellm_params": {"model": "gpt-4o"}},
        ],
        "litellm_settings": {"cache": True, "cache_params": {
            "type": "redis", "host": "os.environ/REDIS_HOST", "port": "os.environ/REDIS_PORT",
            "ttl": 600, "namespace": "litellm.prod", "supported_call_types": ["aembedding"]}},
    })
    assert backend(cfg, "emb@1")["embeddings"] is True
    assert backend(cfg, "emb2@1")["embeddings"] is True
    assert "embeddings" not in backend(cfg, "chat@1")
    assert cfg["cache"] == {"enabled": True, "semantic": False, "max_temperature": 2.0,
                            "ttl_s": 600, "prefix": "litellm.prod:"}
    assert cfg["state"] == {"kind": "redis", "url": "redis://${REDIS_HOST}:${REDIS_PORT}/0"}
    assert route(cfg, "chat")["cache"] == {"enabled": False}
    assert "cache" not in route(cfg, "emb")


def test_semantic_cache_turns_the_semantic_tier_on_but_not_litellms_threshold() -> None:
    cfg, report, _ = imported({
        "model_list": [{"model_name": "m", "litellm_params": {"model": "gpt-4o"}}],
        "litellm_settings": {"cache": True, "cache_params": {
            "type": "redis-semantic", "similarity_threshold": 0.8}},
    })
    assert cfg["cache"]["semantic"] is True
    assert "threshold" not in cfg["cache"]
    assert any(line.startswith("litellm_settings.cache_params.similarity_threshold: not mapped")
               for line in report)


def test_settings_sections_map_to_health_and_timeouts() -> None:
    cfg, _, _ = imported({
        "model_list": [{"model_name": "m", "litellm_params": {"model": "gpt-4o"}},
                       {"model_name": "n", "litellm_params": {"model": "gpt-4o", "timeout": 5}}],
        "litellm_settings": {"request_timeout": 30, "allowed_fails": 3, "cooldown_time": 20,
                             "drop_params": True, "set_verbose": True},
    })
    assert backend(cfg, "m@1")["timeouts"] == {"total_s": 30}
    assert backend(cfg, "n@1")["timeouts"] == {"total_s": 5}
    assert backend(cfg, "m@1")["extra"] == {"drop_params": True}
    assert cfg["health"]["breaker"] == {"failure_threshold": 4, "open_s": 20}
    assert cfg["log_level"] == "debug"


def test_pricing_in_dollars_per_million_tokens() -> None:
    cfg, _, _ = imported({"model_list": [{"model_name": "m", "litellm_params": {
        "model": "openai/my-model", "api_base": "http://h/v1",
        "input_cost_per_token": 0.0000015, "output_cost_per_token": 0.000002}}]})
    assert backend(cfg, "m@1")["pricing"] == {"input_per_mtok": 1.5, "output_per_mtok": 2.0}


def test_cli_writes_the_file_and_reports_on_stderr(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = FIXTURES / "litellm" / "azure_config_with_tpm.yaml"
    dest = tmp_path / "switchyard.yaml"
    assert main(["import-litellm", str(src), "-o", str(dest)]) == 0
    err = capsys.readouterr().err
    assert "model_list[0].litellm_params.tpm: not mapped" in err
    assert "73g" not in dest.read_text() and "9kj" not in dest.read_text()
    assert route(yaml.safe_load(dest.read_text()), "gpt-3.5-turbo")["backends"] == [
        "gpt-3.5-turbo@1", "gpt-3.5-turbo@2"]
    assert main(["import-litellm", str(src)]) == 0
    assert capsys.readouterr().out == dest.read_text()


def test_cli_refuses_a_broken_file_without_quoting_it(capsys: pytest.CaptureFixture[str]) -> None:
    src = FIXTURES / "litellm_invalid" / "proxy_config.yaml"
    assert main(["import-litellm", str(src)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at line" in err
    assert "sk-1234" not in err


# ---- nothing dropped silently, on LiteLLM's own configs -----------------------------------

MAPPED_PARAMS = {"model", "api_key", "api_base", "timeout", "stream_timeout", "order",
                 "litellm_credential_name", "input_cost_per_token", "output_cost_per_token",
                 "cache_read_input_token_cost", "input_cost_per_second",
                 "output_cost_per_second", "organization", "extra_headers", "headers"}
MAPPED_INFO = {"max_input_tokens", "max_tokens", "mode", "base_model", "input_cost_per_token",
               "output_cost_per_token"}
MAPPED_SETTINGS = {"drop_params", "request_timeout", "timeout", "routing_strategy", "fallbacks",
                   "context_window_fallbacks", "default_fallbacks", "model_group_alias",
                   "num_retries", "allowed_fails", "cooldown_time", "set_verbose", "cache",
                   "cache_params", "telemetry", "redis_host", "redis_port", "redis_password",
                   "redis_url", "master_key"}
MAPPED_CACHE = {"type", "ttl", "namespace", "supported_call_types", "host", "port", "password",
                "url", "mode"}
SECTIONS = {"model_list", "litellm_settings", "router_settings", "general_settings",
            "credential_list"}


def unaccounted(data: dict[str, Any], cfg: dict[str, Any], report: list[str]) -> list[str]:
    """Every key of the LiteLLM file that is neither mapped nor reported with its path."""
    said = {line.split(": ")[0] for line in report}
    missing: list[str] = []

    def check(path: str, mapped: bool) -> None:
        if not mapped and path not in said:
            missing.append(path)

    for i, dep in enumerate(data.get("model_list") or []):
        p = f"model_list[{i}]"
        if p in said or f"{p}.litellm_params.model" in said:
            continue  # the whole deployment was reported
        extra = cfg["backends"][[b["name"] for b in cfg["backends"]].index(
            next(b["name"] for b in cfg["backends"]
                 if b["name"].startswith(str(dep["model_name"]).replace(" ", "-") + "@")))]
        for k in dep:
            check(f"{p}.{k}", k in ("model_name", "litellm_params", "model_info"))
        for k in dep.get("litellm_params") or {}:
            check(f"{p}.litellm_params.{k}", k in MAPPED_PARAMS or k in extra.get("extra", {}))
        for k in dep.get("model_info") or {}:
            check(f"{p}.model_info.{k}", k in MAPPED_INFO)
    for section in ("litellm_settings", "router_settings", "general_settings"):
        for k in data.get(section) or {}:
            check(f"{section}.{k}", k in MAPPED_SETTINGS)
    for k in (data.get("litellm_settings") or {}).get("cache_params") or {}:
        check(f"litellm_settings.cache_params.{k}", k in MAPPED_CACHE)
    for k in data.get("environment_variables") or {}:
        check(f"environment_variables.{k}", False)
    for k in data:
        check(str(k), k in SECTIONS or k == "environment_variables")
    return missing


@pytest.mark.parametrize("src", sorted((FIXTURES / "litellm").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_key_of_litellms_configs_is_mapped_or_reported(src: Path) -> None:
    data = yaml.safe_load(src.read_text())
    cfg, report, text = imported(data)
    assert unaccounted(data, cfg, report) == []
    inline = [str(d["litellm_params"]["api_key"]) for d in data.get("model_list") or []
              if str((d.get("litellm_params") or {}).get("api_key") or "os.environ/")
              .startswith("os.environ/") is False]
    for key in inline:  # the LiteLLM file's inline keys: in neither the output nor stderr
        assert f": {key}\n" not in text and f" {key}" not in " ".join(report)


def test_odd_inputs_are_reported_not_fatal() -> None:
    cfg, report, text = imported({
        "model_list": [
            {"model_name": "a b", "litellm_params": {"model": "gpt-4o"}},
            {"model_name": "a-b", "litellm_params": {"model": "gpt-4o"}},
            {"model_name": "x", "litellm_params": {"model": "openai/m",
                                                   "api_base": "<model-api-base>"}},
            {"model_name": "y"},
        ],
        "litellm_settings": {"cache": True, "cache_params": {"type": "redis"}},
        "general_settings": ["not", "a", "mapping"],
    })
    assert [b["name"] for b in cfg["backends"]] == ["a-b@1", "a-b-@1", "x@1"]
    assert route(cfg, "a b")["backends"] == ["a-b@1"]
    assert route(cfg, "a-b")["backends"] == ["a-b-@1"]
    assert any(line.startswith("model_list[2].litellm_params.api_base: '<model-api-base>' is "
                               "not a URL") for line in report)
    assert "model_list[3].litellm_params.model: not mapped (missing: no backend can be made " \
           "for this deployment)" in report
    assert "general_settings: not mapped (not a mapping)" in report
    # no host named: LiteLLM's own variables, with its defaults
    assert cfg["state"]["url"] == ("redis://:${REDIS_PASSWORD:-}@${REDIS_HOST:-127.0.0.1}:"
                                   "${REDIS_PORT:-6379}/0")
    assert "reads REDIS_HOST, REDIS_PORT and REDIS_PASSWORD" in text
