{#- What the CRM last confirmed for one sync: the newest snapshot file plus
    every confirmed (`status = 'ok'`) outcome logged after it, newest per key.
    Records archived or released by the sync drop out. A logged outcome
    always ranks above the snapshot's row (it is of a later run, whatever the
    clocks of the machines that wrote them say); among logged outcomes the
    newest wins.
    A snapshot holds one row per key (it is this query's result), so only the
    keys logged since it are ranked: the snapshot's other rows pass straight
    through a join whose hash table holds the logged keys alone, and the
    window's sort runs on the logged keys' rows, not on the whole snapshot.
    Inputs: {{ base }} (a snapshot, possibly empty), {{ log }} (the sync's
    `ferry.sync_log` rows), {{ after }} (the snapshot's cut-off, microseconds). -#}
with logged as (
    select key, hash, crm_id, created, payload, operation, at, 1 as _later
    from {{ log }}
    where status = 'ok'
      and operation in ('create', 'update', 'upsert', 'skip', 'archive', 'forget', 'add', 'remove')
      and arrow_cast(at, 'Int64') > {{ after }}
),
logged_keys as (
    select distinct key as _logged_key, true as _logged from logged
),
latest as (
    select b.key, b.hash, b.crm_id, b.created, b.payload, b.operation
    from logged_keys right join {{ base }} as b on (b.key is not distinct from logged_keys._logged_key)
    where logged_keys._logged is null
    union all
    select key, hash, crm_id, created, payload, operation
    from (
        select key, hash, crm_id, created, payload, operation,
               row_number() over (partition by key order by _later desc, at desc) as _rn
        from (
            select b.key, b.hash, b.crm_id, b.created, b.payload, b.operation, b.at, 0 as _later
            from logged_keys join {{ base }} as b on (b.key is not distinct from logged_keys._logged_key)
            union all
            select * from logged
        ) as history
    ) as ranked
    where _rn = 1
)
select key as _key, hash as _hash, crm_id as _crm_id, created as _created, payload as _payload
from latest
where operation not in ('archive', 'forget', 'remove')
