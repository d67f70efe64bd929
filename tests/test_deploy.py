"""The shipped scheduling files parse and each one calls `rapport cycle`."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_the_cron_line_runs_the_cycle_every_15_minutes() -> None:
    lines = [ln for ln in (DEPLOY / "crontab").read_text().splitlines() if ln.strip()]
    jobs = [ln for ln in lines if not ln.startswith("#") and "=" not in ln.split()[0]]
    assert len(jobs) == 1
    fields = jobs[0].split(None, 5)
    assert fields[:5] == ["*/15", "*", "*", "*", "*"] and "rapport cycle" in fields[5]


def test_the_airflow_dag_runs_the_cycle_one_at_a_time() -> None:
    tree = ast.parse((DEPLOY / "airflow_rapport_cycle.py").read_text())
    calls = {
        node.func.id: {k.arg: k.value for k in node.keywords}
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert ast.literal_eval(calls["BashOperator"]["bash_command"]) == "rapport cycle"
    assert ast.literal_eval(calls["DAG"]["max_active_runs"]) == 1


def test_the_kubernetes_cronjob_runs_the_cycle_without_overlap() -> None:
    job = yaml.safe_load((DEPLOY / "k8s-cronjob.yaml").read_text())
    assert job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["rapport", "cycle"]
