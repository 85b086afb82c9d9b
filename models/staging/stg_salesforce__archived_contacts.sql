{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- Emails of contacts and leads deleted in Salesforce (in the recycle bin,
-- which queryAll reads): syncs leave these people out, so a sync never
-- recreates a record someone deleted in the CRM.
select distinct {{ clean_email('p."Email"') }} as email
from (
    select "Email", "IsDeleted" from {{ latest_by(source('salesforce', 'contacts'), '"Id"') }}
    union all
    select "Email", "IsDeleted" from {{ latest_by(source('salesforce', 'leads'), '"Id"') }}
) p
where coalesce(p."IsDeleted", false)
  and {{ clean_email('p."Email"') }} is not null
