with model_rows as (
    select
        lower(trim(cast("email" as varchar))) as _key,
        "lead_score" as _v0,
        "persona" as _v1,
        md5(concat_ws(',',
            case when "lead_score" is null then '~'
                 else concat(cast(character_length(cast("lead_score" as varchar)) as varchar), ':', cast("lead_score" as varchar)) end,
            case when "persona" is null then '~'
                 else concat(cast(character_length(cast("persona" as varchar)) as varchar), ':', cast("persona" as varchar)) end)) as _hash
    from "contact_scores"
),
model_part as (
    select * from model_rows
    where ferry_bucket(_key, 4) = 0 or _key is null
),
-- Keys held by more than one row (rare). In a bucket the keys are a share
-- of the model's, so they are grouped as they are: a third read of the
-- model per bucket (below) would cost more than it saves.
duplicates as (
    select _key as _dup_key, count(*) as _n from model_part group by _key having count(*) > 1
),
counted as (
    select model_part.*, coalesce(d._n, 1) as _n
    from duplicates as d right join model_part on model_part._key = d._dup_key
)
select
    coalesce(m._key, s._key) as _key,
    case
        when m._hash is null then 'remove'
        when m._key is null or m._key = '' then 'reject'
        when m._n > 1 then 'reject'
        when s._key is null then 'add'
        when s._hash <> m._hash then 'change'
        else 'unchanged'
    end as _op,
    case
        when m._hash is not null and (m._key is null or m._key = '')
            then 'empty match key: email is null or blank'
        when m._n > 1
            then concat('duplicate match key: ', cast(m._n as varchar), ' rows have email = ', m._key)
    end as _reason,
    m._hash as _hash,
    s._crm_id as _crm_id,
    coalesce(s._created, false) as _created,
    m._v0,
    m._v1
from counted as m
full outer join (
    select * from __ferry_sync_snapshot
    where ferry_bucket(_key, 4) = 0 or _key is null
) as s on m._key = s._key