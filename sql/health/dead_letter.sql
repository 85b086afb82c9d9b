-- Dead-letter rows: records whose latest outcome in their sync is a CRM
-- rejection or a failure that outlasted the retries, newest first.
select sync, key, status, error_category, error_message, attempts, at, run_id
from (
  select sync, key, status, error_category, error_message, attempts, at, run_id,
         row_number() over (partition by sync, key order by at desc) as rn
  from ferry.sync_log
  where key is not null
)
where rn = 1 and status in ('rejected', 'failed')
order by at desc
limit 200
