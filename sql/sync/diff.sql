{#- The diff of one sync: the model's rows against what the CRM last
    confirmed ({{ snapshot }}), by match key. Each row gets an operation:
      add        the key is not in the snapshot: send it
      change     the hash of the mapped values differs from the confirmed one: send it
      unchanged  same hash: nothing to send
      remove     the key left the model (mirror archives it if this sync created it)
      reject     empty or duplicate match key: never sent, logged with the reason
    The hash covers every mapped value, each written as <length>:<text> (or ~
    for null) so that no two different rows hash alike by accident.
    Only the snapshot's key, hash, record id and created flag are read: its
    payloads (the values last sent) would ride through the join's hash table
    for every key, and nothing here needs them.
    With {{ buckets }} > 1 this is one key bucket of the diff ({{ bucket }}):
    the model's and the snapshot's rows whose key hashes to it, so that the
    join's hash table and the duplicate count hold a share of the keys
    (rows without a key fall in bucket 0). -#}
{%- set rows = 'model_rows' -%}
with model_rows as (
    select
        {% if lower_key %}lower(trim(cast({{ key }} as varchar))){% else %}trim(cast({{ key }} as varchar)){% endif %} as _key,
        {%- for c in columns %}
        {{ c }} as _v{{ loop.index0 }},
        {%- endfor %}
        md5(concat_ws(','
            {%- for c in columns %},
            case when {{ c }} is null then '~'
                 else concat(cast(character_length(cast({{ c }} as varchar)) as varchar), ':', cast({{ c }} as varchar)) end
            {%- endfor %})) as _hash
    from {{ model }}
),
{%- if buckets > 1 %}{% set rows = 'model_part' %}
model_part as (
    select * from model_rows
    where ferry_bucket(_key, {{ buckets }}) = {{ bucket }}{% if bucket == 0 %} or _key is null{% endif %}
),
{%- endif %}
{%- if buckets > 1 %}
-- Keys held by more than one row (rare). In a bucket the keys are a share
-- of the model's, so they are grouped as they are: a third read of the
-- model per bucket (below) would cost more than it saves.
duplicates as (
    select _key as _dup_key, count(*) as _n from {{ rows }} group by _key having count(*) > 1
),
{%- else %}
-- Keys held by more than one row (rare). Counted first by a 63-bit hash
-- of the key (integers group far faster and smaller than millions of
-- strings: 10M keys, 15.1-17.7 s -> 11.7-14.9 s for the whole diff), then
-- exactly, by key, over the rows whose hash came up more than once: a
-- hash shared by two different keys is never taken for a duplicate. Each
-- join's hash table is built from its left side: the few repeated hashes
-- and duplicates, not the model.
repeated as (
    select _h from (
        select ferry_bucket(_key, 9223372036854775807) as _h from {{ rows }}
    ) as k
    group by _h having count(*) > 1
),
duplicates as (
    select r._key as _dup_key, count(*) as _n
    from repeated as h join {{ rows }} as r on h._h = ferry_bucket(r._key, 9223372036854775807)
    group by r._key having count(*) > 1
),
{%- endif %}
counted as (
    select {{ rows }}.*, coalesce(d._n, 1) as _n
    from duplicates as d right join {{ rows }} on {{ rows }}._key = d._dup_key
)
select
    coalesce(m._key, s._key) as _key,
    case
        when m._hash is null then 'remove'
        when m._key is null or m._key = '' then 'reject'
        when m._n > 1 then 'reject'
        when s._key is null then 'add'
        when s._hash <> m._hash then 'change'
        else 'unchanged'
    end as _op,
    case
        when m._hash is not null and (m._key is null or m._key = '')
            then 'empty match key: {{ key_name }} is null or blank'
        when m._n > 1
            then concat('duplicate match key: ', cast(m._n as varchar), ' rows have {{ key_name }} = ', m._key)
    end as _reason,
    m._hash as _hash,
    s._crm_id as _crm_id,
    coalesce(s._created, false) as _created
    {%- for c in columns %},
    m._v{{ loop.index0 }}
    {%- endfor %}
from counted as m
{%- if buckets > 1 %}
full outer join (
    select * from {{ snapshot }}
    where ferry_bucket(_key, {{ buckets }}) = {{ bucket }}{% if bucket == 0 %} or _key is null{% endif %}
) as s on m._key = s._key
{%- else %}
full outer join {{ snapshot }} as s on m._key = s._key
{%- endif %}
