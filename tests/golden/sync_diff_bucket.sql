select _key, _hash, _created from __ferry_sync_snapshot
where ferry_bucket(_key, 4) = 0 or _key is null;
select * from (
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
) as model_rows
where ferry_bucket(_key, 4) = 0 or _key is null;
select _key, _crm_id, _created from __ferry_sync_snapshot
where ferry_bucket(_key, 4) = 0 or _key is null;
