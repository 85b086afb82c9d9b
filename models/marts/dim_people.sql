-- One row per person (see int_identity), with each field taken from the
-- source the survivorship seed names for it (priority 1 first; ties go to
-- the newest record), the persona of the surviving job title, the account,
-- and the CRM contact behind the person when there is one.
with records as (
    select i.person_id, r.*
    from {{ ref('int_person_records') }} r
    join {{ ref('int_identity') }} i on i.record_id = r.record_id
),
fields as (
    select person_id, source, updated_at, record_id, 'email' as field, email as value from records
    union all select person_id, source, updated_at, record_id, 'first_name', first_name from records
    union all select person_id, source, updated_at, record_id, 'last_name', last_name from records
    union all select person_id, source, updated_at, record_id, 'job_title', job_title from records
    union all select person_id, source, updated_at, record_id, 'country', country_code from records
    union all select person_id, source, updated_at, record_id, 'company_name', company_name from records
    union all select person_id, source, updated_at, record_id, 'company_domain', company_domain from records
),
survivors as (
    select person_id, field, value from (
        select f.person_id, f.field, f.value,
               row_number() over (
                   partition by f.person_id, f.field
                   order by s.priority, f.updated_at desc, f.record_id
               ) as rn
        from fields f
        join {{ ref('survivorship') }} s on s.field = f.field and s.source = f.source
        where f.value is not null and f.value <> ''
    ) ranked
    where rn = 1
),
golden as (
    select
        person_id,
        max(case when field = 'email' then value end) as email,
        max(case when field = 'first_name' then value end) as first_name,
        max(case when field = 'last_name' then value end) as last_name,
        max(case when field = 'job_title' then value end) as job_title,
        max(case when field = 'country' then value end) as country_code,
        max(case when field = 'company_name' then value end) as company_name,
        max(case when field = 'company_domain' then value end) as company_domain
    from survivors
    group by person_id
),
crm as (
    select
        person_id,
        min(case when source = 'hubspot' then source_id end) as hubspot_contact_id,
        min(created_at) as first_seen_at,
        count(*) as source_records,
        sum(case when source = 'hubspot' then 1 else 0 end) as crm_records
    from records
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
    c.hubspot_contact_id,
    hc.owner_id as crm_owner_id,
    hc.lifecycle_stage,
    c.first_seen_at,
    c.source_records,
    c.crm_records
from golden g
join crm c on c.person_id = g.person_id
left join {{ ref('int_job_titles') }} jt on jt.title_key = {{ normalize_title('g.job_title') }}
left join {{ ref('dim_accounts') }} a on a.account_id = g.company_domain
left join accounts_by_name an
  on a.account_id is null and an.name_key = lower(g.company_name) and an.country_code = g.country_code
left join {{ ref('stg_hubspot__contacts') }} hc on hc.contact_id = c.hubspot_contact_id
