-- The latest route runs (ferry.run_stages: build, demo and scheduled jobs).
select run_id, command, max(schedule) as schedule, min(started_at) as started_at,
       case when bool_or(status = 'failed') then 'failed'
            when bool_or(status = 'stopped') then 'stopped'
            else 'ok' end as status,
       sum(seconds) as seconds, sum(rows) as rows, sum(rejected) as rejected,
       sum(api_calls) as api_calls, sum(rate_limited) as rate_limited
from ferry.run_stages
group by run_id, command
order by started_at desc
limit :limit
