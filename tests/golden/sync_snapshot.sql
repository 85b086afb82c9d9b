select key as _key, hash as _hash, crm_id as _crm_id, created as _created, payload as _payload
from (
    select key, hash, crm_id, created, payload, operation,
           row_number() over (partition by key order by _later desc, at desc) as _rn
    from (
        select key, hash, crm_id, created, payload, operation, at, 0 as _later
        from base
        union all
        select key, hash, crm_id, created, payload, operation, at, 1 as _later
        from log
        where status = 'ok'
          and operation in ('create', 'update', 'upsert', 'skip', 'archive', 'forget', 'add', 'remove')
          and arrow_cast(at, 'Int64') > 1700000000000000
    ) as history
) as latest
where _rn = 1 and operation not in ('archive', 'forget', 'remove')