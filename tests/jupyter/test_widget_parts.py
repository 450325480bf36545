"""The panel's parts without a server: Prometheus parsing, percentiles, the chart, tables, the config editor."""
import html
import math

import pytest

from lmjupyter.widgets.metrics import Histogram, MetricsHistory, parse_latency, quantile, summary
from lmjupyter.widgets.plot import line_chart
from lmjupyter.widgets.render import models_table, nodes_table, plan_table, rank_device, workers_table

pytestmark = pytest.mark.timeout(30)


def exposition(counts: dict[str, list[int]]) -> str:
    """Prometheus text for a latency histogram with buckets 0.01, 0.1, 1, +Inf per model."""
    lines = ["# HELP lmjupyter_request_latency_seconds Time from arrival to answer",
             "# TYPE lmjupyter_request_latency_seconds histogram"]
    for model, (a, b, c, inf) in counts.items():
        for le, n in (("0.01", a), ("0.1", b), ("1.0", c), ("+Inf", inf)):
            lines.append(f'lmjupyter_request_latency_seconds_bucket{{le="{le}",model="{model}"}} {n}.0')
        lines.append(f'lmjupyter_request_latency_seconds_count{{model="{model}"}} {inf}.0')
        lines.append(f'lmjupyter_request_latency_seconds_sum{{model="{model}"}} 1.0')
    return "\n".join(lines) + "\n"


def test_parse_latency_reads_buckets_per_model():
    hists = parse_latency(exposition({"a": [1, 2, 3, 4], "b": [0, 0, 5, 5]}))
    assert hists["a"].buckets == {0.01: 1, 0.1: 2, 1.0: 3, math.inf: 4} and hists["a"].count == 4
    assert hists["b"].count == 5


def test_quantile_interpolates_inside_the_bucket_like_prometheus():
    hist = Histogram({0.01: 0, 0.1: 10, 1.0: 20, math.inf: 20}, 20)
    assert quantile(0.5, hist) == pytest.approx(0.1)
    assert quantile(0.25, hist) == pytest.approx(0.01 + 0.09 * 0.5)
    assert quantile(0.75, hist) == pytest.approx(0.1 + 0.9 * 0.5)
    assert quantile(0.99, Histogram({0.1: 1, math.inf: 10}, 10)) == 0.1  # beyond the last finite bound
    assert quantile(0.5, Histogram({0.1: 0, math.inf: 0}, 0)) is None


def test_history_turns_scrapes_into_rates_and_window_percentiles():
    history = MetricsHistory(maxlen=5)
    history.add(exposition({"a": [0, 0, 0, 0]}), now=100.0)
    history.add(exposition({"a": [0, 10, 10, 10]}), now=102.0)   # 10 requests in 2 s, all in (0.01, 0.1]
    history.add(exposition({"a": [0, 10, 10, 10]}), now=104.0)   # idle
    series = history.series("a")
    assert series["t"] == [-2.0, 0.0]
    assert series["rps"] == [5.0, 0.0]
    assert series["p50"][0] == pytest.approx(55.0) and series["p50"][1] is None
    assert history.series()["rps"] == series["rps"]  # all models together
    assert "10 requests since start" in summary(history, "a")


def test_chart_breaks_lines_at_gaps_and_says_when_empty():
    svg = line_chart([-4, -2, 0], {"p50": [1.0, None, 3.0]}, "latency", "ms")
    assert svg.startswith("<svg") and svg.count("<circle") == 2  # two one-point runs
    assert "no requests yet" in line_chart([], {"p50": []}, "latency")


MODEL = {"name": "m", "version": "1", "state": "ready", "target_workers": 2,
         "config": {"deviceType": "gpu", "torchrun": {"nproc-per-node": 2}},
         "workers": [{"id": 1, "state": "ready", "devices": "4,5",
                      "ranks": [{"rank": 0, "pid": 11, "state": "ready"}, {"rank": 1, "pid": 12, "state": "ready"}]},
                     {"id": 2, "state": "starting", "devices": "6,7",
                      "ranks": [{"rank": 0, "pid": 13, "state": "loading"}]}],
         "queue": {"depth": 0, "capacity": 10}, "metrics": {"requests_total": 3, "errors_total": 0}}


def test_tables_show_states_ranks_and_the_gpu_map():
    table = models_table([MODEL])
    assert table.rows[0][3:5] == ["1/2", "2/4"]  # healthy workers, ranks ready of expected
    assert 'data-state="ready"' in table.html() and "ranks ready" in table.text()
    assert rank_device(MODEL, MODEL["workers"][0], 1) == "GPU 5"
    assert "GPU 6" in workers_table(MODEL).text()
    cpu = {**MODEL, "config": {"deviceType": "cpu"}}
    assert rank_device(cpu, {"devices": ""}, 0) == "cpu"


TWO_HOSTS = {"name": "big", "version": "1", "state": "ready", "target_workers": 1,
             "config": {"deviceType": "cpu", "torchrun": {"nproc-per-node": 1, "nnodes": 2}},
             "workers": [{"id": 1, "state": "starting", "devices": "", "ranks": [
                 {"rank": 0, "pid": 21, "state": "ready", "node": "hosta", "address": "10.0.0.1", "device": "cpu"},
                 {"rank": 1, "pid": 7, "state": "ready", "node": "hostb", "address": "10.0.0.2", "device": "cpu"}],
                 "nodes": [], "waiting_for_nodes": "missing: 1 node; hostb (10.0.0.2) is lost"}]}


def test_tables_of_groups_across_hosts_show_each_rank_s_node_and_the_nodes():
    assert models_table([TWO_HOSTS]).rows[0][4] == "2/2"  # ranks expected: nproc x nnodes
    table = workers_table(TWO_HOSTS)
    assert "node" in table.columns and table.rows[1][3] == "hostb (10.0.0.2)"
    assert "2 hosts" in table.title and "waits for nodes: missing: 1 node" in table.footer
    nodes = nodes_table([
        {"name": "hosta", "hostname": "a", "address": "10.0.0.1", "local": True, "state": "online",
         "gpus": [{"id": 0, "holder": None}, {"id": 1, "holder": {"model": "big", "worker": 1}}],
         "workers": [{"model": "big", "worker": 1, "node_rank": 0}], "last_seen_s": None},
        {"name": "hostb", "hostname": "b", "address": "10.0.0.2", "state": "lost", "gpus": [],
         "workers": [], "last_seen_s": 12.5, "lost_reason": "no heartbeat for 10s"}])
    assert nodes.rows[0][:5] == ["hosta (this server)", "a", "10.0.0.1", ("online", "ready"), "1/2 free"]
    assert nodes.rows[1][3] == ("lost", "failed") and nodes.rows[1][-1] == "no heartbeat for 10s"
    assert 'data-state="failed"' in nodes.html() and "12.5s ago" in nodes.text()
    plan = plan_table({"name": "big", "handler": "h", "plan": {"device_type": "cpu", "nproc_per_node": 1, "nnodes": 2,
        "workers": [{"id": 1, "devices": "", "command": ["x"], "nodes": [
            {"node_rank": 0, "node": "hosta", "address": "10.0.0.1", "devices": "", "command": ["run", "0"]},
            {"node_rank": 1, "node": "hostb", "address": "10.0.0.2", "devices": "", "command": ["run", "1"]}]}]}})
    assert [row[1:3] for row in plan.rows] == [["0: hosta (10.0.0.1)", "cpu"], ["1: hostb (10.0.0.2)", "cpu"]]


def test_config_editor_validates_and_keeps_fields_in_step():
    from lmjupyter.widgets.editor import ConfigEditor

    editor = ConfigEditor("minWorkers: 1\nbatchSize: 4\n")
    assert editor.valid and editor.fields[("batchSize",)].value == 4
    editor.text = "minWorkers: 1\nbatchSize: eight\n"
    assert not editor.valid and "batchSize = 'eight' (line 2)" in html.unescape(editor.status.value)
    editor.text = "minWorkers: 1\nbatchSize: 4\n"
    editor.fields[("torchrun", "nproc-per-node")].value = 3
    assert "nproc-per-node: 3" in editor.text and editor.valid
    editor.fields[("deviceType",)].value = "cpu"
    assert "deviceType: cpu" in editor.text
