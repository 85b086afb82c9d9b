{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- One row per Salesforce opportunity, in the shape of stg_hubspot__deals:
-- amount, stage, the org's own won and closed flags (IsWon, IsClosed:
-- whatever its stages are called), dates and account.
with opportunities as (
    select * from {{ latest_by(source('salesforce', 'opportunities'), '"Id"') }}
    where not coalesce("IsDeleted", false)
)
select
    o."Id" as deal_id,
    o."Name" as deal_name,
    cast(o."Amount" as double) as amount,
    o."StageName" as stage,
    coalesce(o."IsClosed", false) as is_closed,
    coalesce(o."IsWon", false) as is_won,
    'default' as pipeline,
    o."AccountId" as company_id,
    {{ to_ts('o."CreatedDate"') }} as created_at,
    cast(o."CloseDate" as timestamp) as closed_at
from opportunities o
