{{ config(enabled = var('crm', 'hubspot') == 'hubspot') }}
-- Which contacts are on which deal now (HubSpot deal → contact
-- associations). A record's associations land with the record, so its
-- current ones are those from the run that landed its latest version: a
-- contact taken off a deal drops out.
with deals as (
    select * from {{ latest_by(source('hubspot', 'deals'), 'id') }}
)
select distinct
    cast(a.from_id as varchar) as deal_id,
    cast(a.to_id as varchar) as contact_id
from {{ source('hubspot', 'deals_contacts') }} a
join deals d
  on cast(d.id as varchar) = cast(a.from_id as varchar)
 and d._ferry_run_id = a._ferry_run_id
where not coalesce(d.archived, false)
