-- One row per form-fill lead from the marketing platform, cleaned like CRM
-- contacts; the company domain comes from the website field.
with leads as (
    select * from {{ latest_by(source('marketing', 'leads'), 'id') }}
)
select
    cast(l.id as varchar) as lead_id,
    {{ clean_email('l.email') }} as email,
    {{ email_domain(clean_email('l.email')) }} as email_domain,
    fm.domain is not null as is_free_email,
    nullif(trim(l.first_name), '') as first_name,
    nullif(trim(l.last_name), '') as last_name,
    nullif(trim(l.job_title), '') as job_title,
    {{ normalize_title('l.job_title') }} as title_key,
    nullif(trim(l.company), '') as company_name,
    {{ clean_domain('l.website') }} as website_domain,
    nullif(trim(l.country), '') as country_raw,
    ca.country_code,
    ca.country_name,
    l.form,
    {{ to_ts('l.submitted_at') }} as submitted_at,
    {{ to_ts('l.updated_at') }} as updated_at
from leads l
left join {{ ref('free_email_domains') }} fm on fm.domain = {{ email_domain(clean_email('l.email')) }}
left join {{ ref('country_aliases') }} ca on ca.alias = {{ lookup_key('l.country') }}
