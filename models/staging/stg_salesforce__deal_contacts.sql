{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- Which contacts are on which opportunity: Salesforce's
-- OpportunityContactRole junction, extracted as its own stream (a role
-- deleted in Salesforce drops out).
select distinct
    r."OpportunityId" as deal_id,
    r."ContactId" as contact_id
from {{ latest_by(source('salesforce', 'opportunity_contact_roles'), '"Id"') }} r
where not coalesce(r."IsDeleted", false)
