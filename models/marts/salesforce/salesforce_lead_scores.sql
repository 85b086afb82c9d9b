{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- Scores for everyone else: Salesforce leads (ids 00Q…) and people known
-- only from form fills, who become leads (Salesforce requires a company:
-- "[not provided]", as web-to-lead writes it, when nobody gave one).
select
    s.*,
    coalesce(p.company_name, '[not provided]') as company
from {{ ref('contact_scores') }} s
left join {{ ref('dim_people') }} p on p.person_id = s.person_id
where not exists (
    select 1 from {{ ref('stg_salesforce__contacts') }} c
    where c.email = s.email and c.contact_id like '003%'
)
