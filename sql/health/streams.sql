-- The health page: one row per source stream (ferry.extract_runs), with
-- its latest attempt, last success and what it did since :today.
select source || '.' || stream as pipeline,
       count(*) as runs,
       max(started_at) as last_run_at,
       max(case when status = 'ok' then started_at end) as last_success_at,
       sum(case when started_at >= timestamp ':today' then rows else 0 end) as rows_today,
       sum(case when started_at >= timestamp ':today' then quarantined else 0 end) as rejected_today,
       sum(case when started_at >= timestamp ':today' and status = 'failed' then 1 else 0 end) as failures_today
from ferry.extract_runs
group by 1
