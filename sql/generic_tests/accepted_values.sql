-- accepted_values: values of {{ column }} in {{ model }} outside the accepted list.
select {{ column }} as value, count(*) as occurrences
from {{ model }}
where {{ column }} is not null
  and {{ column }} not in ({% for v in values %}{{ v | sql_literal }}{% if not loop.last %}, {% endif %}{% endfor %})
group by {{ column }}
