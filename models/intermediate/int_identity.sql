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
--    and domain when it has no email; a record with neither a name nor a
--    domain is a person of its own: blank names never match).
-- Two records with different work emails are never merged.
with records as (
    select * from {{ ref('int_person_records') }}
),
work as (
    select name_key, company_domain, min(email) as email, count(distinct email) as candidates
    from records
    where email is not null and not is_free_email and company_domain is not null
      and name_key <> '|'
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
            case when r.name_key <> '|' and r.company_domain is not null
                 then 'name:' || r.name_key || '@' || r.company_domain
                 else 'record:' || r.record_id end
        ) as person_key,
        case
            when r.email is not null and not r.is_free_email then 'work_email'
            when w.candidates = 1 then 'name_and_domain'
            when w.candidates > 1 then 'ambiguous_name'
            when r.email is not null then 'email'
            when r.name_key <> '|' and r.company_domain is not null then 'name_only'
            else 'record'
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
