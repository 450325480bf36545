"""The standalone server logs failed requests, and no line per successful one (hot path)."""
import requests

from serverproc import wait_until


def test_failed_requests_are_logged_and_successful_ones_are_not(server):
    ok = requests.get(server.url + "lmserve/api/health", headers={"Authorization": f"token {server.token}"})
    missing = requests.post(server.url + "lmserve/api/models/no-such-model/predict",
                            headers={"Authorization": f"token {server.token}"}, data=b"{}")
    refused = requests.get(server.url + "lmserve/api/health")
    assert (ok.status_code, missing.status_code, refused.status_code) == (200, 404, 401)
    wait_until(lambda: "401 GET /lmserve/api/health" in server.log(), 5, message="the 401 in the log")
    log = server.log()
    assert "404 POST /lmserve/api/models/no-such-model/predict" in log
    assert "200 GET /lmserve/api/health" not in log
    assert "RecursionError" not in log
