"""Ultravox scheduled call batches → PostgreSQL, every 10 minutes, one Airflow task per batch.

Copy this file into Airflow's DAG folder, on every scheduler and worker install
`ultravox-etl[airflow]`, and set up (never in this file):

- the Connection `ultravox_etl_db`: the reporting database, e.g.
  `airflow connections add ultravox_etl_db --conn-uri postgresql://etl:…@db:5432/reporting`
  (or `AIRFLOW_CONN_ULTRAVOX_ETL_DB=postgresql://…`);
- the Variable `ultravox_api_key`: the Ultravox API key
  (`airflow variables set ultravox_api_key …` or `AIRFLOW_VAR_ULTRAVOX_API_KEY=…`);
- the config file (batches, agents, [api] and [sync] settings) at $ULTRAVOX_ETL_CONFIG;
- the pool `ultravox_api`, sized from that config so that all workers together stay within
  the API key's limit: `eval "$(ultravox-etl airflow-pool --config "$ULTRAVOX_ETL_CONFIG")"`
  runs the `airflow pools set` line it prints. Create it first: Airflow leaves a task whose
  pool does not exist `scheduled` for ever, without failing it.
"""

from __future__ import annotations

import os
from datetime import timedelta

from etl.airflow import ultravox_sync_dag

dag = ultravox_sync_dag(
    os.environ.get("ULTRAVOX_ETL_CONFIG", "/opt/airflow/config/ultravox-etl.toml"),
    dag_id="ultravox_sync",
    schedule="*/10 * * * *",
    max_parallel_batches=4,  # sync_batch instances at once, over all workers
    retries=3,
    retry_delay=timedelta(minutes=2),
    on_locked="skip",  # a batch another run is syncing: skipped, the next run takes it
    pool="ultravox_api",  # one slot a task: see `ultravox-etl airflow-pool` above
)
