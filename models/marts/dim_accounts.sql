{%- set crm = var('crm', 'hubspot') %}
-- One row per account. CRM companies are the same account when their
-- cleaned domains match; a company without a domain joins the account with
-- the same name (case-insensitive) and country; anything else is an account
-- of its own. Survivorship: for each field the earliest-created CRM record
-- with a value wins (employees: the largest value).
with companies as (
    select * from {{ ref('stg_' ~ crm ~ '__companies') }}
),
named as (
    select lower(company_name) as name_key, country_code, min(domain) as domain
    from companies
    where domain is not null
    group by 1, 2
),
keyed as (
    select
        c.*,
        coalesce(
            c.domain,
            n.domain,
            'name:' || lower(coalesce(c.company_name, c.company_id)) || '|' || coalesce(c.country_code, '')
        ) as account_id
    from companies c
    left join named n
      on c.domain is null
     and n.name_key = lower(c.company_name)
     and n.country_code = c.country_code
)
select
    account_id,
    (array_agg(company_name order by created_at, company_id) filter (where company_name is not null))[1] as account_name,
    (array_agg(domain order by created_at, company_id) filter (where domain is not null))[1] as domain,
    (array_agg(industry order by created_at, company_id) filter (where industry is not null))[1] as industry,
    (array_agg(sector order by created_at, company_id) filter (where sector is not null))[1] as sector,
    max(employees) as employees,
    case
        when max(employees) is null then null
        when max(employees) < 50 then '1-49'
        when max(employees) < 200 then '50-199'
        when max(employees) < 1000 then '200-999'
        else '1000+'
    end as size_band,
    case
        when max(employees) is null then 'Unknown'
        when max(employees) < 200 then 'SMB'
        when max(employees) < 1000 then 'Mid-Market'
        else 'Enterprise'
    end as segment,
    (array_agg(country_code order by created_at, company_id) filter (where country_code is not null))[1] as country_code,
    count(*) as crm_records,
    {{ lowest_id('company_id') }} as crm_company_id
from keyed
group by account_id
