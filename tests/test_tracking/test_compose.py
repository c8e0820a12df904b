"""docker-compose.yml: MongoDB and Omniboard, loopback-only ports, credentials from .env, a named volume."""

from __future__ import annotations

import json
import re

import yaml

from tests.conftest import ROOT


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_images_and_health():
    services = compose()["services"]
    assert set(services) == {"mongo", "omniboard"}
    assert services["mongo"]["image"].startswith("mongo:")
    assert services["omniboard"]["build"] == "./omniboard"  # built from the lockfile make dashboard installs
    assert services["mongo"]["healthcheck"]["test"] and services["omniboard"]["healthcheck"]["test"]
    assert services["omniboard"]["depends_on"]["mongo"]["condition"] == "service_healthy"


def test_one_omniboard_version_for_docker_and_make_dashboard():
    lock = json.loads((ROOT / "omniboard" / "package-lock.json").read_text())
    pinned = json.loads((ROOT / "omniboard" / "package.json").read_text())["dependencies"]["omniboard"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned)  # an exact version, not a range
    assert lock["packages"]["node_modules/omniboard"]["version"] == pinned
    dockerfile = (ROOT / "omniboard" / "Dockerfile").read_text()
    assert "COPY package.json package-lock.json" in dockerfile and "npm ci" in dockerfile


def test_every_port_is_bound_to_loopback():
    ports = [p for s in compose()["services"].values() for p in s.get("ports", [])]
    assert ports
    for port in ports:
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), port


def test_credentials_come_from_env_and_data_from_a_named_volume():
    doc = compose()
    mongo = doc["services"]["mongo"]
    for value in mongo["environment"].values():
        assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", value), value
    omniboard = doc["services"]["omniboard"]  # the password in its environment: a command line is public (ps)
    assert "${MONGO_PASSWORD}" in omniboard["environment"]["MONGO_URI"] and "command" not in omniboard
    volume = mongo["volumes"][0].split(":")[0]
    assert volume in doc["volumes"]
    example = (ROOT / ".env.example").read_text()
    assert "MONGO_PASSWORD=" in example and "MONGO_URL=" in example
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
