select _key, _hash, _created from __ferry_sync_snapshot;
select * from (
    select
        lower(trim(cast("email" as varchar))) as _key,
        "lead_score" as _v0,
        "persona" as _v1,
        ferry_values_md5("lead_score", "persona") as _hash
    from "contact_scores"
) as model_rows;
select _key, _crm_id, _created from __ferry_sync_snapshot;
