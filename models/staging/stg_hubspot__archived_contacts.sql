{{ config(enabled = var('crm', 'hubspot') == 'hubspot') }}
-- Emails of contacts deleted (archived) in HubSpot that no live contact
-- holds: their latest extracted version is archived. Syncs leave these
-- people out, so a sync never recreates a contact someone deleted in the
-- CRM. An email a live contact still has (the survivor of a merge, the
-- duplicate kept) stays in.
select distinct {{ clean_email('c.email') }} as email
from {{ latest_by(source('hubspot', 'contacts'), 'id') }} c
where coalesce(c.archived, false)
  and {{ clean_email('c.email') }} is not null
  and not exists (
      select 1 from {{ ref('stg_hubspot__contacts') }} l
      where l.email = {{ clean_email('c.email') }}
  )
