{#- What the CRM last confirmed for one sync: the newest snapshot file plus
    every confirmed (`status = 'ok'`) outcome logged after it, newest per key.
    Records archived or released by the sync drop out. A logged outcome
    always ranks above the snapshot's row (it is of a later run, whatever the
    clocks of the machines that wrote them say); among logged outcomes the
    newest wins.
    Inputs: {{ base }} (a snapshot, possibly empty), {{ log }} (the sync's
    `ferry.sync_log` rows), {{ after }} (the snapshot's cut-off, microseconds). -#}
select key as _key, hash as _hash, crm_id as _crm_id, created as _created, payload as _payload
from (
    select key, hash, crm_id, created, payload, operation,
           row_number() over (partition by key order by _later desc, at desc) as _rn
    from (
        select key, hash, crm_id, created, payload, operation, at, 0 as _later
        from {{ base }}
        union all
        select key, hash, crm_id, created, payload, operation, at, 1 as _later
        from {{ log }}
        where status = 'ok'
          and operation in ('create', 'update', 'upsert', 'skip', 'archive', 'forget', 'add', 'remove')
          and arrow_cast(at, 'Int64') > {{ after }}
    ) as history
) as latest
where _rn = 1 and operation not in ('archive', 'forget', 'remove')
