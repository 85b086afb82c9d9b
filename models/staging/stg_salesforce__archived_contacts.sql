{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- Emails of contacts and leads deleted in Salesforce (in the recycle bin,
-- which queryAll reads) that no live record holds: syncs leave these people
-- out, so a sync never recreates a record someone deleted in the CRM. An
-- email a live record still has (the survivor of a merge, the duplicate
-- kept) stays in.
with deleted as (
    select {{ clean_email('p."Email"') }} as email
    from (
        select "Email", "IsDeleted" from {{ latest_by(source('salesforce', 'contacts'), '"Id"') }}
        union all
        select "Email", "IsDeleted" from {{ latest_by(source('salesforce', 'leads'), '"Id"') }}
    ) p
    where coalesce(p."IsDeleted", false)
)
select distinct d.email
from deleted d
where d.email is not null
  and not exists (
      select 1 from {{ ref('stg_salesforce__contacts') }} c where c.email = d.email
  )
