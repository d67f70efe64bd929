"""Airflow DAG: ``rapport cycle`` every 15 minutes.

Copy into the DAGs folder of an Airflow 2.x deployment whose workers can run the
``rapport`` command on the workspace (``RAPPORT_HOME``). The cycle records its own steps
(``rapport cycle --history``); Airflow only needs its exit status.
"""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(
    dag_id="rapport_cycle",
    schedule=timedelta(minutes=15),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # the cycle's lock would skip an overlapping run anyway
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    tags=["rapport"],
) as dag:
    BashOperator(
        task_id="cycle",
        bash_command="rapport cycle",
        env={"RAPPORT_HOME": "/srv/rapport/workspace"},
        append_env=True,
        execution_timeout=timedelta(hours=2),
    )
