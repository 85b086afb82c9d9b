-- relationships: values of {{ model }}.{{ column }} with no matching {{ to }}.{{ field }}.
select child.{{ column }} as value, count(*) as occurrences
from {{ model }} as child
left join {{ to }} as parent
  on child.{{ column }} = parent.{{ field }}
where child.{{ column }} is not null
  and parent.{{ field }} is null
group by child.{{ column }}
