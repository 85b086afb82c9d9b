with logged as (
    select key, hash, crm_id, created, payload, operation, at, 1 as _later
    from log
    where status = 'ok'
      and operation in ('create', 'update', 'upsert', 'skip', 'archive', 'forget', 'add', 'remove')
      and arrow_cast(at, 'Int64') > 1700000000000000
),
logged_keys as (
    select distinct key as _logged_key, true as _logged from logged
),
latest as (
    select b.key, b.hash, b.crm_id, b.created, b.payload, b.operation
    from logged_keys right join base as b on (b.key is not distinct from logged_keys._logged_key)
    where logged_keys._logged is null
    union all
    select key, hash, crm_id, created, payload, operation
    from (
        select key, hash, crm_id, created, payload, operation,
               row_number() over (partition by key order by _later desc, at desc) as _rn
        from (
            select b.key, b.hash, b.crm_id, b.created, b.payload, b.operation, b.at, 0 as _later
            from logged_keys join base as b on (b.key is not distinct from logged_keys._logged_key)
            union all
            select * from logged
        ) as history
    ) as ranked
    where _rn = 1
)
select key as _key, hash as _hash, crm_id as _crm_id, created as _created, payload as _payload
from latest
where operation not in ('archive', 'forget', 'remove')