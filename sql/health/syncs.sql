-- The health page: one row per sync (ferry.sync_runs), with its last
-- success and what it did since :today.
select sync as pipeline,
       count(*) as runs,
       max(started_at) as last_run_at,
       max(case when status in ('success', 'partial') then started_at end) as last_success_at,
       sum(case when started_at >= timestamp ':today' then created + updated + archived else 0 end) as rows_today,
       sum(case when started_at >= timestamp ':today' then rejected + failed else 0 end) as rejected_today,
       sum(case when started_at >= timestamp ':today' and status = 'failed' then 1 else 0 end) as failures_today,
       sum(case when started_at >= timestamp ':today' then api_calls else 0 end) as api_calls_today,
       sum(case when started_at >= timestamp ':today' then rate_limited else 0 end) as rate_limited_today
from ferry.sync_runs
group by 1
