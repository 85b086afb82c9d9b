-- Identity resolution: which person each record is.
--
-- 1. Records with the same work email are the same person (emails are
--    compared cleaned: trimmed, lower case).
-- 2. A record without a work email (a free-mail address, or none) joins the
--    person whose work-email record has the same first and last name at the
--    same company domain, when exactly one such person exists. Two work
--    addresses behind one name and domain make the match ambiguous: the
--    record stays a person of its own (matched_by 'ambiguous_name').
-- 3. Anything else is a person of its own, keyed by its email (or by name
--    and domain when it has no email).
-- Two records with different work emails are never merged.
with records as (
    select * from {{ ref('int_person_records') }}
),
work as (
    select name_key, company_domain, min(email) as email, count(distinct email) as candidates
    from records
    where email is not null and not is_free_email and company_domain is not null
    group by name_key, company_domain
),
keyed as (
    select
        r.record_id,
        r.source,
        r.source_id,
        coalesce(
            case when r.email is not null and not r.is_free_email then r.email end,
            case when w.candidates = 1 then w.email end,
            r.email,
            'name:' || r.name_key || '@' || coalesce(r.company_domain, '')
        ) as person_key,
        case
            when r.email is not null and not r.is_free_email then 'work_email'
            when w.candidates = 1 then 'name_and_domain'
            when w.candidates > 1 then 'ambiguous_name'
            when r.email is not null then 'email'
            else 'name_only'
        end as matched_by
    from records r
    left join work w
      on (r.email is null or r.is_free_email)
     and w.name_key = r.name_key
     and w.company_domain = r.company_domain
)
select
    record_id,
    source,
    source_id,
    'p_' || substr(md5(person_key), 1, 16) as person_id,
    person_key,
    matched_by
from keyed
