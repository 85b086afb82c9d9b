{#- The reads of one sync's diff: the model's rows against what the CRM last
    confirmed ({{ snapshot }}), compared by match key. The engine reads and
    hashes; ferry compares the two in a compact key index
    (`src/sync/diff/index.rs`), so no hash join holds either side's rows.
    Each {{ pass }} is one query:
      snapshot_keys  every confirmed key, the hash of the values it was last
                     sent, and whether this sync created its record
      model_rows     every model row: the match key as it is compared, the
                     mapped values, and their hash (the model is read once,
                     and once more only for a duplicated key whose first
                     row was unchanged)
      snapshot_ids   every confirmed key with its record id: the keys the
                     model no longer holds are removed, and the changed
                     rows get the record to update
    The hash covers every mapped value, each written as <length>:<text> (or ~
    for null) so that no two different rows hash alike by accident
    (`ferry_values_md5`, src/engine/functions.rs).
    The snapshot's payloads (the values last sent) are never read.
    With {{ buckets }} > 1 every query keeps one key bucket ({{ bucket }}):
    the rows whose key hashes to it, so that the index holds a share of the
    keys (rows without a key fall in bucket 0). -#}
{%- set where %}{% if buckets > 1 %}
where ferry_bucket(_key, {{ buckets }}) = {{ bucket }}{% if bucket == 0 %} or _key is null{% endif %}{% endif %}{% endset -%}
{%- if pass == 'snapshot_keys' -%}
select _key, _hash, _created from {{ snapshot }}{{ where }}
{%- elif pass == 'snapshot_ids' -%}
select _key, _crm_id, _created from {{ snapshot }}{{ where }}
{%- else -%}
select * from (
    select
        {% if lower_key %}lower(trim(cast({{ key }} as varchar))){% else %}trim(cast({{ key }} as varchar)){% endif %} as _key,
        {%- for c in columns %}
        {{ c }} as _v{{ loop.index0 }},
        {%- endfor %}
        ferry_values_md5({% for c in columns %}{{ c }}{% if not loop.last %}, {% endif %}{% endfor %}) as _hash
    from {{ model }}
) as model_rows{{ where }}
{%- endif %}
