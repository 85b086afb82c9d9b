{{ config(enabled = var('crm', 'hubspot') == 'hubspot') }}
-- One row per HubSpot deal with its amount, stage, dates and company.
with deals as (
    -- records deleted (archived) in HubSpot drop out
    select * from {{ latest_by(source('hubspot', 'deals'), 'id') }}
    where not coalesce(archived, false)
),
company as (
    -- the current association (landed with the deal's latest version);
    -- the lowest company id when there are several
    select
        cast(a.from_id as varchar) as deal_id,
        cast(min(cast(a.to_id as bigint)) as varchar) as company_id
    from {{ source('hubspot', 'deals_companies') }} a
    join deals d
      on cast(d.id as varchar) = cast(a.from_id as varchar)
     and d._ferry_run_id = a._ferry_run_id
    group by 1
)
select
    cast(d.id as varchar) as deal_id,
    d.dealname as deal_name,
    cast(nullif(d.amount, '') as double) as amount,
    d.dealstage as stage,
    d.dealstage in ('closedwon', 'closedlost') as is_closed,
    d.dealstage = 'closedwon' as is_won,
    d.pipeline,
    co.company_id,
    {{ to_ts('d.createdate') }} as created_at,
    {{ to_ts('d.closedate') }} as closed_at
from deals d
left join company co on co.deal_id = cast(d.id as varchar)
where not coalesce(d.archived, false)
