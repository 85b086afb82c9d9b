{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- The MQL segment's contacts: members of the "Ferry MQLs" campaign by Contact.
select email, mql_at from {{ ref('salesforce_contact_scores') }} where is_mql
