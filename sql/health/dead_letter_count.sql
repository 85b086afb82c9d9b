-- Dead-letter rows waiting: records whose latest outcome in a sync is a
-- CRM rejection or a failure that outlasted the retries.
select count(*) as n from (
  select sync, key, status,
         row_number() over (partition by sync, key order by at desc) as rn
  from ferry.sync_log
  where key is not null
) where rn = 1 and status in ('rejected', 'failed')
