-- One row per HubSpot deal with its amount, stage, dates and company.
with deals as (
    select * from {{ latest_by(source('hubspot', 'deals'), 'id') }}
),
company as (
    select cast(from_id as varchar) as deal_id, min(cast(to_id as varchar)) as company_id
    from {{ source('hubspot', 'deals_companies') }}
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
