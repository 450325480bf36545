"""A TorchServe client script as users have them, run unchanged against ``lmjupyter serve``.

    python client_script.py wordcount.mar
TS_INFERENCE / TS_MANAGEMENT are TorchServe's two base URLs (8080, 8081); TS_TOKEN its key.
"""
import os
import sys

import requests

INFERENCE = os.environ.get("TS_INFERENCE", "http://127.0.0.1:8080")
MANAGEMENT = os.environ.get("TS_MANAGEMENT", "http://127.0.0.1:8081")
HEADERS = {"Authorization": f"Bearer {os.environ['TS_TOKEN']}"}


def check(response, status=200):
    if response.status_code != status:
        sys.exit(f"{response.request.method} {response.url}: {response.status_code} {response.text}")
    return response.json()


print(check(requests.get(f"{INFERENCE}/ping", headers=HEADERS))["status"])
print(check(requests.post(f"{MANAGEMENT}/models", headers=HEADERS,
                          params={"url": sys.argv[1], "initial_workers": 1, "synchronous": "true"}))["status"])
print(requests.post(f"{INFERENCE}/predictions/wordcount", headers=HEADERS, data="how many words here").text)
with open(__file__, "rb") as f:
    print(requests.post(f"{INFERENCE}/predictions/wordcount/1.0", headers=HEADERS, files={"data": f}).text)
print(check(requests.put(f"{MANAGEMENT}/models/wordcount", headers=HEADERS,
                         params={"min_worker": 2, "synchronous": "true"}))["status"])
described = check(requests.get(f"{MANAGEMENT}/models/wordcount", headers=HEADERS))[0]
print(described["modelName"], described["modelVersion"], described["minWorkers"],
      [w["status"] for w in described["workers"]])
print([m["modelName"] for m in check(requests.get(f"{MANAGEMENT}/models", headers=HEADERS))["models"]])
print(check(requests.delete(f"{MANAGEMENT}/models/wordcount/1.0", headers=HEADERS))["status"])
print(requests.get(f"{MANAGEMENT}/models/wordcount", headers=HEADERS).json()["code"])
