{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- Scores for the people whose email is a Salesforce contact's (ids 003…):
-- the contact_scores sync on Salesforce updates those contacts, matched by
-- Email.
select s.* from {{ ref('contact_scores') }} s
where exists (
    select 1 from {{ ref('stg_salesforce__contacts') }} c
    where c.email = s.email and c.contact_id like '003%'
)
