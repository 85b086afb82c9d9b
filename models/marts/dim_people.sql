{%- set crm = var('crm', 'hubspot') %}
-- One row per person (see int_identity), with each field taken from the
-- source the survivorship seed names for it (priority 1 first; ties go to
-- the newest record), the persona of the surviving job title, the account,
-- and the CRM contact behind the person when there is one.
--
-- Survivorship is one ordered aggregate per field over the person's
-- records: records whose source the seed does not list for a field, or
-- whose value is empty, never win it.
with records as (
    select i.person_id, r.*
    from {{ ref('int_person_records') }} r
    join {{ ref('int_identity') }} i on i.record_id = r.record_id
),
priorities as (
    -- the survivorship seed, one row per source (null: never supplies it)
    select
        source,
        min(case when field = 'email' then priority end) as p_email,
        min(case when field = 'first_name' then priority end) as p_first_name,
        min(case when field = 'last_name' then priority end) as p_last_name,
        min(case when field = 'job_title' then priority end) as p_job_title,
        min(case when field = 'country' then priority end) as p_country,
        min(case when field = 'company_name' then priority end) as p_company_name,
        min(case when field = 'company_domain' then priority end) as p_company_domain
    from {{ ref('survivorship') }}
    group by source
),
candidates as (
    select
        r.person_id, r.source, r.source_id, r.record_id, r.created_at, r.updated_at,
        case when p.p_email is not null then nullif(r.email, '') end as email, p.p_email,
        case when p.p_first_name is not null then nullif(r.first_name, '') end as first_name, p.p_first_name,
        case when p.p_last_name is not null then nullif(r.last_name, '') end as last_name, p.p_last_name,
        case when p.p_job_title is not null then nullif(r.job_title, '') end as job_title, p.p_job_title,
        case when p.p_country is not null then nullif(r.country_code, '') end as country_code, p.p_country,
        case when p.p_company_name is not null then nullif(r.company_name, '') end as company_name, p.p_company_name,
        case when p.p_company_domain is not null then nullif(r.company_domain, '') end as company_domain, p.p_company_domain
    from records r
    left join priorities p on p.source = r.source
),
golden as (
    select
        person_id,
        first_value(email order by email is null, p_email, updated_at desc nulls last, record_id) as email,
        first_value(first_name order by first_name is null, p_first_name, updated_at desc nulls last, record_id) as first_name,
        first_value(last_name order by last_name is null, p_last_name, updated_at desc nulls last, record_id) as last_name,
        first_value(job_title order by job_title is null, p_job_title, updated_at desc nulls last, record_id) as job_title,
        first_value(country_code order by country_code is null, p_country, updated_at desc nulls last, record_id) as country_code,
        first_value(company_name order by company_name is null, p_company_name, updated_at desc nulls last, record_id) as company_name,
        first_value(company_domain order by company_domain is null, p_company_domain, updated_at desc nulls last, record_id) as company_domain,
        {{ lowest_id("case when source = '" ~ crm ~ "' then source_id end") }} as crm_contact_id,
        min(created_at) as first_seen_at,
        count(*) as source_records,
        sum(case when source = '{{ crm }}' then 1 else 0 end) as crm_records
    from candidates
    group by person_id
),
accounts_by_name as (
    select lower(account_name) as name_key, country_code, min(account_id) as account_id
    from {{ ref('dim_accounts') }}
    group by 1, 2
)
select
    g.person_id,
    g.email,
    g.first_name,
    g.last_name,
    g.job_title,
    jt.function,
    jt.seniority,
    coalesce(jt.persona, 'Other') as persona,
    g.country_code,
    g.company_name,
    g.company_domain,
    coalesce(a.account_id, an.account_id) as account_id,
    g.crm_contact_id,
    hc.owner_id as crm_owner_id,
    hc.lifecycle_stage,
    g.first_seen_at,
    g.source_records,
    g.crm_records
from golden g
left join {{ ref('int_job_titles') }} jt on jt.title_key = {{ normalize_title('g.job_title') }}
left join {{ ref('dim_accounts') }} a on a.account_id = g.company_domain
left join accounts_by_name an
  on a.account_id is null and an.name_key = lower(g.company_name) and an.country_code = g.country_code
left join {{ ref('stg_' ~ crm ~ '__contacts') }} hc on hc.contact_id = g.crm_contact_id
