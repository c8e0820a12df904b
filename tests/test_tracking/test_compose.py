"""docker-compose.yml: MongoDB and Omniboard, loopback-only ports, credentials from .env, a named volume."""
from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_images_and_health():
    services = compose()["services"]
    assert set(services) == {"mongo", "omniboard"}
    assert services["mongo"]["image"].startswith("mongo:")
    assert services["omniboard"]["image"].startswith("vivekratnavel/omniboard")
    assert services["mongo"]["healthcheck"]["test"] and services["omniboard"]["healthcheck"]["test"]
    assert services["omniboard"]["depends_on"]["mongo"]["condition"] == "service_healthy"


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
    assert "${MONGO_PASSWORD}" in " ".join(doc["services"]["omniboard"]["command"])
    volume = mongo["volumes"][0].split(":")[0]
    assert volume in doc["volumes"]
    example = (ROOT / ".env.example").read_text()
    assert "MONGO_PASSWORD=" in example and "MONGO_URL=" in example
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
