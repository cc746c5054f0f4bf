"""Config: defaults, parsing, one clear line per bad variable, the key checks, and the start-up path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlops_backend.config import PLACEHOLDER_KEY, SETTINGS, Config, ConfigError
from tests.support import ROOT

KEY = {"API_KEY": "a-real-secret-key-123"}


def test_defaults():
    config = Config.from_mapping(KEY)
    assert config.ollama_base_url == "http://localhost:11434"
    assert config.auth_enabled is True and config.debug is False
    assert (config.host, config.port) == ("0.0.0.0", 8000)
    assert config.allowed_origins == ("http://localhost:3000",)
    assert config.ollama_timeout == 300 and config.ollama_connect_timeout == 5
    assert config.ollama_first_byte_timeout == 300 and config.ollama_chunk_timeout == 300
    assert config.max_body_bytes == 10 * 1024 * 1024
    assert config.sse_heartbeat_seconds == 10 and config.log_level == "INFO"


def test_values_are_parsed():
    config = Config.from_mapping({**KEY, "PORT": "9000", "AUTH_ENABLED": "no", "ALLOWED_ORIGINS": "https://a.io, http://b:8080/",
                                  "OLLAMA_TIMEOUT": "12.5", "OLLAMA_CHUNK_TIMEOUT": "3", "LOG_LEVEL": "debug",
                                  "OLLAMA_BASE_URL": "http://ollama:11434/"})
    assert config.port == 9000 and config.auth_enabled is False
    assert config.allowed_origins == ("https://a.io", "http://b:8080")
    assert config.ollama_first_byte_timeout == 12.5 and config.ollama_chunk_timeout == 3
    assert config.log_level == "DEBUG" and config.ollama_base_url == "http://ollama:11434"


@pytest.mark.parametrize("name, value", [
    ("OLLAMA_BASE_URL", "localhost:11434"), ("OLLAMA_BASE_URL", "ftp://x"), ("OLLAMA_BASE_URL", "http://h:port"),
    ("PORT", "eighty"), ("PORT", "70000"), ("OLLAMA_TIMEOUT", "soon"), ("OLLAMA_TIMEOUT", "-1"),
    ("AUTH_ENABLED", "maybe"), ("DEBUG", "yes please"), ("MAX_BODY_BYTES", "10MB"), ("LOG_LEVEL", "loud"),
    ("ALLOWED_ORIGINS", "example.com"), ("SSE_HEARTBEAT_SECONDS", "nan"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping({**KEY, name: value})
    assert str(caught.value).startswith(name)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("key", ["", PLACEHOLDER_KEY])
def test_auth_needs_a_real_key(key):
    with pytest.raises(ConfigError, match="API_KEY"):
        Config.from_mapping({"API_KEY": key})
    assert Config.from_mapping({"API_KEY": key, "DEBUG": "true"}).debug
    assert not Config.from_mapping({"API_KEY": key, "AUTH_ENABLED": "false"}).auth_enabled


def test_env_file_is_read_and_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("API_KEY=from-the-file-123\nPORT=9100\n")
    config = Config.from_env({"PORT": "9200"}, env_file=str(env_file))
    assert config.api_key == "from-the-file-123" and config.port == 9200


def test_public_url_drops_credentials():
    config = Config.from_mapping({**KEY, "OLLAMA_BASE_URL": "https://user:pw@ollama.internal:8443/base"})
    (upstream,) = config.upstreams
    assert upstream.public_url == "https://ollama.internal:8443/base" and upstream.name == "ollama.internal:8443"


def test_one_base_url_is_one_upstream_named_by_host_and_port():
    (upstream,) = Config.from_mapping(KEY).upstreams
    assert (upstream.name, upstream.url, upstream.weight, upstream.max_parallel) == (
        "localhost:11434", "http://localhost:11434", 1.0, 4)


def test_base_urls_take_commas_or_semicolons():
    config = Config.from_mapping({**KEY, "OLLAMA_BASE_URLS": "http://gpu1:11434, http://gpu2:11434;https://gpu3"})
    assert [u.name for u in config.upstreams] == ["gpu1:11434", "gpu2:11434", "gpu3:443"]


UPSTREAMS = """
[[upstreams]]
name = "gpu-1"
url = "http://10.0.0.1:11434"
weight = 2
max_parallel = 8
models = ["llama3.2", "qwen3"]

[[upstreams]]
name = "gpu-2"
url = "https://user:pw@gpu2.internal"
ca_bundle = "ca.pem"
"""


def test_upstreams_file_names_each_upstream_and_its_settings(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "upstreams.toml"
    path.write_text(UPSTREAMS)
    first, second = Config.from_mapping({**KEY, "OLLAMA_UPSTREAMS_FILE": str(path)}).upstreams
    assert (first.name, first.weight, first.max_parallel, first.models) == ("gpu-1", 2.0, 8, ("llama3.2", "qwen3"))
    assert second.ca_bundle == str(tmp_path / "ca.pem") and second.public_url == "https://gpu2.internal"


@pytest.mark.parametrize("entry,message", [
    ('name = "a"', "upstreams[0] (a): url is required"),
    ('name = "a"\nurl = "ftp://x"', "is not an http(s) URL"),
    ('name = "a b"\nurl = "http://x"', "name must be"),
    ('name = "a"\nurl = "http://x"\nweight = 0', "weight must be a number above 0"),
    ('name = "a"\nurl = "http://x"\nmax_parallel = 0', "max_parallel must be an integer of at least 1"),
    ('name = "a"\nurl = "http://x"\nmodels = "llama3.2"', "models must be a list"),
    ('name = "a"\nurl = "https://x"\nca_bundle = "missing.pem"', "is not a file"),
    ('name = "a"\nurl = "http://x"\ntoken = "s"', "unknown fields ['token']"),
])
def test_a_bad_upstream_stops_start_up_naming_it(tmp_path, entry, message):
    path = tmp_path / "upstreams.toml"
    path.write_text(f"[[upstreams]]\n{entry}\n")
    with pytest.raises(ConfigError, match="upstreams") as caught:
        Config.from_mapping({**KEY, "OLLAMA_UPSTREAMS_FILE": str(path)})
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_two_upstreams_with_one_name_or_url_are_refused(tmp_path):
    path = tmp_path / "upstreams.toml"
    path.write_text('[[upstreams]]\nname = "a"\nurl = "http://x"\n[[upstreams]]\nname = "a"\nurl = "http://y"\n')
    with pytest.raises(ConfigError, match="the name 'a' appears twice"):
        Config.from_mapping({**KEY, "OLLAMA_UPSTREAMS_FILE": str(path)})
    with pytest.raises(ConfigError, match="appears twice"):
        Config.from_mapping({**KEY, "OLLAMA_BASE_URLS": "http://x:1,http://x:1"})
    with pytest.raises(ConfigError, match="keep one"):
        Config.from_mapping({**KEY, "OLLAMA_BASE_URLS": "http://x:1", "OLLAMA_UPSTREAMS_FILE": str(path)})


def test_every_setting_is_in_env_example_and_readme():
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name, _default, _doc in SETTINGS:
        assert f"{name}=" in example, name
        assert f"`{name}`" in readme, name


def test_gunicorn_refuses_to_start_with_one_clear_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "API_KEY": "k" * 20, "OLLAMA_TIMEOUT": "forever"}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "mlops-backend: configuration error: OLLAMA_TIMEOUT='forever' is not a number"]


def test_gunicorn_refuses_placeholder_key(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "API_KEY": PLACEHOLDER_KEY}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "API_KEY" in result.stderr
