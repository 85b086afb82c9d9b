{{ config(enabled = var('crm', 'hubspot') == 'hubspot') }}
-- Emails of contacts deleted (archived) in HubSpot: their latest extracted
-- version is archived. Syncs leave these people out, so a sync never
-- recreates a contact someone deleted in the CRM.
select distinct {{ clean_email('c.email') }} as email
from {{ latest_by(source('hubspot', 'contacts'), 'id') }} c
where coalesce(c.archived, false)
  and {{ clean_email('c.email') }} is not null
