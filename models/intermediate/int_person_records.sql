{%- set crm = var('crm', 'hubspot') %}
-- Every record of a person, from every source, in one shape: CRM contacts
-- and form-fill leads. The company domain is the work-email domain, else
-- the associated CRM company's (contacts) or the website's (leads).
select
    '{{ crm }}:' || c.contact_id as record_id,
    '{{ crm }}' as source,
    c.contact_id as source_id,
    c.email,
    c.is_free_email,
    c.first_name,
    c.last_name,
    lower(coalesce(c.first_name, '') || '|' || coalesce(c.last_name, '')) as name_key,
    c.job_title,
    c.country_code,
    c.company_name,
    coalesce(case when not c.is_free_email then c.email_domain end, co.domain) as company_domain,
    c.created_at,
    c.updated_at
from {{ ref('stg_' ~ crm ~ '__contacts') }} c
left join {{ ref('stg_' ~ crm ~ '__companies') }} co on co.company_id = c.company_id
union all
select
    'marketing:' || l.lead_id,
    'marketing',
    l.lead_id,
    l.email,
    l.is_free_email,
    l.first_name,
    l.last_name,
    lower(coalesce(l.first_name, '') || '|' || coalesce(l.last_name, '')),
    l.job_title,
    l.country_code,
    l.company_name,
    coalesce(case when not l.is_free_email then l.email_domain end, l.website_domain),
    l.submitted_at,
    l.updated_at
from {{ ref('stg_marketing__leads') }} l
