"""Part 7 of issue 13 in CI: benchmarks/soak.py for 60 s (the 10-minute run's figures are in
docs/RELIABILITY.md). Predicts, streams, dropped requests, scaling, deploy/undeploy of a second
model and rank kills at once: nothing wrong or hung, only the requests of killed ranks lost,
flat memory and fds, nothing left once the server stops."""
import importlib.util
import os

import pytest

SOAK = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "soak.py")


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_a_minute_of_everything_at_once(tmp_path):
    soak = load_soak()
    result = soak.Soak(str(tmp_path), duration=60, kill_every=15, scale_every=10, deploy_every=12).run()
    counts, samples = result["counts"], result["samples"]
    predicts, streams = counts["predict"], counts["stream"]
    assert predicts.get("200", 0) > 200 and streams.get("200", 0) > 20, counts
    kills = counts["kill"].get("killed", 0)
    assert kills >= 2, counts
    for outcomes in (predicts, streams):
        assert "wrong" not in outcomes and "hung" not in outcomes, (counts, result["examples"])
        lost = {k: v for k, v in outcomes.items() if k != "200"}
        assert set(lost) <= {"502"}, (counts, result["examples"])  # only what a killed rank had in flight
        assert sum(lost.values()) <= 8 * kills, counts
    assert set(counts["scale"]) == {"200"} and all(k.endswith("ok") or k == "undeploy 200"
                                                   for k in counts["deploy"]), counts
    assert result["server_alive_at_end"] and result["server_exit"] == 0
    assert result["processes_left"] == [] and result["threads_hung"] == []
    assert samples[-1]["server_fds"] - samples[0]["server_fds"] <= 12, samples
    assert samples[-1]["server_rss_mib"] - samples[0]["server_rss_mib"] < 25, samples
