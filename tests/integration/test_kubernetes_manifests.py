"""deploy/kubernetes/ passes `kubectl apply --dry-run=client --validate=false`, and the
workers' Deployment joins through the Secret mounted as a file and offers what its pod asks.

kubectl maps each manifest's kind to a resource through the API server's discovery even on a
client-side dry run; no cluster can run here, so a loopback stub answers discovery (the
built-in kinds the manifests use) and says no object exists yet. Nothing is ever created."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.system import require

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def _resources(group_version: str, kinds: dict[str, str]) -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": plural, "singularName": kind.lower(), "namespaced": True,
                           "kind": kind, "verbs": ["create", "get", "list", "patch"]}
                          for plural, kind in kinds.items()]}


DISCOVERY: dict[str, Any] = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                             "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]},
    "/api/v1": _resources("v1", {"secrets": "Secret", "services": "Service",
                                 "configmaps": "ConfigMap"}),
    "/apis/apps/v1": _resources("apps/v1", {"deployments": "Deployment",
                                            "statefulsets": "StatefulSet"}),
}


class _Discovery(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the stdlib names it so
        path = self.path.split("?")[0]
        body = DISCOVERY.get(path)
        status = 200
        if body is None:  # any object: not there yet, so apply would create it
            status = 404
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[Path]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {
            "server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub",
                                                  "namespace": "default"}}],
        "users": [{"name": "stub", "user": {}}]}))
    try:
        yield config
    finally:
        server.shutdown()
        server.server_close()


def test_the_manifests_pass_a_client_dry_run(kubeconfig: Path, tmp_path: Path) -> None:
    require(shutil.which("kubectl") is not None, "kubectl")
    env = {"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(["kubectl", "apply", "--dry-run=client", "--validate=false",
                             "-f", str(MANIFESTS)], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for made in ("secret/shoal-join", "deployment.apps/shoal-worker", "service/shoal-server",
                 "statefulset.apps/shoal-server"):
        assert f"{made} created (dry run)" in result.stdout, result.stdout + result.stderr

    shown = subprocess.run(["kubectl", "apply", "--dry-run=client", "--validate=false", "-o",
                            "json", "-f", str(MANIFESTS / "workers.yaml")],
                           capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    deployment = json.loads(shown.stdout)
    pod = deployment["spec"]["template"]["spec"]
    [worker] = pod["containers"]
    assert worker["args"][:2] == ["worker", "--join-file=/etc/shoal/join"]
    assert "--cores=$(SHOAL_CORES)" in worker["args"]
    assert "--memory=$(SHOAL_MEMORY_MB)M" in worker["args"]
    fields = {e["name"]: e["valueFrom"]["resourceFieldRef"]["resource"]
              for e in worker["env"] if "valueFrom" in e}
    assert fields == {"SHOAL_CORES": "limits.cpu", "SHOAL_MEMORY_MB": "limits.memory"}
    assert worker["resources"]["requests"] == worker["resources"]["limits"]
    [join] = [v for v in pod["volumes"] if v["name"] == "join"]
    assert join["secret"]["secretName"] == "shoal-join"
    assert join["secret"]["defaultMode"] & 0o007 == 0  # others cannot read the token
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
