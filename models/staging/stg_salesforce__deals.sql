{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- One row per Salesforce opportunity, in the shape of stg_hubspot__deals:
-- amount, stage, won and closed flags (from the standard stage names),
-- dates and account.
with opportunities as (
    select * from {{ latest_by(source('salesforce', 'opportunities'), '"Id"') }}
    where not coalesce("IsDeleted", false)
)
select
    o."Id" as deal_id,
    o."Name" as deal_name,
    cast(o."Amount" as double) as amount,
    o."StageName" as stage,
    o."StageName" in ('Closed Won', 'Closed Lost') as is_closed,
    o."StageName" = 'Closed Won' as is_won,
    'default' as pipeline,
    o."AccountId" as company_id,
    {{ to_ts('o."CreatedDate"') }} as created_at,
    cast(o."CloseDate" as timestamp) as closed_at
from opportunities o
