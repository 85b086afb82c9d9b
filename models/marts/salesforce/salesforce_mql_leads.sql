{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- The MQL segment's leads: members of the "Ferry MQLs" campaign by Lead.
select email, mql_at from {{ ref('salesforce_lead_scores') }} where is_mql
