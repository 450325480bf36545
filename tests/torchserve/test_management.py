"""TorchServe's management API and client scripts against ``lmjupyter serve``; ``url`` is never fetched."""
import http.server
import os
import subprocess
import sys
import threading

import requests

from markit import build_mar

SCRIPT = os.path.join(os.path.dirname(__file__), "client_script.py")


def _call(server, method, path, **kwargs):
    return requests.request(method, server.url + path, headers={"Authorization": f"Bearer {server.token}"},
                            timeout=120, **kwargs)


def test_torchserve_client_script_runs_unchanged(ts_server):
    build_mar(os.path.join(ts_server.root, "store"), "wordcount", "wordcount.py",
              config="minWorkers: 1\nmaxWorkers: 1\ndeviceType: cpu\n")
    base = ts_server.url.rstrip("/")
    env = {**os.environ, "TS_INFERENCE": base, "TS_MANAGEMENT": base, "TS_TOKEN": ts_server.token}
    done = subprocess.run([sys.executable, SCRIPT, "wordcount.mar"], capture_output=True, text=True, env=env,
                          timeout=180)
    assert done.returncode == 0, done.stderr + done.stdout
    with open(SCRIPT) as f:
        script_words = len(f.read().split())
    assert done.stdout.splitlines() == [
        "Healthy",
        'Model "wordcount" Version: 1.0 registered with 1 initial workers',
        "4 words",
        f"{script_words} words",
        "Workers scaled to 2 for model: wordcount",
        "wordcount 1.0 2 ['READY', 'READY']",
        "['wordcount']",
        'Model "wordcount" unregistered',
        "404",
    ]


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_url_is_a_local_path_and_nothing_is_fetched(ts_server):
    listener = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    try:
        port = listener.server_address[1]
        for url in (f"http://127.0.0.1:{port}/model.mar", f"https://127.0.0.1:{port}/model.mar",
                    f"HTTP://127.0.0.1:{port}/m.mar"):
            response = _call(ts_server, "POST", "models", params={"url": url, "initial_workers": "1"})
            assert response.status_code == 400, response.text
            assert response.json()["type"] == "BadRequestException" and "never downloads" in response.json()["message"]
        assert _Recorder.hits == []
    finally:
        listener.shutdown()
        listener.server_close()
    missing = _call(ts_server, "POST", "models")
    assert (missing.status_code, missing.json()["message"]) == (400, "Parameter url is required.")
    outside = _call(ts_server, "POST", "models", params={"url": "/etc/passwd"})
    assert outside.status_code == 403
    assert _call(ts_server, "GET", "models").json() == {"models": []}


def test_versions_pages_and_defaults_without_workers(ts_server):
    """Registering with 0 workers starts nothing, as in TorchServe: the bookkeeping alone, fast."""
    store = os.path.join(ts_server.root, "store")
    for version in ("1.0", "2.0"):
        build_mar(store, f"noop-{version}", "wordcount.py", version=version)
    for name in ("noop-1.0", "noop-2.0"):
        answer = _call(ts_server, "POST", "models", params={"url": f"{name}.mar", "model_name": "noop"})
        assert answer.json() == {"status": f'Model "noop" Version: {name[5:]} registered with 0 initial workers. '
                                           "Use scale workers API to add workers for the model."}
    build_mar(store, "other", "wordcount.py", config="batchSize: 2\nresponseTimeout: 30\n")
    registered = _call(ts_server, "POST", "models", json={"url": "other.mar", "batch_size": 4, "max_batch_delay": 50,
                                                          "response_timeout": 99})  # a JSON body works too
    assert registered.status_code == 200
    other = _call(ts_server, "GET", "models/other").json()[0]
    # TorchServe's precedence: the call's batch settings win, the archive's responseTimeout wins
    assert (other["batchSize"], other["maxBatchDelay"], other["responseTimeout"]) == (4, 50, 30)
    again = _call(ts_server, "POST", "models", params={"url": "other.mar"})
    assert again.status_code == 409 and again.json()["type"] == "ConflictStatusException"

    page = _call(ts_server, "GET", "models", params={"limit": "1"}).json()
    assert page == {"nextPageToken": "1", "models": [{"modelName": "noop", "modelUrl": "noop-1.0.mar"}]}
    rest = _call(ts_server, "GET", "models", params={"limit": "5", "next_page_token": "1"}).json()
    assert rest == {"models": [{"modelName": "other", "modelUrl": "other.mar"}]}
    described = _call(ts_server, "GET", "models/noop/all").json()
    assert [(d["modelVersion"], d["workers"], d["minWorkers"]) for d in described] == [("1.0", [], 0), ("2.0", [], 0)]
    assert _call(ts_server, "GET", "models/noop").json()[0]["modelVersion"] == "1.0"

    default = _call(ts_server, "PUT", "models/noop/2.0/set-default")
    assert default.json() == {"status": 'Default version successfully updated for model "noop" to "2.0"'}
    assert _call(ts_server, "GET", "models/noop").json()[0]["modelVersion"] == "2.0"
    refused = _call(ts_server, "DELETE", "models/noop")
    assert refused.status_code == 403 and refused.json()["type"] == "InvalidModelVersionException"
    assert _call(ts_server, "DELETE", "models/noop/1.0").json() == {"status": 'Model "noop" unregistered'}
    assert _call(ts_server, "DELETE", "models/noop").status_code == 200
    assert _call(ts_server, "GET", "models/noop/3.0").json()["code"] == 404
    bad = _call(ts_server, "PUT", "models/other", params={"min_worker": "3", "max_worker": "2"})
    assert (bad.status_code, bad.json()["message"]) == (400, "max_worker cannot be less than min_worker.")
    assert _call(ts_server, "DELETE", "models/other").status_code == 200
    assert _call(ts_server, "GET", "ping").json() == {"status": "Healthy"}
