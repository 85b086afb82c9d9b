-- How complete the data is: for people and accounts, the share of rows with
-- each field filled (after normalization: a country nobody could map is
-- missing).
with people as (select * from {{ ref('dim_people') }}),
accounts as (select * from {{ ref('dim_accounts') }})
select 'people' as entity, 'email' as field, count(*) as rows_total, count(email) as rows_filled from people
union all select 'people', 'job_title', count(*), count(job_title) from people
union all select 'people', 'persona', count(*), sum(case when persona <> 'Other' then 1 else 0 end) from people
union all select 'people', 'country_code', count(*), count(country_code) from people
union all select 'people', 'company_domain', count(*), count(company_domain) from people
union all select 'people', 'account_id', count(*), count(account_id) from people
union all select 'people', 'crm_contact_id', count(*), count(crm_contact_id) from people
union all select 'accounts', 'domain', count(*), count(domain) from accounts
union all select 'accounts', 'industry', count(*), count(industry) from accounts
union all select 'accounts', 'employees', count(*), count(employees) from accounts
union all select 'accounts', 'country_code', count(*), count(country_code) from accounts
